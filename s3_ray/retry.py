"""The one retry loop of the remote calls (retriever and generator clients, the OpenAI-compatible
backend): attempts, exponential backoff, giving up.

An attempt that may succeed if repeated raises `Transient`; anything else it raises passes
through at once. Every transient failure is reported to `on_failure`; each retry is logged as a
warning on the caller's logger; after the last attempt the caller's `give_up` builds the error
that is raised, chained to the transient failure's own cause. The loop runs the same for
synchronous (`call`) and asynchronous (`acall`) attempts: both take every decision in `_failed`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


class Transient(Exception):
    """One attempt failed in a way another attempt may not. `retry_after` is a server's Retry-After
    header, if it sent one (honoured when it is a number of seconds)."""

    def __init__(self, cause: str, retry_after: str | None = None) -> None:
        super().__init__(cause)
        self.cause = cause
        self.retry_after = retry_after


GiveUp = Callable[[int, Transient], BaseException]
"""(attempts made, the last transient failure) -> the error to raise."""


@dataclass(frozen=True)
class Retry:
    """Up to `retries` more attempts after the first, waiting `backoff_s * 2**attempt` (capped at
    `max_backoff_s`) before each."""

    retries: int
    backoff_s: float
    max_backoff_s: float = math.inf

    def __post_init__(self) -> None:
        if self.retries < 0 or self.backoff_s < 0 or self.max_backoff_s < 0:
            raise ValueError(f"retries, backoff_s and max_backoff_s must be >= 0, got {self.retries}, "
                             f"{self.backoff_s} and {self.max_backoff_s}")

    @property
    def attempts(self) -> int:
        return self.retries + 1

    def delay(self, attempt: int, retry_after: str | None = None) -> float:
        """Seconds to wait before retry `attempt` (0-based): base * 2**attempt, capped; a numeric
        Retry-After wins when it asks for longer (still capped).

        >>> [Retry(4, 0.5, 4.0).delay(a) for a in range(5)]
        [0.5, 1.0, 2.0, 4.0, 4.0]
        >>> Retry(1, 0.5, 4.0).delay(0, retry_after="3"), Retry(1, 0.5, 4.0).delay(0, retry_after="soon")
        (3.0, 0.5)
        """
        delay = min(self.max_backoff_s, self.backoff_s * 2**attempt)
        if retry_after is not None and retry_after.strip().replace(".", "", 1).isdigit():  # not an HTTP date
            delay = max(delay, min(self.max_backoff_s, float(retry_after)))
        return delay

    def call(self, attempt: Callable[[], T], *, what: str, give_up: GiveUp, log: logging.Logger | None = None,
             on_failure: Callable[[bool], None] | None = None) -> T:
        """`attempt()` until it returns, retrying `Transient` failures. `on_failure(will_retry)` sees
        every transient failure; `what` names the call in the retry warnings."""
        for n in range(self.attempts):
            try:
                return attempt()
            except Transient as err:
                time.sleep(self._failed(n, err, what, give_up, log, on_failure))
        raise AssertionError("unreachable")

    async def acall(self, attempt: Callable[[], Awaitable[T]], *, what: str, give_up: GiveUp,
                    log: logging.Logger | None = None, on_failure: Callable[[bool], None] | None = None) -> T:
        """`call` for a coroutine: the event loop is never blocked while waiting."""
        for n in range(self.attempts):
            try:
                return await attempt()
            except Transient as err:
                await asyncio.sleep(self._failed(n, err, what, give_up, log, on_failure))
        raise AssertionError("unreachable")

    def _failed(self, n: int, err: Transient, what: str, give_up: GiveUp, log: logging.Logger | None,
                on_failure: Callable[[bool], None] | None) -> float:
        """After transient failure `n` (0-based): raise the caller's error if that was the last
        attempt, else log the retry and return how long to wait."""
        will_retry = n < self.retries
        if on_failure is not None:
            on_failure(will_retry)
        if not will_retry:
            raise give_up(n + 1, err) from err.__cause__
        delay = self.delay(n, err.retry_after)
        if log is not None:
            log.warning("%s attempt %d of %d failed: %s; retrying in %.2f s", what, n + 1, self.attempts,
                        err.cause, delay)
        return delay
