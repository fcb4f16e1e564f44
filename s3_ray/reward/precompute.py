"""Computing the naive-RAG baseline: top-k retrieval for the question to search for, answered by
the frozen generator, appended to the split's baseline file batch by batch (so a rerun resumes)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from s3_ray.config import S3Config
from s3_ray.reward.baseline_file import BaselineCache, BaselineError, BaselineRecord
from s3_ray.reward.fingerprint import open_baseline
from s3_ray.reward.judge import batch_genacc
from s3_ray.reward.metrics import exact_match
from s3_ray.reward.summary import summarize_split
from s3_ray.types import QAItem

if TYPE_CHECKING:  # annotations only: importing the package loads all its backends
    from s3_ray.generation.base import Answerer
    from s3_ray.retrieval.base import Retriever


def precompute_baseline(items: Sequence[QAItem], retriever: Retriever, generator: Answerer, k: int,
                        cache: BaselineCache, batch_size: int = 16, progress: bool = True) -> dict[str, int]:
    """Answer every item not yet in `cache` from its top-k passages and append the records.

    Each batch is one retrieval call and one generator call (plus one judge call when the
    cache's settings say `judge`), written to disk before the next
    starts, so an interrupted run loses at most one batch. Returns counts
    `{"total", "skipped", "computed"}`. The bar (`progress`) goes to the job's console.
    """
    from s3_ray.console import active

    if k != cache.settings.init_k:
        raise BaselineError(f"k={k} but {cache.path} is for init_k={cache.settings.init_k}")
    if generator.model_id != cache.settings.generator:
        raise BaselineError(f"generator {generator.model_id!r} but {cache.path} is for {cache.settings.generator!r}")
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    ids = [it.id for it in items]
    if len(set(ids)) != len(ids):
        raise ValueError("items contain duplicate question ids")
    todo = [it for it in items if it.id not in cache]
    bar = active().bar(len(todo), f"naive-RAG baseline ({cache.path.stem})", unit="q", enabled=progress and bool(todo))
    for lo in range(0, len(todo), batch_size):
        batch = todo[lo : lo + batch_size]
        hits = retriever.search([it.search_text for it in batch], k) if k > 0 else [[] for _ in batch]
        if len(hits) != len(batch):
            raise RuntimeError(f"retriever returned {len(hits)} hit lists for {len(batch)} queries")
        contexts = [[h.passage for h in row] for row in hits]
        answers = generator.answer([it.question for it in batch], contexts)
        accs = batch_genacc(answers, [it.golden_answers for it in batch],
                            judge_with=generator if cache.settings.judge else None)
        cache.append(
            BaselineRecord(id=it.id, question=it.question, answer=ans, genacc=acc,
                           em=exact_match(ans, it.golden_answers), context_ids=[p.id for p in ctx])
            for it, ans, acc, ctx in zip(batch, answers, accs, contexts)
        )
        bar.update(len(batch))
    bar.close()
    return {"total": len(items), "skipped": len(items) - len(todo), "computed": len(todo)}


def precompute_split(cfg: S3Config, split: str, retriever: Retriever, generator: Answerer,
                     batch_size: int = 16, progress: bool = True,
                     log: Callable[[str], None] = print) -> dict[str, Any]:
    """Precompute (or resume) the baseline of one split of `cfg` and log a summary.

    Returns `{"split", "path", "total", "computed", "skipped", "genacc", "em", "kept", "dropped"}`;
    kept/dropped are s3's training filter (naive RAG already right, or a yes/no question).
    """
    from s3_ray.console import shown_path
    from s3_ray.data.embedded import load_split

    items = load_split(cfg.data, split)
    cache = open_baseline(cfg, split)  # checks the settings before any work
    counts = precompute_baseline(items, retriever, generator, cfg.rollout.init_k, cache,
                                 batch_size=batch_size, progress=progress)
    log(f"baseline {split} ({shown_path(cache.path)}): {counts['total']} questions, {counts['computed']} computed, "
        f"{counts['skipped']} already stored")
    return {"split": split, "path": str(cache.path), **counts, **summarize_split(cfg, split, log)}
