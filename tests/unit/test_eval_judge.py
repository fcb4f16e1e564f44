"""`reward.use_judge` in evaluation: GenAcc = span match OR the generator-as-judge (the reward's
`batch_genacc`), judged records are counted, and files never mix both settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from s3_ray.config import load_config
from s3_ray.eval.report import markdown_table
from s3_ray.eval.runner import evaluate_method, summarize
from s3_ray.eval.suite import evaluate
from s3_ray.types import QAItem
from tests.fakes import FakeRetriever
from tests.unit.test_eval_report import FixedMethod

ITEMS = [QAItem("q1", "Where was Ada born?", ("Brindle",)),        # span match
         QAItem("q2", "How many moons?", ("2",)),                  # judge says yes
         QAItem("q3", "Who founded Velmora?", ("Orla Tessin",))]   # judge says no


class JudgingGenerator:
    """Answers from a table; as a judge, says yes only when the response is "two"."""

    model_id = "fake"

    def __init__(self) -> None:
        self.answers = {"Where was Ada born?": "In Brindle.", "How many moons?": "two",
                        "Who founded Velmora?": "Nobody"}
        self.judge_prompts: list[str] = []

    def answer(self, questions, contexts):
        return [self.answers.get(q, "unknown") for q in questions]

    def generate(self, prompts):
        texts = [p[0]["content"] for p in prompts]
        self.judge_prompts.extend(texts)
        return ["Yes." if "response: two\n" in t else "No." for t in texts]


def test_judge_accepts_what_span_match_rejects(tmp_path: Path) -> None:
    gen = JudgingGenerator()
    recs = evaluate_method(ITEMS, FixedMethod(), gen, tmp_path, batch_size=3, judge=True)
    assert [r["genacc"] for r in recs] == [1.0, 1.0, 0.0]
    assert [r["span_match"] for r in recs] == [1.0, 0.0, 0.0]
    assert [r["judged"] for r in recs] == [False, True, True]
    assert [r["generator_calls"] for r in recs] == [1, 2, 2]
    assert len(gen.judge_prompts) == 2 and "Golden answers: ['2']" in gen.judge_prompts[0]
    s = summarize(recs)
    assert abs(s["genacc"] - 2 / 3) < 1e-9 and abs(s["genacc_span"] - 1 / 3) < 1e-9
    assert "GenAcc span only" in markdown_table({"fixed": s})


def test_without_judge_no_judge_call(tmp_path: Path) -> None:
    gen = JudgingGenerator()
    recs = evaluate_method(ITEMS, FixedMethod(), gen, tmp_path, batch_size=2)
    assert [r["genacc"] for r in recs] == [1.0, 0.0, 0.0] and gen.judge_prompts == []
    assert "genacc_span" not in summarize(recs)


def test_resuming_with_the_other_setting_is_refused(tmp_path: Path) -> None:
    evaluate_method(ITEMS[:1], FixedMethod(), JudgingGenerator(), tmp_path)
    with pytest.raises(ValueError, match=r"fixed.jsonl: record 'q1' was scored with judge=False"):
        evaluate_method(ITEMS, FixedMethod(), JudgingGenerator(), tmp_path, judge=True)


def test_job_passes_reward_use_judge(tmp_path: Path) -> None:
    cfg = load_config(None, [f"run_dir={tmp_path}", "eval.methods=[naive_rag]", "data.test_limit=3",
                             "reward.use_judge=true", "rollout.init_k=2"])
    gen = JudgingGenerator()
    summaries, md = evaluate(cfg, FakeRetriever(), gen, {})
    recs = [json.loads(x) for x in (tmp_path / "eval" / "test" / "naive_rag.jsonl").read_text().splitlines()]
    assert len(recs) == 3 and all(r["judge"] and r["judged"] for r in recs)  # "unknown" never span-matches
    assert len(gen.judge_prompts) == 3 and summaries["naive_rag"]["generator_calls"] == 2.0
    assert "generator calls / question" in md.read_text()
