"""What the real-engine tests share: the model they run on, and starting an engine under a deadline."""

from __future__ import annotations

import importlib.util
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import pytest

T = TypeVar("T")

MODEL = "smollm2-135m-instruct"
"""The embedded default model: head_dim 64 (the CPU attention kernels need >= 32; tiny-random has 16)."""

ENGINE_START_S = 420
"""Deadline of one engine start (~40-60 s eager on 2 busy cores, plus the model's one-off conversion)."""


REQUIRE_ENV = "S3RAY_REQUIRE_VLLM"
"""Set to 1 (as `.ci/run` does) to make a missing vLLM fail these tests instead of skipping them."""


def skip_without_vllm() -> None:
    """Skip the calling test module unless vLLM is installed (fail instead when `S3RAY_REQUIRE_VLLM=1`).
    Checked without importing: with `tests/` on sys.path this very folder is found as a namespace
    package `vllm` (no origin) wherever the real one is missing."""
    spec = importlib.util.find_spec("vllm")
    if spec is None or spec.origin is None:
        reason = "needs vLLM: build .venv-vllm with scripts/setup_vllm_cpu.sh"
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{REQUIRE_ENV}=1 but vLLM is not importable here ({reason})", pytrace=False)
        pytest.skip(reason, allow_module_level=True)


@contextmanager
def deadline(seconds: int, what: str) -> Iterator[None]:
    """Raise TimeoutError in the main thread if the block takes longer than `seconds`."""

    def on_alarm(signum: int, frame: Any) -> None:
        raise TimeoutError(f"{what} did not finish within {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def start_or_fail(build: Callable[[], T], what: str) -> T:
    """`build()` under `ENGINE_START_S`; a failure or a hang fails the tests that need it, with the reason."""
    t0 = time.perf_counter()
    try:
        with deadline(ENGINE_START_S, what):
            built = build()
    except Exception as err:  # noqa: BLE001 - any start failure is reported the same way
        pytest.fail(f"{what} could not start: {type(err).__name__}: {err}\n"
                    "(the environment comes from scripts/setup_vllm_cpu.sh; run the tests with "
                    ".venv-vllm/bin/python -m pytest tests/vllm)", pytrace=False)
    print(f"\n{what} started in {time.perf_counter() - t0:.1f} s")
    return built
