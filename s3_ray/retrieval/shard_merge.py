"""Searching a sharded index: encode once, ask every shard, merge their top-k exactly.

Every shard returns its best `depth` hits per part with global corpus rows. A passage in the
global top-k is in its own shard's top-k, so merging the shards' lists by (score, row) gives the
unsharded top-k; hybrid fuses the merged BM25 and dense lists with RRF, as `HybridRetriever`
does. `ShardedRetriever` runs the shards in this process; `ShardFanout` calls them remotely
(Serve handles), retrying a failed call on another replica of that shard and failing the whole
query, never answering without a shard, once a shard stays down.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import numpy as np

from s3_ray.config import RetrievalConfig
from s3_ray.retrieval.hybrid import rrf_fuse
from s3_ray.retrieval.manifest import Manifest
from s3_ray.retrieval.shard_set import RowHit, ShardReply, ShardSearcher, ShardSetError
from s3_ray.retry import Retry, Transient
from s3_ray.types import SearchHit

log = logging.getLogger(__name__)


class ShardUnavailableError(RuntimeError):
    """A shard did not answer after every retry; the query fails instead of returning a partial top-k."""


def search_depth(cfg: RetrievalConfig, k: int) -> int:
    """Hits each shard returns per part: k, or the fusion depth for hybrid (as `HybridRetriever` asks)."""
    return max(k, cfg.fusion_depth) if cfg.backend == "hybrid" else k


def query_vectors(encoder: Any, queries: list[str]) -> np.ndarray | None:
    """One row per query (zeros for empty ones, which no shard searches); None without an encoder."""
    if encoder is None:
        return None
    out = np.zeros((len(queries), encoder.dim), dtype=np.float32)
    live = [i for i, q in enumerate(queries) if q.strip()]
    if live:
        out[live] = encoder.encode_queries([queries[i] for i in live])
    return out


def merge_replies(replies: Sequence[ShardReply], n_queries: int, k: int, cfg: RetrievalConfig) -> list[list[SearchHit]]:
    """The global top-k per query from every shard's reply (ties: the lower corpus row first).

    >>> from s3_ray.types import Passage
    >>> a, b, c = (Passage(i, i) for i in "abc")
    >>> r0 = ShardReply(0, "x", [[[(0, 2.0, a), (1, 0.5, b)]]])
    >>> r1 = ShardReply(1, "x", [[[(2, 1.0, c)]]])
    >>> [(h.passage.id, h.score) for h in merge_replies([r0, r1], 1, 2, RetrievalConfig())[0]]
    [('a', 2.0), ('c', 1.0)]
    """
    depth = search_depth(cfg, k)
    n_parts = len(replies[0].parts)
    merged: list[list[list[SearchHit]]] = []
    for p in range(n_parts):
        per_query = []
        for q in range(n_queries):
            pool: list[RowHit] = [h for r in replies for h in r.parts[p][q]]
            pool.sort(key=lambda h: (-h[1], h[0]))
            per_query.append([SearchHit(passage, score) for _, score, passage in pool[:depth]])
        merged.append(per_query)
    if cfg.backend == "hybrid":
        return [rrf_fuse([merged[p][q] for p in range(n_parts)], k, cfg.rrf_k) for q in range(n_queries)]
    return [hits[:k] for hits in merged[0]]


def same_results(a: Sequence[Sequence[SearchHit]], b: Sequence[Sequence[SearchHit]]) -> bool:
    """Whether two result lists are the same: equal scores (exactly) in the same order, and the same
    passages for every score, except that passages tied at the last score of a list may differ (which
    of several tied passages fills the last places is not defined by BM25 or faiss).

    >>> from s3_ray.types import Passage
    >>> h = lambda i, s: SearchHit(Passage(i, i), s)
    >>> same_results([[h("a", 2.0), h("b", 1.0)]], [[h("a", 2.0), h("c", 1.0)]])
    True
    >>> same_results([[h("a", 2.0), h("b", 1.0)]], [[h("c", 2.0), h("a", 1.0)]])
    False
    """
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if [h.score for h in x] != [h.score for h in y]:
            return False
        last = x[-1].score if x else None
        groups_x: dict[float, set[str]] = {}
        groups_y: dict[float, set[str]] = {}
        for hits, groups in ((x, groups_x), (y, groups_y)):
            for h in hits:
                groups.setdefault(h.score, set()).add(h.passage.id)
        if any(groups_x[s] != groups_y[s] for s in groups_x if s != last):
            return False
    return True


def check_replies(replies: Sequence[ShardReply], top: Manifest) -> None:
    """Every shard answered, as itself, from the index's corpus."""
    for i, r in enumerate(replies):
        if r.shard != i or r.corpus_sha256 != top.corpus_sha256:
            raise ShardSetError(f"shard call {i} was answered by shard {r.shard} of corpus sha256 "
                                f"{r.corpus_sha256[:12]}; the index is of corpus {top.corpus_sha256[:12]}")


def _check_call(queries: list[str], k: int) -> None:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if isinstance(queries, str) or not all(isinstance(q, str) for q in queries):
        raise TypeError("queries must be a list of strings")


class ShardedRetriever:
    """Every shard in this process (tests, small jobs); the Serve app spreads them over replicas."""

    def __init__(self, cfg: RetrievalConfig, top: Manifest, shards: list[ShardSearcher], encoder: Any) -> None:
        self.cfg, self.top, self.shards, self.encoder = cfg, top, shards, encoder

    def __len__(self) -> int:
        return self.top.n_passages

    def search(self, queries: list[str], k: int) -> list[list[SearchHit]]:
        _check_call(queries, k)
        if not queries:
            return []
        vectors = query_vectors(self.encoder, queries)
        replies = [s.search_parts(list(queries), vectors, search_depth(self.cfg, k)) for s in self.shards]
        check_replies(replies, self.top)
        return merge_replies(replies, len(queries), k, self.cfg)


ShardCall = Callable[[int, list[str], "np.ndarray | None", int], Awaitable[ShardReply]]
"""(shard, queries, query vectors, depth) -> that shard's reply, from any replica of it."""


class ShardFanout:
    """Ask every shard concurrently through `call`; retry a shard's failed call (`transient` errors,
    or no answer within `timeout_s`) up to `retry.retries` times, then fail the query naming it."""

    def __init__(self, cfg: RetrievalConfig, top: Manifest, call: ShardCall, encoder: Any, *,
                 transient: tuple[type[BaseException], ...], timeout_s: float, retry: Retry) -> None:
        self.cfg, self.top, self.call, self.encoder = cfg, top, call, encoder
        self.transient = transient
        self.timeout_s = timeout_s
        self.retry = retry
        self.failed_calls = 0

    def __len__(self) -> int:
        return self.top.n_passages

    @property
    def num_shards(self) -> int:
        return len(self.top.shards or [])

    async def _one(self, shard: int, queries: list[str], vectors: np.ndarray | None, depth: int) -> ShardReply:
        n = self.num_shards

        async def attempt() -> ShardReply:
            try:
                return await asyncio.wait_for(self.call(shard, queries, vectors, depth), self.timeout_s)
            except asyncio.TimeoutError as err:
                raise Transient(f"no answer within {self.timeout_s} s") from err
            except self.transient as err:
                raise Transient(f"{type(err).__name__}: {err}") from err

        def failed(_will_retry: bool) -> None:
            self.failed_calls += 1

        def give_up(attempts: int, err: Transient) -> ShardUnavailableError:
            return ShardUnavailableError(
                f"shard {shard} of {n} (rows {self.top.shards[shard].rows[0]}..{self.top.shards[shard].rows[1]}) "
                f"is down: {attempts} attempts failed, the last with {err.cause}. The query fails rather than "
                "return a top-k without that shard's passages")

        return await self.retry.acall(attempt, what=f"shard {shard} of {n}", give_up=give_up, log=log,
                                      on_failure=failed)

    async def search(self, queries: list[str], k: int) -> list[list[SearchHit]]:
        _check_call(queries, k)
        if not queries:
            return []
        vectors = await asyncio.to_thread(query_vectors, self.encoder, list(queries))
        depth = search_depth(self.cfg, k)
        replies = await asyncio.gather(*(self._one(i, list(queries), vectors, depth) for i in range(self.num_shards)))
        check_replies(replies, self.top)
        return merge_replies(replies, len(queries), k, self.cfg)


def load_sharded_retriever(cfg: RetrievalConfig, top: Manifest, encoder: Any = None) -> ShardedRetriever:
    """Every shard of the checked index at `cfg.index_dir` in this process."""
    from s3_ray.retrieval.shard_set import open_shard_set

    top = open_shard_set(cfg)
    enc = encoder
    if enc is None and cfg.backend in ("dense", "hybrid"):
        from s3_ray.retrieval.encoders import encoder_spec, load_encoder

        enc = load_encoder(encoder_spec(cfg), cfg.encode_batch_size, cfg.encoder_runtime)
    if enc is not None and top.dim is not None and enc.dim != top.dim:
        raise ShardSetError(f"{cfg.index_dir}: built with {top.dim}-dim embeddings, the encoder gives {enc.dim}")
    shards = [ShardSearcher.open(cfg, i) for i in range(cfg.replica_shards)]
    return ShardedRetriever(cfg, top, shards, enc)
