"""The KL coefficient: fixed, or steered towards a target KL (Ziegler et al., 2019, section 2.2).

The adaptive controller is proportional with a clipped error, so one odd batch cannot swing the
coefficient by more than 20% x n_steps / horizon:

    e = clip(kl / target - 1, -0.2, 0.2)
    coef <- coef * (1 + e * n_steps / horizon)

A KL above target raises the coefficient (pull harder towards the reference), below lowers it.
"""

from __future__ import annotations

import math
from typing import Any

from s3_ray.config import TrainConfig

MAX_ERROR = 0.2


def adaptive_kl_coef(coef: float, kl: float, target: float, horizon: int, n_steps: int = 1) -> float:
    """One controller update; returns the new coefficient.

    >>> adaptive_kl_coef(0.1, kl=0.05, target=0.05, horizon=10)  # on target: unchanged
    0.1
    >>> round(adaptive_kl_coef(0.1, kl=0.06, target=0.05, horizon=10), 6)  # error 0.2 -> x1.02
    0.102
    >>> round(adaptive_kl_coef(0.1, kl=1.0, target=0.05, horizon=10), 6)  # error clipped to 0.2
    0.102
    >>> round(adaptive_kl_coef(0.1, kl=0.0, target=0.05, horizon=4, n_steps=2), 6)  # x(1 - 0.2 * 2/4)
    0.09
    """
    if target <= 0 or horizon < 1 or n_steps < 1:
        raise ValueError(f"need target > 0, horizon >= 1, n_steps >= 1; got {target}, {horizon}, {n_steps}")
    error = min(max(kl / target - 1.0, -MAX_ERROR), MAX_ERROR)
    return coef * (1.0 + error * n_steps / horizon)


class KLController:
    """Holds the current coefficient; `update` moves it when a target is set, else keeps it.

    A non-finite KL (a diverged step) leaves the coefficient as it is: the collapse guard, not
    the controller, decides what happens to such a run.
    """

    def __init__(self, init_coef: float, target: float | None = None, horizon: int = 10) -> None:
        if init_coef < 0:
            raise ValueError(f"train.kl_coef must be >= 0, got {init_coef}")
        if target is not None and init_coef == 0:
            raise ValueError("train.kl_target needs train.kl_coef > 0: the controller scales the coefficient")
        self.value = float(init_coef)
        self.target = target
        self.horizon = int(horizon)

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> KLController:
        return cls(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon)

    @property
    def adaptive(self) -> bool:
        return self.target is not None

    def update(self, kl: float, n_steps: int = 1) -> float:
        """Feed the KL measured in the last `n_steps` steps; returns the coefficient to use next."""
        if self.target is not None and math.isfinite(kl):
            self.value = adaptive_kl_coef(self.value, kl, self.target, self.horizon, n_steps)
        return self.value

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "value" not in state:
            raise KeyError("KL controller state has no 'value' entry")
        self.value = float(state["value"])
