"""Shards of an index built in parallel, one Ray task per shard (see `s3_ray.retrieval.shards`).

Each task reads its rows of the corpus, counts or builds that shard (a dense shard loads the
encoder and encodes its own passages) and writes the shard folder, so the index folder must be
on storage every node sees. `ray` is imported when the tasks run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from s3_ray.retrieval.shards import ShardMap


def ray_shard_map(cpus_per_task: float = 1.0, gpus_per_task: float = 0.0) -> ShardMap:
    """A `ShardMap` running each item as a Ray task with these resources, results in order."""
    if cpus_per_task <= 0 or gpus_per_task < 0:
        raise ValueError(f"cpus_per_task must be > 0 and gpus_per_task >= 0, got {cpus_per_task}, {gpus_per_task}")

    def run(fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        import ray

        task = ray.remote(num_cpus=cpus_per_task, num_gpus=gpus_per_task, max_retries=1)(fn)
        return ray.get([task.remote(item) for item in items])

    return run
