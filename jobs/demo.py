"""The whole s3 loop on the embedded default: index -> serve -> precompute -> train -> evaluate.

    python -m jobs.demo [--config jobs/configs/demo.yaml] [--dry-run] [--verbose] [key=value ...]

Writes everything below `run_dir` (default runs/demo): the index, the naive-RAG baselines, the
Ray Train run and its checkpoints, training curves and the evaluation report
(`runs/demo/report/results.md`, `results.json`, `accuracy.png`, `training.png`), and the logs of
Ray, Serve, Train and the models in `runs/demo/logs/`. Re-running reuses what is already done
(index, baselines, cached generator answers, finished evaluations).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from jobs import runtime
from s3_ray.config import load_job_config
from s3_ray.console import JobConsole, shown_path
from s3_ray.pipeline.demo import run_demo
from s3_ray.plans.demo import demo_plan


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=runtime.DEFAULT_CONFIG,
                        help="YAML config file (default: the embedded CPU demo)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the resolved plan (JSON) and exit; loads no model, starts no Ray")
    runtime.add_verbose_flag(parser)
    parser.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. train.steps=2")
    args = parser.parse_args(argv)
    job = JobConsole("demo", verbose=args.verbose)
    return job.run(lambda: _run(job, args))


def _run(job: JobConsole, args: argparse.Namespace) -> int:
    cfg = load_job_config(args.config, args.overrides)
    plan = demo_plan(cfg)
    if args.dry_run:
        return plan.emit()
    plan.require()  # data files and models checked before Ray starts
    with job.logging_to(cfg.run_dir) as console:
        md = Path(run_demo(cfg, runtime.start_services, console=console)["report"])
        console.result(md.read_text())
        console.info(f"report: {shown_path(md.parent, folder=True)} (results.md, results.json, accuracy.png, training.png)")
        job.finished()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
