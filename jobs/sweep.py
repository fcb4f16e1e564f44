"""Ray Tune sweeps: search budgets of a fixed searcher, or training settings with ASHA.

    python -m jobs.sweep --config jobs/configs/demo.yaml [--resume] [--name NAME] [--dry-run] [key=value ...]

The grid is `sweep.param_space` (dotted config keys -> values), repeated `sweep.num_samples` times
(each repeat with its own seed), at most `sweep.max_concurrent` trials at once.

* `sweep.mode: inference` (default: rollout.top_k x rollout.max_turns): each trial runs the
  searcher (`searcher.model`, greedy) on the `eval.split` questions, answers with the frozen
  generator app and reports GenAcc and context size. Report: results.md + pareto.png.
* `sweep.mode: train` (e.g. train.lr, train.kl_coef, train.group_size, train.lora_rank): each
  trial runs `train.steps` RL steps in its own process and reports every step;
  `sweep.scheduler: asha` stops weak trials at the rungs (`asha_grace_period`,
  `asha_reduction_factor`). Needs the `train` baseline (`python -m jobs.precompute`) for every
  trial's retrieval settings. Report: last/best `sweep.metric` per trial, whether ASHA stopped
  it, and curves.png.

Tune state lives in <run_dir>/ray/<name>; rerunning with the same name resumes it (finished trials
are kept, errored and unfinished ones run again from the start), and so does `--resume`, which
fails when there is nothing to resume. A resumed sweep must have the same config (Tune keeps the
stored one, `sweep.max_concurrent` included); start another with `--name`. Results: <run_dir>/<name>/.
"""

from __future__ import annotations

import argparse
from typing import Any

from jobs import runtime
from s3_ray.config import ConfigError, S3Config, load_job_config
from s3_ray.sweep.grid import check_sweep, default_name, experiment_dir, trial_resources
from s3_ray.sweep.report import write_sweep_report
from s3_ray.sweep.run import run_sweep


def sweep_plan(cfg: S3Config, name: str, resume: bool) -> Any:
    """The dry run's plan: trials, their resources, the services and data they use, where state goes."""
    from jobs.plan import (
        Plan,
        baseline_entry,
        budgets,
        data_entry,
        index_entry,
        model_entry,
        serve_entry,
        training_entry,
    )

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=runtime.DEFAULT_CONFIG, help="YAML config file")
    parser.add_argument("--name", default=None, help="experiment name (default: sweep, or sweep-train in train mode)")
    parser.add_argument("--resume", action="store_true",
                        help="resume the sweep of this name; fail if there is none (default: resume when it exists)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the resolved plan (JSON) and exit; loads no model, starts no Ray")
    parser.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. sweep.max_concurrent=2")
    args = parser.parse_args(argv)
    cfg = load_job_config(args.config, args.overrides)
    name = args.name or default_name(cfg)
    if args.dry_run:
        return sweep_plan(cfg, name, args.resume).emit()

    runtime.init_ray()
    runtime.deploy_services(cfg)
    retriever, generator = runtime.clients(cfg)
    rows = run_sweep(cfg, retriever, generator, name=name, resume=True if args.resume else None, log=runtime.log)
    md = write_sweep_report(rows, cfg.path(name), cfg.sweep.mode, cfg.sweep.metric)
    print(md.read_text())
    print(f"report: {md.parent}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
