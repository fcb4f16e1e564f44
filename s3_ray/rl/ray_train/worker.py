"""The Ray Train per-worker loop (`TorchTrainer(train_loop_per_worker, ...)`): wiring only.

Each worker loads the searcher on its own device (`SearcherPolicy`), builds the step
(`SearcherTrainer`) over its share of the questions, and runs the one training loop (`fit`)
with Ray Train's reporting: metrics every step, a checkpoint every `checkpoint_every` steps
(rank 0 writes it), the checkpoint Ray Train hands back after a failure to resume from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from s3_ray.config import S3Config
from s3_ray.rl.model.checkpoint_score import CHECKPOINT_SCORE, checkpoint_score
from s3_ray.types import QAItem


def _device() -> Any:
    """This worker's device: its own GPU (Ray Train shares CUDA_VISIBLE_DEVICES among a node's
    workers, so "cuda" alone would put every worker on the first one), else the CPU."""
    import ray.train.torch
    import torch

    if not torch.cuda.is_available():
        return torch.device("cpu")
    device = ray.train.torch.get_device()
    torch.cuda.set_device(device)
    return device


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    import ray.train
    import torch

    from s3_ray.rl.loop.fit import FitHooks, fit
    from s3_ray.rl.model.policy import SearcherPolicy
    from s3_ray.rl.loop.trainer import SearcherTrainer
    from s3_ray.tracking import MetricsLogger

    cfg = S3Config.model_validate(loop_config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(cfg.seed + rank)

    ckpt = ray.train.get_checkpoint()
    ref_dir = loop_config.get("reference_dir")
    # A resumed warm-up run starts from the warmed-up weights (its KL reference / LoRA base).
    base_name = cfg.searcher.model
    if ckpt is not None and cfg.train.warmup_steps > 0:
        if not ref_dir or not (Path(ref_dir) / "config.json").is_file():
            raise RuntimeError(f"resuming a warm-up run needs its warmed-up base at {ref_dir!r}, which is missing")
        base_name = ref_dir
    policy = SearcherPolicy.load(cfg, base_name, device=_device(), world=world, rank=rank)
    items = [QAItem(id=d["id"], question=d["question"], golden_answers=tuple(d["golden_answers"]),
                    meta=d.get("meta", {})) for d in loop_config["items"]]
    trainer = SearcherTrainer(cfg, policy.model, policy.ref, policy.tokenizer, loop_config["retriever"],
                              loop_config["scorer"], items[rank::world], rank=rank, world=world,
                              rollout_model=policy.rollout_copy)
    logger = None
    if rank == 0:
        logger = MetricsLogger(Path(cfg.run_dir) / "train" / "metrics.jsonl", cfg.wandb,
                               run_name=loop_config.get("run_name"), config=loop_config["cfg"])

    def report(metrics: dict[str, Any], checkpoint: Path | None) -> None:
        metrics = {**metrics, CHECKPOINT_SCORE: checkpoint_score(metrics)}
        if checkpoint is None:
            ray.train.report(metrics)
        else:
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(checkpoint)))

    hooks = FitHooks(report=report, log=logger.log if logger else None,
                     after_step=lambda step: _maybe_inject_failure(loop_config.get("fail_at_step"), step,
                                                                   Path(cfg.run_dir)))
    try:
        if ckpt is None:
            fit(policy, trainer, hooks, reference_dir=ref_dir)
        else:
            with ckpt.as_directory() as d:
                fit(policy, trainer, hooks, resume=d, reference_dir=ref_dir)
    finally:
        if logger:
            logger.close()


def _maybe_inject_failure(fail_at_step: int | None, step: int, run_dir: Path) -> None:
    """Fault injection for resume tests: crash once, after the checkpoint of `fail_at_step`."""
    marker = run_dir / "train" / ".injected_failure"
    if fail_at_step == step and not marker.exists():
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(str(step))
        raise RuntimeError(f"injected failure after step {step}")
