"""One row per finished Tune trial: its config and metrics (inference), or its learning curve (train)."""

from __future__ import annotations

from typing import Any

from s3_ray.config import S3Config

INFERENCE_KEYS = ("genacc", "em", "context_docs", "context_words", "searches")
"""The metrics an inference trial reports, copied into its row."""


def result_rows(results: Any, cfg: S3Config) -> list[dict[str, Any]]:
    """One dict per trial: its config and metrics (inference), or last/best metric, steps and
    whether the scheduler stopped it early (train). An errored trial's row holds its error."""
    metric, best_of = cfg.sweep.metric, (max if cfg.sweep.metric_mode == "max" else min)
    rows = []
    for res in results:
        row: dict[str, Any] = {"config": res.config, "seconds": (res.metrics or {}).get("time_total_s")}
        if res.error:
            rows.append({**row, "error": str(res.error)})
            continue
        if cfg.sweep.mode == "inference":
            rows.append({**row, **{k: res.metrics.get(k) for k in INFERENCE_KEYS}})
            continue
        df = res.metrics_dataframe
        history = [float(v) for v in df[metric]] if df is not None and metric in df else []
        steps = int(res.metrics.get("training_iteration", 0))
        planned = cfg.with_overrides(res.config).train.steps
        rows.append({**row, "last": history[-1] if history else None, "best": best_of(history) if history else None,
                     "steps": steps, "planned_steps": planned,
                     "stopped_early": steps < planned and not res.metrics.get("stop_reason"),
                     "stop_reason": res.metrics.get("stop_reason"), "history": history})
    return rows
