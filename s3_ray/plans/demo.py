"""The plan of `python -m jobs.demo`: index -> serve -> precompute -> train -> evaluate."""

from __future__ import annotations

from s3_ray.config import S3Config
from s3_ray.plans.entries import baseline_entry, data_entry
from s3_ray.plans.evaluate import methods_entry
from s3_ray.plans.plan import Plan
from s3_ray.plans.train import train_plan


def demo_plan(cfg: S3Config) -> Plan:
    """The training plan with the demo's own index and baselines (made by the demo, so never
    missing), its evaluation on `eval.split` with the trained searchers, and its stages."""
    plan = train_plan(cfg, name="demo", job="demo", made_here=True)
    plan.add("data", data_entry(cfg, plan, ["train", cfg.eval.split], corpus=True))
    plan.add("baseline", [baseline_entry(cfg, plan, s, required=False) for s in ("train", cfg.eval.split)])
    trained = [{"name": "s3_trained", "kind": "s3", "model": "the run's last checkpoint"}]
    if cfg.train.warmup_steps > 0:
        trained.insert(0, {"name": "s3_warmup_only", "kind": "s3", "model": "the step-0 checkpoint"})
    plan.add("evaluate", {"methods": [*methods_entry(cfg, plan, {}), *trained],
                          "report_dir": str(cfg.path("eval", cfg.eval.split))})
    plan.add("stages", ["1/5 build the index (reused when present)", "2/5 start Ray and the Serve apps",
                        f"3/5 precompute baselines (train, {cfg.eval.split})", "4/5 train the searcher",
                        "5/5 evaluate"])
    plan.sections["outputs"]["report"] = plan.output(cfg.path("report"))
    return plan
