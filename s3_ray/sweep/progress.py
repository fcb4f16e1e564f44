"""A sweep on the console: a bar over its trials and one line per trial that ends.

Tune runs the trials' loop in the driver and tells its callbacks when a trial ends;
`trial_progress` returns such a callback. Tune pickles its run config (callbacks included) to
resume a sweep, so the callback pickles as the call that makes it, and it draws on whatever
console is active when an event arrives. `ray` is imported when the callback is made.
"""

from __future__ import annotations

from typing import Any

from s3_ray.console.bars import Bar


def trial_line(config: dict[str, Any], result: dict[str, Any], metric: str, status: str) -> str:
    """The console line of an ended trial.

    >>> trial_line({"rollout.top_k": 3, "seed": 7}, {"genacc": 0.4167, "training_iteration": 2}, "genacc", "done")
    'trial done: rollout.top_k=3 seed=7  genacc 0.417 after 2 reports'
    >>> trial_line({"train.lr": 1e-05}, {}, "reward", "failed")
    'trial failed: train.lr=1e-05  reward -'
    """
    params = " ".join(f"{k}={v}" for k, v in sorted(config.items()))
    value = result.get(metric)
    shown = f"{value:.3f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"
    reports = result.get("training_iteration")
    tail = f" after {reports} reports" if isinstance(reports, int) else ""
    return f"trial {status}: {params}  {metric} {shown}{tail}"


def trial_progress(total: int, metric: str) -> Any:
    """A `ray.tune.Callback` showing the sweep's `total` trials on the active console."""
    from ray import tune

    from s3_ray.console import active

    class TrialProgress(tune.Callback):
        def __init__(self) -> None:
            self.bar: Bar | None = None

        def __reduce__(self) -> tuple[Any, tuple[int, str]]:
            return trial_progress, (total, metric)

        def _ended(self, trials: list[Any]) -> int:
            return sum(1 for t in trials if t.status in ("TERMINATED", "ERROR"))

        def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
            if self.bar is None:
                self.bar = active().bar(total, "trials", unit="trial", initial=self._ended(trials))
            self.bar.set(self._ended(trials))

        def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            active().info(trial_line(trial.config, trial.last_result or {}, metric, "done"))

        def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            active().info(trial_line(trial.config, trial.last_result or {}, metric, "failed") +
                          "  (its error is in the log; rerunning the sweep retries it)")

        def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
            if self.bar is not None:
                self.bar.set(self._ended(trials))
                self.bar.close()

    return TrialProgress()
