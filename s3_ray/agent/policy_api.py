"""The contract every searcher rollout policy keeps, whatever engine runs it.

A policy takes token ids in and returns one protocol turn of new token ids per sequence. Every
engine (`HFPolicy`, `VLLMPolicy`, `ScriptedPolicy`) checks its inputs the same way, ends a turn at
exactly the same token (`stop_length`) and keeps the same running totals (`PolicyStats`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

STOP_RE = re.compile(
    r"</query>|<search_complete>\s*(?:true|yes|1|y)\s*</search_complete>", re.IGNORECASE
)
"""A turn is over once its generated text contains one of these."""

TAIL_TOKENS = 48
"""Tokens decoded from the end of a row to look for a stop tag (longer than any tag)."""


class Policy(Protocol):
    """Anything that writes one searcher turn per sequence."""

    def generate(self, seqs: list[list[int]]) -> list[list[int]]:
        ...


@dataclass
class PolicyStats:
    """Running totals; `as_dict` gives throughput for logging."""

    calls: int = 0
    sequences: int = 0
    tokens_generated: int = 0
    seconds: float = 0.0
    prefill_tokens: int = 0      # rows x positions read before decoding (padding included)
    prefill_seconds: float = 0.0  # until the first new token; the rest of `seconds` is decoding

    def add(self, n_seqs: int, n_tokens: int, seconds: float, prefill_tokens: int = 0,
            prefill_seconds: float = 0.0) -> None:
        self.calls += 1
        self.sequences += n_seqs
        self.tokens_generated += n_tokens
        self.seconds += seconds
        self.prefill_tokens += prefill_tokens
        self.prefill_seconds += prefill_seconds

    def as_dict(self) -> dict[str, float]:
        """
        >>> PolicyStats(calls=2, sequences=4, tokens_generated=10, seconds=5.0).as_dict()["tokens_per_s"]
        2.0
        """
        rate = self.tokens_generated / self.seconds if self.seconds > 0 else 0.0
        return {
            "calls": float(self.calls),
            "sequences": float(self.sequences),
            "tokens_generated": float(self.tokens_generated),
            "seconds": self.seconds,
            "tokens_per_s": rate,
            "prefill_tokens": float(self.prefill_tokens),
            "prefill_seconds": self.prefill_seconds,
            "decode_seconds": max(0.0, self.seconds - self.prefill_seconds),
        }


def has_stop(text: str) -> bool:
    """Whether generated text contains a turn-ending tag.

    >>> has_stop('<query>{"query": "x"}</query>'), has_stop("<search_complete>False</search_complete>")
    (True, False)
    >>> has_stop("<search_complete> yes </search_complete>")
    True
    """
    return STOP_RE.search(text) is not None


def stop_length(tokenizer: Any, ids: Sequence[int]) -> int | None:
    """Length of the shortest prefix of `ids` whose text ends a turn, or None.

    Checks the decoded tail after each token, exactly as the stopping criterion does during
    generation, so both agree on where a row ends.
    """
    for n in range(1, len(ids) + 1):
        if has_stop(tokenizer.decode(list(ids[max(0, n - TAIL_TOKENS) : n]), skip_special_tokens=True)):
            return n
    return None


def check_seqs(seqs: Sequence[Sequence[int]]) -> None:
    """Every policy input must hold at least its prompt.

    >>> check_seqs([[1], []])
    Traceback (most recent call last):
    ValueError: seqs[1] is empty; every sequence needs at least its prompt
    """
    for i, s in enumerate(seqs):
        if len(s) == 0:
            raise ValueError(f"seqs[{i}] is empty; every sequence needs at least its prompt")


def strip_trailing(ids: list[int], drop: set[int]) -> list[int]:
    """Remove trailing ids in `drop` (pad / eos).

    >>> strip_trailing([5, 6, 0, 0], {0})
    [5, 6]
    """
    end = len(ids)
    while end > 0 and ids[end - 1] in drop:
        end -= 1
    return ids[:end]
