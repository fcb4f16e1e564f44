"""MIRAGE items: every searching method searches `meta["query"]` (the question without options);
the frozen generator still receives the full question with its options."""

from __future__ import annotations

from pathlib import Path

import pytest

from s3_ray.config import RolloutConfig, SearcherConfig
from s3_ray.eval.methods import NaiveRAG, S3Searcher
from s3_ray.eval.runner import evaluate_method
from s3_ray.types import QAItem
from tests.fakes import FakeRetriever

BARE = "Which town has a mayor?"
MIRAGE = QAItem("medqa/1", f"{BARE}\nOptions:\nA. Birch Falls\nB. Dune Port", ("A", "A: Birch Falls"),
                {"dataset": "medqa", "query": BARE, "options": {"A": "Birch Falls", "B": "Dune Port"}})
PLAIN = QAItem("nq/1", "Where does the river Wend flow?", ("Alder Town",))


class RecordingGenerator:
    def __init__(self) -> None:
        self.questions: list[str] = []

    def answer(self, questions, contexts):
        self.questions.extend(questions)
        return ["A" for _ in questions]


def test_search_text_is_the_bare_question_and_falls_back_to_the_question() -> None:
    assert MIRAGE.search_text == BARE and "Options" in MIRAGE.question
    assert PLAIN.search_text == PLAIN.question
    blank = QAItem("x", "Q full", ("a",), {"query": "  "})
    assert blank.search_text == "Q full"


def test_s3_searcher_prompt_and_retrieval_use_the_bare_question(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from s3_ray.agent import rollout

    seen: list[str] = []
    original = rollout.build_searcher_messages

    def spy(question, passages, budget):
        seen.append(question)
        return original(question, passages, budget)

    monkeypatch.setattr(rollout, "build_searcher_messages", spy)
    r = FakeRetriever()
    method = S3Searcher("tiny-random", r, RolloutConfig(init_k=2, top_k=2, keep_per_turn=1, max_turns=1),
                        SearcherConfig(max_new_tokens=8, temperature=0.0, num_threads=1))
    gen = RecordingGenerator()
    recs = evaluate_method([MIRAGE, PLAIN], method, gen, tmp_path)
    assert seen == [BARE, PLAIN.question]                      # the searcher's prompt
    assert r.calls[0] == ([BARE, PLAIN.question], 2)           # its initial (naive top-k) retrieval
    assert all(BARE == q or "Options" not in q for qs, _ in r.calls for q in qs)
    assert gen.questions == [MIRAGE.question, PLAIN.question]  # the generator sees the options
    assert [r["question"] for r in recs] == [MIRAGE.question, PLAIN.question]
    assert all(rec["lm_calls"] >= 1 for rec in recs)


def test_naive_rag_searches_the_bare_question() -> None:
    r = FakeRetriever()
    NaiveRAG(r, k=1).contexts([MIRAGE, PLAIN])
    assert r.calls == [([BARE, PLAIN.question], 1)]
