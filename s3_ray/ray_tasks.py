"""One function over many jobs as Ray tasks, for work where every job saves its own result.

All jobs run to the end even when some fail; then one error names every failure, so nothing a
finished job did is lost and a rerun resumes only what is missing. Every wait is bounded and
says what is still running. `ray` is imported when the map runs, not here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

J = TypeVar("J")
R = TypeVar("R")

TaskMap = Callable[[Callable[[Any], Any], list[Any]], list[Any]]
"""`map_fn(fn, jobs) -> [fn(job) for job in jobs]`, in job order, wherever the jobs run."""


def ray_task_map(num_cpus: float, num_gpus: float = 0.0, *, what: str, label: Callable[[Any], str],
                 wait_s: float = 60.0, log: Callable[[str], None] = print,
                 needs_gpu: Callable[[Any], bool] | None = None) -> TaskMap:
    """A map running `fn(job)` as one Ray task per job (`num_cpus` / `num_gpus` each, one retry).

    `what` names the jobs in messages ("shard tasks"), `label(job)` names one job. With
    `needs_gpu`, only the jobs it accepts reserve `num_gpus` (the others, none). Raises
    `RuntimeError` listing every failed job once all have finished.
    """
    if num_cpus <= 0:
        raise ValueError(f"CPUs per task (--task-cpus) must be > 0, got {num_cpus}")
    if num_gpus < 0:
        raise ValueError(f"GPUs per task (--task-gpus) must be >= 0, got {num_gpus}")

    def options(gpus: float) -> dict[str, Any]:
        return {"num_cpus": num_cpus, "max_retries": 1, **({"num_gpus": gpus} if gpus else {})}

    def run(fn: Callable[[J], R], jobs: list[J]) -> list[R]:
        import ray

        tasks: dict[float, Any] = {}

        def submit(job: J) -> Any:
            gpus = num_gpus if needs_gpu is None or needs_gpu(job) else 0.0
            if gpus not in tasks:
                tasks[gpus] = ray.remote(**options(gpus))(fn)
            return tasks[gpus].remote(job)

        refs = [submit(job) for job in jobs]
        names = {ref: label(job) for ref, job in zip(refs, jobs)}
        results: dict[Any, R] = {}
        failed: list[str] = []
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=wait_s)
            for ref in ready:
                try:
                    results[ref] = ray.get(ref, timeout=wait_s)
                except Exception as err:  # noqa: BLE001 -- collected, reported together below
                    failed.append(f"{names[ref]}: {type(err).__name__}: {err}")
                    log(f"{names[ref]} failed: {err}")
            if not ready:
                log(f"{len(pending)} of {len(refs)} {what} still running: "
                    + ", ".join(names[r] for r in pending[:6]) + (" ..." if len(pending) > 6 else ""))
        if failed:
            raise RuntimeError(f"{len(failed)} of {len(refs)} {what} failed; the finished ones are saved and a "
                               "rerun resumes the rest:\n  " + "\n  ".join(failed))
        return [results[r] for r in refs]

    return run
