"""The Search-o1-style method: tiny random model (well-formed contexts, budgets) and a scripted LM
(the query it writes is the query retrieved; Reason-in-Documents feeds the reasoning)."""

from __future__ import annotations

import pytest

from s3_ray.config import EvalConfig, RolloutConfig, SearcherConfig
from s3_ray.data.embedded import embedded_dir
from s3_ray.data.qa import read_qa
from s3_ray.eval.baselines.search_o1 import (
    BEGIN_QUERY,
    BEGIN_RESULT,
    END_QUERY,
    END_RESULT,
    FINAL_INFO,
    REPEATED,
    SearchO1Method,
)
from s3_ray.eval.methods import METHODS, build_method
from s3_ray.types import QAItem
from tests.fakes import FAKE_PASSAGES, FakeRetriever

MIRAGE = QAItem("mc", "Which town has a mayor?\nOptions:\nA. Birch Falls\nB. Dune Port", ("A", "A: Birch Falls"),
                {"query": "Which town has a mayor?"})
ITEMS = read_qa(embedded_dir() / "test.jsonl")[:3] + [MIRAGE]
CFG = EvalConfig(baseline_model="tiny-random", baseline_max_new_tokens=12, search_r1_turns=2, search_r1_k=2)


def query(text: str) -> str:
    return f"Let me look this up. {BEGIN_QUERY}{text}{END_QUERY}"


class ScriptedO1LM:
    """Reasoning calls (they pass stop strings) follow `steps` by call number; Reason-in-Documents
    calls (no stops) answer with `info` after the Final Information marker."""

    def __init__(self, steps: list[str], info: str = "Clara Holt is the mayor of Birch Falls.") -> None:
        self.steps, self.info = steps, info
        self.reasoning: list[tuple[list, list[str]]] = []
        self.condense: list[list] = []

    def complete(self, prompts, continuations=None, stops=()):
        if stops:
            self.reasoning.append((prompts, list(continuations or [])))
            step = self.steps[min(len(self.reasoning) - 1, len(self.steps) - 1)]
            return [step for _ in prompts]
        self.condense.append(prompts)
        return [f"Doc 3 names the mayor.\n{FINAL_INFO}\n\n{self.info}" for _ in prompts]


def test_registered_and_budgets_with_tiny_random_model() -> None:
    assert "search_o1" in METHODS
    r = FakeRetriever()
    method = build_method("search_o1", retriever=r, rollout=RolloutConfig(), searcher=SearcherConfig(num_threads=1),
                          model="unused-because-baseline_model-is-set", eval_cfg=CFG)
    assert method.name == "search_o1" and method.max_searches == 2 and method.k == 2
    outs = method.contexts(ITEMS)
    assert len(outs) == len(ITEMS)
    assert len(r.calls) <= CFG.search_r1_turns and all(k == CFG.search_r1_k for _, k in r.calls)
    fake_ids = {p.id for p in FAKE_PASSAGES}
    for o in outs:
        ids = [p.id for p in o.passages]
        assert len(ids) == len(set(ids)) and set(ids) <= fake_ids
        assert o.searches <= CFG.search_r1_turns and len(ids) <= o.searches * CFG.search_r1_k
        assert o.searches == sum(1 for t in o.trace if t.query is not None)
        assert 1 <= o.lm_calls <= 2 * CFG.search_r1_turns
        assert all(t.query.strip() and len(t.retrieved_ids) == CFG.search_r1_k for t in o.trace if t.query)


def test_scripted_query_is_retrieved_and_condensed_into_the_reasoning() -> None:
    lm = ScriptedO1LM([query("mayor of Birch Falls"), "So the answer is \\boxed{Clara Holt}."])
    r = FakeRetriever()
    (out,) = SearchO1Method(lm, r, k=2, max_searches=3).contexts([ITEMS[0]])
    assert r.calls == [(["mayor of Birch Falls"], 2)]
    assert [p.id for p in out.passages] == ["p3", "p2"]  # the raw documents are the context
    assert out.searches == 1 and out.lm_calls == 3  # 2 reasoning steps + 1 Reason-in-Documents
    assert out.trace[0].query == "mayor of Birch Falls" and out.trace[-1].complete
    # Reason-in-Documents saw the query, the documents and the reasoning so far
    (prompt,) = lm.condense[0]
    text = prompt[0]["content"]
    assert "mayor of Birch Falls" in text and "Doc 1 (Title: Birch Falls)" in text and "Let me look this up." in text
    # its extracted information continues the reasoning inside the result tags
    _, conts = lm.reasoning[1]
    assert conts[0].endswith(f"{BEGIN_RESULT}Clara Holt is the mayor of Birch Falls.{END_RESULT}\n\n")


def test_search_budget_and_repeated_query() -> None:
    lm = ScriptedO1LM([query("river Wend"), query("River Wend "), query("Dune Port"), query("Elm Mill")])
    r = FakeRetriever()
    (out,) = SearchO1Method(lm, r, k=1, max_searches=2).contexts([ITEMS[0]])
    # the repeat (case and spaces aside) is answered with a notice, not searched; the 2nd search ends it
    assert [c[0] for c in r.calls] == [["river Wend"], ["Dune Port"]]
    assert out.searches == 2 and len(lm.reasoning) == 3
    assert len(lm.condense) == 1  # nothing reads a condensation after the last allowed search
    assert out.lm_calls == 4
    assert [t.malformed is not None for t in out.trace] == [False, True, False]
    assert REPEATED in lm.reasoning[2][1][0]


def test_agent_searches_the_question_without_options() -> None:
    lm = ScriptedO1LM(["I already know it: \\boxed{A}."])
    r = FakeRetriever()
    (out,) = SearchO1Method(lm, r, k=2, max_searches=2).contexts([MIRAGE])
    prompt = lm.reasoning[0][0][0][0]["content"]
    assert "Which town has a mayor?" in prompt and "Options" not in prompt and "Dune Port" not in prompt
    assert out.passages == [] and out.searches == 0 and r.calls == [] and out.trace[0].complete


def test_bad_budget_is_refused() -> None:
    with pytest.raises(ValueError, match="max_searches"):
        SearchO1Method(ScriptedO1LM(["x"]), FakeRetriever(), k=2, max_searches=0)
