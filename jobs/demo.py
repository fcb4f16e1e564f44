"""The whole s3 loop on the embedded default: index -> serve -> precompute -> train -> evaluate.

    python -m jobs.demo [--config jobs/configs/demo.yaml] [key=value ...]

Writes everything below `run_dir` (default runs/demo): the index, the naive-RAG baselines, the
Ray Train run and its checkpoints, training curves and the evaluation report
(`runs/demo/report/results.md`, `results.json`, `accuracy.png`, `training.png`). Re-running
reuses what is already done (index, baselines, cached generator answers, finished evaluations).
"""

from __future__ import annotations

import argparse
import json
import time
from contextlib import contextmanager
from typing import Any, Iterator

from jobs import runtime
from s3_ray.config import S3Config, load_config


class Stages:
    """Wall time of each stage, printed as it goes and kept for the report."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        runtime.log(f"== {name} ==")
        t0 = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - t0, 1)
        runtime.log(f"== {name}: done in {self.seconds[name]:.0f} s ==")


def run_demo(cfg: S3Config) -> dict[str, Any]:
    from jobs.evaluate import evaluate
    from jobs.train import run_training, training_items
    from s3_ray.data.embedded import load_split, resolve_paths
    from s3_ray.eval.report import plot_training, write_report
    from s3_ray.retrieval.index import build_index
    from s3_ray.reward.baseline import open_baseline, precompute_split
    from s3_ray.reward.gain import RewardScorer
    from s3_ray.tracking import read_metrics

    t_start = time.perf_counter()
    st = Stages()
    with st.stage("1/5 build the BM25 index"):
        manifest = build_index(resolve_paths(cfg.data).corpus, cfg.retrieval)
        runtime.log(f"index: {manifest}")
    with st.stage("2/5 start Ray and the retriever + generator Serve apps"):
        runtime.init_ray()
        runtime.deploy_services(cfg)
        retriever, generator = runtime.clients(cfg)
    with st.stage("3/5 precompute naive-RAG baselines (train + test)"):
        for split in ("train", cfg.eval.split):
            precompute_split(cfg, split, retriever, generator, log=runtime.log)
    with st.stage("4/5 train the searcher (Ray Train, GRPO)"):
        baseline = open_baseline(cfg, "train")
        items, dropped = training_items(cfg, baseline)
        runtime.log(f"{len(items)} training questions kept, {dropped} dropped (naive RAG already answers them)")
        result = run_training(cfg, items, retriever, RewardScorer(generator, baseline, cfg.reward), name="demo")
        if result.checkpoint is None:
            raise RuntimeError("training finished without a checkpoint")
        trained = result.checkpoint.path
        runtime.log(f"trained searcher: {trained}")
    with st.stage("5/5 evaluate naive RAG vs untrained vs trained searcher"):
        summaries, _ = evaluate(cfg, retriever, generator, {"s3_trained": trained})

    report_dir = cfg.path("report")
    metrics = [r for r in read_metrics(cfg.path("train", "metrics.jsonl")) if r.get("phase") != "warmup"]
    report_dir.mkdir(parents=True, exist_ok=True)
    plot_training(metrics, report_dir / "training.png")
    total = round(time.perf_counter() - t_start, 1)
    verdict = _verdict(summaries)
    md = write_report(
        report_dir, summaries, title="s3-ray demo (embedded default)",
        extra={"stage_seconds": st.seconds, "total_seconds": total, "trained_checkpoint": trained,
               "train_questions": len(items), "train_dropped": dropped, "verdict": verdict},
        notes=[verdict,
               f"{len(load_split(cfg.data, cfg.eval.split))} {cfg.eval.split} questions; "
               f"budgets init_k={cfg.rollout.init_k} top_k={cfg.rollout.top_k} "
               f"keep_per_turn={cfg.rollout.keep_per_turn} max_turns={cfg.rollout.max_turns}",
               f"training: {cfg.train.steps} {cfg.train.algorithm.upper()} steps x "
               f"{cfg.train.questions_per_step} questions x {cfg.train.group_size} samples; "
               f"curves in training.png",
               "stage seconds: " + json.dumps(st.seconds) + f"; total {total:.0f} s"],
    )
    print(md.read_text())
    print(f"report: {md.parent.resolve()}")
    return {"summaries": summaries, "report": str(md), "total_seconds": total}


def _verdict(summaries: dict[str, dict[str, float]]) -> str:
    rag = summaries.get("naive_rag", {}).get("genacc")
    trained = summaries.get("s3_trained", {}).get("genacc")
    untrained = summaries.get("s3_untrained", {}).get("genacc")
    if rag is None or trained is None:
        return "incomplete evaluation"
    gap = 100 * (trained - rag)
    if gap > 0:
        return f"the trained searcher beats naive RAG by {gap:.1f} GenAcc points"
    return (f"the trained searcher does NOT beat naive RAG yet ({gap:+.1f} GenAcc points; untrained "
            f"{100 * (untrained or 0):.1f}): this short CPU run is a pipeline check, not the result")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=runtime.DEFAULT_CONFIG,
                        help="YAML config file (default: the embedded CPU demo)")
    parser.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. train.steps=2")
    args = parser.parse_args(argv)
    run_demo(load_config(args.config, args.overrides))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
