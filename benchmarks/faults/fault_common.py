"""What the fault benchmarks (`fault_replicas.py`, `fault_jobs.py`, `fault_train.py`) share.

Each runs in a temporary run folder, with the `tiny-random` generator and searcher and the
generator cache off (so faults, not models, dominate), on one local Ray cluster with the
retriever and generator Serve apps deployed by `jobs.runtime.deploy_services`, exactly as the
jobs deploy them. Each writes one JSON report: `machine`, `settings`, `deploy_s`, then one entry
per scenario it ran.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1] / "serving"))  # load_bench: its cluster and index helpers
from load_bench import bench_config, build_bench_index, free_port, machine, start_ray  # sibling script

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = str(REPO / "jobs" / "configs" / "demo.yaml")
FAULT_OVERRIDES = ["generator.model=tiny-random", "searcher.model=tiny-random", "generator.batch_size=4",
                   "data.train_limit=24", "data.test_limit=16", "rollout.max_turns=3",
                   "eval.methods=[naive_rag, s3]", "serve.host=127.0.0.1"]


def log(msg: str) -> None:
    print(f"[{Path(sys.argv[0]).stem}] {msg}", file=sys.stderr, flush=True)


def fault_parser(prog: str, description: str, out_name: str) -> argparse.ArgumentParser:
    """The options every fault script takes; a script adds its own before parsing."""
    p = argparse.ArgumentParser(prog=f"python benchmarks/{prog}", description=description)
    p.add_argument("--config", default=DEFAULT_CONFIG)
    p.add_argument("--keep", action="store_true", help="keep the temporary run folder (and the job logs)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / out_name))
    p.add_argument("overrides", nargs="*", help="dotted config overrides")
    return p


@dataclass
class FaultRun:
    cfg: Any
    cfg_path: Path  # the resolved config as YAML, for jobs run as subprocesses
    workdir: Path
    report: dict[str, Any]


@contextmanager
def fault_cluster(args: argparse.Namespace) -> Iterator[FaultRun]:
    """Config, index, Ray and the Serve apps for one fault script; torn down (and the run folder
    removed unless `--keep`) on the way out."""
    import yaml

    workdir = Path(tempfile.mkdtemp(prefix="s3ray-faults-"))
    cfg = bench_config(args.config, [*FAULT_OVERRIDES, f"serve.port={free_port()}", *args.overrides], workdir)
    cfg_path = workdir / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg.model_dump()))
    build_bench_index(cfg)
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "keep")}
    if Path(settings["config"]).resolve().is_relative_to(REPO):
        settings["config"] = str(Path(settings["config"]).resolve().relative_to(REPO))
    report: dict[str, Any] = {"machine": machine(), "settings": settings}
    if args.keep:  # otherwise the folder is gone when the report is read
        report["workdir"] = str(workdir)
    start_ray()
    import ray
    from ray import serve

    from jobs import runtime

    try:
        t0 = time.perf_counter()
        runtime.deploy_services(cfg)
        report["deploy_s"] = round(time.perf_counter() - t0, 1)
        yield FaultRun(cfg, cfg_path, workdir, report)
    finally:
        serve.shutdown()
        ray.shutdown()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


def train_baseline(cfg: Any) -> None:
    """The naive-RAG baseline of the training split, through the Serve apps (the reward needs it)."""
    from jobs import runtime
    from s3_ray.reward.precompute import precompute_split

    retriever, generator = runtime.clients(cfg)
    precompute_split(cfg, "train", retriever, generator, progress=False, log=log)


def finish(report: dict[str, Any], out: str, table: str, ok: bool) -> int:
    """Write the report, print its table; exit status 1 when anything was lost or repeated."""
    report["machine"]["load_avg_1m_at_end"] = os.getloadavg()[0]
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(report, indent=2) + "\n")
    print(table)
    print(f"wrote {out}")
    return 0 if ok else 1
