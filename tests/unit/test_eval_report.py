import json

from s3_ray.eval.base import MethodOutput
from s3_ray.eval.report import markdown_table, write_report
from s3_ray.eval.runner import evaluate_method, summarize
from s3_ray.types import Passage, QAItem

ITEMS = [
    QAItem("q1", "Where was Ada born?", ("Brindle",), {"type": "single"}),
    QAItem("q2", "Who founded Velmora?", ("Orla Tessin", "Orla"), {"type": "bridge"}),
    QAItem("q3", "When?", ("1841",), {"type": "bridge"}),
]


class FixedMethod:
    name = "fixed"

    def __init__(self):
        self.calls = 0

    def contexts(self, items):
        self.calls += len(items)
        return [MethodOutput(passages=[Passage(f"p-{q.id}", '"T"\nsome words here')], searches=1) for q in items]


class EchoGenerator:
    """Answers with a fixed string per question: hand-built right and wrong answers."""

    answers = {"Where was Ada born?": "She was born in Brindle.", "Who founded Velmora?": "Orla",
               "When?": "in 1900"}

    def answer(self, questions, contexts):
        return [self.answers[q] for q in questions]


def test_records_and_summary_numbers(tmp_path):
    recs = evaluate_method(ITEMS, FixedMethod(), EchoGenerator(), tmp_path, batch_size=2)
    assert [r["genacc"] for r in recs] == [1.0, 1.0, 0.0]
    assert [r["em"] for r in recs] == [0.0, 1.0, 0.0]
    s = summarize(recs)
    assert s["n"] == 3
    assert abs(s["genacc"] - 2 / 3) < 1e-9
    assert s["genacc_single"] == 1.0 and s["genacc_bridge"] == 0.5
    assert s["context_docs"] == 1 and s["context_words"] == 4


def test_evaluation_resumes_without_recomputing(tmp_path):
    m = FixedMethod()
    evaluate_method(ITEMS[:2], m, EchoGenerator(), tmp_path, batch_size=2)
    # simulate a crash that left a torn line behind
    with (tmp_path / "fixed.jsonl").open("a") as f:
        f.write('{"id": "q3", "trunc')
    m2 = FixedMethod()
    recs = evaluate_method(ITEMS, m2, EchoGenerator(), tmp_path, batch_size=2)
    assert m2.calls == 1  # only q3 was redone
    assert [r["id"] for r in recs] == ["q1", "q2", "q3"]
    # the torn line was cut, so the file holds exactly three clean records
    lines = (tmp_path / "fixed.jsonl").read_text().splitlines()
    assert [json.loads(x)["id"] for x in lines] == ["q1", "q2", "q3"]
    m3 = FixedMethod()
    evaluate_method(ITEMS, m3, EchoGenerator(), tmp_path, batch_size=2)
    assert m3.calls == 0


def test_report_files(tmp_path):
    summaries = {"naive_rag": {"n": 2, "genacc": 0.5, "em": 0.25, "context_words": 100.0},
                 "s3": {"n": 2, "genacc": 1.0, "em": 0.5, "context_words": 150.0}}
    md = write_report(tmp_path, summaries, extra={"k": 1})
    text = md.read_text()
    assert "| naive_rag | 2 | 50.0 | 25.0 | 100.0 |" in text
    assert json.loads((tmp_path / "results.json").read_text())["summaries"]["s3"]["genacc"] == 1.0
    assert (tmp_path / "accuracy.png").stat().st_size > 1000
    assert markdown_table({"x": {"n": 1, "genacc": float("nan")}}).endswith("| x | 1 | - |")
