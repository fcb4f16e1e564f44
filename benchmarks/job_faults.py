"""Job-level faults for `fault_bench.py`: a job SIGKILLed mid-run and rerun, a Ray Train worker
that dies after a checkpoint. Counted: records finished before the kill, computed by the rerun,
and computed twice (goal 0); training steps logged after the resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def jsonl_ids(path: Path, skip_header: bool = False) -> list[str]:
    """Ids of the complete records of a JSONL file (a torn last line is not a finished record)."""
    if not path.is_file():
        return []
    lines = path.read_bytes().split(b"\n")[:-1]
    rows = [json.loads(x) for x in lines if x.strip()]
    return [r["id"] for r in rows if not (skip_header and r.get("type") == "header")]


def kill_and_rerun(cmd: list[str], files: list[Path], kill_after: int, env: dict[str, str], logdir: Path,
                   name: str, skip_header: bool = False, limit_s: float = 240) -> dict[str, Any]:
    """Run `cmd`, SIGKILL it once `files` hold >= kill_after records, rerun it to the end, count."""
    def count() -> int:
        return sum(len(jsonl_ids(f, skip_header)) for f in files)

    t0 = time.perf_counter()
    with (logdir / f"{name}-1.log").open("w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        deadline = time.perf_counter() + limit_s
        killed = False
        while time.perf_counter() < deadline and proc.poll() is None:
            if count() >= kill_after:
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: only this job's processes
                killed = True
                break
            time.sleep(0.02)
        if proc.poll() is None and not killed:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            raise RuntimeError(f"{name}: no {kill_after} records within {limit_s} s; see {logdir}/{name}-1.log")
        proc.wait(timeout=30)
    if not killed:
        raise RuntimeError(f"{name} finished (rc {proc.returncode}) before {kill_after} records were written; "
                           f"lower the kill point. Log: {logdir}/{name}-1.log")
    done_before = count()
    first_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    with (logdir / f"{name}-2.log").open("w") as out:
        rc = subprocess.run(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=limit_s,
                            check=False).returncode
    if rc != 0:
        tail = (logdir / f"{name}-2.log").read_text()[-2000:]
        raise RuntimeError(f"{name} rerun failed with exit status {rc}:\n{tail}")
    ids = [i for f in files for i in ((f.name, x) for x in jsonl_ids(f, skip_header))]
    after = len(ids)
    return {"records_total": after, "done_before_kill": done_before, "computed_after_restart": after - done_before,
            "recomputed": after - len(set(ids)), "first_run_s": round(first_s, 1),
            "rerun_s": round(time.perf_counter() - t1, 1)}


def train_fault(cfg: Any) -> dict[str, Any]:
    from s3_ray.rl.launch import run_training, training_items
    from s3_ray.clients.generator import GeneratorClient
    from s3_ray.clients.retriever import RetrieverClient
    from s3_ray.reward.fingerprint import open_baseline
    from s3_ray.reward.gain import RewardScorer

    tcfg = cfg.with_overrides({"searcher.max_new_tokens": 8, "searcher.max_prompt_tokens": 512,
                               "searcher.num_threads": 1, "rollout.max_turns": 1, "train.steps": 3,
                               "train.questions_per_step": 2, "train.group_size": 2, "train.warmup_steps": 0,
                               "train.checkpoint_every": 1, "train.num_workers": 1, "train.lr": 1e-3,
                               "train.guard_malformed_rate": None})  # tiny-random is all malformed
    baseline = open_baseline(tcfg, "train")
    items, _ = training_items(tcfg, baseline)
    scorer = RewardScorer(GeneratorClient.from_app("generator"), baseline, tcfg.reward)
    t0 = time.perf_counter()
    result = run_training(tcfg, items, RetrieverClient.from_app("retriever"), scorer, name="fault",
                          fail_at_step=1, max_failures=1)
    rows = [json.loads(x) for x in tcfg.path("train", "metrics.jsonl").read_text().splitlines() if x.strip()]
    return {"steps_logged": [r["step"] for r in rows], "final_step": rows[-1]["step"] if rows else None,
            "steps_configured": tcfg.train.steps, "failure_injected_after_step": 1,
            "injected": tcfg.path("train", ".injected_failure").exists(), "error": repr(result.error) if result.error else None,
            "wall_s": round(time.perf_counter() - t0, 1)}
