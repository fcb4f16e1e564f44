"""IRCoT-style interleaved retrieval: each new reasoning sentence becomes the next query.

Start with the top-k documents of the question, then up to `max_steps` times: the LM writes one
more sentence of reasoning over all documents so far; a sentence that states the answer ("So the
answer is ...") or `<search_complete>` ends the item, any other sentence is searched. The context
is every retrieved document, de-duplicated, in retrieval order (the paper's IRCoT context).
Searches per question <= 1 + max_steps; documents <= (1 + max_steps) * k.
The reasoning is about the question to search for (`meta["query"]` when set, e.g. MIRAGE without
its options): the reasoning only steers retrieval; the frozen generator sees the options.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from s3_ray.eval.base import MethodOutput
from s3_ray.eval.baselines.common import dedup
from s3_ray.generation.prompt import format_context
from s3_ray.types import QAItem, TurnRecord

if TYPE_CHECKING:  # annotations only: importing the package loads all its backends
    from s3_ray.retrieval.base import Retriever

SYSTEM = ("Answer the question by reasoning one step at a time over the documents. Write only the "
          "NEXT sentence of reasoning. When the documents are enough, write: So the answer is: <answer>.")
STOPS = (". ", ".\n")
_DONE = re.compile(r"answer is|<search_complete>", re.IGNORECASE)


def first_sentence(text: str) -> str:
    """The first non-empty line of a generated step (models often open with a newline).

    >>> first_sentence("\\n  Alder Town lies on the Wend. ")
    'Alder Town lies on the Wend.'
    >>> first_sentence(" \\n ")
    ''
    """
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def is_final(sentence: str) -> bool:
    """Whether a reasoning sentence ends the search.

    >>> is_final("So the answer is: Clara Holt."), is_final("Alder Town lies on the Wend.")
    (True, False)
    """
    return _DONE.search(sentence) is not None


class IRCoTMethod:
    def __init__(self, lm: Any, retriever: Retriever, k: int, max_steps: int, name: str = "ircot") -> None:
        if k < 1 or max_steps < 0:
            raise ValueError(f"need k >= 1 and max_steps >= 0, got k={k}, max_steps={max_steps}")
        self.lm, self.retriever, self.k, self.max_steps, self.name = lm, retriever, k, max_steps, name

    def contexts(self, items: list[QAItem]) -> list[MethodOutput]:
        queries = [q.search_text for q in items]
        docs = [[h.passage for h in row] for row in self.retriever.search(queries, self.k)]
        traces = [[TurnRecord(text="", query=q, retrieved_ids=[p.id for p in d])] for q, d in zip(queries, docs)]
        reasoning = [""] * len(items)
        searches = [1] * len(items)
        calls = [0] * len(items)
        active = list(range(len(items)))
        for _ in range(self.max_steps):
            if not active:
                break
            prompts = [[{"role": "system", "content": SYSTEM},
                        {"role": "user", "content": f"{format_context(dedup(docs[i]))}\nQuestion: {queries[i]}"}]
                       for i in active]
            steps = self.lm.complete(prompts, continuations=[reasoning[i] for i in active], stops=STOPS)
            to_search: list[tuple[int, str]] = []
            for i, raw in zip(active, steps):
                calls[i] += 1
                sentence = first_sentence(raw)
                reasoning[i] += sentence + " " if sentence else ""
                if not sentence:
                    traces[i].append(TurnRecord(text=raw, malformed="empty reasoning step"))
                elif is_final(sentence):
                    traces[i].append(TurnRecord(text=raw, complete=True))
                else:
                    to_search.append((i, sentence))
            if to_search:
                rows = self.retriever.search([s for _, s in to_search], self.k)
                for (i, s), row in zip(to_search, rows):
                    docs[i].extend(h.passage for h in row)
                    searches[i] += 1
                    traces[i].append(TurnRecord(text=s, query=s, retrieved_ids=[h.passage.id for h in row]))
            active = [i for i, _ in to_search]
        return [MethodOutput(passages=dedup(d), trace=t, searches=n, lm_calls=c)
                for d, t, n, c in zip(docs, traces, searches, calls)]
