"""The plan of `python -m jobs.sweep`: trials and their resources, the services and data they use,
and where Tune keeps its state."""

from __future__ import annotations

from s3_ray.config import ConfigError, S3Config
from s3_ray.plans.entries import (
    baseline_entry,
    budgets,
    data_entry,
    index_entry,
    model_entry,
    serve_entry,
    training_entry,
)
from s3_ray.plans.plan import Plan
from s3_ray.sweep.grid import check_sweep, experiment_dir, trial_resources


def sweep_plan(cfg: S3Config, name: str, resume: bool) -> Plan:
    """The sweep `name` as configured; `resume` (the `--resume` flag) needs one to resume."""
    plan = Plan("sweep", cfg)
    try:
        configs = check_sweep(cfg)
    except ConfigError as err:
        plan.problems.append(str(err))
        configs = []
    s = cfg.sweep
    res = trial_resources(cfg)
    plan.add("sweep", {"mode": s.mode, "scheduler": s.scheduler, "metric": f"{s.metric_mode} {s.metric}",
                       "param_space": s.param_space, "trials": len(configs) * s.num_samples,
                       "num_samples": s.num_samples, "max_concurrent": s.max_concurrent, "trial_resources": res,
                       "peak_cpus": res["cpu"] * min(s.max_concurrent, max(len(configs) * s.num_samples, 1))})
    if s.scheduler == "asha" and configs:
        plan.sections["sweep"]["asha"] = {"time_attr": "training_iteration",
                                          "max_t": max(c.train.steps for c in configs),
                                          "grace_period": s.asha_grace_period,
                                          "reduction_factor": s.asha_reduction_factor}
    plan.add("searcher", model_entry(cfg.searcher.model, "searcher.model", plan))
    plan.add("budgets", budgets(cfg))
    plan.add("serve", serve_entry(cfg, plan))
    plan.add("index", index_entry(cfg, plan))
    if s.mode == "train":
        plan.add("training", training_entry(cfg))
        plan.add("data", data_entry(cfg, plan, ["train"]))
        plan.add("baselines", [baseline_entry(c, plan, "train", required=True) for c in
                               {c.model_dump_json(include={"rollout", "retrieval", "generator", "reward", "run_dir"}): c
                                for c in configs}.values()])
    else:
        plan.add("data", data_entry(cfg, plan, [cfg.eval.split]))
    exp = experiment_dir(cfg, name)
    restorable = any(exp.glob("experiment_state*.json"))
    if resume and not restorable:
        plan.problems.append(f"--resume: no sweep to resume at {exp}")
    plan.add("outputs", {"experiment": {**plan.output(exp), "resumes": restorable},
                         "report": plan.output(cfg.path(name))})
    return plan
