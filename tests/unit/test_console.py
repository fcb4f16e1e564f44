"""The job console: our lines, bars and errors on the console, everything else in the log file."""

from __future__ import annotations

import importlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from s3_ray.config import TrainConfig
from s3_ray.console import Console, JobConsole, Stages
from s3_ray.console.capture import OutputCapture
from s3_ray.console.errors import KNOWN_ERRORS, exit_status, is_known, message
from s3_ray.console.tail import JsonlTail, RecordFile, follow_record_files
from s3_ray.console.training import follow_training
from s3_ray.data.jsonl import DataError


def _console() -> tuple[Console, io.StringIO, io.StringIO]:
    err, out = io.StringIO(), io.StringIO()
    return Console(err=err, out=out, interactive=False), err, out


def test_each_stage_is_announced_once_then_its_seconds() -> None:
    con, err, out = _console()
    stages = Stages(con)
    with stages.stage("1/2 build"):
        con.info("inside")
        with con.bar(4, "work", unit="q") as bar:
            bar.update(4)
    with stages.stage("2/2 serve"):
        pass
    con.result("| table |")
    lines = err.getvalue().splitlines()
    assert lines[0] == "== 1/2 build ==" and lines.count("== 1/2 build ==") == 1
    assert lines[1] == "   inside"
    assert lines[2].startswith("   work: 4/4 q in ") and "q/s" in lines[2]
    assert lines[3].startswith("   done in ") and lines[3].endswith(" s")
    assert lines[4] == "== 2/2 serve ==" and lines[5].startswith("   done in ")
    assert set(stages.seconds) == {"1/2 build", "2/2 serve"}
    assert out.getvalue() == "| table |\n"


def test_a_failing_stage_is_remembered_and_not_closed() -> None:
    con, err, _ = _console()
    with pytest.raises(RuntimeError):
        with Stages(con).stage("3/5 precompute"):
            raise RuntimeError("boom")
    assert con.failed_stage == "3/5 precompute" and "done in" not in err.getvalue() and con.depth == 0


def test_terminal_bars_animate_and_lines_go_above_them() -> None:
    err = io.StringIO()
    con = Console(err=err, interactive=True)
    bar = con.bar(3, "trials", unit="trial")
    con.info("trial done: a=1")
    bar.update(3)
    bar.close()
    text = err.getvalue()
    assert "\r" in text and "3/3" in text and "trial done: a=1\n" in text
    assert con.bar(2, "off", enabled=False).closed is False and "off" not in err.getvalue()


def test_jsonl_tail_reads_only_new_complete_lines(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 0}\n')
    tail = JsonlTail(path)
    assert tail.read() == []
    with path.open("a") as fh:
        fh.write('{"step": 1}\n{"step": 2, "par')
    assert tail.read() == [{"step": 1}]
    with path.open("a") as fh:
        fh.write('tial": true}\nnot json\n')
    assert tail.read() == [{"step": 2, "partial": True}]
    assert JsonlTail(path, from_start=True).read() == [{"step": 0}, {"step": 1}, {"step": 2, "partial": True}]


def _append_slowly(path: Path, records: list[dict], pause: float = 0.05) -> threading.Thread:
    def run() -> None:
        for rec in records:
            with path.open("a") as fh:
                fh.write(json.dumps(rec) + "\n")
            time.sleep(pause)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_training_shows_one_line_per_rl_step_from_the_metrics_file(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(json.dumps({"step": 9, "reward": 1.0}) + "\n")  # an earlier run's step: not shown
    records = [{"step": 0, "warmup/loss": 6.0, "phase": "warmup"}, {"step": 1, "warmup/loss": 4.5, "phase": "warmup"},
               {"step": 1, "reward": 0.25, "adv_std": 0.3, "kl": 0.002, "malformed_rate": 0.5, "time/step_s": 2.0},
               {"step": 2, "reward": -0.5, "sample/signal_groups": 3, "sample/groups": 6, "kl": 0.01,
                "malformed_rate": 0.0, "time/step_s": 1.5, "stop_reason": "KL above 0.5"}]
    con, err, _ = _console()
    with follow_training(con, metrics, TrainConfig(steps=3, warmup_steps=2, questions_per_step=4)):
        _append_slowly(metrics, records).join()
    lines = err.getvalue().splitlines()
    steps = [line for line in lines if line.startswith("step ")]
    assert steps == ["step 1/3  reward +0.250  signal yes  KL 0.0020  malformed 50%  2.0 s",
                     "step 2/3  reward -0.500  signal 3/6 groups  KL 0.0100  malformed 0%  1.5 s"]
    assert any(line.startswith("format warm-up: 2/2 step in ") for line in lines)
    assert "warm-up loss 6.000 -> 4.500" in lines
    assert "the collapse guard stopped training after step 2: KL above 0.5" in lines
    assert lines[-1].startswith("RL steps: 2/3 step in ")
    assert not any("step 9" in line for line in lines)


def test_record_files_move_one_bar_each(tmp_path: Path) -> None:
    a, b, done = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "done.jsonl"
    a.write_text('{"id": 0}\n')
    done.write_text('{"id": 0}\n{"id": 1}\n')
    con, err, _ = _console()
    files = [RecordFile("naive_rag", a, 3), RecordFile("s3", b, 2), RecordFile("finished", done, 2)]
    with follow_record_files(files, con):
        threads = [_append_slowly(a, [{"id": 1}, {"id": 2}]), _append_slowly(b, [{"id": 0}, {"id": 1}])]
        for t in threads:
            t.join()
    lines = err.getvalue().splitlines()
    assert [line.split(" in ")[0] for line in lines] == ["naive_rag: 3/3 q", "s3: 2/2 q"]


def test_capture_routes_every_writer_to_the_log(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "logs" / "job.log"
    with OutputCapture(log) as capture:
        print("python print", file=sys.__stdout__, flush=True)  # the process's real stdout (pytest swaps sys.stdout)
        os.write(2, b"native write\n")
        subprocess.run(["sh", "-c", "echo child process; echo child stderr >&2"], check=True)
        capture.note("a note")
    print("after")
    text = log.read_text()
    for line in ("python print", "native write", "child process", "child stderr", "a note"):
        assert line in text
    out, err = capfd.readouterr()
    assert "after" in out and "python print" not in out + err and "child" not in out + err


def test_verbose_capture_echoes_to_the_console_too(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "job.log"
    with OutputCapture(log, echo=True):
        os.write(2, b"ray says hello\n")
        subprocess.run(["sh", "-c", "echo from a worker"], check=True)
    assert "ray says hello" in log.read_text() and "from a worker" in log.read_text()
    assert "ray says hello" in capfd.readouterr().err


def test_a_known_error_is_one_line_with_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    def body() -> int:
        raise DataError("answerable.jsonl", 46, "duplicate id 'q7' (first seen on line 3)")

    assert JobConsole("evaluate").run(body) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == "error: answerable.jsonl:46: duplicate id 'q7' (first seen on line 3)\n"


def test_a_failing_stage_prints_the_error_the_stage_and_the_log(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    job = JobConsole("demo")

    def body() -> int:
        with job.logging_to(tmp_path / "run") as con:
            with Stages(con).stage("2/5 start Ray"):
                raise RuntimeError("no index at runs/x/index")
        return 0

    assert job.run(body) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("logs: ") and "--verbose" in err[0]
    assert err[1:3] == ["== 2/5 start Ray ==", "error: RuntimeError: no index at runs/x/index"]
    assert err[3] == "   in stage 2/5 start Ray"
    log = tmp_path / "run" / "logs" / "demo.log"
    assert err[4].startswith("   log: ") and err[4].split()[1] == str(log)
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "no index at runs/x/index" in text


def test_sigterm_ends_a_job_through_python(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = signal.getsignal(signal.SIGTERM)
    job = JobConsole("train")

    def body() -> int:
        with job.logging_to(tmp_path):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        return 0

    assert job.run(body) == 143
    assert capsys.readouterr().err.splitlines()[-1].startswith("error: stopped by SIGTERM (log: ")
    assert signal.getsignal(signal.SIGTERM) == before


@pytest.mark.parametrize("verbose", [False, True])
def test_other_libraries_bars_are_off_unless_verbose(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      verbose: bool) -> None:
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "0")  # the user's own choice is kept
    monkeypatch.delenv("S3RAY_VERBOSE", raising=False)
    job = JobConsole("index", verbose=verbose)
    seen: dict[str, object] = {}

    def body() -> int:
        with job.logging_to(tmp_path):
            seen.update(tqdm=os.environ.get("TQDM_DISABLE"), hub=os.environ["HF_HUB_DISABLE_PROGRESS_BARS"],
                        workers=dict(job.worker_env))
        return 0

    assert job.run(body) == 0
    assert seen["hub"] == "0" and "HF_HUB_DISABLE_PROGRESS_BARS" not in seen["workers"]
    if verbose:
        assert seen["tqdm"] is None and seen["workers"] == {}
    else:
        assert seen["tqdm"] == "1" and seen["workers"] == {"RAY_SERVE_LOG_TO_STDERR": "0", "TQDM_DISABLE": "1"}
    assert "TQDM_DISABLE" not in os.environ


def test_verbose_comes_from_the_environment_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("S3RAY_VERBOSE", "1")
    assert JobConsole("demo").verbose
    monkeypatch.setenv("S3RAY_VERBOSE", "0")
    assert not JobConsole("demo").verbose


def test_every_known_error_name_is_a_real_exception_class() -> None:
    for name in KNOWN_ERRORS:
        module, _, cls = name.rpartition(".")
        found = getattr(importlib.import_module(module), cls)
        assert isinstance(found, type) and issubclass(found, Exception), name
        assert is_known(found.__new__(found)), name


def test_an_error_raised_in_a_ray_task_reads_as_its_cause() -> None:
    from ray.exceptions import RayTaskError

    cause = DataError("test.jsonl", 2, "missing field 'question'")
    wrapped = RayTaskError("run_pair", "Traceback ...\nDataError: ...", cause).as_instanceof_cause()
    assert is_known(wrapped) and exit_status(wrapped) == 2
    assert message(wrapped) == "test.jsonl:2: missing field 'question'"
    assert exit_status(RuntimeError("x")) == 1 and exit_status(KeyboardInterrupt()) == 130
