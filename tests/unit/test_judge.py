"""The LLM judge (`reward.use_judge`): the baseline and the reward consult it only for span misses."""

from __future__ import annotations

from typing import Any

import pytest

from s3_ray.clients.generator import GeneratorClient
from s3_ray.config import RewardConfig
from s3_ray.generation import CachedGenerator, ResponseCache
from s3_ray.generation.prompt import split_context
from s3_ray.reward import BaselineCache, BaselineSettings, RewardScorer, batch_genacc, precompute_baseline
from s3_ray.types import Passage, QAItem, SearchHit, Trajectory

JUDGE_HEAD = "Please check if any of the golden answers is contained in the following response: "


class JudgingGenerator:
    """A Generator that answers s3 prompts from a table and judges: yes iff the response is in `accept`."""

    def __init__(self, answers: dict[str, str], accept: set[str]) -> None:
        self.answers = answers
        self.accept = accept
        self.judged: list[str] = []
        self.calls: list[str] = []

    @property
    def model_id(self) -> str:
        return "judge-gen"

    @property
    def decoding(self) -> dict[str, Any]:
        return {"greedy": True}

    def generate(self, prompts: list[list[dict[str, str]]]) -> list[str]:
        out = []
        kinds = set()
        for m in prompts:
            text = m[-1]["content"]
            if text.startswith(JUDGE_HEAD):
                response = text[len(JUDGE_HEAD):].split("\nGolden answers:", 1)[0]
                self.judged.append(response)
                out.append("Yes." if response in self.accept else "No.")
                kinds.add("judge")
            else:
                out.append(self.answers.get(text, "unknown"))
                kinds.add("answer" if split_context(m) is not None else "zero-shot")
        self.calls.append("+".join(sorted(kinds)))
        return out


class Retriever:
    def search(self, queries: list[str], k: int) -> list[list[SearchHit]]:
        return [[SearchHit(Passage(f"{q}#{i}", f'"T"\n{q}'), 1.0) for i in range(k)] for q in queries]


ITEMS = [QAItem("q0", "Where?", ("Paris",)), QAItem("q1", "When?", ("1879",)), QAItem("q2", "Who?", ("Ada",))]
ANSWERS = {"Where?": "In Paris.", "When?": "eighteen seventy-nine", "Who?": "Bob"}


def test_batch_genacc_judge_yes_and_no() -> None:
    gen = JudgingGenerator({}, accept={"eighteen seventy-nine"})
    accs = batch_genacc(["In Paris.", "eighteen seventy-nine", "Bob"], [i.golden_answers for i in ITEMS],
                        judge_with=gen)
    assert accs == [1.0, 1.0, 0.0]
    assert gen.judged == ["eighteen seventy-nine", "Bob"]  # the span match never reaches the judge
    assert gen.calls == ["judge"]                          # one batched call
    assert batch_genacc(["eighteen seventy-nine"], [("1879",)]) == [0.0]  # no judge: span only


def test_baseline_and_reward_with_judge_through_the_client(tmp_path) -> None:
    gen = JudgingGenerator(ANSWERS, accept={"eighteen seventy-nine"})
    client = GeneratorClient.in_process(CachedGenerator(gen, ResponseCache(tmp_path / "c.sqlite")))
    settings = BaselineSettings("judge-gen", 1, "idx", judge=True, backend="transformers", decoding="greedy")
    cache = BaselineCache(tmp_path / "b.jsonl", settings)
    precompute_baseline(ITEMS, Retriever(), client, 1, cache, batch_size=8, progress=False)
    assert [cache.get(i.id).genacc for i in ITEMS] == [1.0, 1.0, 0.0]
    assert [cache.get(i.id).em for i in ITEMS] == [0.0, 0.0, 0.0]
    assert gen.calls == ["answer", "judge"]
    assert BaselineCache.load(cache.path).settings.judge is True

    # the searcher's context turns "Who?" into a paraphrase the judge accepts
    gen.answers = {"Where?": "no idea", "When?": "eighteen seventy-nine", "Who?": "Countess Lovelace"}
    gen.accept = {"eighteen seventy-nine", "Countess Lovelace"}
    ctx = [Passage("x", '"Ada"\nAda Lovelace.')]
    trajs = [Trajectory(item=it, prompt_ids=[1], context=ctx) for it in ITEMS]
    results = RewardScorer(client, cache, RewardConfig(use_judge=True)).score(trajs)
    assert [r.reward for r in results] == [-1.0, 0.0, 1.0]
    assert [r.metrics["genacc"] for r in results] == [0.0, 1.0, 1.0]


def test_judge_replies_are_cached_like_answers(tmp_path) -> None:
    gen = JudgingGenerator(ANSWERS, accept=set())
    client = GeneratorClient.in_process(CachedGenerator(gen, ResponseCache(tmp_path / "c.sqlite")))
    for _ in range(2):
        assert batch_genacc(["Bob"], [("Ada",)], judge_with=client) == [0.0]
    assert gen.judged == ["Bob"]  # the second verdict came from the cache


def test_judge_setting_must_match_the_baseline(tmp_path) -> None:
    settings = BaselineSettings("judge-gen", 1, "idx", judge=False, backend="transformers", decoding="greedy")
    cache = BaselineCache(tmp_path / "b.jsonl", settings)
    client = GeneratorClient.in_process(JudgingGenerator(ANSWERS, accept=set()))
    with pytest.raises(ValueError, match="use_judge=True"):
        RewardScorer(client, cache, RewardConfig(use_judge=True))
