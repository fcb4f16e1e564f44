"""Chain of thought without retrieval: an LM reasons about the question; the reasoning is the context.

The paper's CoT baseline lets the generator reason and answer. Here the reasoning is handed to the
frozen generator as a single "Reasoning" passage, so CoT is judged by the same generator and
metrics as every other method (with the generator's own model as `baseline_model` this is the
paper's setup split in two calls). CoT reasons towards the answer, so unlike the searching methods
it sees the full question (MIRAGE: with its options).
"""

from __future__ import annotations

from typing import Any

from s3_ray.eval.base import MethodOutput
from s3_ray.types import Passage, QAItem, TurnRecord

SYSTEM = ("Think step by step about the question. Write your reasoning in a few short sentences, "
          "then give the final answer inside <answer> and </answer>.")
STOPS = ("</answer>",)


def reasoning_passage(item: QAItem, text: str) -> list[Passage]:
    """The reasoning as one passage (none when the model wrote nothing).

    >>> reasoning_passage(QAItem("q1", "Who?", ("x",)), " It was Ada. ")[0].contents
    '"Reasoning"\\nIt was Ada.'
    >>> reasoning_passage(QAItem("q1", "Who?", ("x",)), "  ")
    []
    """
    text = text.strip()
    return [Passage(f"cot:{item.id}", f'"Reasoning"\n{text}')] if text else []


class CoTMethod:
    """No retrieval; the context is the LM's reasoning chain."""

    def __init__(self, lm: Any, name: str = "cot") -> None:
        self.lm, self.name = lm, name

    def contexts(self, items: list[QAItem]) -> list[MethodOutput]:
        prompts = [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": q.question}] for q in items]
        texts = self.lm.complete(prompts, stops=STOPS)
        return [MethodOutput(passages=reasoning_passage(q, t), lm_calls=1,
                             trace=[TurnRecord(text=t, complete="</answer>" in t,
                                               malformed=None if t.strip() else "empty reasoning")])
                for q, t in zip(items, texts)]
