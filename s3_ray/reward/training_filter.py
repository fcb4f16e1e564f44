"""s3's training filter: train only on questions the naive RAG gets wrong, never on yes/no ones."""

from __future__ import annotations

import random
from collections.abc import Sequence

from s3_ray.reward.baseline_file import BaselineCache
from s3_ray.types import QAItem

_YES_NO = frozenset({"yes", "no", "true", "false"})


def is_yes_no(item: QAItem) -> bool:
    """s3 drops questions with a yes/no/true/false gold answer from training.

    >>> is_yes_no(QAItem("1", "Is it?", ("Yes",))), is_yes_no(QAItem("2", "Who?", ("Yesenia",)))
    (True, False)
    """
    return any(a.strip().lower() in _YES_NO for a in item.golden_answers)


def filter_unanswered(items: Sequence[QAItem], cache: BaselineCache, keep_solved_fraction: float = 0.0,
                      seed: int = 0) -> tuple[list[QAItem], int]:
    """s3's training filter: keep questions the naive RAG gets wrong, drop yes/no questions.

    `keep_solved_fraction` keeps that share of the questions naive RAG already answers (a seeded
    sample), as "do no harm" training questions: there the best a searcher can do is not to
    spoil the context (reward 0 for keeping naive RAG's answer, -1 for losing it). 0 is s3's
    filter. Every item must have a baseline record (else BaselineMissing). Returns (kept in split
    order, dropped_count).
    """
    if not 0.0 <= keep_solved_fraction <= 1.0:
        raise ValueError(f"keep_solved_fraction must be in [0, 1], got {keep_solved_fraction}")
    candidates = [it for it in items if not is_yes_no(it)]
    solved = [it for it in candidates if cache.get(it.id).genacc >= 1.0]
    chosen = {it.id for it in random.Random(seed).sample(solved, round(keep_solved_fraction * len(solved)))}
    kept = [it for it in candidates if cache.get(it.id).genacc < 1.0 or it.id in chosen]
    return kept, len(items) - len(kept)
