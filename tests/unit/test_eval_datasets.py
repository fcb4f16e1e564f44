"""Readers of the evaluation formats, written as small fixtures in tmp dirs."""

from __future__ import annotations

import builtins
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from s3_ray.data.datasets import (DatasetUnavailable, load_eval_dataset, load_hf, read_flashrag, read_mirage,
                                  read_parquet, sample)
from s3_ray.data.jsonl import DataError
from s3_ray.types import QAItem


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_flashrag_jsonl(tmp_path: Path) -> None:
    p = _jsonl(tmp_path / "nq.jsonl", [
        {"id": "test_0", "question": "who wrote hamlet", "golden_answers": ["Shakespeare"], "metadata": {}},
        {"id": 7, "question": "popqa year", "golden_answers": [1889, "eighteen"]},
    ])
    items = read_flashrag(p, "nq")
    assert [i.id for i in items] == ["test_0", "7"]
    assert items[1].golden_answers == ("1889", "eighteen") and items[0].meta == {"dataset": "nq"}


@pytest.mark.parametrize("row, problem", [
    ({"id": "a", "golden_answers": ["x"]}, "missing field 'question'"),
    ({"id": "a", "question": "q"}, "missing field 'golden_answers'"),
    ({"id": "a", "question": "q", "golden_answers": [""]}, "golden_answers[0]"),
    ({"question": "q", "golden_answers": ["x"]}, "missing field 'id'"),
])
def test_flashrag_bad_rows_name_file_and_line(tmp_path: Path, row: dict, problem: str) -> None:
    p = _jsonl(tmp_path / "bad.jsonl", [{"id": "ok", "question": "q", "golden_answers": ["x"]}, row])
    with pytest.raises(DataError, match=rf"bad.jsonl:2: .*{problem[:12]}") as err:
        read_flashrag(p)
    assert err.value.line == 2


def test_flashrag_duplicate_id(tmp_path: Path) -> None:
    row = {"id": "a", "question": "q", "golden_answers": ["x"]}
    with pytest.raises(DataError, match="line 1"):
        read_flashrag(_jsonl(tmp_path / "d.jsonl", [row, row]))


def test_parquet_both_answer_layouts(tmp_path: Path) -> None:
    table = pa.Table.from_pylist([
        {"id": "q1", "question": "Who?", "golden_answers": ["Ada"], "data_source": "nq",
         "reward_model": {"ground_truth": {"target": ["ignored"]}, "style": "rule"}},
        {"id": None, "question": "When?", "golden_answers": None, "data_source": "hotpotqa",
         "reward_model": {"ground_truth": {"target": ["1841"]}, "style": "rule"}},
    ])
    pq.write_table(table, tmp_path / "test_e5_ug.parquet")
    items = read_parquet(tmp_path / "test_e5_ug.parquet")
    assert [(i.id, i.golden_answers, i.meta["source"]) for i in items] == [
        ("q1", ("Ada",), "nq"), ("1", ("1841",), "hotpotqa")]
    assert items[0].meta["dataset"] == "test_e5_ug"


def test_parquet_bad_row_named(tmp_path: Path) -> None:
    pq.write_table(pa.Table.from_pylist([{"question": "ok", "golden_answers": ["x"]},
                                         {"question": "", "golden_answers": ["x"]}]), tmp_path / "b.parquet")
    with pytest.raises(DataError, match=r"b.parquet:2: column 'question'"):
        read_parquet(tmp_path / "b.parquet")
    pq.write_table(pa.Table.from_pylist([{"question": "q", "other": 1}]), tmp_path / "c.parquet")
    with pytest.raises(DataError, match=r"c.parquet:1: needs 'golden_answers'"):
        read_parquet(tmp_path / "c.parquet")


MIRAGE = {
    "medqa": {"0001": {"question": "Which organ makes insulin?", "options": {"A": "Liver", "B": "Pancreas"},
                       "answer": "B"}},
    "bioasq": {"q9": {"question": "Is aspirin an NSAID?", "options": {"A": "yes", "B": "no"}, "answer": "A"}},
}


def test_mirage(tmp_path: Path) -> None:
    p = tmp_path / "benchmark.json"
    p.write_text(json.dumps(MIRAGE))
    items = read_mirage(p)
    med = items[0]
    assert med.id == "medqa/0001" and med.golden_answers == ("B", "B: Pancreas")
    assert med.question == "Which organ makes insulin?\nOptions:\nA. Liver\nB. Pancreas"
    assert med.meta["query"] == "Which organ makes insulin?" and med.meta["dataset"] == "medqa"
    assert [i.id for i in read_mirage(p, tasks=["bioasq"])] == ["bioasq/q9"]
    with pytest.raises(DataError, match="unknown MIRAGE task"):
        read_mirage(p, tasks=["mmlu"])


def test_mirage_bad_answer_named(tmp_path: Path) -> None:
    bad = {"medqa": {"x1": {"question": "q", "options": {"A": "a"}, "answer": "C"}}}
    (tmp_path / "m.json").write_text(json.dumps(bad))
    with pytest.raises(DataError, match=r"m.json:1: medqa/x1: answer 'C'"):
        read_mirage(tmp_path / "m.json")


def test_sampling_is_seeded_and_ordered() -> None:
    xs = [QAItem(str(i), "q", ("a",)) for i in range(100)]
    a, b, c = sample(xs, 10, 1), sample(xs, 10, 1), sample(xs, 10, 2)
    assert a == b and a != c and len(a) == 10
    assert [int(x.id) for x in a] == sorted(int(x.id) for x in a)


def test_load_eval_dataset_dispatch_and_limit(tmp_path: Path) -> None:
    p = _jsonl(tmp_path / "hotpotqa.jsonl", [{"id": i, "question": f"q{i}", "golden_answers": ["x"]} for i in range(20)])
    items = load_eval_dataset("hotpotqa", str(p), limit=5, seed=3)
    assert len(items) == 5 and all(i.meta["dataset"] == "hotpotqa" for i in items)
    m = tmp_path / "benchmark.json"
    m.write_text(json.dumps(MIRAGE))
    assert len(load_eval_dataset("mirage", str(m), limit=1)) == 2  # the cap applies per task
    with pytest.raises(ValueError, match="cannot infer"):
        load_eval_dataset("x", str(tmp_path / "x.csv"))


def test_hf_without_package_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real = builtins.__import__

    def fake(name, *args, **kwargs):
        if name == "datasets":
            raise ImportError("No module named 'datasets'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(DatasetUnavailable, match="pip install datasets"):
        load_hf("nq", "test")
