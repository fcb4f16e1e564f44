"""The plan of `python -m jobs.serve`: the Serve apps with replicas and resources, and the index the retriever reads."""

from __future__ import annotations

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
