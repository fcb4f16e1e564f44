"""Sweep benchmark: wall time of one 4-trial budget sweep run one trial at a time vs two at once.

    python benchmarks/rl/sweep_bench.py [--model tiny-random] [--questions 8] [--cpus 2] [--out ...]

The sweep is `s3_ray.sweep.run.run_sweep` in inference mode on the embedded default (dev split, BM25),
grid rollout.top_k [2, 3] x rollout.max_turns [1, 2]. Every trial runs the searcher and the
frozen generator in its own process (one torch thread each, 1 CPU reserved per trial), so the
figures isolate Tune's scheduling: `sweep.max_concurrent=1` vs `2` on the same local Ray cluster,
in one run, each with a fresh run folder and no response cache. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from s3_ray.config import GeneratorConfig, load_config

GRID = {"rollout.top_k": [2, 3], "rollout.max_turns": [1, 2]}


class TrialGenerator:
    """The frozen generator, loaded inside each trial process (a loaded model does not pickle)."""

    def __init__(self, cfg: GeneratorConfig) -> None:
        self.cfg, self._gen = cfg, None

    def __getstate__(self) -> dict[str, Any]:
        return {"cfg": self.cfg, "_gen": None}

    def _inner(self) -> Any:
        from s3_ray.generation import build_generator

        if self._gen is None:
            self._gen = build_generator(self.cfg)
        return self._gen

    @property
    def model_id(self) -> str:
        return self._inner().model_id

    @property
    def decoding(self) -> dict[str, Any]:
        return self._inner().decoding

    def generate(self, prompts: list[Any]) -> list[str]:
        return self._inner().generate(prompts)


def run_one(base: Path, concurrent: int, model: str, questions: int, index_dir: Path) -> dict[str, Any]:
    from s3_ray.sweep.run import run_sweep
    from s3_ray.clients import GeneratorClient, RetrieverClient
    from s3_ray.retrieval.index import load_retriever

    overrides = {
        "run_dir": str(base / f"run-c{concurrent}"), "retrieval.index_dir": str(index_dir),
        "searcher.model": model, "searcher.num_threads": 1, "searcher.max_new_tokens": 32,
        "generator.model": model, "generator.num_threads": 1, "generator.cache_path": None,
        "rollout.keep_per_turn": 2, "eval.split": "dev", "data.test_limit": questions,
        "sweep.param_space": GRID, "sweep.max_concurrent": concurrent, "wandb.enabled": False,
    }
    cfg = load_config(None, [f"{k}={json.dumps(v)}" for k, v in overrides.items()])
    retriever = RetrieverClient.in_process(load_retriever(cfg.retrieval))
    generator = GeneratorClient.in_process(TrialGenerator(cfg.generator))
    t0 = time.perf_counter()
    rows = run_sweep(cfg, retriever, generator, name=f"bench-c{concurrent}", resume=False)
    wall = time.perf_counter() - t0
    errors = [r["error"] for r in rows if "error" in r]
    if errors:
        raise RuntimeError(f"max_concurrent={concurrent}: {len(errors)} trial(s) failed: {errors[0][:300]}")
    trial_s = [r["seconds"] for r in rows]
    return {"max_concurrent": concurrent, "trials": len(rows), "wall_s": round(wall, 2),
            "trial_s_mean": round(sum(trial_s) / len(trial_s), 2), "trial_s_sum": round(sum(trial_s), 2),
            "genacc": {json.dumps(r["config"], sort_keys=True): r["genacc"] for r in rows}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny-random", help="searcher and generator model")
    ap.add_argument("--questions", type=int, default=8, help="dev questions per trial")
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray cluster")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "results" / "sweep.json"))
    args = ap.parse_args(argv)

    import ray

    from s3_ray.data.embedded import embedded_dir
    from s3_ray.retrieval.index import build_index

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        cfg = load_config(None, [f"retrieval.index_dir={base / 'index'}"])
        build_index(embedded_dir() / "corpus.jsonl", cfg.retrieval, progress=False)
        ray.init(address="local", num_cpus=args.cpus, include_dashboard=False,
                 object_store_memory=256 * 1024**2, log_to_driver=False)
        try:
            runs = [run_one(base, c, args.model, args.questions, base / "index") for c in (1, 2)]
        finally:
            ray.shutdown()

    seq, par = runs
    if seq["genacc"] != par["genacc"]:
        raise RuntimeError("the two runs disagree on GenAcc: trials are not deterministic, timings not comparable")
    result = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "ray_cpus": args.cpus,
                    "load_avg_1m_at_end": round(os.getloadavg()[0], 2)},
        "model": args.model, "questions_per_trial": args.questions, "grid": GRID,
        "runs": [{k: v for k, v in r.items() if k != "genacc"} for r in runs],
        "speedup": round(seq["wall_s"] / par["wall_s"], 2),
        "genacc": seq["genacc"],
    }
    print("| max_concurrent | trials | wall (s) | mean trial (s) | sum of trials (s) |\n|---|---|---|---|---|")
    for r in runs:
        print(f"| {r['max_concurrent']} | {r['trials']} | {r['wall_s']:.1f} | {r['trial_s_mean']:.1f} | "
              f"{r['trial_s_sum']:.1f} |")
    print(f"load average (1 min) at the end: {result['machine']['load_avg_1m_at_end']}")
    print(f"speed-up with 2 concurrent trials: {result['speedup']:.2f}x "
          f"({args.model}, {args.questions} questions/trial, {args.cpus} Ray CPUs)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
