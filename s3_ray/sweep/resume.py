"""A sweep's stored config: written when the sweep starts, compared when it is resumed.

Tune resumes a sweep's remaining trials with the config it was started with, so a resumed sweep
whose config changed would mix two experiments; `check_resumable` refuses that by name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from s3_ray.config import ConfigError, S3Config
from s3_ray.sweep.grid import experiment_dir


def stored_config_path(cfg: S3Config, name: str) -> Path:
    """`<run_dir>/ray/<name>.config.json`, beside the sweep's Tune folder."""
    return experiment_dir(cfg, name).parent / f"{name}.config.json"


def store_config(cfg: S3Config, name: str) -> Path:
    """Write the config a new sweep starts with."""
    path = stored_config_path(cfg, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cfg.model_dump(), indent=2))
    return path


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys of a nested config dict; `sweep.param_space` stays one value.

    >>> _flat({"a": {"b": 1}, "sweep": {"param_space": {"x.y": [1]}}})
    {'a.b': 1, 'sweep.param_space': {'x.y': [1]}}
    """
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and not (prefix == "sweep." and k == "param_space"):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_resumable(cfg: S3Config, name: str) -> None:
    """A resumed sweep runs its remaining trials with the stored config, so the new one must match."""
    stored_path = stored_config_path(cfg, name)
    if not stored_path.is_file():
        raise FileNotFoundError(f"{stored_path}: the config of sweep {name!r} is missing; start another with --name")
    stored = _flat(json.loads(stored_path.read_text()))
    now = _flat(json.loads(json.dumps(cfg.model_dump())))
    diff = sorted(k for k in stored.keys() | now.keys() if stored.get(k) != now.get(k))
    if diff:
        shown = ", ".join(f"{k}: {stored.get(k)!r} -> {now.get(k)!r}" for k in diff[:5])
        raise ConfigError(f"sweep {name!r} in {stored_path.parent} was started with another config ({shown}); "
                          "resume it unchanged or start another sweep with --name")
