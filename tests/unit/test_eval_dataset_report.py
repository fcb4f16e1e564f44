"""Hand-built per-data-set results: tables, averages, JSON and the plot."""

from __future__ import annotations

import json
from pathlib import Path

from s3_ray.eval.dataset_report import average, metric_table, write_dataset_report
from s3_ray.eval.runner import evaluate_method, run_datasets, summarize
from s3_ray.types import QAItem
from tests.unit.test_eval_report import EchoGenerator, FixedMethod

RESULTS = {
    "nq": {"rag": {"n": 10, "genacc": 0.4, "em": 0.2, "f1": 0.3, "context_words": 300.0},
           "s3": {"n": 10, "genacc": 0.6, "em": 0.3, "f1": 0.5, "context_words": 200.0}},
    "hotpotqa": {"rag": {"n": 30, "genacc": 0.2, "em": 0.1, "f1": 0.2, "context_words": 320.0},
                 "s3": {"n": 30, "genacc": 0.5, "em": 0.2, "f1": 0.4, "context_words": 220.0}},
}


def test_average_is_macro_over_datasets() -> None:
    avg = average(RESULTS)
    assert abs(avg["rag"]["genacc"] - 0.3) < 1e-12  # not (0.4*10 + 0.2*30) / 40 = 0.25
    assert avg["s3"]["n"] == 40 and avg["s3"]["datasets"] == 2
    assert abs(avg["s3"]["context_words"] - 210.0) < 1e-9


def test_tables_and_files(tmp_path: Path) -> None:
    table = metric_table(RESULTS, "genacc")
    assert "| rag | 40.0 | 20.0 | 30.0 |" in table and "| s3 | 60.0 | 50.0 | 55.0 |" in table
    md = write_dataset_report(tmp_path, RESULTS, extra={"config": {"k": 3}}).read_text()
    assert "## Context words per question" in md and "| s3 | 200.0 | 220.0 | 210.0 |" in md
    assert "| rag | 20.0 | 10.0 | 15.0 |" in md  # EM
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["average"]["s3"]["f1"] == 0.45 and data["context_size"] == "context_words"
    assert (tmp_path / "accuracy.png").stat().st_size > 1000


def test_method_missing_on_a_dataset_shows_dash() -> None:
    r = {"a": {"m": {"genacc": 1.0}, "x": {"genacc": 0.5}}, "b": {"m": {"genacc": 0.0}}}
    assert "| x | 50.0 | - | 50.0 |" in metric_table(r, "genacc")


def test_token_counts_and_per_dataset_folders(tmp_path: Path) -> None:
    items = [QAItem("q1", "Where was Ada born?", ("Brindle",)), QAItem("q3", "When?", ("1841",))]
    recs = evaluate_method(items, FixedMethod(), EchoGenerator(), tmp_path / "one",
                           count_tokens=lambda text: len(text))
    # FixedMethod's passage formats as "Doc 1 (Title: T)\nsome words here\n"
    assert [r["context_tokens"] for r in recs] == [len("Doc 1 (Title: T)\nsome words here\n")] * 2
    assert summarize(recs)["context_tokens"] == 33
    res = run_datasets([FixedMethod()], {"d1": items[:1], "d2": items[1:]}, EchoGenerator(), tmp_path / "all",
                       log=lambda s: None, count_tokens=len)
    assert res["d1"]["fixed"]["genacc"] == 1.0 and res["d2"]["fixed"]["genacc"] == 0.0
    assert (tmp_path / "all" / "d2" / "fixed.jsonl").is_file()
    assert average(res)["fixed"]["genacc"] == 0.5
