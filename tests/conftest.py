"""Shared fixtures. Environment variables are set before Ray starts so every worker inherits them."""

from __future__ import annotations

import os

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
