"""The plan of `python -m jobs.serve`: the Serve apps with replicas and resources, and the index the retriever reads."""

from __future__ import annotations

import os

from s3_ray.config import S3Config
from s3_ray.plans.entries import index_entry, serve_entry
from s3_ray.plans.memory import add_memory_plan
from s3_ray.plans.plan import Plan


def serve_plan(cfg: S3Config, generator: bool, copilot: str | None) -> Plan:
    """`copilot`: None for no copilot app, "" for one with `searcher.model`, else its checkpoint."""
    plan = Plan("serve", cfg)
    plan.add("serve", serve_entry(cfg, plan, generator=generator, copilot=copilot))
    plan.add("index", index_entry(cfg, plan))
    add_memory_plan(plan, cfg, generator=generator)
    return plan


def whole_machine(cfg: S3Config, generator: bool, copilot: str | None, cores: int | None = None) -> S3Config:
    """`cfg` for `s3-ray serve` starting its own Ray on this machine (`cores` logical CPUs, as
    `jobs.runtime.init_ray` gives it): an unset `serve.retriever_cpus` becomes the cores the other
    apps it starts do not reserve, split over the retriever's replicas (and shard replicas), so the
    retriever's torch and faiss run on every free core rather than on one thread.

    >>> from s3_ray.config import load_config
    >>> whole_machine(load_config(None, []), generator=False, copilot=None, cores=2).serve.retriever_cpus
    2.0
    >>> whole_machine(load_config(None, []), generator=True, copilot=None, cores=2).serve.retriever_cpus
    1.5
    >>> whole_machine(load_config(None, ["serve.retriever_cpus=0.5"]), False, None, cores=2).serve.retriever_cpus
    0.5
    """
    from s3_ray.config.runtime import DEFAULT_RETRIEVER_CPUS
    from s3_ray.serving.threads import local_serve_cpus

    s = cfg.serve
    if s.retriever_cpus is not None:
        return cfg
    others = (s.generator_replicas * s.replica_cpus("generator") if generator else 0.0) \
        + (s.copilot_replicas * s.replica_cpus("copilot") if copilot is not None else 0.0)
    shards = cfg.retrieval.replica_shards
    deployments = s.retriever_replicas * (1 + shards if shards > 1 else 1)
    free = local_serve_cpus(cores or os.cpu_count() or 1, others, DEFAULT_RETRIEVER_CPUS * deployments)
    cpus = max(DEFAULT_RETRIEVER_CPUS, round(free / deployments, 3))
    return cfg.model_copy(update={"serve": s.model_copy(update={"retriever_cpus": cpus})})
