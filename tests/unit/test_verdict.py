"""The demo's verdict: intervals from the per-question records the evaluation wrote."""

import json

import pytest

from s3_ray.data.jsonl import DataError
from s3_ray.eval.records import scores_by_question
from s3_ray.pipeline.verdict import verdict


def _write(path, scores):
    path.write_text("".join(json.dumps({"id": q, "genacc": s, "answer": "x"}) + "\n" for q, s in scores.items()))
    return path


def test_records_round_trip_and_bad_line_names_file_and_line(tmp_path):
    f = _write(tmp_path / "s3_trained.jsonl", {"q1": 1.0, "q2": 0.0})
    assert scores_by_question(f) == {"q1": 1.0, "q2": 0.0}
    f.write_text(f.read_text() + '{"id": "q3"}\n')
    with pytest.raises(DataError, match=r"s3_trained.jsonl:3: .*'genacc'"):
        scores_by_question(f)
    with pytest.raises(FileNotFoundError, match="data file not found"):
        scores_by_question(tmp_path / "missing.jsonl")


def test_verdict_interval_separates_a_clear_gain_from_noise():
    n = 40
    naive = {f"q{i}": 0.0 for i in range(n)}
    warm = {f"q{i}": float(i % 2) for i in range(n)}           # +50 over naive
    trained = {f"q{i}": float(i % 2 or i % 4 == 0) for i in range(n)}  # +25 over warm-up
    lines, figs = verdict({"naive_rag": naive, "s3_warmup_only": warm, "s3_trained": trained},
                          [{"sample/signal_groups": 2}, {"sample/signal_groups": 0}, {"sample/signal_groups": 1}])
    assert lines[0] == "RL had a reward signal in 2 of 3 steps"
    assert figs["trained_minus_warmup"]["mean"] == 25.0 and figs["trained_minus_warmup"]["ci95"][0] > 0
    assert lines[1] == ("RL changed 10 of 40 test answers against the warm-up alone: 10 now right that were "
                        "wrong, 0 now wrong that were right")
    assert figs["rl_changed"] == {"won": 10, "lost": 0, "n": 40}
    assert "real gain" in lines[2] and "RL's own share" in lines[2]
    same = verdict({"s3_warmup_only": warm, "s3_trained": dict(warm)}, [{"adv_std": 0.0}])[0]
    assert "did not move the searcher" in same[0] and same[1].startswith("RL changed 0 of 40")
    assert "within noise" in same[2]


def test_verdict_refuses_methods_that_answered_different_questions():
    with pytest.raises(ValueError, match="different questions"):
        verdict({"naive_rag": {"q1": 1.0}, "s3_trained": {"q2": 1.0}}, [])
