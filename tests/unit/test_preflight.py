"""Bad input stops a job before Ray starts, in one line, with exit status 2; a stage that fails
later prints its error, the stage and the log that holds the rest."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from jobs import runtime
from s3_ray.data.corpus import write_corpus
from s3_ray.data.qa import write_qa
from s3_ray.types import Passage, QAItem

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def no_ray(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Fail the test if the job gets as far as starting Ray or Serve or loading a model."""
    import ray

    import s3_ray.models
    import s3_ray.models.registry

    def boom(*a, **k):
        raise AssertionError("bad input must stop the job before Ray starts or a model loads")

    for target, name in [(runtime, "init_ray"), (runtime, "deploy_services"), (ray, "init"),
                         (s3_ray.models.registry, "load_causal_lm"), (s3_ray.models, "load_causal_lm")]:
        monkeypatch.setattr(target, name, boom)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    """A corpus, a clean test split, a test split with a repeated id, and a built index."""
    from s3_ray.config import RetrievalConfig
    from s3_ray.retrieval.index import build_index

    write_corpus(tmp_path / "corpus.jsonl", [Passage("d1", '"Oslo"\nOslo is the capital of Norway.')])
    write_qa(tmp_path / "test.jsonl", [QAItem("q1", "Capital of Norway?", ("Oslo",))])
    rows = [{"id": "q1", "question": "Capital of Norway?", "golden_answers": ["Oslo"]},
            {"id": "q2", "question": "Capital of Italy?", "golden_answers": ["Rome"]},
            {"id": "q1", "question": "Again?", "golden_answers": ["x"]}]
    (tmp_path / "answerable.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    build_index(tmp_path / "corpus.jsonl", RetrievalConfig(index_dir=str(tmp_path / "index")), progress=False)
    return {"corpus": str(tmp_path / "corpus.jsonl"), "test": str(tmp_path / "test.jsonl"),
            "dup": str(tmp_path / "answerable.jsonl"), "index": str(tmp_path / "index")}


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("error: "), err
    return err


def test_a_missing_searcher_checkpoint_stops_evaluate_before_ray(files, tmp_path, capsys) -> None:
    from jobs.evaluate import main

    rc = main(["--searcher", f"trained={tmp_path / 'no_such_ckpt'}", f"data.test_path={files['test']}",
               f"data.corpus_path={files['corpus']}", f"retrieval.index_dir={files['index']}"])
    err = _one_error_line(capsys)
    assert rc == 2 and "evaluate cannot start" in err and f"checkpoint trained: {tmp_path / 'no_such_ckpt'}" in err


def test_a_repeated_id_stops_evaluate_before_ray(files, capsys) -> None:
    from jobs.evaluate import main

    rc = main([f"data.test_path={files['dup']}", f"data.corpus_path={files['corpus']}",
               f"retrieval.index_dir={files['index']}"])
    err = _one_error_line(capsys)
    assert rc == 2 and f"{files['dup']}:3: duplicate id 'q1' (first seen on line 1)" in err


def test_a_broken_eval_data_set_is_a_problem_of_the_dry_run_too(files, capsys) -> None:
    from jobs.evaluate import main

    rc = main(["--dry-run", f"eval.datasets=[{{name: answerable, path: {files['dup']}}}]",
               f"retrieval.index_dir={files['index']}"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 2 and any("duplicate id 'q1'" in p and p.startswith("eval.datasets[answerable]: ")
                           for p in out["problems"])


def test_the_dry_run_counts_the_questions_it_read(files, capsys) -> None:
    from jobs.evaluate import main

    assert main(["--dry-run", f"data.test_path={files['test']}", f"retrieval.index_dir={files['index']}"]) == 0
    assert json.loads(capsys.readouterr().out)["plan"]["datasets"][0]["questions"] == 1


def test_train_without_its_baseline_stops_before_ray(files, tmp_path, capsys) -> None:
    from jobs.train import main

    rc = main([f"run_dir={tmp_path / 'run'}", f"data.train_path={files['test']}",
               f"data.corpus_path={files['corpus']}", f"retrieval.index_dir={files['index']}"])
    err = _one_error_line(capsys)
    assert rc == 2 and "baseline train" in err and "made by `python -m jobs.precompute --split train`" in err
    assert not (tmp_path / "run" / "logs").exists()  # nothing started, nothing written


def test_serve_without_an_index_stops_before_ray(tmp_path, capsys) -> None:
    from jobs.serve import main

    rc = main(["--no-generator", f"retrieval.index_dir={tmp_path / 'nowhere'}"])
    err = _one_error_line(capsys)
    assert rc == 2 and f"retrieval index: {tmp_path / 'nowhere' / 'manifest.json'} does not exist" in err


def test_a_failing_demo_stage_prints_error_stage_and_log(tmp_path: Path) -> None:
    """A real job in its own process: the index cannot be built (its folder's parent is a file),
    so stage 1 fails; the console says so and where the traceback is, and nothing else."""
    (tmp_path / "blocker").write_text("a file where the index folder should go\n")
    proc = subprocess.run([sys.executable, "-m", "jobs.cli", "demo", "--config", runtime.DEFAULT_CONFIG,
                           f"run_dir={tmp_path / 'run'}", f"retrieval.index_dir={tmp_path / 'blocker' / 'index'}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 1, proc.stderr
    assert lines[0].startswith("logs: ") and lines[1] == "== 1/5 build the BM25 index =="
    assert lines[2].startswith("error: ") and "blocker" in lines[2]
    assert lines[3] == "   in stage 1/5 build the BM25 index"
    log = tmp_path / "run" / "logs" / "demo.log"
    assert lines[4].startswith("   log: ") and Path(lines[4].split()[1]).resolve() == log.resolve()
    assert len(lines) == 5 and proc.stdout == ""
    assert "Traceback (most recent call last)" in log.read_text()
