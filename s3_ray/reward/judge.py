"""GenAcc for a batch of answers: span match first, then one batched LLM-judge call for the answers
it rejects (the generator judges them), as s3 scores both the reward and the baseline."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from s3_ray.reward.metrics import genacc

if TYPE_CHECKING:  # annotations only: importing the package loads all its backends
    from s3_ray.generation.base import Answerer


def batch_genacc(preds: Sequence[str], golds: Sequence[Sequence[str]],
                 judge_with: Answerer | None = None) -> list[float]:
    """GenAcc for many answers: span match, then one batched judge call for the rejected ones.

    >>> batch_genacc(["Paris, France", "Rome"], [["paris"], ["Oslo"]])
    [1.0, 0.0]
    """
    from s3_ray.generation.prompt import build_judge_messages, parse_judge_reply

    if len(preds) != len(golds):
        raise ValueError(f"{len(preds)} predictions but {len(golds)} gold lists")
    accs = [genacc(p, g) for p, g in zip(preds, golds)]
    rejected = [i for i, a in enumerate(accs) if a == 0.0]
    if judge_with is not None and rejected:
        replies = judge_with.generate([build_judge_messages(preds[i], golds[i]) for i in rejected])
        for i, reply in zip(rejected, replies):
            accs[i] = 1.0 if parse_judge_reply(reply) else 0.0
    return accs
