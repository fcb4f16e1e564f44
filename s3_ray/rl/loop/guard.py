"""Collapse guard: stop a run whose policy has stopped following the protocol or drifted away.

Small searchers trained with RL can collapse: turns stop parsing (the malformed-turn rate climbs)
or the policy runs far from its reference (the KL explodes). Both are judged over
`guard_patience` consecutive steps, so one noisy batch does not end a run; a non-finite loss
stops it at once, because nothing after it can be trusted.
"""

from __future__ import annotations

import math
from typing import Any

from s3_ray.config import TrainConfig


class CollapseGuard:
    """Feed every step's metrics to `update`; it returns why to stop, or None to go on.

    >>> from s3_ray.config import TrainConfig
    >>> g = CollapseGuard(TrainConfig(guard_malformed_rate=0.5, guard_patience=2))
    >>> g.update({"loss": 0.1, "malformed_rate": 0.9}) is None
    True
    >>> g.update({"loss": 0.1, "malformed_rate": 0.8})
    'malformed-turn rate above 0.5 for 2 consecutive steps (last 0.8)'
    """

    def __init__(self, cfg: TrainConfig) -> None:
        self.malformed_limit = cfg.guard_malformed_rate
        self.kl_limit = cfg.guard_kl
        self.patience = cfg.guard_patience
        self.malformed_streak = 0
        self.kl_streak = 0

    def update(self, metrics: dict[str, Any]) -> str | None:
        loss = metrics.get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            return f"non-finite loss ({loss})"
        reasons = []
        if self.malformed_limit is not None:
            rate = _required(metrics, "malformed_rate")
            self.malformed_streak = self.malformed_streak + 1 if rate > self.malformed_limit else 0
            if self.malformed_streak >= self.patience:
                reasons.append(f"malformed-turn rate above {self.malformed_limit} for "
                               f"{self.malformed_streak} consecutive steps (last {rate:.3g})")
        if self.kl_limit is not None:
            kl = _required(metrics, "kl")
            self.kl_streak = self.kl_streak + 1 if not kl <= self.kl_limit else 0  # NaN counts as bad
            if self.kl_streak >= self.patience:
                reasons.append(f"KL above {self.kl_limit} for {self.kl_streak} consecutive steps (last {kl:.3g})")
        return "; ".join(reasons) or None

    def state(self) -> dict[str, int]:
        """The streaks, for checkpoints (a resumed run keeps counting where it stopped)."""
        return {"malformed_streak": self.malformed_streak, "kl_streak": self.kl_streak}

    def load_state(self, state: dict[str, Any]) -> None:
        self.malformed_streak = int(state["malformed_streak"])
        self.kl_streak = int(state["kl_streak"])


def _required(metrics: dict[str, Any], key: str) -> float:
    if key not in metrics:
        raise KeyError(f"the collapse guard needs the step metric {key!r}; got {sorted(metrics)[:12]}")
    return float(metrics[key])
