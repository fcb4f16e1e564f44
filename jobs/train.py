"""Train the searcher with RL on Ray Train.

    python -m jobs.train --config jobs/configs/demo.yaml [key=value ...]
    ray job submit --working-dir . -- python -m jobs.train --config jobs/configs/demo.yaml

Needs the naive-RAG baseline of the training split (`python -m jobs.precompute --split train`);
a missing baseline is an error, never a silent fallback. Re-running with the same run_dir resumes
from the last checkpoint.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from jobs import runtime
from s3_ray.config import S3Config, load_job_config
from s3_ray.types import QAItem


def run_training(cfg: S3Config, items: list[QAItem], retriever: Any, scorer: Any,
                 name: str = "train", fail_at_step: int | None = None, max_failures: int = 2) -> Any:
    """Fit a TorchTrainer; returns the Ray Train Result (its checkpoint is the trained searcher)."""
    cfg = cfg.absolute()  # workers run in other directories
    import torch
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from s3_ray.rl.worker import train_loop_per_worker

    loop_config = {
        "cfg": cfg.model_dump(),
        "items": [q.to_dict() for q in items],
        "retriever": retriever,
        "scorer": scorer,
        "run_name": name,
        "fail_at_step": fail_at_step,
        # the warmed-up policy, kept beside the run's checkpoints so a resumed run finds its KL reference
        "reference_dir": str(Path(cfg.run_dir, "ray", name, "warmup_reference").resolve()),
    }
    use_gpu = torch.cuda.is_available()
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=cfg.train.num_workers,
            use_gpu=use_gpu,
            resources_per_worker={"CPU": cfg.train.cpus_per_worker, **({"GPU": 1} if use_gpu else {})},
        ),
        run_config=RunConfig(
            name=name,
            storage_path=str(Path(cfg.run_dir, "ray").resolve()),
            failure_config=FailureConfig(max_failures=max_failures),
        ),
    )
    return trainer.fit()


def training_items(cfg: S3Config, baseline: Any) -> tuple[list[QAItem], int]:
    """The training split after s3's filter (drop what naive RAG already answers)."""
    from s3_ray.data.embedded import load_split
    from s3_ray.reward.baseline import filter_unanswered

    return filter_unanswered(load_split(cfg.data, "train"), baseline)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=runtime.DEFAULT_CONFIG, help="YAML config file")
    parser.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. train.steps=10")
    args = parser.parse_args(argv)
    cfg = load_job_config(args.config, args.overrides)

    from s3_ray.reward.baseline import open_baseline
    from s3_ray.reward.gain import RewardScorer

    runtime.init_ray()
    runtime.deploy_services(cfg)
    retriever, generator = runtime.clients(cfg)
    baseline = open_baseline(cfg, "train")
    items, dropped = training_items(cfg, baseline)
    runtime.log(f"training on {len(items)} questions ({dropped} dropped by the naive-RAG filter)")
    result = run_training(cfg, items, retriever, RewardScorer(generator, baseline, cfg.reward))
    summary = {"checkpoint": result.checkpoint.path if result.checkpoint else None, "metrics": result.metrics}
    print(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
