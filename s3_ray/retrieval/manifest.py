"""What an index folder says about itself (`manifest.json`), and the file moves that keep it whole.

The manifest records the corpus hash and the build parameters, so a rebuild with nothing changed
is a no-op, and a retriever is never served from an index built for another corpus or other
params. A shard folder's manifest adds which shard it is (`ShardInfo`): its rows of the corpus,
the hash of those passages and, for BM25, the hash of the corpus-wide statistics it was scored with.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from s3_ray.data.jsonl import write_json

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"


class IndexMismatchError(RuntimeError):
    """The index folder is missing, unreadable, or was built with other settings."""


class ShardInfo(BaseModel):
    """Which part of the corpus one shard folder holds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    shard: int = Field(..., ge=0, description="0-based shard number.")
    of: int = Field(..., ge=1, description="How many shards the corpus is cut into.")
    rows: tuple[int, int] = Field(..., description="[first, end) rows of the corpus.")
    shard_sha256: str = Field(..., description="Hash of this shard's passages (ids and contents).")
    stats_sha256: str | None = Field(None, description="Hash of the corpus-wide BM25 statistics (bm25, hybrid).")

    def name(self) -> str:
        return f"shard {self.shard} of {self.of} (rows {self.rows[0]}..{self.rows[1]})"


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format_version: int
    backend: str
    params: dict[str, Any]
    corpus_path: str
    corpus_sha256: str
    n_passages: int
    build_seconds: float
    index_bytes: int
    created_at: float
    dim: int | None = Field(None, description="Embedding dimension (dense and hybrid indexes).")
    shard: ShardInfo | None = Field(None, description="Set in the folder of one shard of a sharded index.")
    shards: list[ShardInfo] | None = Field(None, description="Set in the top folder of a sharded index.")
    rebuilt: bool = Field(True, exclude=True, description="False when build_index found it up to date.")

    def summary(self) -> str:
        """One line for logs.

        >>> Manifest(format_version=1, backend="bm25", params={"k1": 0.9}, corpus_path="c.jsonl",
        ...          corpus_sha256="ab" * 32, n_passages=3, build_seconds=0.01, index_bytes=2048,
        ...          created_at=0.0, rebuilt=False).summary()
        'bm25 index of 3 passages (c.jsonl, sha256 abababababab), 2.0 KiB, built in 0.01 s, up to date'
        """
        state = "rebuilt" if self.rebuilt else "up to date"
        cut = f" in {len(self.shards)} shards" if self.shards else ""
        return (f"{self.backend} index of {self.n_passages} passages{cut} ({self.corpus_path}, sha256 "
                f"{self.corpus_sha256[:12]}), {self.index_bytes / 1024:.1f} KiB, built in "
                f"{self.build_seconds:.2f} s, {state}")


def file_sha256(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(index_dir: str | os.PathLike[str]) -> Manifest:
    path = Path(index_dir) / MANIFEST_FILE
    if not path.is_file():
        raise IndexMismatchError(f"no index at {Path(index_dir)} (missing {MANIFEST_FILE}); "
                                 "build it with `python -m jobs.build_index`")
    try:
        return Manifest.model_validate(json.loads(path.read_text()) | {"rebuilt": False})
    except (ValueError, TypeError) as err:
        raise IndexMismatchError(f"{path}: unreadable manifest ({err})") from None


def write_manifest(directory: str | os.PathLike[str], manifest: Manifest) -> None:
    """Write `manifest.json` (temp file, then rename: a reader never sees half a file)."""
    unset = {key for key in ("shard", "shards") if getattr(manifest, key) is None}  # unsharded: as before
    write_json(Path(directory) / MANIFEST_FILE, manifest.model_dump(exclude=unset))


def dir_bytes(d: Path) -> int:
    return sum(f.stat().st_size for f in d.rglob("*") if f.is_file())


def swap_in(new: Path, target: Path) -> None:
    """Replace `target` by `new` with renames only; the old folder is deleted last."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}-{time.time_ns()}")
        os.replace(target, old)
    os.replace(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
