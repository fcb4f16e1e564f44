"""What a finished baseline says: the naive RAG's accuracy on a split and what s3's training
filter keeps of it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from s3_ray.config import S3Config
from s3_ray.reward.fingerprint import open_baseline
from s3_ray.reward.training_filter import filter_unanswered


def summarize_split(cfg: S3Config, split: str, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Naive-RAG accuracy of a finished split and what s3's training filter keeps; logged (the
    filter only for the train split, the one it applies to) and returned.

    Every question of the split must have a record (else BaselineMissing naming it).
    Returns `{"genacc", "em", "kept", "dropped"}`.
    """
    from s3_ray.data.embedded import load_split

    items = load_split(cfg.data, split)
    cache = open_baseline(cfg, split)
    records = [cache.get(it.id) for it in items]
    n = max(len(records), 1)
    kept, dropped = filter_unanswered(items, cache)
    out = {"genacc": sum(r.genacc for r in records) / n, "em": sum(r.em for r in records) / n,
           "kept": len(kept), "dropped": dropped}
    log(f"naive RAG (init_k={cfg.rollout.init_k}, {cfg.generator.model}): genacc={out['genacc']:.3f} "
        f"em={out['em']:.3f}")
    if split == "train":
        log(f"s3 training filter keeps {len(kept)} of {len(items)} ({dropped} answered by naive RAG or yes/no)")
    return out
