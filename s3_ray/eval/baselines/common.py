"""Small helpers the baselines share: de-duplication and the LM. (What to search for a question
is `QAItem.search_text`.)"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from s3_ray.types import Passage


def dedup(passages: Iterable[Passage]) -> list[Passage]:
    """First occurrence of every passage id, in order.

    >>> [p.id for p in dedup([Passage("a", "x"), Passage("b", "y"), Passage("a", "x")])]
    ['a', 'b']
    """
    seen: set[str] = set()
    out = []
    for p in passages:
        if p.id not in seen:
            seen.add(p.id)
            out.append(p)
    return out


def make_lm(model: str, searcher: Any = None, eval_cfg: Any = None) -> Any:
    """The baseline LM from the eval config (`baseline_model`, else `model`) and searcher threads."""
    from s3_ray.config import EvalConfig
    from s3_ray.eval.baselines.lm import GreedyLM

    cfg = eval_cfg if eval_cfg is not None else EvalConfig()
    threads = getattr(searcher, "num_threads", 2)
    return GreedyLM(cfg.baseline_model or model, max_new_tokens=cfg.baseline_max_new_tokens,
                    max_prompt_tokens=cfg.baseline_max_prompt_tokens, num_threads=threads)
