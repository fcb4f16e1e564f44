"""Metrics logging: always a local JSONL file, plus wandb when enabled (offline by default).

wandb problems never stop a run: if it cannot start, the reason is printed once and the run goes
on with the JSONL file alone.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from s3_ray.config import WandbConfig


class MetricsLogger:
    def __init__(self, path: str | os.PathLike[str], wandb_cfg: WandbConfig | None = None,
                 run_name: str | None = None, config: dict[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._wandb = None
        if wandb_cfg is not None and wandb_cfg.enabled and wandb_cfg.mode != "disabled":
            self._wandb = _start_wandb(wandb_cfg, run_name, config, self.path.parent)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        record = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self._wandb is not None:
            try:
                self._wandb.log(record, step=step)
            except Exception as err:  # logging must never kill training
                print(f"[s3-ray] wandb logging disabled: {err}", file=sys.stderr)
                self._wandb = None

    def close(self) -> None:
        if self._wandb is not None:
            try:
                self._wandb.finish()
            except Exception as err:
                print(f"[s3-ray] wandb finish failed: {err}", file=sys.stderr)
            self._wandb = None


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Records of a metrics JSONL file; a torn last line (crash mid-write) is skipped."""
    p = Path(path)
    if not p.is_file():
        return []
    out = []
    for line in p.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def _plain(v: Any) -> Any:
    if hasattr(v, "item"):
        return v.item()
    return v


def _start_wandb(cfg: WandbConfig, run_name: str | None, config: dict[str, Any] | None, folder: Path):
    try:
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        return wandb.init(project=cfg.project, name=run_name, mode=cfg.mode, dir=str(folder),
                          config=config or {}, reinit="finish_previous")
    except Exception as err:
        print(f"[s3-ray] wandb not started ({err}); metrics go to {folder} only", file=sys.stderr)
        return None
