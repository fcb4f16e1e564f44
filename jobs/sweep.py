"""Ray Tune sweeps: search budgets of a fixed searcher, or training settings with ASHA.

    python -m jobs.sweep --config jobs/configs/demo.yaml [--resume] [--name NAME] [--dry-run] [--verbose]
                         [key=value ...]

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
The console shows a bar over the trials and one line per finished trial; Tune's status tables
and the trials' own output go to `<run_dir>/logs/`.
"""

from __future__ import annotations

import argparse

from jobs import runtime
from s3_ray.config import load_job_config
from s3_ray.console import JobConsole, shown_path
from s3_ray.plans.sweep import sweep_plan
from s3_ray.sweep.grid import default_name
from s3_ray.sweep.report import write_sweep_report
from s3_ray.sweep.run import run_sweep


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=runtime.DEFAULT_CONFIG, help="YAML config file")
    parser.add_argument("--name", default=None, help="experiment name (default: sweep, or sweep-train in train mode)")
    parser.add_argument("--resume", action="store_true",
                        help="resume the sweep of this name; fail if there is none (default: resume when it exists)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the resolved plan (JSON) and exit; loads no model, starts no Ray")
    runtime.add_verbose_flag(parser)
    parser.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. sweep.max_concurrent=2")
    args = parser.parse_args(argv)
    job = JobConsole("sweep", verbose=args.verbose)
    return job.run(lambda: _run(job, args))


def _run(job: JobConsole, args: argparse.Namespace) -> int:
    cfg = load_job_config(args.config, args.overrides)
    name = args.name or default_name(cfg)
    plan = sweep_plan(cfg, name, args.resume)
    if args.dry_run:
        return plan.emit()
    plan.require()  # the grid, the baselines of every setting, the index and the data, before Ray starts
    with job.logging_to(cfg.run_dir) as console:
        runtime.init_ray()
        runtime.deploy_services(cfg)
        retriever, generator = runtime.clients(cfg)
        rows = run_sweep(cfg, retriever, generator, name=name, resume=True if args.resume else None, log=runtime.log)
        md = write_sweep_report(rows, cfg.path(name), cfg.sweep.mode, cfg.sweep.metric)
        console.result(md.read_text())
        console.info(f"report: {shown_path(md.parent, folder=True)}")
        job.finished()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
