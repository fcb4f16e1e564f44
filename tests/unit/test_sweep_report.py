"""A sweep's pieces without Ray: the stored-config check of a resume, one row per trial result, and
the report (table and plot) of both sweep modes."""

from __future__ import annotations

import types
from pathlib import Path

import pytest

from s3_ray.config import ConfigError, load_config
from s3_ray.sweep.report import write_sweep_report
from s3_ray.sweep.results import result_rows
from s3_ray.sweep.resume import check_resumable, store_config


def test_resume_needs_the_stored_config_unchanged(tmp_path: Path) -> None:
    cfg = load_config(None, [f"run_dir={tmp_path}", "sweep.param_space={rollout.init_k: [1, 3]}"])
    with pytest.raises(FileNotFoundError, match="the config of sweep 'budgets' is missing"):
        check_resumable(cfg, "budgets")
    assert store_config(cfg, "budgets") == (tmp_path / "ray" / "budgets.config.json").resolve()
    check_resumable(cfg, "budgets")
    with pytest.raises(ConfigError, match=r"sweep.param_space: \{'rollout.init_k': \[1, 3\]\} -> "
                                          r"\{'rollout.init_k': \[1, 2\]\}"):
        check_resumable(cfg.with_overrides({"sweep.param_space": {"rollout.init_k": [1, 2]}}), "budgets")
    with pytest.raises(ConfigError, match="sweep.max_concurrent: 1 -> 2"):
        check_resumable(cfg.with_overrides({"sweep.max_concurrent": 2}), "budgets")


class _Frame(dict):
    """The one thing `result_rows` reads of a metrics dataframe: a column by name."""


def _result(config, metrics=None, error=None, history=None):
    frame = _Frame(genacc=history) if history is not None else None
    return types.SimpleNamespace(config=config, metrics=metrics or {}, error=error, metrics_dataframe=frame)


def test_training_rows_tell_asha_stops_from_guard_stops_and_errors(tmp_path: Path) -> None:
    cfg = load_config(None, ["sweep.mode=train", "train.steps=3", "sweep.param_space={train.lr: [1.0e-5, 1.0e-4]}"])
    rows = result_rows([
        _result({"train.lr": 1e-4}, {"training_iteration": 3, "time_total_s": 9.0}, history=[0.1, 0.4, 0.3]),
        _result({"train.lr": 1e-5}, {"training_iteration": 1}, history=[0.05]),
        _result({"train.lr": 1e-5}, {"training_iteration": 2, "stop_reason": "collapse guard: x"}, history=[0.2, 0.1]),
        _result({"train.lr": 1e-5}, {"time_total_s": 1.0}, error=RuntimeError("worker died")),
    ], cfg)
    full, asha, guard, failed = rows
    assert (full["last"], full["best"], full["steps"], full["stopped_early"]) == (0.3, 0.4, 3, False)
    assert full["seconds"] == 9.0 and full["planned_steps"] == 3
    assert asha["stopped_early"] and asha["steps"] == 1
    assert not guard["stopped_early"] and guard["stop_reason"] == "collapse guard: x"
    assert failed == {"config": {"train.lr": 1e-5}, "seconds": 1.0, "error": "worker died"}
    low = result_rows([_result({"train.lr": 1e-4}, {"training_iteration": 3}, history=[0.4, 0.1, 0.3])],
                      cfg.with_overrides({"sweep.metric_mode": "min"}))
    assert low[0]["best"] == 0.1

    md = write_sweep_report(rows, tmp_path / "report", mode="train")
    text = md.read_text()
    assert text.startswith("# Training sweep (genacc)")
    assert "| 0.0001 | 0.300 | 0.400 | 3/3 | no |" in text and "| 1e-05 | 0.050 | 0.050 | 1/3 | ASHA |" in text
    assert "| collapse guard |" in text and "| error: worker died |" in text
    assert (md.parent / "curves.png").stat().st_size > 1000 and (md.parent / "results.json").is_file()


def test_inference_rows_and_report(tmp_path: Path) -> None:
    cfg = load_config(None, ["sweep.param_space={rollout.top_k: [3, 5]}"])
    metrics = {"genacc": 0.25, "em": 0.1, "context_docs": 2.5, "context_words": 310.0, "searches": 1.5,
               "time_total_s": 4.0, "reward": 9.9}
    rows = result_rows([_result({"rollout.top_k": 3}, metrics),
                        _result({"rollout.top_k": 5}, error=RuntimeError("retriever down"))], cfg)
    assert rows[0] == {"config": {"rollout.top_k": 3}, "seconds": 4.0, "genacc": 0.25, "em": 0.1,
                       "context_docs": 2.5, "context_words": 310.0, "searches": 1.5}  # only the inference keys
    md = write_sweep_report(rows, tmp_path / "report")
    assert md.read_text().splitlines()[2:] == [
        "| rollout.top_k | GenAcc | docs / question | context words | searches |", "|---|---|---|---|---|",
        "| 3 | 25.0 | 2.50 | 310 | 1.50 |", "| 5 | error: retriever down |  |  |  |"]
    assert (tmp_path / "report" / "pareto.png").stat().st_size > 1000
