"""SearchCopilot: per-request budgets, batching of equal budgets, and the result it hands back."""

from __future__ import annotations

import json

import pytest

from fakes import FakeRetriever
from s3_ray.agent.copilot import Budget, CopilotRequestError, SearchCopilot
from s3_ray.agent.policy import ScriptedPolicy
from s3_ray.config import RolloutConfig, SearcherConfig
from s3_ray.models import load_causal_lm

CEILING = RolloutConfig(init_k=2, top_k=3, keep_per_turn=2, max_turns=2)
SEARCHER = SearcherConfig(model="tiny-random", max_new_tokens=24, temperature=0.7, max_prompt_tokens=4096)


@pytest.fixture(scope="module")
def tok():
    return load_causal_lm("tiny-random")[1]


def _script(text: str) -> str:
    """Search twice (keeping doc 1 of each block), whatever the budget, then complete."""
    response = text.split("<|im_start|>assistant\n", 1)[1]
    blocks = response.count("</information>")
    keep = "<important_info>[1]</important_info>" if blocks else ""
    if blocks < 2:
        query = ["Holt company founded", "Clara Holt born"][blocks]
        return f'{keep}<search_complete>False</search_complete><query>{{"query": "{query}"}}</query>'
    return f"{keep}<search_complete>True</search_complete>"


def _copilot(tok, retriever, max_batch: int = 16) -> tuple[SearchCopilot, ScriptedPolicy]:
    policy = ScriptedPolicy(tok, _script)
    return SearchCopilot.with_policy(policy, tok, retriever, CEILING, SEARCHER, max_batch=max_batch), policy


def test_result_documents_trace_and_counts(tok) -> None:
    retriever = FakeRetriever()
    copilot, _ = _copilot(tok, retriever)
    assert copilot.searcher.temperature == 0.0  # always greedy, whatever the config says
    (res,) = copilot.search(["Who founded the company in Birch Falls?"])
    assert res.searches == 2 and res.turns == 3 and res.completed and res.malformed == 0
    assert [t.query for t in res.trace] == ["Holt company founded", "Clara Holt born", None]
    # documents = 2 init docs + the first doc of each retrieved block, in order, no repeats
    kept = [res.trace[0].retrieved_ids[0], res.trace[1].retrieved_ids[0]]
    assert [p.id for p in res.documents][2:] == kept and len(res.documents) == 4
    assert res.searcher_tokens > 0
    body = res.to_dict()
    json.dumps(body)  # JSON-ready
    assert body["documents"][0].keys() == {"id", "contents"}
    assert body["trace"][1]["selected_ids"] == [kept[0]]
    assert body["budget"] == {"init_k": 2, "top_k": 3, "keep_per_turn": 2, "max_turns": 2}


def test_per_request_budgets_are_enforced(tok) -> None:
    retriever = FakeRetriever()
    copilot, _ = _copilot(tok, retriever)
    q = "Who founded the company in Birch Falls?"
    short, narrow = copilot.search([q, q], [Budget(max_turns=1), Budget(top_k=1)])
    assert short.searches == 1 and short.budget["max_turns"] == 1
    assert short.trace[-1].query is None  # the second query was not run: the budget was spent
    assert narrow.searches == 2 and all(len(t.retrieved_ids) <= 1 for t in narrow.trace)
    assert narrow.budget["keep_per_turn"] == 1  # a smaller top_k shrinks the default selection
    none, = copilot.search([q], Budget(max_turns=0))
    assert none.searches == 0 and [p.id for p in none.documents] == [p.id for p in short.documents[:2]]


@pytest.mark.parametrize("budget, field", [
    (Budget(top_k=4), "top_k"),
    (Budget(top_k=0), "top_k"),
    (Budget(keep_per_turn=3), "keep_per_turn"),
    (Budget(top_k=1, keep_per_turn=2), "keep_per_turn"),
    (Budget(max_turns=3), "max_turns"),
    (Budget(max_turns=-1), "max_turns"),
    (Budget(top_k=True), "top_k"),
])
def test_budget_over_the_ceiling_names_the_field(tok, budget: Budget, field: str) -> None:
    retriever = FakeRetriever()
    copilot, policy = _copilot(tok, retriever)
    with pytest.raises(CopilotRequestError) as err:
        copilot.search(["a question"], budget)
    assert err.value.field == field and str(err.value).startswith(f"{field}:")
    assert retriever.calls == [] and policy.stats.calls == 0  # rejected before any work


@pytest.mark.parametrize("questions", [["ok", ""], ["  "], "one string"])
def test_bad_questions_are_rejected(tok, questions) -> None:
    copilot, _ = _copilot(tok, FakeRetriever())
    with pytest.raises(CopilotRequestError, match="question"):
        copilot.search(questions)


def test_equal_budgets_share_rollouts_and_order_is_kept(tok) -> None:
    retriever = FakeRetriever()
    copilot, policy = _copilot(tok, retriever, max_batch=2)
    qs = ["Where does the river Wend flow?", "Who is the mayor of Birch Falls?", "Which town has no river?",
          "Who founded Elm Mill?"]
    budgets = [None, Budget(max_turns=1), None, None]
    results = copilot.search(qs, budgets)
    assert [r.question for r in results] == qs
    assert [r.searches for r in results] == [2, 1, 2, 2]
    # default budget: 3 questions in chunks of 2 -> 2 rollouts; the max_turns=1 one -> 1 rollout
    assert copilot.rollouts == 3
    assert max(policy.stats.sequences / policy.stats.calls, 0) > 1  # some policy calls were batched
    with pytest.raises(CopilotRequestError, match="budgets"):
        copilot.search(qs, [None])


def test_limits_report_the_ceiling(tok) -> None:
    copilot, _ = _copilot(tok, FakeRetriever())
    assert copilot.limits() == {"top_k": 3, "keep_per_turn": 2, "max_turns": 2}
