"""Training fault: a Ray Train worker dies right after its step-1 checkpoint; the run must resume
from it and reach its configured steps without repeating one.

    python benchmarks/faults/fault_train.py [--keep] [key=value ...]

Setup as in `fault_common.py`, plus the training split's naive-RAG baseline (computed first through
the Serve apps). `jobs.train.run_training` with `fail_at_step=1` and `max_failures=1` (3 GRPO
steps, 1 worker, `checkpoint_every: 1`); the steps in metrics.jsonl are reported.

Prints a line and writes `benchmarks/results/fault_train.json`. Exit status 1 when the run failed
or stopped short of its steps.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fault_common import fault_cluster, fault_parser, finish, log, train_baseline  # sibling script


def train_fault(cfg: Any) -> dict[str, Any]:
    """3 GRPO steps on one worker that fails right after its step-1 checkpoint; what metrics.jsonl shows then."""
    from s3_ray.rl.ray_train.launch import run_training, training_items
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


def _parse(argv: list[str] | None) -> argparse.Namespace:
    return fault_parser("fault_train.py", __doc__.split("\n\n")[0], "fault_train.json").parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    with fault_cluster(args) as run:
        log("naive-RAG baseline of the training split (the reward's baseline)")
        train_baseline(run.cfg)
        log("1/1 training worker failure (fail_at_step=1)")
        run.report["train_worker_failure"] = t = train_fault(run.cfg)
        log(json.dumps(t))
    line = (f"training, worker killed after step 1: steps logged {t['steps_logged']}, "
            f"final step {t['final_step']}/{t['steps_configured']}, error {t['error']}")
    return finish(run.report, args.out, line, t["error"] is None and t["final_step"] == t["steps_configured"])


if __name__ == "__main__":
    raise SystemExit(main())
