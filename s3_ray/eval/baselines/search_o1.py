"""Search-o1-style agentic search: the LM reasons and may emit a search query between
`<|begin_search_query|>` and `<|end_search_query|>`; the documents found are condensed by a separate
"Reason-in-Documents" LM call and the condensed text goes back into the reasoning between
`<|begin_search_result|>` and `<|end_search_result|>`.

As for every method here the LM's own answer is ignored: the context for the frozen generator is
every retrieved document, de-duplicated, in retrieval order (the s3 paper's Search-o1 context).

Budget per question: at most `max_searches` searches of `k` documents and `max_searches + 1`
reasoning generations (one spare generation lets the LM recover after repeating a query, which
is answered with a notice instead of a search). Reason-in-Documents runs once per search except
the last allowed one: after it no reasoning follows, so its condensation would never be read.
LM calls per question <= 2 * max_searches.

The agent sees the question to search for (`meta["query"]` when set, e.g. MIRAGE without its
options); only the frozen generator sees the options.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from s3_ray.eval.base import MethodOutput
from s3_ray.eval.baselines.common import dedup
from s3_ray.generation.prompt import format_context
from s3_ray.types import Passage, QAItem, TurnRecord

if TYPE_CHECKING:  # annotations only: importing the package loads all its backends
    from s3_ray.retrieval.base import Retriever

BEGIN_QUERY, END_QUERY = "<|begin_search_query|>", "<|end_search_query|>"
BEGIN_RESULT, END_RESULT = "<|begin_search_result|>", "<|end_search_result|>"
FINAL_INFO = "**Final Information**"
NO_INFO = "No helpful information found."
REPEATED = "This query was already searched. Use the earlier results."

INSTRUCTION = (
    "You are a reasoning assistant that can search a document collection to answer the user's "
    "question accurately.\n\n"
    f"- To search, write {BEGIN_QUERY} your query {END_QUERY}.\n"
    "The system then searches, reads the documents found and gives you the useful information as "
    f"{BEGIN_RESULT} ...search results... {END_RESULT}.\n\n"
    "You may search several times; at most {max_searches} searches are allowed.\n"
    "Once you have the information you need, continue your reasoning.\n\n"
    "Example:\n"
    'Question: "Which river flows through the town where the founder of Holt Company was born?"\n'
    "Assistant:\n"
    f"I first need to know who founded Holt Company.\n{BEGIN_QUERY}Holt Company founder{END_QUERY}\n\n"
    "(the system returns the information found)\n\n"
    f"Now I need the birthplace of that person.\n{BEGIN_QUERY}Clara Holt birthplace{END_QUERY}\n\n"
    "(the system returns the information found)\n\n"
    "The assistant continues reasoning with the new information...\n\n"
    f"Remember: a search starts with {BEGIN_QUERY} and ends with {END_QUERY}; "
    "when you are done searching, continue your reasoning.\n\n"
)
QUESTION = ("Please answer the following question. Think step by step. Give the final answer as "
            "\\boxed{{YOUR_ANSWER}}.\n\nQuestion:\n{question}\n\n")
REASON_IN_DOCUMENTS = (
    "**Task:** read the **Searched Documents** below, given the **Previous Reasoning Steps** and the "
    "**Current Search Query**. Extract the information in the documents that answers the current "
    "search query and helps the reasoning about the original question, so that it can be added to "
    "the previous reasoning steps.\n\n"
    "**Guidelines:**\n"
    "1. Review every document and find the facts relevant to the current search query.\n"
    "2. Keep only accurate information that moves the reasoning forward.\n"
    f"3. Start your output with {FINAL_INFO}, followed by that information. If the documents hold "
    f"nothing useful, write:\n{FINAL_INFO}\n\n{NO_INFO}\n\n"
    "**Inputs:**\n"
    "- **Previous Reasoning Steps:**\n{reasoning}\n\n"
    "- **Current Search Query:**\n{query}\n\n"
    "- **Searched Documents:**\n{documents}\n\n"
    'Now read each document and extract the information helpful for the search query "{query}".\n'
)
STOPS = (END_QUERY,)
_QUERY = re.compile(re.escape(BEGIN_QUERY) + r"(.*?)" + re.escape(END_QUERY), re.DOTALL)


def parse_query(text: str) -> str | None:
    """The last complete, non-empty search query in a generated step, or None.

    >>> parse_query("I need the founder. <|begin_search_query|> Holt Company founder <|end_search_query|>")
    'Holt Company founder'
    >>> parse_query("So the answer is \\\\boxed{Wend}."), parse_query("<|begin_search_query|> <|end_search_query|>")
    (None, None)
    """
    found = _QUERY.findall(text)
    return (found[-1].strip() or None) if found else None


def extract_information(text: str) -> str:
    """What follows the last `**Final Information**` marker (the whole reply when the marker is
    missing), or the "nothing found" notice when that is empty.

    >>> extract_information("Doc 1 says so.\\n**Final Information**\\n\\nClara Holt founded it.")
    'Clara Holt founded it.'
    >>> extract_information("  "), extract_information("Clara Holt.")
    ('No helpful information found.', 'Clara Holt.')
    """
    info = text.rsplit(FINAL_INFO, 1)[-1].strip()
    return info or NO_INFO


def recent_steps(reasoning: str, keep_last: int = 4) -> str:
    """The first reasoning step and the last `keep_last` ones (steps are blank-line separated):
    the Reason-in-Documents prompt needs the plan and the latest state, not the whole chain.

    >>> recent_steps("plan\\n\\ns1\\n\\ns2\\n\\ns3", keep_last=2)
    'plan\\n\\n...\\n\\ns2\\n\\ns3'
    >>> recent_steps("plan\\n\\ns1", keep_last=2)
    'plan\\n\\ns1'
    """
    steps = [s.strip() for s in reasoning.split("\n\n") if s.strip()]
    if len(steps) <= keep_last + 1:
        return "\n\n".join(steps)
    return "\n\n".join([steps[0], "...", *steps[-keep_last:]])


def result_block(text: str) -> str:
    """How a search result (or notice) is written into the reasoning.

    >>> result_block("Clara Holt.")
    '\\n\\n<|begin_search_result|>Clara Holt.<|end_search_result|>\\n\\n'
    """
    return f"\n\n{BEGIN_RESULT}{text}{END_RESULT}\n\n"


class SearchO1Method:
    """Search-o1's reasoning loop with Reason-in-Documents, batched over the questions."""

    def __init__(self, lm: Any, retriever: Retriever, k: int, max_searches: int, name: str = "search_o1") -> None:
        if k < 1 or max_searches < 1:
            raise ValueError(f"need k >= 1 and max_searches >= 1, got k={k}, max_searches={max_searches}")
        self.lm, self.retriever, self.k, self.max_searches, self.name = lm, retriever, k, max_searches, name

    def contexts(self, items: list[QAItem]) -> list[MethodOutput]:
        head = INSTRUCTION.format(max_searches=self.max_searches)
        prompts = [[{"role": "user", "content": head + QUESTION.format(question=q.search_text)}] for q in items]
        n = len(items)
        rolling = [""] * n
        docs: list[list[Passage]] = [[] for _ in items]
        traces: list[list[TurnRecord]] = [[] for _ in items]
        asked: list[set[str]] = [set() for _ in items]
        calls = [0] * n
        active = list(range(n))
        for _ in range(self.max_searches + 1):
            if not active:
                break
            texts = self.lm.complete([prompts[i] for i in active], continuations=[rolling[i] for i in active],
                                     stops=STOPS)
            to_search: list[tuple[int, str, str]] = []
            still: list[int] = []
            for i, text in zip(active, texts):
                calls[i] += 1
                rolling[i] += text
                query = parse_query(text)
                if query is None:  # the LM reasoned to an end without asking for more
                    traces[i].append(TurnRecord(text=text, complete=True))
                elif query.lower() in asked[i]:
                    traces[i].append(TurnRecord(text=text, malformed="repeated query; not searched again"))
                    rolling[i] += result_block(REPEATED)
                    still.append(i)
                else:
                    asked[i].add(query.lower())
                    to_search.append((i, query, text))
            if to_search:
                rows = self.retriever.search([q for _, q, _ in to_search], self.k)
                if len(rows) != len(to_search):
                    raise RuntimeError(f"retriever returned {len(rows)} hit lists for {len(to_search)} queries")
                condense: list[tuple[int, str, list[Passage]]] = []
                for (i, q, text), row in zip(to_search, rows):
                    found = [h.passage for h in row]
                    docs[i].extend(found)
                    traces[i].append(TurnRecord(text=text, query=q, retrieved_ids=[p.id for p in found]))
                    if len(asked[i]) < self.max_searches:
                        condense.append((i, q, found))
                still.extend(self._reason_in_documents(condense, rolling, calls))
            active = sorted(still)
        return [MethodOutput(passages=dedup(d), trace=t, searches=len(a), lm_calls=c)
                for d, t, a, c in zip(docs, traces, asked, calls)]

    def _reason_in_documents(self, jobs: list[tuple[int, str, list[Passage]]], rolling: list[str],
                             calls: list[int]) -> list[int]:
        """One batched LM call condensing each search's documents; the result joins the reasoning."""
        if not jobs:
            return []
        prompts = [[{"role": "user", "content": REASON_IN_DOCUMENTS.format(
            reasoning=recent_steps(rolling[i]) or "(none yet)", query=q,
            documents=format_context(found).strip() or "(no documents)")}] for i, q, found in jobs]
        replies = self.lm.complete(prompts)
        for (i, _, _), reply in zip(jobs, replies):
            calls[i] += 1
            rolling[i] += result_block(extract_information(reply))
        return [i for i, _, _ in jobs]
