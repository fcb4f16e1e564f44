"""Request merging the apps share: a batch method that also runs alone, and its counters.

A server class writes its batch body once and marks it `@merged`: the body takes one list per
argument (one entry per caller) and returns one result per caller. Called with one caller's
arguments, as the handlers and handle methods call it, it runs as a batch of one. In a Serve
replica, `s3_ray.serving.deployment` replaces it with `serve.batch` over the same body, which
merges callers that arrive together into one call; the calling code does not change.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence, Sized
from typing import Any, TypeVar

R = TypeVar("R")
BatchBody = Callable[..., Awaitable[list[Any]]]
_BODY_ATTR = "__s3ray_merged_body__"


def merged(body: BatchBody) -> Callable[..., Awaitable[Any]]:
    """Mark an async batch method; the returned method takes one caller's arguments.

    >>> import asyncio
    >>> class Doubler:
    ...     @merged
    ...     async def double(self, xs: list[int]) -> list[int]:
    ...         return [2 * x for x in xs]
    >>> asyncio.run(Doubler().double(21))
    42
    """

    @functools.wraps(body)
    async def alone(self: Any, *args: Any) -> Any:
        out = await body(self, *([a] for a in args))
        if len(out) != 1:
            raise RuntimeError(f"{body.__qualname__} returned {len(out)} results for a batch of 1")
        return out[0]

    setattr(alone, _BODY_ATTR, body)
    return alone


def merged_bodies(cls: type) -> dict[str, BatchBody]:
    """Method name -> batch body of every `@merged` method of `cls`."""
    found: dict[str, BatchBody] = {}
    for klass in reversed(cls.__mro__):
        for name, attr in vars(klass).items():
            body = getattr(attr, _BODY_ATTR, None)
            if body is not None:
                found[name] = body
    return found


def split_merged(flat: Sequence[R], groups: Sequence[Sized]) -> list[list[R]]:
    """Cut the results of one merged call back into the callers' groups.

    >>> split_merged(["a", "b", "c"], [["q1", "q2"], [], ["q3"]])
    [['a', 'b'], [], ['c']]
    """
    if len(flat) != sum(len(g) for g in groups):
        raise RuntimeError(f"merged call returned {len(flat)} results for {sum(len(g) for g in groups)} inputs")
    out: list[list[R]] = []
    pos = 0
    for g in groups:
        out.append(list(flat[pos:pos + len(g)]))
        pos += len(g)
    return out


class BatchStats:
    """How many caller requests each merged call took.

    >>> stats = BatchStats()
    >>> stats.record(3); stats.record(1); stats.record(3)
    >>> stats.as_dict()
    {'requests_per_batch': {3: 2, 1: 1}, 'max_requests_per_batch': 3}
    """

    def __init__(self) -> None:
        self._sizes: Counter[int] = Counter()  # requests per merged call -> how often

    def record(self, requests: int) -> None:
        self._sizes[requests] += 1

    def as_dict(self) -> dict[str, Any]:
        return {"requests_per_batch": dict(self._sizes), "max_requests_per_batch": max(self._sizes, default=0)}
