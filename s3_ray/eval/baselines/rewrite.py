"""DeepRetrieval-style query rewriting: an LM rewrites the question into one query; top-k of it.

DeepRetrieval's models answer with `<answer>{"query": "..."}</answer>`. A reply that does not
parse falls back to the original question, and the turn is marked malformed in the trace, so the
rate of unusable rewrites shows up in the records.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from s3_ray.eval.base import MethodOutput
from s3_ray.types import QAItem, TurnRecord

if TYPE_CHECKING:  # annotations only: importing the package loads all its backends
    from s3_ray.retrieval.base import Retriever

SYSTEM = ("Rewrite the user's question into one effective search-engine query that finds the "
          'documents needed to answer it. Reply only with <answer>{"query": "..."}</answer>.')
STOPS = ("</answer>",)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def parse_rewrite(text: str) -> str | None:
    """The rewritten query, or None when the reply breaks the format.

    >>> parse_rewrite('<answer>{"query": "Alder Town founder"}</answer>')
    'Alder Town founder'
    >>> parse_rewrite("<answer>not json</answer>") is None, parse_rewrite('{"query": "x"}') is None
    (True, True)
    """
    m = _ANSWER.search(text)
    if not m:
        return None
    try:
        obj = json.loads(m.group(1).strip())
    except json.JSONDecodeError:
        return None
    query = obj.get("query") if isinstance(obj, dict) else None
    return query.strip() if isinstance(query, str) and query.strip() else None


class RewriteMethod:
    """One LM rewrite per question, then the top `k` documents of that query."""

    def __init__(self, lm: Any, retriever: Retriever, k: int, name: str = "rewrite") -> None:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.lm, self.retriever, self.k, self.name = lm, retriever, k, name

    def contexts(self, items: list[QAItem]) -> list[MethodOutput]:
        prompts = [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": q.search_text}]
                   for q in items]
        texts = self.lm.complete(prompts, stops=STOPS)
        parsed = [parse_rewrite(t) for t in texts]
        queries = [p if p is not None else q.search_text for p, q in zip(parsed, items)]
        hits = self.retriever.search(queries, self.k)
        out = []
        for text, p, query, row in zip(texts, parsed, queries, hits):
            passages = [h.passage for h in row]
            turn = TurnRecord(text=text, query=query, retrieved_ids=[x.id for x in passages], complete=True,
                              malformed=None if p is not None else "no <answer>{\"query\": ...}</answer>; used the question")
            out.append(MethodOutput(passages=passages, trace=[turn], searches=1, lm_calls=1))
        return out
