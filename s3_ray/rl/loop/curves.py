"""Training curves: `train/metrics.jsonl` -> `train/curves.png`, one glance at a run's health.

Four panels: reward with its parts (GBR, GenAcc), the KL to the reference with its coefficient,
the malformed-turn rate (the first sign of a collapsing searcher), and where each step's time
went. Drawn with matplotlib's Agg canvas directly, so no display and no global backend switch.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from s3_ray.tracking import read_metrics

TIME_KEYS = ("time/rollout_s", "time/reward_s", "time/update_s")


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of the records that carry a finite `key`."""
    xs, ys = [], []
    for r in records:
        v = r.get(key)
        if isinstance(v, (int, float)) and math.isfinite(v):
            xs.append(float(r["step"]))
            ys.append(float(v))
    return xs, ys


def rl_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The RL steps of a metrics log (warm-up records carry no reward), last record per step.

    A resumed run may log a step twice; the later record wins.

    >>> rl_records([{"step": 1, "reward": 0.1}, {"step": 1, "warmup/loss": 2.0}, {"step": 1, "reward": 0.3}])
    [{'step': 1, 'reward': 0.3}]
    """
    by_step: dict[int, dict[str, Any]] = {}
    for r in records:
        if "reward" in r and "step" in r:
            by_step[int(r["step"])] = r
    return [by_step[s] for s in sorted(by_step)]


def plot_curves(metrics_path: str | os.PathLike[str], out_path: str | os.PathLike[str] | None = None) -> Path:
    """Draw the curves of one run; returns the PNG path (default: beside the JSONL, curves.png)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metrics_path = Path(metrics_path)
    records = rl_records(read_metrics(metrics_path))
    if not records:
        raise ValueError(f"{metrics_path}: no RL step records (with a 'reward') to plot")
    out = Path(out_path) if out_path is not None else metrics_path.with_name("curves.png")

    fig = Figure(figsize=(11, 7.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax_reward, ax_kl, ax_bad, ax_time = fig.subplots(2, 2).flatten()

    for key, label in (("reward", "reward"), ("gbr", "GBR"), ("genacc", "GenAcc")):
        xs, ys = _series(records, key)
        if xs:
            ax_reward.plot(xs, ys, marker=".", label=label)
    ax_reward.set_title("reward")
    if ax_reward.lines:
        ax_reward.legend(loc="best", fontsize=8)

    xs, ys = _series(records, "kl")
    ax_kl.plot(xs, ys, marker=".", color="tab:red", label="KL")
    ax_kl.set_title("KL to reference")
    ax_kl.set_ylabel("KL")
    coef_x, coef_y = _series(records, "kl_coef")
    if coef_x:
        twin = ax_kl.twinx()
        twin.plot(coef_x, coef_y, linestyle="--", color="tab:gray", label="kl_coef")
        twin.set_ylabel("kl_coef")

    xs, ys = _series(records, "malformed_rate")
    ax_bad.plot(xs, ys, marker=".", color="tab:purple")
    ax_bad.set_ylim(-0.02, 1.02)
    ax_bad.set_title("malformed-turn rate")

    steps = [float(r["step"]) for r in records]
    parts = [[float(r.get(k, 0.0) or 0.0) for r in records] for k in TIME_KEYS]
    ax_time.stackplot(steps, *parts, labels=[k.split("/")[1].removesuffix("_s") for k in TIME_KEYS])
    ax_time.set_title("time per step (s)")
    ax_time.legend(loc="upper left", fontsize=8)

    for ax in (ax_reward, ax_kl, ax_bad, ax_time):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    return out
