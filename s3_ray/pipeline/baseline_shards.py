"""The naive-RAG baseline of a split computed as shards, one Ray task per shard.

The questions still missing are split by id (`s3_ray.reward.shards`); every task answers its
shard into its own shard file, and the shard files are merged into the split's baseline at the
end, or, when a task failed, as far as they got. A rerun recovers shard files a crashed run left.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from s3_ray.config import S3Config
from s3_ray.types import QAItem

ShardTask = Callable[[str, list[QAItem]], int]
"""`task(shard_file, questions) -> records computed`; runs in a Ray task, so it must pickle."""


def fill_shard(cfg: S3Config, shard_file: str, items: list[QAItem], retriever: Any, generator: Any,
               batch_size: int) -> int:
    """Answer `items` into `shard_file` (with the split's baseline settings); returns how many."""
    from s3_ray.reward.baseline_file import BaselineCache
    from s3_ray.reward.fingerprint import baseline_settings
    from s3_ray.reward.precompute import precompute_baseline

    cache = BaselineCache(shard_file, baseline_settings(cfg))
    counts = precompute_baseline(items, retriever, generator, cfg.rollout.init_k, cache,
                                 batch_size=batch_size, progress=False)
    return counts["computed"]


def run_sharded(cfg: S3Config, split: str, shards: int, task: ShardTask, task_cpus: float = 1.0,
                task_gpus: float = 0.0, log: Callable[[str], None] = print) -> dict[str, int]:
    """Split the missing questions of `split` over `shards` Ray tasks running `task`; every shard
    file is merged at the end. Returns `precompute_sharded`'s counts."""
    from s3_ray.console import shown_path
    from s3_ray.data.embedded import load_split
    from s3_ray.ray_tasks import ray_task_map
    from s3_ray.reward.fingerprint import open_baseline
    from s3_ray.reward.shards import merge_shards, precompute_sharded

    items = load_split(cfg.data, split)
    main = open_baseline(cfg, split)
    map_fn = ray_task_map(task_cpus, task_gpus, what="shard tasks", label=lambda job: f"shard {job[0]}", log=log)

    def fill(job: tuple[int, Path, list[QAItem]]) -> int:
        return task(str(job[1]), job[2])

    def run(jobs: list[tuple[int, Path, list[QAItem]]]) -> None:
        log(f"{sum(len(qs) for _, _, qs in jobs)} questions over {len(jobs)} shard tasks")
        try:
            map_fn(fill, jobs)
        except RuntimeError:
            merge_shards(main, [it.id for it in items])  # keep what the finished shards computed
            raise

    counts = precompute_sharded(items, main, shards, run)
    log(f"baseline {split} ({shown_path(main.path)}): {counts['total']} questions, {counts['computed']} computed "
        f"in {counts['shards']} shards, {counts['recovered']} recovered from shard files, "
        f"{counts['skipped']} already stored")
    return counts
