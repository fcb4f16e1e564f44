"""The one interface every retrieval backend and client satisfies."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from s3_ray.types import SearchHit


@runtime_checkable
class Retriever(Protocol):
    """Batched search: one hit list per query, best first, at most k hits each."""

    def search(self, queries: list[str], k: int) -> list[list[SearchHit]]:
        ...
