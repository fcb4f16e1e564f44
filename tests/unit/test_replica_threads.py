"""A retriever replica's torch/faiss threads follow the CPUs it reserves, and the serve plan shows them."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from s3_ray.config import ServeConfig, load_config
from s3_ray.plans.serve import serve_plan, whole_machine
from s3_ray.serving.threads import replica_threads


def test_threads_follow_reserved_cpus() -> None:
    assert replica_threads(0.25, None, cores=2) == 1  # a fraction of a core: one thread, chosen here
    assert replica_threads(1.5, None, cores=8) == 2
    assert replica_threads(2.0, None, cores=2) == 2
    assert replica_threads(16.0, None, cores=2) == 2  # never more than the cores it may run on
    assert replica_threads(0.25, 4, cores=8) == 4  # serve.retriever_threads wins


def test_replica_sets_torch_and_faiss_threads_despite_ray_omp_1() -> None:
    """Ray starts a 0.25-CPU replica with OMP_NUM_THREADS=1; the replica's setting overrides it."""
    code = textwrap.dedent("""
        import faiss, torch
        from s3_ray.config import ServeConfig
        from deployments.retriever import set_serve_threads
        n = set_serve_threads(ServeConfig(retriever_cpus=2.0))
        print(n, torch.get_num_threads(), faiss.omp_get_max_threads())
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    expected = min(2, len(os.sched_getaffinity(0)))
    assert out.stdout.split() == [str(expected)] * 3


def test_serve_plan_shows_threads_and_local_serve_takes_free_cores() -> None:
    cfg = load_config(None, [])
    assert cfg.serve.retriever_cpus is None and ServeConfig().replica_cpus("retriever") == 0.25

    alone = serve_plan(whole_machine(cfg, generator=False, copilot=None, cores=2), False, None).sections["serve"]
    assert alone["apps"][0]["cpus_per_replica"] == 2.0 and alone["apps"][0]["threads_per_replica"] == 2

    with_gen = serve_plan(whole_machine(cfg, generator=True, copilot=None, cores=2), True, None).sections["serve"]
    assert with_gen["apps"][0]["cpus_per_replica"] == 1.5 and with_gen["apps"][0]["threads_per_replica"] == 2
    assert with_gen["total_cpus"] == 2.0

    set_by_user = load_config(None, ["serve.retriever_cpus=0.25", "serve.retriever_threads=3"])
    entry = serve_plan(whole_machine(set_by_user, False, None, cores=2), False, None).sections["serve"]["apps"][0]
    assert entry["cpus_per_replica"] == 0.25 and entry["threads_per_replica"] == 3

    # a job that is not a whole-machine serve (training beside it) keeps the small default
    assert serve_plan(cfg, False, None).sections["serve"]["apps"][0]["threads_per_replica"] == 1
