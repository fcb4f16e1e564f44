"""The sweep's grid: its points, each point's full config (checked before any trial starts), and
what one trial reserves."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from s3_ray.config import ConfigError, S3Config


def default_name(cfg: S3Config) -> str:
    """The experiment name when none is given: `sweep`, or `sweep-train` in train mode."""
    return "sweep-train" if cfg.sweep.mode == "train" else "sweep"


def experiment_dir(cfg: S3Config, name: str) -> Path:
    """Where Tune keeps the sweep's state: `<run_dir>/ray/<name>` (absolute)."""
    return Path(cfg.run_dir, "ray", name).resolve()


def grid(cfg: S3Config) -> list[dict[str, Any]]:
    """Every point of `sweep.param_space` (one repeat), in Tune's grid order (last key fastest).

    >>> from s3_ray.config import load_config
    >>> grid(load_config(None, ["sweep.param_space={rollout.top_k: [3, 5], rollout.max_turns: [1, 2]}"]))
    [{'rollout.top_k': 3, 'rollout.max_turns': 1}, {'rollout.top_k': 3, 'rollout.max_turns': 2}, {'rollout.top_k': 5, 'rollout.max_turns': 1}, {'rollout.top_k': 5, 'rollout.max_turns': 2}]
    """
    keys = list(cfg.sweep.param_space)
    return [dict(zip(keys, values)) for values in itertools.product(*cfg.sweep.param_space.values())]


def check_sweep(cfg: S3Config) -> list[S3Config]:
    """Each grid point's full config; raises ConfigError naming the point or the setting at fault."""
    s = cfg.sweep
    if not s.param_space or any(not v for v in s.param_space.values()):
        raise ConfigError("sweep.param_space: every key needs at least one value")
    if s.scheduler == "asha" and s.mode != "train":
        raise ConfigError("sweep.scheduler: asha stops trials between training steps; it needs sweep.mode=train")
    configs = []
    for point in grid(cfg):
        try:
            configs.append(cfg.with_overrides(point))
        except ConfigError as err:
            raise ConfigError(f"sweep.param_space point {point}: {err}") from None
    if s.mode == "train":
        short = [c.train.steps for c in configs if c.train.steps < 1]
        if short:
            raise ConfigError("sweep.mode=train: train.steps must be >= 1 in every trial")
        if s.scheduler == "asha" and s.asha_grace_period > max(c.train.steps for c in configs):
            raise ConfigError(f"sweep.asha_grace_period ({s.asha_grace_period}) exceeds train.steps")
    return configs


def trial_resources(cfg: S3Config) -> dict[str, float]:
    """What one trial reserves. Both kinds load the searcher in the trial process: an inference
    trial a CPU and `eval.task_gpus` GPUs (as an evaluation task); a training trial, one
    unsharded training process, a training worker's `train.cpus_per_worker`,
    `train.gpus_per_worker` and `train.worker_resources`. A GPU setting left unset is 1 when this
    process sees CUDA, else 0."""
    from s3_ray.resources import gpus_or_auto

    if cfg.sweep.mode == "inference":
        return {"cpu": 1, "gpu": gpus_or_auto(cfg.eval.task_gpus)}
    t = cfg.train
    return {**t.worker_resources, "cpu": t.cpus_per_worker, "gpu": gpus_or_auto(t.gpus_per_worker)}
