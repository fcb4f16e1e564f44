"""Train the searcher with RL on Ray Train.

    python -m jobs.train --config jobs/configs/demo.yaml [key=value ...]
    ray job submit --working-dir . -- python -m jobs.train --config jobs/configs/demo.yaml

Needs the naive-RAG baseline of the training split (`python -m jobs.precompute --split train`);
a missing baseline is an error, never a silent fallback. Re-running with the same run_dir resumes
from the last checkpoint. At the end it prints the latest and the best (highest-reward)
checkpoint, why training stopped, and draws `<run_dir>/train/curves.png`.
"""

from __future__ import annotations

import argparse
import json

from jobs import runtime
from s3_ray.config import load_job_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=runtime.DEFAULT_CONFIG, help="YAML config file")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the resolved plan (JSON) and exit; loads no model, starts no Ray")
    parser.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. train.steps=10")
    args = parser.parse_args(argv)
    cfg = load_job_config(args.config, args.overrides)
    if args.dry_run:
        from s3_ray.plans.train import train_dry_run

        return train_dry_run(cfg)

    from s3_ray.reward.fingerprint import open_baseline
    from s3_ray.reward.gain import RewardScorer
    from s3_ray.rl.launch import run_training, summarize, training_items

    runtime.init_ray()
    runtime.deploy_services(cfg)
    retriever, generator = runtime.clients(cfg)
    baseline = open_baseline(cfg, "train")
    items, dropped = training_items(cfg, baseline)
    runtime.log(f"training on {len(items)} questions ({dropped} dropped by the naive-RAG filter)")
    result = run_training(cfg, items, retriever, RewardScorer(generator, baseline, cfg.reward))
    summary = summarize(cfg, result)
    runtime.log(f"stop reason: {summary['stop_reason']}")
    runtime.log(f"best checkpoint (reward {summary['best_reward']}): {summary['best_checkpoint']}")
    print(json.dumps(summary, indent=2, default=str))
    return 0 if result.error is None else 1


if __name__ == "__main__":
    raise SystemExit(main())
