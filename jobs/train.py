"""Train the searcher with RL on Ray Train.

    python -m jobs.train --config jobs/configs/demo.yaml [--verbose] [key=value ...]
    ray job submit --working-dir . -- python -m jobs.train --config jobs/configs/demo.yaml

Needs the naive-RAG baseline of the training split (`python -m jobs.precompute --split train`);
a missing baseline is an error before Ray starts, never a silent fallback. Re-running with the
same run_dir resumes from the last checkpoint. While it trains it prints one line per RL step
(reward, groups with a reward signal, KL, malformed-turn rate, seconds); at the end the latest
and the best (highest-reward) checkpoint, why training stopped, and it draws
`<run_dir>/train/curves.png`. Ray's and the workers' own output goes to `<run_dir>/logs/`.
"""

from __future__ import annotations

import argparse
import json

from jobs import runtime
from s3_ray.config import load_job_config
from s3_ray.console import JobConsole


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=runtime.DEFAULT_CONFIG, help="YAML config file")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the resolved plan (JSON) and exit; loads no model, starts no Ray")
    runtime.add_verbose_flag(parser)
    parser.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. train.steps=10")
    args = parser.parse_args(argv)
    job = JobConsole("train", verbose=args.verbose)
    return job.run(lambda: _run(job, args))


def _run(job: JobConsole, args: argparse.Namespace) -> int:
    from s3_ray.plans.train import train_plan

    cfg = load_job_config(args.config, args.overrides)
    plan = train_plan(cfg)
    if args.dry_run:
        return plan.emit()
    plan.require()  # the baseline, the index, the data and the models, before Ray starts

    from s3_ray.console.training import follow_training
    from s3_ray.reward.fingerprint import open_baseline
    from s3_ray.reward.gain import RewardScorer
    from s3_ray.rl.ray_train.launch import run_training, summarize, training_items

    with job.logging_to(cfg.run_dir) as console:
        baseline = open_baseline(cfg, "train")
        items, dropped = training_items(cfg, baseline)
        runtime.init_ray()
        runtime.deploy_services(cfg)
        retriever, generator = runtime.clients(cfg)
        console.info(f"training on {len(items)} questions ({dropped} dropped by the naive-RAG filter)")
        with follow_training(console, cfg.path("train", "metrics.jsonl"), cfg.train):
            result = run_training(cfg, items, retriever, RewardScorer(generator, baseline, cfg.reward),
                                  log=runtime.log)
        summary = summarize(cfg, result)
        console.info(f"stop reason: {summary['stop_reason']}")
        console.info(f"best checkpoint (reward {summary['best_reward']}): {summary['best_checkpoint']}")
        console.result(json.dumps(summary, indent=2, default=str))
        if result.error is not None:
            raise result.error
        job.finished()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
