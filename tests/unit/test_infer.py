"""jobs.infer: context rows per question, resume after a crash, and the CLI end to end (naive RAG)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fakes import FAKE_PASSAGES, FakeRetriever
from jobs.infer import main
from s3_ray.config import RetrievalConfig
from s3_ray.data.corpus import write_corpus
from s3_ray.data.jsonl import DataError
from s3_ray.data.qa import write_qa
from s3_ray.eval.contexts import read_done, write_contexts
from s3_ray.eval.methods import NaiveRAG
from s3_ray.retrieval import build_index
from s3_ray.types import QAItem

ITEMS = [QAItem(f"q{i}", q, (a,)) for i, (q, a) in enumerate([
    ("Where does the river Wend flow?", "Alder Town"),
    ("Who is the mayor of Birch Falls?", "Clara Holt"),
    ("Which harbour town has no river?", "Dune Port"),
    ("Who founded the Holt company?", "Clara Holt"),
    ("Where is Cedar Works based?", "Birch Falls"),
])]


class Counting(NaiveRAG):
    """Naive RAG that records which questions it was asked for and can crash on demand."""

    def __init__(self, k: int, crash_after: int | None = None) -> None:
        super().__init__(FakeRetriever(), k)
        self.asked: list[str] = []
        self.crash_after = crash_after

    def contexts(self, items):
        if self.crash_after is not None and len(self.asked) >= self.crash_after:
            raise RuntimeError("simulated crash")
        self.asked.extend(q.id for q in items)
        return super().contexts(items)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_rows_hold_context_and_resume_skips_written_ids(tmp_path: Path) -> None:
    out = tmp_path / "ctx.jsonl"
    crashing = Counting(k=2, crash_after=2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        write_contexts(ITEMS, crashing, out, batch_size=2, log=lambda _: None)
    assert [r["id"] for r in _rows(out)] == ["q0", "q1"]

    method = Counting(k=2)
    assert write_contexts(ITEMS, method, out, batch_size=2, log=lambda _: None) == 3
    assert method.asked == ["q2", "q3", "q4"]  # the first two were not redone
    rows = _rows(out)
    assert [r["id"] for r in rows] == [q.id for q in ITEMS]
    first = rows[0]
    assert first["question"] == ITEMS[0].question and first["golden_answers"] == ["Alder Town"]
    assert first["method"] == "naive_rag" and first["searcher"] is None and first["searches"] == 1
    expected = [h.passage.to_dict() for h in FakeRetriever().search([ITEMS[0].question], 2)[0]]
    assert first["context"] == expected and first["trace"] == []
    # nothing left to do: a rerun writes nothing and asks nothing
    again = Counting(k=2)
    assert write_contexts(ITEMS, again, out, log=lambda _: None) == 0 and again.asked == []


def test_a_torn_last_line_is_dropped_and_redone(tmp_path: Path) -> None:
    out = tmp_path / "ctx.jsonl"
    write_contexts(ITEMS[:2], Counting(k=1), out, log=lambda _: None)
    out.write_text(out.read_text() + '{"id": "q2", "quest')  # crash mid-write
    method = Counting(k=1)
    write_contexts(ITEMS, method, out, log=lambda _: None)
    assert method.asked == ["q2", "q3", "q4"]
    assert [r["id"] for r in _rows(out)] == ["q0", "q1", "q2", "q3", "q4"]


def test_rows_from_another_method_or_searcher_are_refused(tmp_path: Path) -> None:
    out = tmp_path / "ctx.jsonl"
    write_contexts(ITEMS[:1], Counting(k=1), out, log=lambda _: None)
    with pytest.raises(DataError, match=r"ctx.jsonl:1: .*method='s3' searcher='ckpt'"):
        read_done(out, "s3", "ckpt")
    out.write_text(out.read_text() + "not json\n")
    with pytest.raises(DataError, match=r"ctx.jsonl:2: invalid JSON"):
        read_done(out, "naive_rag", None)


def test_cli_writes_naive_rag_contexts_and_resumes(tmp_path: Path, capsys) -> None:
    corpus, test = tmp_path / "corpus.jsonl", tmp_path / "test.jsonl"
    write_corpus(corpus, list(FAKE_PASSAGES))
    write_qa(test, ITEMS)
    index_dir = tmp_path / "index"
    build_index(corpus, RetrievalConfig(index_dir=str(index_dir)), progress=False)
    out = tmp_path / "out.jsonl"
    argv = ["--method", "naive_rag", "--split", "test", "--out", str(out), f"run_dir={tmp_path}",
            f"data.corpus_path={corpus}", f"data.test_path={test}", f"retrieval.index_dir={index_dir}",
            "rollout.init_k=2"]
    assert main(argv + ["data.test_limit=3"]) == 0
    assert [r["id"] for r in _rows(out)] == ["q0", "q1", "q2"]
    assert all(len(r["context"]) == 2 for r in _rows(out))
    assert main(argv) == 0  # the remaining two only
    assert [r["id"] for r in _rows(out)] == [q.id for q in ITEMS]
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out)
    with pytest.raises(SystemExit, match="--searcher only applies"):
        main(argv + ["--searcher", "ckpt"])
