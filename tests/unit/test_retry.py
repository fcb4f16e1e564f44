"""The one retry loop (`s3_ray.retry`) that the clients and the OpenAI-compatible backend share."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pytest

from s3_ray import retry as retry_module
from s3_ray.retry import Retry, Transient


class GaveUp(RuntimeError):
    pass


def give_up(attempts: int, err: Transient) -> GaveUp:
    return GaveUp(f"after {attempts} attempts: {err.cause}")


def flaky(failures: list[BaseException], answer: str = "ok") -> tuple[Callable[[], str], list[int]]:
    """An attempt that raises `failures` in order, then answers; `calls[0]` counts the attempts."""
    calls = [0]

    def attempt() -> str:
        calls[0] += 1
        if failures:
            raise failures.pop(0)
        return answer

    return attempt, calls


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The delays the loop waited, without waiting."""
    seen: list[float] = []
    monkeypatch.setattr(retry_module.time, "sleep", seen.append)

    async def fake_async_sleep(delay: float) -> None:
        seen.append(delay)

    monkeypatch.setattr(retry_module.asyncio, "sleep", fake_async_sleep)
    return seen


def test_transient_failures_are_retried_with_doubling_delays_and_logged(
        sleeps: list[float], caplog: pytest.LogCaptureFixture) -> None:
    attempt, calls = flaky([Transient("HTTP 503: busy"), Transient("ConnectError: refused")])
    seen: list[bool] = []
    log = logging.getLogger("s3_ray.test_retry")
    with caplog.at_level(logging.WARNING, logger=log.name):
        assert Retry(3, 0.5).call(attempt, what="search", give_up=give_up, log=log, on_failure=seen.append) == "ok"
    assert calls[0] == 3 and sleeps == [0.5, 1.0] and seen == [True, True]
    messages = [r.getMessage() for r in caplog.records if r.name == log.name]
    assert messages == ["search attempt 1 of 4 failed: HTTP 503: busy; retrying in 0.50 s",
                        "search attempt 2 of 4 failed: ConnectError: refused; retrying in 1.00 s"]


def test_after_the_last_attempt_the_callers_error_is_raised_chained_to_the_cause(sleeps: list[float]) -> None:
    root = ConnectionError("reset by peer")
    failures: list[BaseException] = []
    for _ in range(5):
        try:
            raise Transient("ConnectionError: reset by peer") from root
        except Transient as err:
            failures.append(err)
    attempt, calls = flaky(failures)
    seen: list[bool] = []
    with pytest.raises(GaveUp, match="after 3 attempts: ConnectionError: reset by peer") as info:
        Retry(2, 0.0).call(attempt, what="x", give_up=give_up, on_failure=seen.append)
    assert calls[0] == 3 and seen == [True, True, False] and len(sleeps) == 2
    assert info.value.__cause__ is root


def test_other_errors_pass_through_at_once(sleeps: list[float]) -> None:
    attempt, calls = flaky([ValueError("k must be in 1..100")])
    seen: list[bool] = []
    with pytest.raises(ValueError, match="k must be"):
        Retry(3, 0.5).call(attempt, what="x", give_up=give_up, on_failure=seen.append)
    assert calls[0] == 1 and seen == [] and sleeps == []


def test_no_retries_means_one_attempt(sleeps: list[float]) -> None:
    attempt, calls = flaky([Transient("busy")])
    with pytest.raises(GaveUp, match="after 1 attempts: busy"):
        Retry(0, 0.5).call(attempt, what="x", give_up=give_up)
    assert calls[0] == 1 and sleeps == []


def test_backoff_is_capped_and_a_numeric_retry_after_is_honoured(sleeps: list[float]) -> None:
    attempt, _ = flaky([Transient("429", retry_after="3"), Transient("429", retry_after="Wed, 21 Oct 2015"),
                        Transient("503"), Transient("503", retry_after="60")])
    assert Retry(4, 0.5, max_backoff_s=2.0).call(attempt, what="x", give_up=give_up) == "ok"
    assert sleeps == [2.0, 1.0, 2.0, 2.0]


def test_async_attempts_take_the_same_decisions(sleeps: list[float]) -> None:
    failures: list[BaseException] = [Transient("ActorDiedError()")]
    calls = [0]

    async def attempt() -> str:
        calls[0] += 1
        if failures:
            raise failures.pop(0)
        return "ok"

    seen: list[bool] = []
    assert asyncio.run(Retry(1, 0.25).acall(attempt, what="x", give_up=give_up, on_failure=seen.append)) == "ok"
    assert calls[0] == 2 and seen == [True] and sleeps == [0.25]

    failures[:] = [Transient("down")] * 3
    with pytest.raises(GaveUp, match="after 2 attempts: down"):
        asyncio.run(Retry(1, 0.0).acall(attempt, what="x", give_up=give_up))


@pytest.mark.parametrize("kw", [{"retries": -1, "backoff_s": 0.5}, {"retries": 1, "backoff_s": -0.1},
                                {"retries": 1, "backoff_s": 0.5, "max_backoff_s": -1.0}])
def test_bad_settings_are_refused(kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must be >= 0"):
        Retry(**kw)
