"""The README's main command, end to end, with tiny models: every stage must connect, and the
console must read like ours: each stage once, a line per RL step, no lines of Ray's or Serve's.

The demo runs as `s3-ray demo` in its own process, submitted to the test session's cluster the
way `ray job submit` runs a job (RAY_ADDRESS set), so what it printed is what a user reads.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from fakes import free_port

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
TINY = {
    "searcher.model": "tiny-random", "searcher.max_new_tokens": 6, "searcher.num_threads": 1,
    "generator.model": "tiny-random", "generator.max_new_tokens": 4, "generator.num_threads": 1,
    "data.train_limit": 6, "data.test_limit": 4,
    "train.steps": 2, "train.questions_per_step": 2, "train.group_size": 2, "train.checkpoint_every": 1,
    "train.warmup_steps": 1, "train.warmup_batch": 1, "train.guard_patience": 3,
    "rollout.max_turns": 1, "wandb.enabled": False,
}
STAGES = ["1/5 build the BM25 index", "2/5 start Ray and the retriever + generator Serve apps",
          "3/5 precompute naive-RAG baselines (train + test)", "4/5 train the searcher (Ray Train, GRPO)",
          "5/5 evaluate naive RAG vs warm-up-only vs trained searcher"]
# what other programs print: worker prefixes, log records, bars and warnings of libraries
FOREIGN = re.compile(r"\(\w+ pid=\d+|\bpid=\d+\)|INFO|WARNING|Traceback|CALL \w+ OK|Reporting training result|"
                     r"PlacementGroupCleaner|core_worker|Loading weights|Writing model shards|Warning|it/s\]")


def test_demo_pipeline_with_tiny_models(serve_instance, ray_session, tmp_path):
    env = {**os.environ, "RAY_ADDRESS": ray_session.address_info["address"]}
    env.pop("S3RAY_VERBOSE", None)
    overrides = [f"{k}={json.dumps(v)}" for k, v in {**TINY, "serve.port": free_port()}.items()]
    proc = subprocess.run([sys.executable, "-m", "jobs.cli", "demo", *overrides], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    console = proc.stderr.splitlines()
    assert proc.returncode == 0, proc.stderr

    # our console: the log folder first, each stage once and closed with its seconds, nothing foreign
    assert console[0].startswith("logs: runs/demo/logs/ ")
    for stage in STAGES:
        assert console.count(f"== {stage} ==") == 1, stage
    assert sum(1 for line in console if re.fullmatch(r"   done in [\d.]+ s", line)) == len(STAGES)
    assert [line for line in console if FOREIGN.search(line)] == []
    steps = [line.strip() for line in console if line.startswith("   step ")]
    assert [s.split("  ")[0] for s in steps] == ["step 1/2", "step 2/2"]
    assert all(re.search(r"reward [+-]\d\.\d{3}  signal \d+/\d+ groups  KL \d\.\d{4}  malformed \d+%  [\d.]+ s", s)
               for s in steps), steps
    assert any(line.startswith("   Connected to Ray cluster. View the dashboard at http://") for line in console)
    assert console[-1].startswith("s3-ray demo finished in ") and console[-2].startswith("report: runs/demo/report/")
    assert proc.stdout.startswith("# s3-ray demo (embedded default)")  # the results table, on stdout

    # everything else went to the log folder, and Ray Train's cleaner could see its controller
    logs = tmp_path / "runs" / "demo" / "logs"
    text = (logs / "demo.log").read_text()
    assert "TrainController" in text and "Failed to query Ray Train Controller" not in text
    assert "FutureWarning" not in text and "past_key_values" not in text
    assert any(p.name.startswith("replica_generator") for p in (logs / "serve").iterdir())

    # and every stage connected
    summaries = json.loads((tmp_path / "runs/demo/report/results.json").read_text())["summaries"]
    # no untrained row: the demo config leaves it out (its context is naive RAG's)
    assert set(summaries) == {"naive_rag", "s3_warmup_only", "s3_trained"}
    assert "malformed" in summaries["s3_trained"] and "malformed" not in summaries["naive_rag"]
    notes = (tmp_path / "runs/demo/report/results.md").read_text()
    assert "s3_trained:" in notes and "malformed turn in" in notes
    assert all(s["n"] == 4 for s in summaries.values())
    report = tmp_path / "runs" / "demo" / "report"
    for name in ("results.md", "results.json", "accuracy.png", "training.png"):
        assert (report / name).is_file(), name
    assert (tmp_path / "runs" / "demo" / "baseline" / "train.jsonl").is_file()
    metrics = [json.loads(x) for x in (tmp_path / "runs/demo/train/metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if m.get("phase") != "warmup"] == [1, 2]
