"""The prompting baselines with the tiny random model: contexts well formed, budgets respected."""

from __future__ import annotations

import pytest

from s3_ray.config import EvalConfig, RolloutConfig, SearcherConfig
from s3_ray.data.embedded import embedded_dir
from s3_ray.data.qa import read_qa
from s3_ray.eval.baselines.lm import GreedyLM
from s3_ray.eval.methods import build_method
from s3_ray.types import QAItem
from tests.fakes import FAKE_PASSAGES, FakeRetriever

ITEMS = read_qa(embedded_dir() / "test.jsonl")[:3] + [
    QAItem("mc", "Which town has a mayor?\nOptions:\nA. Birch Falls\nB. Dune Port", ("A", "A: Birch Falls"),
           {"query": "Which town has a mayor?"})]
FAKE_IDS = {p.id for p in FAKE_PASSAGES}
CFG = EvalConfig(baseline_model="tiny-random", baseline_max_new_tokens=12, rewrite_k=2, ircot_steps=2, ircot_k=2,
                 search_r1_turns=3, search_r1_k=2)


def _method(kind: str, retriever: FakeRetriever):
    return build_method(kind, retriever=retriever, rollout=RolloutConfig(), searcher=SearcherConfig(num_threads=1),
                        model="unused-because-baseline_model-is-set", eval_cfg=CFG)


def _check(outs, max_searches: int, k: int) -> None:
    assert len(outs) == len(ITEMS)
    for o in outs:
        ids = [p.id for p in o.passages]
        assert len(ids) == len(set(ids)), "context must be de-duplicated"
        assert set(ids) <= FAKE_IDS
        assert o.searches <= max_searches
        assert len(ids) <= o.searches * k
        assert o.searches == sum(1 for t in o.trace if t.query is not None)
        for t in o.trace:
            if t.query is not None:
                assert len(t.retrieved_ids) == k and t.query.strip()


def test_greedy_lm_is_deterministic_and_respects_budget() -> None:
    lm = GreedyLM("tiny-random", max_new_tokens=5, max_prompt_tokens=64, batch_size=2, num_threads=1)
    prompts = [[{"role": "user", "content": q.question}] for q in ITEMS]
    a, b = lm.complete(prompts), lm.complete(prompts)
    assert a == b and len(a) == len(ITEMS)
    assert all(len(lm.tokenizer(t, add_special_tokens=False)["input_ids"]) <= 5 for t in a)
    assert lm.calls == 4  # 2 calls x 2 batches of 2


def test_cot_has_no_retrieval() -> None:
    r = FakeRetriever()
    outs = _method("cot", r).contexts(ITEMS)
    assert r.calls == []
    for q, o in zip(ITEMS, outs):
        assert o.searches == 0 and len(o.passages) <= 1
        assert all(p.id == f"cot:{q.id}" and p.title == "Reasoning" for p in o.passages)


def test_rewrite_one_batched_search_of_k() -> None:
    r = FakeRetriever()
    outs = _method("rewrite", r).contexts(ITEMS)
    assert len(r.calls) == 1 and r.calls[0][1] == 2
    _check(outs, max_searches=1, k=2)
    # a random model cannot write the JSON: the question (MIRAGE: without options) is searched, flagged
    assert r.calls[0][0][3] == "Which town has a mayor?"
    assert all(o.trace[0].malformed for o in outs)


def test_ircot_budget() -> None:
    r = FakeRetriever()
    outs = _method("ircot", r).contexts(ITEMS)
    assert r.calls[0][0][3] == "Which town has a mayor?"
    assert len(r.calls) <= 1 + CFG.ircot_steps
    _check(outs, max_searches=1 + CFG.ircot_steps, k=CFG.ircot_k)


def test_search_r1_budget() -> None:
    r = FakeRetriever()
    outs = _method("search_r1", r).contexts(ITEMS)
    assert len(r.calls) <= CFG.search_r1_turns
    _check(outs, max_searches=CFG.search_r1_turns, k=CFG.search_r1_k)
    for o in outs:
        assert 1 <= len(o.trace) <= CFG.search_r1_turns


class ScriptLM:
    """Replies by a script keyed on how many turns a prompt already had."""

    def __init__(self, replies: list[str]) -> None:
        self.replies, self.seen = replies, []

    def complete(self, prompts, continuations=None, stops=()):
        self.seen.append(list(continuations or []))
        turn = len(self.seen) - 1
        return [self.replies[min(turn, len(self.replies) - 1)] for _ in prompts]


def test_search_r1_protocol_with_scripted_lm() -> None:
    from s3_ray.eval.baselines.search_r1 import INVALID, SearchR1Method

    lm = ScriptLM(["<think>x</think><search> river Wend </search>", "hmm", "<answer> Wend </answer>"])
    r = FakeRetriever()
    (out,) = SearchR1Method(lm, r, k=2, max_turns=4).contexts([ITEMS[0]])
    assert r.calls == [(["river Wend"], 2)]
    assert [p.id for p in out.passages] == ["p1", "p2"] and out.searches == 1
    assert [t.malformed is not None for t in out.trace] == [False, True, False] and out.trace[-1].complete
    assert "<information>Doc 1 (Title: Alder Town)" in lm.seen[1][0] and lm.seen[2][0].endswith(INVALID)


def test_ircot_stops_on_answer_and_searches_sentences() -> None:
    from s3_ray.eval.baselines.ircot import IRCoTMethod

    lm = ScriptLM(["\nClara Holt is the mayor of Birch Falls. ", "So the answer is: Clara Holt."])
    r = FakeRetriever()
    (out,) = IRCoTMethod(lm, r, k=1, max_steps=5).contexts([ITEMS[0]])
    assert [c[0] for c in r.calls] == [[ITEMS[0].question], ["Clara Holt is the mayor of Birch Falls."]]
    assert out.searches == 2 and out.trace[-1].complete and len(lm.seen) == 2
    assert lm.seen[1] == ["Clara Holt is the mayor of Birch Falls. "]  # the reasoning so far is continued


def test_rewrite_parses_json_query() -> None:
    from s3_ray.eval.baselines.rewrite import RewriteMethod

    r = FakeRetriever()
    (out,) = RewriteMethod(ScriptLM(['<answer>{"query": "Dune Port harbour"}</answer>']), r, k=1).contexts([ITEMS[0]])
    assert r.calls == [(["Dune Port harbour"], 1)] and [p.id for p in out.passages] == ["p7"]
    assert out.trace[0].malformed is None


def test_unknown_method_names_known() -> None:
    with pytest.raises(ValueError, match="search_r1"):
        build_method("nope")
