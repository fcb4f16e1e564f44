"""Training progress on the driver: one line per RL step, bars over the warm-up and the RL steps.

The steps run in Ray Train workers (other processes); rank 0 appends one JSON record per step to
`<run_dir>/train/metrics.jsonl` (the format warm-up's records carry `"phase": "warmup"`).
`follow_training` tails that file while `trainer.fit()` runs in the driver and turns each new
record into console output. Only records written after it starts count, so a resumed run's old
steps are not shown again.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from s3_ray.config import TrainConfig
from s3_ray.console.bars import Bar, format_seconds
from s3_ray.console.output import Console
from s3_ray.console.tail import JsonlTail, Poller


def _number(record: dict[str, Any], key: str) -> float | None:
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def signal_text(record: dict[str, Any], groups: int) -> str:
    """The groups of a step whose trajectories scored differently (the only ones RL learns from):
    counted when the record has `sample/signal_groups` (out of `sample/groups`, which dynamic
    sampling can take past one round's `groups`), else whether any had (`adv_std` > 0).

    >>> signal_text({"sample/signal_groups": 3}, 8), signal_text({"sample/signal_groups": 5, "sample/groups": 16}, 8)
    ('signal 3/8 groups', 'signal 5/16 groups')
    >>> signal_text({"adv_std": 0.2}, 8), signal_text({"adv_std": 0.0}, 8)
    ('signal yes', 'signal none')
    """
    counted = _number(record, "sample/signal_groups")
    if counted is not None:
        sampled = _number(record, "sample/groups")
        return f"signal {int(counted)}/{int(sampled) if sampled is not None else groups} groups"
    adv = _number(record, "adv_std")
    if adv is None:
        return "signal ?"
    return "signal yes" if adv > 0 else "signal none"


def step_line(record: dict[str, Any], steps: int, groups: int) -> str:
    """The console line of one RL step record.

    >>> step_line({"step": 2, "reward": -0.125, "adv_std": 0.0, "kl": 0.00123, "malformed_rate": 0.25,
    ...            "time/step_s": 41.3, "update_skipped": 1.0}, steps=4, groups=8)
    'step 2/4  reward -0.125  signal none  KL 0.0012  malformed 25%  41 s  (update skipped: flat loss)'
    >>> step_line({"step": 3, "reward": 0.5, "kl": 0.0, "malformed_rate": 0.0, "time/step_s": 9.0,
    ...            "async/staleness_mean": 0.5, "async/staleness_max": 1, "is/weight_mean": 0.98,
    ...            "is/weight_max": 2.4, "is/truncated_share": 0.01}, steps=4, groups=2).split("  ")[-2:]
    ['stale 0.5 (max 1)', 'IS 0.98 (max 2.40, cut 1%)']
    """
    reward, kl = _number(record, "reward"), _number(record, "kl")
    malformed, seconds = _number(record, "malformed_rate"), _number(record, "time/step_s")
    parts = [f"step {int(record.get('step', 0))}/{steps}",
             f"reward {reward:+.3f}" if reward is not None else "reward -",
             signal_text(record, groups),
             f"KL {kl:.4f}" if kl is not None else "KL -",
             f"malformed {100 * malformed:.0f}%" if malformed is not None else "malformed -",
             format_seconds(seconds) if seconds is not None else "- s"]
    stale = _number(record, "async/staleness_mean")
    if stale is not None:  # asynchronous training: the age of the step's groups and the importance weights
        parts.append(f"stale {stale:.1f} (max {int(_number(record, 'async/staleness_max') or 0)})")
        weight, top = _number(record, "is/weight_mean"), _number(record, "is/weight_max")
        if weight is not None and top is not None:
            cut = _number(record, "is/truncated_share") or 0.0
            parts.append(f"IS {weight:.2f} (max {top:.2f}, cut {100 * cut:.0f}%)")
    line = "  ".join(parts)
    if _number(record, "update_skipped"):
        line += "  (update skipped: flat loss)"
    return line


class TrainingView:
    """Turns metrics records into console output: a warm-up bar, then one line per RL step under
    a bar over `train.steps`, and the collapse guard's reason when it stops the run."""

    def __init__(self, console: Console, steps: int, warmup_steps: int, groups: int) -> None:
        self.console = console
        self.started = time.monotonic()  # the warm-up's clock: its records carry no step times
        self.steps = steps
        self.warmup_steps = warmup_steps
        self.groups = groups
        self.warmup_bar: Bar | None = None
        self.warmup_losses: list[float] = []
        self.rl_bar: Bar | None = None
        self.last_step: int | None = None

    def show(self, record: dict[str, Any]) -> None:
        """Print what one metrics record says (called for every new record, in file order)."""
        if record.get("phase") == "warmup":
            self._warmup(record)
            return
        self._end_warmup()
        step = int(record.get("step", 0))
        if self.rl_bar is None:
            seconds = _number(record, "time/step_s") or 0.0  # the bar's clock starts with this step
            self.rl_bar = self.console.bar(self.steps, "RL steps", unit="step", initial=max(step - 1, 0),
                                           started=time.monotonic() - seconds)
        elif self.last_step is not None and step <= self.last_step:
            self.console.info(f"restarted from a checkpoint: step {step} again")
        self.last_step = step
        self.console.info(step_line(record, self.steps, self.groups))
        self.rl_bar.set(step)
        if record.get("stop_reason"):
            self.console.info(f"the collapse guard stopped training after step {step}: {record['stop_reason']}")
        if record.get("wall_budget_reached"):
            self.console.info(f"the wall-time budget (train.max_wall_s) ended training after step {step}")
        if step >= self.steps or record.get("stop_reason") or record.get("wall_budget_reached"):
            self.rl_bar.close()  # the last step: what follows (checkpoint, shutdown) is not a step

    def _warmup(self, record: dict[str, Any]) -> None:
        done = int(record.get("step", 0)) + 1  # warm-up records count from 0
        if self.warmup_bar is None:  # timed from the start of training (workers starting up included)
            self.warmup_bar = self.console.bar(self.warmup_steps or None, "format warm-up", unit="step",
                                               started=self.started)
        loss = _number(record, "warmup/loss")
        if loss is not None:
            self.warmup_losses.append(loss)
        self.warmup_bar.set(done)
        if done >= self.warmup_steps:
            self._end_warmup()  # now, not at the first RL step (the reference and checkpoint come between)

    def _end_warmup(self) -> None:
        if self.warmup_bar is None or self.warmup_bar.closed:
            return
        self.warmup_bar.close()
        if self.warmup_losses:
            self.console.info(f"warm-up loss {self.warmup_losses[0]:.3f} -> {self.warmup_losses[-1]:.3f}")

    def close(self) -> None:
        self._end_warmup()
        if self.rl_bar is not None:
            self.rl_bar.close()


@contextmanager
def follow_training(console: Console, metrics_path: str | os.PathLike[str], train: TrainConfig) -> Iterator[TrainingView]:
    """Show the training that runs while the block runs (in Ray Train workers) from its metrics file."""
    tail = JsonlTail(metrics_path)
    view = TrainingView(console, train.steps, train.warmup_steps, train.questions_per_step)

    def tick() -> None:
        for record in tail.read():
            view.show(record)

    try:
        with Poller(tick):
            yield view
    finally:
        view.close()
