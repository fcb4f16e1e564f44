"""The one training loop: resume or warm up, then RL steps until done or the guard stops it.

Both ways of training call `fit`: a Ray Train worker (`s3_ray.rl.ray_train.worker`, one per rank, with
checkpoints) and a Ray Tune trial (`s3_ray.sweep.trials`, one process, reporting to Tune). What
differs between them is in `FitHooks`; the loop itself reads top to bottom:

1. resume from a checkpoint (weights or adapter, optimiser, KL coefficient, step, question
   stream, guard streaks), or run the format warm-up, make it the KL reference and report it as
   "step 0" (the warmed-up policy, before any RL);
2. for every remaining step: `trainer.train_step()` (rollout -> reward -> update), the collapse
   guard (all ranks agree on a stop), the metrics log, a report with a checkpoint when one is due;
   with `train.max_wall_s` the loop also ends (with a checkpoint) after the first step past it.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from s3_ray.rl.model import collectives
from s3_ray.rl.model.collectives import agree_on_stop
from s3_ray.rl.loop.guard import CollapseGuard
from s3_ray.rl.model.policy import SearcherPolicy
from s3_ray.rl.loop.trainer import SearcherTrainer


@dataclass
class FitHooks:
    """What the caller does with each step.

    `report(metrics, checkpoint)` runs on every rank after every step; `checkpoint` is the folder
    of the checkpoint this rank just wrote (all of it: rank 0 of an unsharded policy; its own
    shards and rank 0 the rest: every rank of an FSDP one), else None. `checkpoints=False` writes
    none. `checkpoint_folder(step)` is a context that gives the folder a step's checkpoint is
    written to, the same on every rank (default: a temporary folder on this machine, deleted
    after `report` returns: copy it). `log(metrics, index)` gets warm-up and RL metrics for the
    metrics file. `report_warmup` reports the warmed-up policy as step 0 (with a checkpoint).
    `after_step(step)` runs after each step's report (fault injection in tests).
    """

    report: Callable[[dict[str, Any], Path | None], None]
    log: Callable[[dict[str, Any], int], None] | None = None
    checkpoints: bool = True
    report_warmup: bool = True
    after_step: Callable[[int], None] | None = None
    checkpoint_folder: Callable[[int], contextlib.AbstractContextManager[Path]] | None = None


def fit(policy: SearcherPolicy, trainer: SearcherTrainer, hooks: FitHooks, resume: str | Path | None = None,
        reference_dir: str | Path | None = None, log: Callable[[str], None] = print) -> str | None:
    """Train to `train.steps`; returns why training stopped early (the guard's reason) or None.

    `resume`: a checkpoint folder to continue from. `reference_dir`: where the warmed-up policy is
    kept, the base a resumed warm-up run rebuilds from (written by rank 0).
    """
    tc = trainer.cfg.train
    guard = CollapseGuard(tc)
    start = 0
    if resume is not None:
        state = policy.restore(resume, trainer.updater)
        start = int(state["step"])
        trainer.weights_changed()
        trainer.load_state(state["extra"])
        trainer.steps_done = start
        if "guard" in state["extra"]:
            guard.load_state(state["extra"]["guard"])
        log(f"[s3-ray] rank {policy.rank}: resumed from step {start}")
    elif tc.warmup_steps > 0:
        warm_log = (lambda m, i: hooks.log({**m, "phase": "warmup"}, i)) if hooks.log else None
        losses = trainer.warmup(log=warm_log)
        # RL starts from the warmed-up policy, so that is what the KL term must hold it near.
        policy.rebase_after_warmup(reference_dir)
        if tc.lora_rank > 0:
            trainer.set_policy(policy.model, policy.ref)
        if hooks.report_warmup:
            # "Step 0" = after the format warm-up, before any RL: evaluating it separates what the
            # warm-up taught from what RL taught. Its reward is unknown (NaN: checkpoint_score ranks it last).
            _report(hooks, policy, trainer, guard, {"step": 0, "warmup/loss": losses[-1], "reward": float("nan")},
                    step=0, due=True)

    t_rl = time.perf_counter()
    for step in range(start, tc.steps):
        t0 = time.perf_counter()
        metrics = trainer.train_step()
        metrics["time/step_s"] = time.perf_counter() - t0
        metrics["time/elapsed_s"] = time.perf_counter() - t_rl
        metrics["step"] = step + 1
        reason = agree_on_stop(guard.update(metrics))
        if reason is not None:
            metrics["stop_reason"] = reason
        out_of_time = step + 1 < tc.steps and _past_budget(metrics["time/elapsed_s"], tc.max_wall_s)
        if out_of_time:
            metrics["wall_budget_reached"] = 1.0
        if hooks.log:
            hooks.log(metrics, step + 1)
        due = (step + 1) % tc.checkpoint_every == 0 or step + 1 == tc.steps or reason is not None or out_of_time
        _report(hooks, policy, trainer, guard, metrics, step=step + 1, due=due)
        if reason is not None:
            log(f"[s3-ray] rank {policy.rank}: collapse guard stopped training after step {step + 1}: {reason}")
            return reason
        if hooks.after_step:
            hooks.after_step(step + 1)
        if out_of_time:
            log(f"[s3-ray] rank {policy.rank}: train.max_wall_s={tc.max_wall_s:g} reached after step {step + 1}")
            return None
    return None


def _past_budget(elapsed: float, budget: float | None) -> bool:
    """Whether the wall-time budget is spent, agreed over all ranks (any rank's clock past it stops all:
    they must leave the loop at the same step). No collective without a budget."""
    if budget is None:
        return False
    (flag,) = collectives.reduce_floats([1.0 if elapsed >= budget else 0.0], op="max")
    return flag > 0


def _report(hooks: FitHooks, policy: SearcherPolicy, trainer: SearcherTrainer, guard: CollapseGuard,
            metrics: dict[str, Any], step: int, due: bool) -> None:
    """`hooks.report` on every rank, with the checkpoint written when one is due."""
    if not (due and hooks.checkpoints):
        hooks.report(metrics, None)
        return
    folder = hooks.checkpoint_folder or temporary_folder
    with folder(step) as path:
        written = policy.save(path, trainer.updater, step, extra={**trainer.state(), "guard": guard.state()})
        hooks.report(metrics, written)


@contextlib.contextmanager
def temporary_folder(step: int) -> Iterator[Path]:
    """A temporary checkpoint folder, the same path on every rank (made by rank 0; so the ranks must
    share a machine), removed once every rank is done with it."""
    root = tempfile.mkdtemp(prefix=f"s3-ckpt-{step}-") if collectives.rank() == 0 else None
    root = collectives.broadcast_object(root)
    try:
        yield Path(root) / "ckpt"
    finally:
        collectives.barrier()
        if collectives.rank() == 0:
            shutil.rmtree(root, ignore_errors=True)
