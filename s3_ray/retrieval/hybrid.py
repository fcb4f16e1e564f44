"""Hybrid retrieval: reciprocal-rank fusion (RRF) of several retrievers, BM25 + dense by default.

RRF (Cormack et al., 2009) adds `1 / (rrf_k + rank)` over the lists a passage appears in
(rank 1 = best). It needs no score calibration between BM25 and cosine, which is why it is the
usual way to fuse sparse and dense results. `rrf_k = 60` is the paper's constant.
"""

from __future__ import annotations

from collections.abc import Sequence

from s3_ray.retrieval.base import Retriever
from s3_ray.types import SearchHit


def rrf_fuse(ranked_lists: Sequence[Sequence[SearchHit]], k: int, rrf_k: int = 60) -> list[SearchHit]:
    """Fuse ranked hit lists of one query into the top-k by RRF score (the returned `score`).

    Ties are broken by the best rank a passage reached in any list, then by passage id, so the
    result is deterministic.

    >>> from s3_ray.types import Passage
    >>> a, b, c = (Passage(i, i) for i in "abc")
    >>> fused = rrf_fuse([[SearchHit(a, 9.0), SearchHit(b, 5.0)], [SearchHit(b, 0.8), SearchHit(c, 0.7)]], 3, 60)
    >>> [(h.passage.id, round(h.score * 61 * 62, 3)) for h in fused]
    [('b', 123.0), ('a', 62.0), ('c', 61.0)]
    """
    if k < 1 or rrf_k < 1:
        raise ValueError(f"k and rrf_k must be >= 1, got k={k}, rrf_k={rrf_k}")
    score: dict[str, float] = {}
    best_rank: dict[str, int] = {}
    passage = {}
    for hits in ranked_lists:
        for rank, hit in enumerate(hits, start=1):
            pid = hit.passage.id
            score[pid] = score.get(pid, 0.0) + 1.0 / (rrf_k + rank)
            best_rank[pid] = min(best_rank.get(pid, rank), rank)
            passage.setdefault(pid, hit.passage)
    order = sorted(score, key=lambda pid: (-score[pid], best_rank[pid], pid))[:k]
    return [SearchHit(passage[pid], score[pid]) for pid in order]


class HybridRetriever:
    """Ask every retriever for `fusion_depth` hits (at least k) per query and fuse them with RRF."""

    def __init__(self, retrievers: Sequence[Retriever], rrf_k: int = 60, fusion_depth: int = 50) -> None:
        if len(retrievers) < 2:
            raise ValueError("hybrid retrieval fuses at least two retrievers")
        if rrf_k < 1 or fusion_depth < 1:
            raise ValueError(f"rrf_k and fusion_depth must be >= 1, got {rrf_k}, {fusion_depth}")
        self.retrievers = list(retrievers)
        self.rrf_k = rrf_k
        self.fusion_depth = fusion_depth

    def __len__(self) -> int:
        return len(self.retrievers[0])  # type: ignore[arg-type]

    def search(self, queries: list[str], k: int) -> list[list[SearchHit]]:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if isinstance(queries, str) or not all(isinstance(q, str) for q in queries):
            raise TypeError("queries must be a list of strings")
        depth = max(k, self.fusion_depth)
        per_retriever = [r.search(queries, depth) for r in self.retrievers]
        return [rrf_fuse([lists[i] for lists in per_retriever], k, self.rrf_k) for i in range(len(queries))]
