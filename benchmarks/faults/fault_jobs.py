"""Job faults: a job SIGKILLed mid-run and rerun; count records done before the kill, computed by
the rerun, and computed twice (goal 0).

    python benchmarks/faults/fault_jobs.py [--precompute-kill-after 8] [--eval-kill-after 8] [--keep] [key=value ...]

Setup as in `fault_common.py`. `python -m jobs.precompute --serve` (the training split's naive-RAG
baseline) and then `python -m jobs.evaluate` run as subprocesses that join this cluster
(`RAY_ADDRESS`); each is SIGKILLed as soon as its JSONL output holds the given number of
complete records, then rerun to completion.

Prints a table and writes `benchmarks/results/fault_jobs.json`. Exit status 1 when a record was
computed twice. Every wait is bounded (polling deadline, subprocess timeouts).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fault_common import REPO, fault_cluster, fault_parser, finish, log  # sibling script


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


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = fault_parser("fault_jobs.py", __doc__.split("\n\n")[0], "fault_jobs.json")
    p.add_argument("--precompute-kill-after", type=int, default=8, help="baseline records before the kill")
    p.add_argument("--eval-kill-after", type=int, default=8, help="evaluation records before the kill")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    with fault_cluster(args) as run:
        import ray  # after fault_cluster has set Ray's environment and started it

        cfg, report = run.cfg, run.report
        env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address, "PYTHONUNBUFFERED": "1"}
        py = sys.executable

        log("1/2 precompute killed and rerun")
        report["precompute_kill"] = kill_and_rerun(
            [py, "-m", "jobs.precompute", "--config", str(run.cfg_path), "--split", "train", "--serve",
             "--batch-size", "2", "--no-progress"],
            [cfg.path("baseline", "train.jsonl")], args.precompute_kill_after, env, run.workdir, "precompute",
            skip_header=True)
        log(json.dumps(report["precompute_kill"]))

        log("2/2 evaluation killed and rerun")
        files = [cfg.path("eval", cfg.eval.split, f"{m}.jsonl") for m in ("naive_rag", "s3_untrained")]
        report["evaluate_kill"] = kill_and_rerun([py, "-m", "jobs.evaluate", "--config", str(run.cfg_path)], files,
                                                 args.eval_kill_after, env, run.workdir, "evaluate")
        log(json.dumps(report["evaluate_kill"]))
    ok = all(report[k]["recomputed"] == 0 for k in ("precompute_kill", "evaluate_kill"))
    return finish(report, args.out, summary(report), ok)


def summary(report: dict[str, Any]) -> str:
    rows = ["| job killed (SIGKILL) | records | done before kill | computed after restart | recomputed |",
            "|---|---|---|---|---|"]
    for name, key in (("jobs.precompute --serve", "precompute_kill"), ("jobs.evaluate", "evaluate_kill")):
        x = report[key]
        rows.append(f"| {name} | {x['records_total']} | {x['done_before_kill']} | {x['computed_after_restart']} | "
                    f"{x['recomputed']} |")
    return "\n".join(rows)


if __name__ == "__main__":
    raise SystemExit(main())
