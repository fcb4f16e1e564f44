"""Build an index folder once and describe it with a manifest; load it only if it matches.

The manifest records the corpus hash and the parameters, so a rebuild with nothing changed is a
no-op, and a retriever is never served from an index built for another corpus or other params.
The folder is written beside its final place and renamed in, so a crash leaves no half index.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from s3_ray.config import RetrievalConfig
from s3_ray.data.corpus import read_corpus
from s3_ray.data.jsonl import write_json
from s3_ray.retrieval.base import Retriever

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"


class IndexMismatchError(RuntimeError):
    """The index folder is missing, unreadable, or was built with other settings."""


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
    rebuilt: bool = Field(True, exclude=True, description="False when build_index found it up to date.")

    def summary(self) -> str:
        """One line for logs.

        >>> Manifest(format_version=1, backend="bm25", params={"k1": 0.9}, corpus_path="c.jsonl",
        ...          corpus_sha256="ab" * 32, n_passages=3, build_seconds=0.01, index_bytes=2048,
        ...          created_at=0.0, rebuilt=False).summary()
        'bm25 index of 3 passages (c.jsonl, sha256 abababababab), 2.0 KiB, built in 0.01 s, up to date'
        """
        state = "rebuilt" if self.rebuilt else "up to date"
        return (f"{self.backend} index of {self.n_passages} passages ({self.corpus_path}, sha256 "
                f"{self.corpus_sha256[:12]}), {self.index_bytes / 1024:.1f} KiB, built in "
                f"{self.build_seconds:.2f} s, {state}")


def file_sha256(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _params(cfg: RetrievalConfig) -> dict[str, Any]:
    if cfg.backend == "bm25":
        return {"k1": cfg.k1, "b": cfg.b}
    raise ValueError(f"unknown retrieval backend {cfg.backend!r}")


def read_manifest(index_dir: str | os.PathLike[str]) -> Manifest:
    path = Path(index_dir) / MANIFEST_FILE
    if not path.is_file():
        raise IndexMismatchError(f"no index at {Path(index_dir)} (missing {MANIFEST_FILE}); "
                                 "build it with `python -m jobs.build_index`")
    try:
        return Manifest.model_validate(json.loads(path.read_text()) | {"rebuilt": False})
    except (ValueError, TypeError) as err:
        raise IndexMismatchError(f"{path}: unreadable manifest ({err})") from None


def _dir_bytes(d: Path) -> int:
    return sum(f.stat().st_size for f in d.rglob("*") if f.is_file())


def build_index(corpus_path: str | os.PathLike[str], cfg: RetrievalConfig, progress: bool = True) -> Manifest:
    """Build `cfg.index_dir` from the corpus, or return its manifest when it is already current."""
    corpus = Path(corpus_path)
    if not corpus.is_file():
        raise FileNotFoundError(f"corpus not found: {corpus}")
    sha, params = file_sha256(corpus), _params(cfg)
    target = Path(cfg.index_dir)
    if (target / MANIFEST_FILE).is_file():
        try:
            old = read_manifest(target)
        except IndexMismatchError:
            old = None
        if old is not None and (old.format_version, old.backend, old.params, old.corpus_sha256) == (
                FORMAT_VERSION, cfg.backend, params, sha):
            return old
    start = time.perf_counter()
    steps = tqdm(total=3, desc=f"index {corpus.name}", disable=not progress)
    passages = read_corpus(corpus)
    steps.update()
    from s3_ray.retrieval.bm25 import BM25Retriever

    retriever = BM25Retriever.build(passages, k1=cfg.k1, b=cfg.b, progress=False)
    steps.update()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.building-", dir=target.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp creates 0700; the index is shared with other processes/users
        retriever.save(tmp)
        manifest = Manifest(format_version=FORMAT_VERSION, backend=cfg.backend, params=params,
                            corpus_path=str(corpus), corpus_sha256=sha, n_passages=len(passages),
                            build_seconds=round(time.perf_counter() - start, 4), index_bytes=_dir_bytes(tmp),
                            created_at=time.time(), rebuilt=True)
        write_json(tmp / MANIFEST_FILE, manifest.model_dump())
        _swap_in(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    steps.update()
    steps.close()
    return manifest


def _swap_in(new: Path, target: Path) -> None:
    """Replace `target` by `new` with renames only; the old folder is deleted last."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}-{time.time_ns()}")
        os.replace(target, old)
    os.replace(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def load_retriever(cfg: RetrievalConfig, corpus_path: str | os.PathLike[str] | None = None) -> Retriever:
    """Open the index at `cfg.index_dir`; it must match the configured backend and parameters
    (and the corpus, when `corpus_path` is given)."""
    manifest = read_manifest(cfg.index_dir)
    if manifest.format_version != FORMAT_VERSION:
        raise IndexMismatchError(f"{cfg.index_dir}: index format {manifest.format_version}, "
                                 f"this version reads {FORMAT_VERSION}; rebuild it")
    if manifest.backend != cfg.backend or manifest.params != _params(cfg):
        raise IndexMismatchError(f"{cfg.index_dir}: built as {manifest.backend} {manifest.params}, config asks for "
                                 f"{cfg.backend} {_params(cfg)}; rebuild it")
    if corpus_path is not None and file_sha256(corpus_path) != manifest.corpus_sha256:
        raise IndexMismatchError(f"{cfg.index_dir}: built from another corpus than {corpus_path}; rebuild it")
    from s3_ray.retrieval.bm25 import BM25Retriever

    retriever = BM25Retriever.load(cfg.index_dir)
    if len(retriever) != manifest.n_passages:
        raise IndexMismatchError(f"{cfg.index_dir}: manifest says {manifest.n_passages} passages, "
                                 f"found {len(retriever)}")
    return retriever
