"""The whole s3 loop on the embedded default: index -> serve -> precompute -> train -> evaluate.

    python -m jobs.demo [--config jobs/configs/demo.yaml] [--dry-run] [key=value ...]

Writes everything below `run_dir` (default runs/demo): the index, the naive-RAG baselines, the
Ray Train run and its checkpoints, training curves and the evaluation report
(`runs/demo/report/results.md`, `results.json`, `accuracy.png`, `training.png`). Re-running
reuses what is already done (index, baselines, cached generator answers, finished evaluations).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from jobs import runtime
from s3_ray.config import load_job_config
from s3_ray.pipeline.demo import run_demo
from s3_ray.plans.demo import demo_plan


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=runtime.DEFAULT_CONFIG,
                        help="YAML config file (default: the embedded CPU demo)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the resolved plan (JSON) and exit; loads no model, starts no Ray")
    parser.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. train.steps=2")
    args = parser.parse_args(argv)
    cfg = load_job_config(args.config, args.overrides)
    if args.dry_run:
        return demo_plan(cfg).emit()
    md = Path(run_demo(cfg, runtime.start_services, log=runtime.log)["report"])
    print(md.read_text())
    print(f"report: {md.parent.resolve()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
