"""Search-R1-style agent: `<search>` / `<information>` / `<answer>` tags, any causal LM.

The prompt is Search-R1's. Each generation ends at `</search>` or `</answer>`; a search is run
(top-k) and its documents are appended inside `<information>`; a turn with neither tag gets
Search-R1's "invalid action" nudge. The agent's own answer is ignored: the context is every
retrieved document, de-duplicated, as in the s3 paper. Searches per question <= `max_turns`.
The agent sees the question to search for (`meta["query"]` when set, e.g. MIRAGE without its
options); only the frozen generator sees the options.
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

PROMPT = (
    "Answer the given question. You must conduct reasoning inside <think> and </think> first every time you "
    "get new information. After reasoning, if you find you lack some knowledge, you can call a search engine "
    "by <search> query </search> and it will return the top searched results between <information> and "
    "</information>. You can search as many times as your want. If you find no further external knowledge "
    "needed, you can directly provide the answer inside <answer> and </answer>, without detailed "
    "illustrations. For example, <answer> Beijing </answer>. Question: {question}\n"
)
INVALID = ("\nMy previous action is invalid. If I want to search, I should put the query between <search> "
           "and </search>. If I want to give the final answer, I should put the answer between <answer> and "
           "</answer>. Let me try again.\n")
STOPS = ("</search>", "</answer>")
_SEARCH = re.compile(r"<search>(.*?)</search>", re.DOTALL)


def parse_action(text: str) -> tuple[str, str | None]:
    """("answer", None), ("search", query) or ("invalid", None) for one generated turn.

    >>> parse_action("<think>x</think><search> Alder Town </search>")
    ('search', 'Alder Town')
    >>> parse_action("<answer> Paris </answer>"), parse_action("<search>  </search>")
    (('answer', None), ('invalid', None))
    """
    if "</answer>" in text and "<answer>" in text:
        return "answer", None
    found = _SEARCH.findall(text)
    if found and found[-1].strip():
        return "search", found[-1].strip()
    return "invalid", None


class SearchR1Method:
    def __init__(self, lm: Any, retriever: Retriever, k: int, max_turns: int, name: str = "search_r1") -> None:
        if k < 1 or max_turns < 1:
            raise ValueError(f"need k >= 1 and max_turns >= 1, got k={k}, max_turns={max_turns}")
        self.lm, self.retriever, self.k, self.max_turns, self.name = lm, retriever, k, max_turns, name

    def contexts(self, items: list[QAItem]) -> list[MethodOutput]:
        prompts = [[{"role": "user", "content": PROMPT.format(question=q.search_text)}] for q in items]
        rolling = [""] * len(items)
        docs: list[list[Any]] = [[] for _ in items]
        traces: list[list[TurnRecord]] = [[] for _ in items]
        active = list(range(len(items)))
        for _ in range(self.max_turns):
            if not active:
                break
            texts = self.lm.complete([prompts[i] for i in active], continuations=[rolling[i] for i in active],
                                     stops=STOPS)
            searches: list[tuple[int, str]] = []
            still: list[int] = []
            for i, text in zip(active, texts):
                action, query = parse_action(text)
                rolling[i] += text
                if action == "answer":
                    traces[i].append(TurnRecord(text=text, complete=True))
                elif action == "search":
                    searches.append((i, query or ""))
                else:
                    traces[i].append(TurnRecord(text=text, malformed="no <search> or <answer>"))
                    rolling[i] += INVALID
                    still.append(i)
            if searches:
                rows = self.retriever.search([q for _, q in searches], self.k)
                for (i, q), row in zip(searches, rows):
                    found = [h.passage for h in row]
                    docs[i].extend(found)
                    rolling[i] += f"\n\n<information>{format_context(found).strip()}</information>\n\n"
                    traces[i].append(TurnRecord(text=q, query=q, retrieved_ids=[p.id for p in found]))
                    still.append(i)
            active = sorted(still)
        # every generation leaves exactly one trace record
        return [MethodOutput(passages=dedup(d), trace=t, searches=sum(1 for x in t if x.query is not None),
                             lm_calls=len(t)) for d, t in zip(docs, traces)]
