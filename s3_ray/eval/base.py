"""What every context method is: questions in, one `MethodOutput` (passages and cost) per question out.

The registry of methods (`s3_ray.eval.methods`) and the prompting baselines
(`s3_ray.eval.baselines`) both build on this module, so neither imports the other's internals.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from s3_ray.types import Passage, QAItem, TurnRecord


@dataclass
class MethodOutput:
    """The context of one question and what producing it cost.

    `lm_calls` counts the generations the method's own LM (searcher or baseline) made for this
    question; the frozen generator's calls are counted by the runner."""

    passages: list[Passage]
    trace: list[TurnRecord] = field(default_factory=list)
    searches: int = 0
    lm_calls: int = 0


class ContextMethod(Protocol):
    name: str

    def contexts(self, items: list[QAItem]) -> list[MethodOutput]: ...
