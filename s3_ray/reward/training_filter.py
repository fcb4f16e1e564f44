"""s3's training filter: train only on questions the naive RAG gets wrong, never on yes/no ones."""

from __future__ import annotations

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


def filter_unanswered(items: Sequence[QAItem], cache: BaselineCache) -> tuple[list[QAItem], int]:
    """s3's training filter: keep questions the naive RAG gets wrong, drop yes/no questions.

    Every item must have a baseline record (else BaselineMissing). Returns (kept, dropped_count).
    """
    kept = [it for it in items if not is_yes_no(it) and cache.get(it.id).genacc < 1.0]
    return kept, len(items) - len(kept)
