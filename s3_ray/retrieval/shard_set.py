"""Opening the shards of a sharded index, and refusing a set of shards that is not one index.

`check_shard_set` compares what each shard says about itself (its manifest: which shard, which
rows, the hash of its passages and of the BM25 statistics, the corpus hash) with the index's top
manifest, and names every shard that is missing, of another corpus, or built otherwise. The Serve
front runs it on the shard folders when it starts and on what the shard replicas report; a shard
replica also stamps each reply with its corpus hash and shard number (`ShardReply`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from s3_ray.config import RetrievalConfig
from s3_ray.retrieval.folder import check_manifest, index_params, load_parts, shard_params
from s3_ray.retrieval.manifest import IndexMismatchError, Manifest, read_manifest
from s3_ray.retrieval.shards import shard_dir
from s3_ray.types import Passage

RowHit = tuple[int, float, Passage]
"""(global corpus row, score, passage) of one hit."""


class ShardSetError(IndexMismatchError):
    """The shards found are not the complete set of one index (missing, other corpus, other build)."""


@dataclass(frozen=True)
class ShardReply:
    """One shard's answer to a batch: hits per part (BM25, dense; as the backend has them), per query."""

    shard: int
    corpus_sha256: str
    parts: list[list[list[RowHit]]]


class VectorsOnly:
    """The encoder of a shard replica: queries arrive as vectors (the front encodes them once for
    every shard), so it only knows the dimension and refuses to encode."""

    def __init__(self, dim: int) -> None:
        self.dim = dim

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        raise RuntimeError("a shard replica searches query vectors encoded by the front deployment")

    encode_passages = encode_queries


def _describe_mismatch(top: Manifest, i: int, got: Manifest, cfg: RetrievalConfig) -> str | None:
    want = top.shards[i] if top.shards and i < len(top.shards) else None
    if got.corpus_sha256 != top.corpus_sha256:
        return (f"shard {i} holds corpus sha256 {got.corpus_sha256[:12]}, the index is of corpus "
                f"{top.corpus_sha256[:12]} ({top.corpus_path})")
    if got.shard is None:
        return f"shard {i} is not a shard folder (its manifest has no shard entry)"
    if want is None or got.shard != want:
        what = "rows" if want is not None and got.shard.rows != want.rows else "passages or BM25 statistics"
        return f"{got.shard.name()} differs from the index's shard {i} ({what} changed): rebuild the index"
    if got.backend != cfg.backend or got.params != shard_params(cfg):
        return f"shard {i} was built as {got.backend} {got.params}, config asks for {cfg.backend} {shard_params(cfg)}"
    return None


def check_shard_set(top: Manifest, found: Sequence[Manifest | None], cfg: RetrievalConfig, where: str) -> None:
    """Raise ShardSetError naming every missing or mismatched shard; `found[i]` is shard i's manifest
    (None: not found). `where` says whose shards these are (folders, replicas)."""
    expected = len(top.shards or [])
    if expected != cfg.replica_shards:
        raise ShardSetError(f"{cfg.index_dir}: index has {expected} shards, retrieval.replica_shards is "
                            f"{cfg.replica_shards}; rebuild it")
    problems = []
    missing = [i for i in range(expected) if i >= len(found) or found[i] is None]
    if missing:
        problems.append(f"incomplete set of shards: shard(s) {', '.join(map(str, missing))} of {expected} missing")
    for i, got in enumerate(found[:expected]):
        if got is not None and (why := _describe_mismatch(top, i, got, cfg)):
            problems.append(why)
    if len(found) > expected:
        problems.append(f"{len(found) - expected} shard(s) more than the index's {expected}")
    if problems:
        raise ShardSetError(f"{where}: refusing the shard set: {'; '.join(problems)}")


def read_shard_manifests(cfg: RetrievalConfig, n: int) -> list[Manifest | None]:
    out: list[Manifest | None] = []
    for i in range(n):
        try:
            out.append(read_manifest(shard_dir(cfg.index_dir, i)))
        except IndexMismatchError:
            out.append(None)
    return out


def open_shard_set(cfg: RetrievalConfig) -> Manifest:
    """The top manifest of the sharded index at `cfg.index_dir`, after checking every shard folder."""
    top = read_manifest(cfg.index_dir)
    check_manifest(top, cfg, cfg.index_dir, index_params(cfg))
    check_shard_set(top, read_shard_manifests(cfg, max(cfg.replica_shards, len(top.shards or []))), cfg,
                    f"{cfg.index_dir} (shard folders)")
    return top


class ShardSearcher:
    """One shard's retrievers; answers with global rows so the front can merge shards exactly."""

    def __init__(self, manifest: Manifest, parts: list[Any]) -> None:
        if manifest.shard is None:
            raise ValueError("ShardSearcher needs a shard folder's manifest")
        self.manifest = manifest
        self.parts = parts
        self.offset = manifest.shard.rows[0]

    @classmethod
    def open(cls, cfg: RetrievalConfig, shard: int, encoder: Any = None) -> ShardSearcher:
        """Open shard `shard` of `cfg.index_dir`; dense parts search vectors unless an encoder is given."""
        d = shard_dir(cfg.index_dir, shard)
        manifest = read_manifest(d)
        check_manifest(manifest, cfg, str(d), shard_params(cfg))
        if manifest.shard is None or manifest.shard.shard != shard:
            raise ShardSetError(f"{d}: is not shard {shard} (its manifest says {manifest.shard})")
        if encoder is None and manifest.dim is not None:
            encoder = VectorsOnly(manifest.dim)
        return cls(manifest, load_parts(cfg, d, manifest, encoder))

    def __len__(self) -> int:
        return self.manifest.n_passages

    def describe(self) -> Manifest:
        return self.manifest

    def search_parts(self, queries: list[str], vectors: np.ndarray | None, depth: int) -> ShardReply:
        """Top-`depth` hits of each part per query; `vectors` (one row per query) feed the dense part."""
        from s3_ray.retrieval.bm25 import BM25Retriever

        out: list[list[list[RowHit]]] = []
        for part in self.parts:
            if isinstance(part, BM25Retriever):
                rows = part.search_rows(queries, depth)
                out.append([[(r + self.offset, s, part.passage(r)) for r, s in q] for q in rows])
            else:
                out.append(self._dense(part, queries, vectors, depth))
        assert self.manifest.shard is not None
        return ShardReply(self.manifest.shard.shard, self.manifest.corpus_sha256, out)

    def _dense(self, part: Any, queries: list[str], vectors: np.ndarray | None, depth: int) -> list[list[RowHit]]:
        if vectors is None or len(vectors) != len(queries):
            raise ValueError(f"a dense shard needs one query vector per query, got "
                             f"{None if vectors is None else len(vectors)} for {len(queries)}")
        out: list[list[RowHit]] = [[] for _ in queries]
        live = [i for i, q in enumerate(queries) if q.strip()]
        if not live:
            return out
        scores, ids = part.search_vectors(np.asarray(vectors)[live], depth)
        for row, i in enumerate(live):
            out[i] = [(int(j) + self.offset, float(s), part.passage(int(j)))
                      for s, j in zip(scores[row], ids[row]) if j >= 0]
        return out
