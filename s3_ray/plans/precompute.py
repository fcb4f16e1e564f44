"""The plan of `python -m jobs.precompute`: data, index, generator (or Serve apps) and the baseline file it fills."""

from __future__ import annotations

from s3_ray.config import S3Config
from s3_ray.plans.entries import baseline_entry, data_entry, generator_entry, index_entry, serve_entry
from s3_ray.plans.plan import Plan


def precompute_plan(cfg: S3Config, split: str, serve: bool, shards: int = 1) -> Plan:
    """In-process models, or the Serve apps (`serve`); `shards` Ray tasks when > 1."""
    plan = Plan("precompute", cfg)
    plan.add("split", split)
    plan.add("init_k", cfg.rollout.init_k)
    plan.add("shards", shards)
    if serve:
        plan.add("serve", serve_entry(cfg, plan))
    else:
        plan.add("in_process", {"retriever": cfg.retrieval.backend, "generator": generator_entry(cfg, plan)})
    plan.add("index", index_entry(cfg, plan))
    plan.add("data", data_entry(cfg, plan, [split]))
    plan.add("baseline", baseline_entry(cfg, plan, split, required=False))
    return plan
