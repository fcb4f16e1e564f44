"""The Ray Train per-worker loop (`TorchTrainer(train_loop_per_worker, ...)`): wiring only.

With `train.async.max_staleness` > 0 the one worker trains asynchronously: it starts the rollout
worker actors (`rollout_pool`) and drives them with `AsyncSearcherTrainer`.

Each worker loads the searcher on its own device (`SearcherPolicy`), builds the step
(`SearcherTrainer`) over its share of the questions, and runs the one training loop (`fit`)
with Ray Train's reporting: metrics every step, a checkpoint every `checkpoint_every` steps,
the checkpoint Ray Train hands back after a failure to resume from.

Checkpoints are written straight into the run's storage folder when it is a file system the
workers mount (a local disk, NFS) and reported as already in place; every rank of an FSDP run
writes its own shards there (rank 0 of a DDP run the whole checkpoint). On object storage (S3,
GCS) each rank writes its part to a local folder and Ray Train uploads it into the one checkpoint
folder. On resume the folder is read in place (each FSDP rank reads its own shards), or
downloaded first from object storage.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
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
    pool = None
    if cfg.train.async_.enabled:  # rollout worker actors owned by this worker (they go when it goes)
        from s3_ray.rl.loop.async_trainer import AsyncSearcherTrainer
        from s3_ray.rl.ray_train.rollout_pool import RayRolloutPool

        pool = RayRolloutPool(cfg, loop_config["retriever"], loop_config["scorer"])
        trainer: SearcherTrainer = AsyncSearcherTrainer(cfg, policy.model, policy.ref, policy.tokenizer, pool, items,
                                                        retriever=loop_config["retriever"])
    else:
        trainer = SearcherTrainer(cfg, policy.model, policy.ref, policy.tokenizer, loop_config["retriever"],
                                  loop_config["scorer"], items[rank::world], rank=rank, world=world,
                                  rollout_model=policy.rollout_copy)
    logger = None
    if rank == 0:
        logger = MetricsLogger(Path(cfg.run_dir) / "train" / "metrics.jsonl", cfg.wandb,
                               run_name=loop_config.get("run_name"), config=loop_config["cfg"])

    target = CheckpointTarget(rank)

    def report(metrics: dict[str, Any], checkpoint: Path | None) -> None:
        target.report({**metrics, CHECKPOINT_SCORE: checkpoint_score(metrics)}, checkpoint)

    hooks = FitHooks(report=report, log=logger.log if logger else None, checkpoint_folder=target.folder,
                     after_step=lambda step: _maybe_inject_failure(loop_config.get("fail_at_step"), step,
                                                                   Path(cfg.run_dir)))
    try:
        if ckpt is None:
            fit(policy, trainer, hooks, reference_dir=ref_dir)
        else:
            with ckpt.as_directory() as d:
                fit(policy, trainer, hooks, resume=d, reference_dir=ref_dir)
    finally:
        if pool is not None:
            pool.close()
        if logger:
            logger.close()


class CheckpointTarget:
    """Where this run's checkpoints are written, and how they are reported to Ray Train."""

    def __init__(self, rank: int) -> None:
        import pyarrow.fs
        import ray.train

        self.rank = rank
        self.storage = ray.train.get_context().get_storage()
        # a mounted file system (local disk, NFS): write in place; object storage: stage and upload
        self.in_place = isinstance(self.storage.storage_filesystem, pyarrow.fs.LocalFileSystem)
        self.name: str | None = None

    @contextlib.contextmanager
    def folder(self, step: int) -> Iterator[Path]:
        """The folder of the checkpoint of `step`, the same name on every rank (rank 0's choice)."""
        from s3_ray.rl.model import collectives

        self.name = collectives.broadcast_object(
            f"{self.storage.make_default_checkpoint_dir_name()}_step{step}" if self.rank == 0 else None)
        if self.in_place:
            yield Path(self.storage.build_checkpoint_path_from_name(self.name))
            return
        with tempfile.TemporaryDirectory(prefix="s3-ckpt-") as tmp:
            yield Path(tmp) / self.name

    def report(self, metrics: dict[str, Any], checkpoint: Path | None) -> None:
        """`ray.train.report` on every rank; `checkpoint`: the folder this rank wrote to (or None)."""
        import ray.train
        from ray.train import CheckpointUploadMode

        if checkpoint is None:
            ray.train.report(metrics)
        elif self.in_place:
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint(str(checkpoint), self.storage.storage_filesystem),
                             checkpoint_upload_mode=CheckpointUploadMode.NO_UPLOAD)
        else:
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(checkpoint)),
                             checkpoint_dir_name=self.name)


def _maybe_inject_failure(fail_at_step: int | None, step: int, run_dir: Path) -> None:
    """Fault injection for resume tests: crash once, after the checkpoint of `fail_at_step`."""
    marker = run_dir / "train" / ".injected_failure"
    if fail_at_step == step and not marker.exists():
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(str(step))
        raise RuntimeError(f"injected failure after step {step}")
