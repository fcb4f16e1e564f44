"""The Ray Train per-worker loop (`TorchTrainer(train_loop_per_worker, ...)`).

Everything Ray-specific about training lives here and in `jobs/train.py`; the step itself is
`SearcherTrainer`. Each worker:

1. loads the searcher on its own device (gradient checkpointing and a LoRA adapter when
   configured) and its KL reference: a frozen copy, or with LoRA the same model with its adapter
   switched off; wraps the policy for DDP (gloo on CPU) with `ray.train.torch.prepare_model`, or
   with `train.parallel: fsdp` shards policy and reference over the workers (FSDP2) and keeps an
   unsharded copy for the rollouts, refreshed after every update;
2. resumes from the checkpoint Ray Train hands back after a failure, if any (weights or adapter,
   optimizer, KL coefficient, step, question cursor, guard streaks);
3. otherwise runs the format warm-up, if any; with LoRA its adapter is merged into the base and a
   fresh adapter is attached for RL, so "adapter off" is the warmed-up policy;
4. runs rollouts against the retriever and scores them with the frozen generator through the
   clients it was given (Serve handles in production, in-process objects in tests);
5. reports metrics every step and a checkpoint every `checkpoint_every` steps, and stops cleanly
   (with a last checkpoint) when the collapse guard trips on any worker.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from s3_ray.config import S3Config
from s3_ray.types import QAItem


def _build_policy(base: Any, cfg: S3Config, world: int) -> tuple[Any, Any, Any]:
    """(policy wrapped for DDP or sharded for FSDP, KL reference or None, rollout copy or None)
    around the plain HF model `base`."""
    import ray.train.torch

    from s3_ray.rl.policy_setup import build_policy, inference_copy, shard_for_training

    tc = cfg.train
    if tc.parallel == "fsdp":
        rollout = inference_copy(base) if cfg.searcher.backend == "transformers" else None
        return (*shard_for_training(*build_policy(base, tc)), rollout)
    policy, ref = build_policy(base, tc)
    return ray.train.torch.prepare_model(policy, parallel_strategy="ddp" if world > 1 else None), ref, None


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

    from s3_ray.models import load_causal_lm
    from s3_ray.rl.checkpoint import load_checkpoint, save_hf_folder
    from s3_ray.rl.guard import CollapseGuard
    from s3_ray.rl.lora import merge_lora
    from s3_ray.rl.policy_setup import enable_gradient_checkpointing
    from s3_ray.rl.sharding import full_state_dict, is_sharded
    from s3_ray.rl.trainer import SearcherTrainer, unwrap
    from s3_ray.tracking import MetricsLogger

    cfg = S3Config.model_validate(loop_config["cfg"])
    tc = cfg.train
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(cfg.seed + rank)

    ckpt = ray.train.get_checkpoint()
    ref_dir = loop_config.get("reference_dir")
    # A resumed warm-up run starts from the warmed-up weights (its KL reference / LoRA base).
    base_name = cfg.searcher.model
    if ckpt is not None and tc.warmup_steps > 0:
        if not ref_dir or not (Path(ref_dir) / "config.json").is_file():
            raise RuntimeError(f"resuming a warm-up run needs its warmed-up base at {ref_dir!r}, which is missing")
        base_name = ref_dir
    device = _device()
    # FSDP keeps float32 master weights (it computes in bf16 on a GPU); DDP trains in the load dtype.
    dtype = torch.float32 if tc.parallel == "fsdp" else None
    base, tok = load_causal_lm(base_name, num_threads=cfg.searcher.num_threads, for_training=True,
                               device=device, dtype=dtype)
    if tc.gradient_checkpointing:
        enable_gradient_checkpointing(base)
    model, ref, rollout_model = _build_policy(base, cfg, world)

    items = [QAItem(id=d["id"], question=d["question"], golden_answers=tuple(d["golden_answers"]),
                    meta=d.get("meta", {})) for d in loop_config["items"]]
    trainer = SearcherTrainer(cfg, model, ref, tok, loop_config["retriever"], loop_config["scorer"], items[rank::world],
                              rank=rank, world=world, rollout_model=rollout_model)
    guard = CollapseGuard(tc)

    start = 0
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = load_checkpoint(Path(d), unwrap(model), trainer.updater)
        start = int(state["step"])
        trainer.weights_changed()
        trainer.load_state(state["extra"])
        if "guard" in state["extra"]:
            guard.load_state(state["extra"]["guard"])
        print(f"[s3-ray] rank {rank}: resumed from step {start}")

    logger = None
    if rank == 0:
        logger = MetricsLogger(Path(cfg.run_dir) / "train" / "metrics.jsonl", cfg.wandb,
                               run_name=loop_config.get("run_name"), config=loop_config["cfg"])
    if ckpt is None and tc.warmup_steps > 0:
        warm_log = (lambda m, i: logger.log({**m, "phase": "warmup"}, i)) if logger else None
        losses = trainer.warmup(log=warm_log)
        # RL starts from the warmed-up policy, so that is what the KL term must hold it near.
        if tc.lora_rank > 0:
            warmed = merge_lora(unwrap(model))
            model, ref, _ = _build_policy(warmed, cfg, world)
            trainer.set_policy(model, ref)
        else:
            warmed = unwrap(model)
            if ref is not None:  # sharded alike under FSDP, so shards copy onto shards
                ref.load_state_dict(warmed.state_dict())
        weights = full_state_dict(warmed, keep=rank == 0) if is_sharded(warmed) else None  # collective
        if rank == 0 and ref_dir:
            save_hf_folder(ref_dir, warmed, weights)
            tok.save_pretrained(ref_dir)
        # Checkpoint "step 0" = after the format warm-up, before any RL: evaluating it separates
        # what the warm-up taught from what RL taught. Its reward is unknown (NaN ranks it last).
        _report({"step": 0, "warmup/loss": losses[-1], "reward": float("nan")}, rank, model, trainer, tok,
                step=0, checkpoint=True, extra={**trainer.state(), "guard": guard.state()})

    for step in range(start, tc.steps):
        t0 = time.perf_counter()
        metrics = trainer.train_step()
        metrics["time/step_s"] = time.perf_counter() - t0
        metrics["step"] = step + 1
        reason = _agree_on_stop(guard.update(metrics), world)
        if reason is not None:
            metrics["stop_reason"] = reason
        if logger:
            logger.log(metrics, step + 1)
        due = (step + 1) % tc.checkpoint_every == 0 or step + 1 == tc.steps or reason is not None
        _report(metrics, rank, model, trainer, tok, step=step + 1, checkpoint=due,
                extra={**trainer.state(), "guard": guard.state()})
        if reason is not None:
            print(f"[s3-ray] rank {rank}: collapse guard stopped training after step {step + 1}: {reason}")
            break
        _maybe_inject_failure(loop_config.get("fail_at_step"), step + 1, Path(cfg.run_dir))
    if logger:
        logger.close()


def _agree_on_stop(reason: str | None, world: int) -> str | None:
    """Every rank must stop at the same step (or the others hang in the next all-reduce)."""
    import torch
    import torch.distributed as dist

    if world == 1 or not (dist.is_available() and dist.is_initialized()):
        return reason
    flag = torch.tensor([1.0 if reason is not None else 0.0])
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    if flag.item() > 0 and reason is None:
        return "collapse guard tripped on another worker"
    return reason


def _report(metrics: dict[str, Any], rank: int, model: Any, trainer: Any, tok: Any, step: int,
            checkpoint: bool, extra: dict[str, Any]) -> None:
    """ray.train.report on every rank; rank 0 attaches the checkpoint when one is due.

    A sharded policy's weights and optimiser state are gathered on every rank first (collectives);
    rank 0 writes them in the same plain layout as an unsharded run.
    """
    import ray.train

    from s3_ray.rl.checkpoint import save_checkpoint
    from s3_ray.rl.sharding import full_state_dict, is_sharded
    from s3_ray.rl.trainer import unwrap

    bare = unwrap(model)
    weights, optimizer_state = None, trainer.updater
    if checkpoint and is_sharded(bare):
        keep = rank == 0  # every rank takes part in the gathers; only the writer keeps them
        weights, optimizer_state = full_state_dict(bare, keep=keep), trainer.updater.state_dict(keep=keep)
    if not checkpoint or rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ckpt"
        save_checkpoint(path, bare, optimizer_state, step, extra=extra, tokenizer=tok, weights=weights)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(path)))


def _maybe_inject_failure(fail_at_step: int | None, step: int, run_dir: Path) -> None:
    """Fault injection for resume tests: crash once, after the checkpoint of `fail_at_step`."""
    marker = run_dir / "train" / ".injected_failure"
    if fail_at_step == step and not marker.exists():
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(str(step))
        raise RuntimeError(f"injected failure after step {step}")
