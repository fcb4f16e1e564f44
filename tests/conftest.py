"""Shared fixtures. Environment variables are set before Ray starts so every worker inherits them."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")  # default 2 s makes each report() ~2 s
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Bearer token of the auth tests; set before any Ray starts, as replicas inherit the environment.
os.environ.setdefault("S3RAY_FUZZ_TEST_TOKEN", "fuzz-" + "0123456789abcdef" * 2)

import pytest

RUNS = Path(__file__).resolve().parents[1] / "runs"
"""The checkout's run folder (`run_dir` defaults to runs/demo): tests write below tmp_path, never here."""
_RUNS_BEFORE = pytest.StashKey[set]()


def _run_entries() -> set[Path]:
    return {p for pattern in ("*", "*/*", "*/*/*") for p in RUNS.glob(pattern)}


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_RUNS_BEFORE] = _run_entries()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the session when a test left files in the checkout's runs/ (a config without run_dir)."""
    new = sorted(_run_entries() - session.config.stash.get(_RUNS_BEFORE, set()))
    if new:
        shown = ", ".join(str(p.relative_to(RUNS.parent)) for p in new[:5])
        print(f"\nERROR: tests wrote into the checkout: {shown}{' ...' if len(new) > 5 else ''} "
              "(give the config run_dir=tmp_path)")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def ray_session(tmp_path_factory):
    """One local CPU Ray cluster for the whole test session (never attaches to RAY_ADDRESS).

    With the dashboard, as the jobs start theirs: Ray Train's placement-group cleaner asks the
    State API it serves whether a run's controller is alive (without it, the cleaner fails every
    second and outlives the run).
    """
    import ray

    os.environ.setdefault("WANDB_DIR", str(tmp_path_factory.mktemp("wandb")))
    ctx = ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=True,
        object_store_memory=256 * 1024**2,
        log_to_driver=False,
    )
    yield ctx
    ray.shutdown()


@pytest.fixture
def serve_instance(ray_session):
    """Ray Serve for one test; shut down afterwards so Train/Tune tests get the CPUs back."""
    from ray import serve

    yield serve
    serve.shutdown()
