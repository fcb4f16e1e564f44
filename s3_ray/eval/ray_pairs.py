"""The `PairMap` that runs every (method, data set) pair as its own Ray task.

A task builds its method in the worker (from the pair's `MethodRef`, loading its model there)
and calls the retriever and generator through picklable clients. Every pair writes its own
JSONL, so a failed pair loses nothing the others did (`s3_ray.ray_tasks`), and the driver shows
one bar per pair that follows its file.
"""

from __future__ import annotations

from collections.abc import Callable

from s3_ray.eval.runner import PairJob, PairMap, pair_label, record_path
from s3_ray.ray_tasks import ray_task_map

DEFAULT_TASK_CPUS = 0.5
"""Logical CPUs a (method, data set) Ray task reserves: the heavy work (retrieval, the frozen
generator) runs in the Serve apps, so a task mostly waits on them or runs a small LM."""


def ray_map(num_cpus: float = DEFAULT_TASK_CPUS, wait_s: float = 60.0,
            log: Callable[[str], None] = print, num_gpus: float = 0.0) -> PairMap:
    """A `PairMap` running each (method, data set) pair as a Ray task of `num_cpus` logical CPUs,
    plus `num_gpus` GPUs for a pair whose method loads a language model (`MethodRef.loads_model`:
    the searchers and LM baselines; Ray gives a task that requests none no GPU of its own, and
    `load_causal_lm` refuses CUDA there): all pairs run to the end, then one error names every
    failure (rerun to resume them)."""
    from s3_ray.console import active
    from s3_ray.console.tail import RecordFile, follow_record_files

    run = ray_task_map(num_cpus, num_gpus, what="(method, data set) pairs", label=pair_label, wait_s=wait_s,
                       log=log, needs_gpu=lambda job: getattr(job.method, "loads_model", True))

    def mapped(fn: Callable[[PairJob], dict[str, float]], jobs: list[PairJob]) -> list[dict[str, float]]:
        files = [RecordFile(pair_label(j), record_path(j.out_dir, j.method.name), len(j.items)) for j in jobs]
        with follow_record_files(files, active()):
            return run(fn, jobs)

    return mapped
