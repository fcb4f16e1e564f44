"""The Ray Train per-worker loop (`TorchTrainer(train_loop_per_worker, ...)`).

Everything Ray-specific about training lives here and in `jobs/train.py`; the step itself is
`SearcherTrainer`. Each worker:

1. loads the searcher (+ a frozen reference copy for the KL term) and wraps it for DDP (gloo on
   CPU) or FSDP (NCCL on GPU) with `ray.train.torch.prepare_model`;
2. resumes from the checkpoint Ray Train hands back after a failure, if any (weights, optimizer,
   step, question cursor);
3. runs rollouts against the retriever and scores them with the frozen generator through the
   clients it was given (Serve handles in production, in-process objects in tests);
4. reports metrics every step and a checkpoint every `checkpoint_every` steps.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from s3_ray.config import S3Config
from s3_ray.types import QAItem


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch
    import torch

    from s3_ray.models import load_causal_lm
    from s3_ray.rl.checkpoint import load_checkpoint
    from s3_ray.rl.trainer import SearcherTrainer, unwrap
    from s3_ray.tracking import MetricsLogger

    cfg = S3Config.model_validate(loop_config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(cfg.seed + rank)

    model, tok = load_causal_lm(cfg.searcher.model, num_threads=cfg.searcher.num_threads, for_training=True)
    ref = None
    if cfg.train.kl_coef > 0:
        ref, _ = load_causal_lm(cfg.searcher.model, num_threads=cfg.searcher.num_threads)
    model = ray.train.torch.prepare_model(model, parallel_strategy="ddp" if world > 1 else None)

    items = [QAItem(id=d["id"], question=d["question"], golden_answers=tuple(d["golden_answers"]),
                    meta=d.get("meta", {})) for d in loop_config["items"]]
    shard = items[rank::world]
    trainer = SearcherTrainer(cfg, model, ref, tok, loop_config["retriever"], loop_config["scorer"], shard)

    start, resumed = 0, False
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = load_checkpoint(Path(d), unwrap(model), trainer.updater)
        start, resumed = int(state["step"]), True
        trainer.load_state(state["extra"])
        ref_dir = loop_config.get("reference_dir")
        if ref is not None and cfg.train.warmup_steps > 0:
            if not ref_dir or not (Path(ref_dir) / "config.json").is_file():
                raise RuntimeError(f"resuming a warm-up run needs its KL reference at {ref_dir!r}, which is missing")
            ref, _ = load_causal_lm(ref_dir, num_threads=cfg.searcher.num_threads)
            trainer.updater.ref_model = ref
        print(f"[s3-ray] rank {rank}: resumed from step {start}")

    logger = None
    if rank == 0:
        logger = MetricsLogger(Path(cfg.run_dir) / "train" / "metrics.jsonl", cfg.wandb,
                               run_name=loop_config.get("run_name"), config=loop_config["cfg"])
    if not resumed and cfg.train.warmup_steps > 0:
        warm_log = (lambda m, i: logger.log({**m, "phase": "warmup"}, i)) if logger else None
        losses = trainer.warmup(log=warm_log)
        # RL starts from the warmed-up policy, so that is what the KL term must hold it near.
        if ref is not None:
            ref.load_state_dict(unwrap(model).state_dict())
        if rank == 0 and loop_config.get("reference_dir"):
            unwrap(model).save_pretrained(loop_config["reference_dir"])
        # Checkpoint "step 0" = after the format warm-up, before any RL: evaluating it separates
        # what the warm-up taught from what RL taught.
        _report({"step": 0, "warmup/loss": losses[-1]}, rank, model, trainer, tok, step=0, checkpoint=True)

    for step in range(start, cfg.train.steps):
        t0 = time.perf_counter()
        metrics = trainer.train_step()
        metrics["time/step_s"] = time.perf_counter() - t0
        metrics["step"] = step + 1
        if logger:
            logger.log(metrics, step + 1)
        due = (step + 1) % cfg.train.checkpoint_every == 0 or step + 1 == cfg.train.steps
        _report(metrics, rank, model, trainer, tok, step=step + 1, checkpoint=due)
        _maybe_inject_failure(loop_config.get("fail_at_step"), step + 1, Path(cfg.run_dir))
    if logger:
        logger.close()


def _report(metrics: dict[str, Any], rank: int, model: Any, trainer: Any, tok: Any, step: int,
            checkpoint: bool) -> None:
    """ray.train.report on every rank; rank 0 attaches the checkpoint when one is due."""
    import ray.train

    from s3_ray.rl.checkpoint import save_checkpoint
    from s3_ray.rl.trainer import unwrap

    if not checkpoint or rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ckpt"
        save_checkpoint(path, unwrap(model), trainer.updater, step, extra=trainer.state(), tokenizer=tok)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(path)))


def _maybe_inject_failure(fail_at_step: int | None, step: int, run_dir: Path) -> None:
    """Fault injection for resume tests: crash once, after the checkpoint of `fail_at_step`."""
    marker = run_dir / "train" / ".injected_failure"
    if fail_at_step == step and not marker.exists():
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(str(step))
        raise RuntimeError(f"injected failure after step {step}")
