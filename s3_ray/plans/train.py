"""The plan of `python -m jobs.train`: searcher, RL settings, train workers, Serve apps, data and outputs."""

from __future__ import annotations

from s3_ray.config import S3Config
from s3_ray.plans.entries import (
    baseline_entry,
    budgets,
    data_entry,
    index_entry,
    model_entry,
    serve_entry,
    train_workers,
    training_entry,
)
from s3_ray.models.vllm_transfer import describe, plan_problem
from s3_ray.plans.memory import add_memory_plan
from s3_ray.plans.plan import Plan


def train_plan(cfg: S3Config, name: str = "train", job: str = "train", made_here: bool = False) -> Plan:
    """What `python -m jobs.train` would do with `cfg` (`made_here`: the index and baseline are
    produced by the same job, as in the demo, so their absence is not missing input)."""
    plan = Plan(job, cfg)
    plan.add("searcher", model_entry(cfg.searcher.model, "searcher.model", plan))
    plan.add("training", training_entry(cfg))
    plan.add("budgets", budgets(cfg))
    workers = plan.add("train_workers", train_workers(cfg))
    s = cfg.searcher
    plan.add("weight_transfer", {"requested": s.vllm_weight_transfer,
                                 "path": describe(s.vllm_weight_transfer, s.backend, workers["gpus_per_worker"])})
    problem = plan_problem(s.vllm_weight_transfer, s.backend, workers["gpus_per_worker"])
    if problem is not None:
        plan.problems.append(problem)
    plan.add("serve", serve_entry(cfg, plan))
    plan.add("index", index_entry(cfg, plan, required=not made_here))
    plan.add("data", data_entry(cfg, plan, ["train"], corpus=made_here))
    plan.add("baseline", baseline_entry(cfg, plan, "train", required=not made_here))
    add_memory_plan(plan, cfg, train=True)
    plan.add("outputs", {"ray_run": plan.output(cfg.path("ray", name)),
                         "checkpoints": f"{cfg.train.storage_path}/{name}" if cfg.train.storage_path
                         else str(cfg.path("ray", name)),
                         "metrics": plan.output(cfg.path("train", "metrics.jsonl")),
                         "curves": plan.output(cfg.path("train", "curves.png")),
                         "warmup_reference": plan.output(cfg.path("ray", name, "warmup_reference"))})
    return plan
