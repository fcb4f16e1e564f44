"""Sharding the naive-RAG precompute over workers, without losing or repeating work.

The baseline of a split is one JSONL file with one writer. To answer a large training set on
many workers (each with its own retriever and generator, e.g. one GPU each), the questions not
yet in that file are split into `n` shards by a stable hash of their id; worker `i` fills its own
*shard file* next to the main one (`<split>.shard-<i>-of-<n>.jsonl`, same header and format, so a
worker that dies keeps its finished batches). When every worker is done, the driver merges the
shard files into the main file and deletes them.

A rerun after a crash first merges whatever shard files exist (from any earlier shard count;
records already in the main file are skipped, so a crash half-way through a merge is harmless),
then shards only the questions still missing. Nothing finished is recomputed.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from s3_ray.reward.baseline_file import BaselineCache
from s3_ray.types import QAItem

_SHARD_NAME = re.compile(r"\.shard-(\d+)-of-(\d+)\.jsonl$")


def shard_of(qid: str, n: int) -> int:
    """The shard (0..n-1) a question id belongs to; stable across runs, machines and Python versions.

    >>> [shard_of(q, 3) for q in ("a", "b", "a")] == [shard_of("a", 3), shard_of("b", 3), shard_of("a", 3)]
    True
    >>> shard_of("anything", 1)
    0
    """
    if n < 1:
        raise ValueError(f"shards must be >= 1, got {n}")
    return int.from_bytes(hashlib.sha1(qid.encode("utf-8")).digest()[:8], "big") % n


def shard_path(main: Path, index: int, n: int) -> Path:
    """Where shard `index` of `n` writes: next to the main file.

    >>> shard_path(Path("runs/baseline/train.jsonl"), 1, 4).name
    'train.shard-1-of-4.jsonl'
    """
    if not 0 <= index < n:
        raise ValueError(f"shard index {index} out of range for {n} shards")
    return main.with_name(f"{main.stem}.shard-{index}-of-{n}{main.suffix}")


def existing_shards(main: Path) -> list[Path]:
    """Shard files of `main` left by an earlier (possibly crashed) run, in a stable order."""
    if not main.parent.is_dir():
        return []
    found = [p for p in main.parent.glob(f"{main.stem}.shard-*-of-*{main.suffix}") if _SHARD_NAME.search(p.name)]
    return sorted(found)


def plan_shards(items: Sequence[QAItem], main: BaselineCache, n: int) -> list[list[QAItem]]:
    """The questions not yet in `main`, split into `n` lists by `shard_of` (input order kept)."""
    ids = [it.id for it in items]
    if len(set(ids)) != len(ids):
        raise ValueError("items contain duplicate question ids")
    shards: list[list[QAItem]] = [[] for _ in range(n)]
    for it in items:
        if it.id not in main:
            shards[shard_of(it.id, n)].append(it)
    return shards


def merge_shards(main: BaselineCache, order: Sequence[str] = ()) -> int:
    """Append the records of every shard file that `main` lacks, then delete the shard files.

    Shard files are opened with `main`'s settings, so one made with other settings is an error
    naming it (and is left in place). Records follow `order` (question ids) where given, then
    file order. Returns how many records were added.
    """
    rank = {qid: i for i, qid in enumerate(order)}
    paths = existing_shards(main.path)
    new = {}
    for path in paths:  # every shard is read (and its settings checked) before anything is written
        shard = BaselineCache(path, main.settings)
        new.update((qid, shard.get(qid)) for qid in shard.ids() if qid not in main)
    records = sorted(new.values(), key=lambda r: rank.get(r.id, len(rank)))
    added = main.append(records) if records else 0
    for path in paths:
        path.unlink()
    return added


def precompute_sharded(items: Sequence[QAItem], main: BaselineCache, n: int,
                       run: Callable[[list[tuple[int, Path, list[QAItem]]]], None]) -> dict[str, int]:
    """Recover earlier shards, run the missing work as `n` shards, merge. Returns counts.

    `run` receives `[(index, shard_file, questions), ...]` for the non-empty shards and must fill
    each shard file (e.g. one Ray task per shard calling `precompute_baseline` on a
    `BaselineCache(shard_file, main.settings)`); it returns when all are done or raises.
    Counts: `{"total", "skipped", "computed", "recovered", "shards"}`.
    """
    if n < 1:
        raise ValueError(f"shards must be >= 1, got {n}")
    order = [it.id for it in items]
    before = sum(1 for qid in order if qid in main)
    recovered = merge_shards(main, order)
    plan = plan_shards(items, main, n)
    jobs = [(i, shard_path(main.path, i, n), qs) for i, qs in enumerate(plan) if qs]
    if jobs:
        run(jobs)
    computed = merge_shards(main, order)
    missing = [qid for qid in order if qid not in main]
    if missing:
        raise RuntimeError(f"{len(missing)} questions have no baseline after every shard finished "
                           f"(first: {missing[0]!r}); rerun to resume")
    return {"total": len(items), "skipped": before, "computed": computed,
            "recovered": recovered, "shards": len(jobs)}
