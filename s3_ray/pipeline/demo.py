"""The whole s3 loop on one config: index -> serve -> precompute -> train -> evaluate, then a report.

Ray and the Serve apps come up through the `start_services` the caller passes (`jobs.runtime`'s),
and training runs through `s3_ray.rl.ray_train.launch.run_training` (the TorchTrainer driver), exactly as
when each job runs on its own; its steps are shown from the metrics file as they happen.
Everything lands below `run_dir`; a rerun reuses what is done (index, baselines, cached
generator answers, finished evaluations).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from s3_ray.config import S3Config
from s3_ray.console import Console, Stages, active, shown_path
from s3_ray.console.bars import format_seconds


def run_demo(cfg: S3Config, start_services: Callable[[S3Config], tuple[Any, Any]],
             log: Callable[[str], None] | None = None, console: Console | None = None) -> dict[str, Any]:
    """Run the five stages and write `<run_dir>/report/` (results.md, results.json, accuracy.png,
    training.png). `start_services(cfg)` starts Ray and the retriever and generator apps and returns
    their clients. Stages, bars and training steps go to `console` (default: the active one),
    other lines to `log` (default: the console's).
    Returns {"summaries": {method: summary}, "report": results.md path, "total_seconds"}."""
    from s3_ray.console.training import follow_training
    from s3_ray.data.embedded import load_split, resolve_paths
    from s3_ray.eval.records import scores_by_question
    from s3_ray.eval.report import plot_training, write_report
    from s3_ray.eval.suite import evaluate
    from s3_ray.retrieval.index import build_index
    from s3_ray.reward.fingerprint import open_baseline
    from s3_ray.reward.gain import RewardScorer
    from s3_ray.reward.precompute import precompute_split
    from s3_ray.pipeline.verdict import verdict
    from s3_ray.rl.ray_train.launch import run_training, training_items
    from s3_ray.tracking import read_metrics

    con = console or active()
    log = log or con.info
    t_start = time.perf_counter()
    st = Stages(con)
    with st.stage("1/5 build the BM25 index"):
        manifest = build_index(resolve_paths(cfg.data).corpus, cfg.retrieval)
        log(f"index: {manifest.summary()}")
    with st.stage("2/5 start Ray and the retriever + generator Serve apps"):
        retriever, generator = start_services(cfg)
    with st.stage("3/5 precompute naive-RAG baselines (train + test)"):
        for split in ("train", cfg.eval.split):  # as wide as the generator batches
            precompute_split(cfg, split, retriever, generator, batch_size=cfg.generator.batch_size, log=log)
    with st.stage("4/5 train the searcher (Ray Train, GRPO)"):
        baseline = open_baseline(cfg, "train")
        items, dropped = training_items(cfg, baseline)  # stage 3 logged what the filter keeps
        with follow_training(con, cfg.path("train", "metrics.jsonl"), cfg.train):
            result = run_training(cfg, items, retriever, RewardScorer(generator, baseline, cfg.reward), name="demo")
        if result.checkpoint is None:
            raise RuntimeError("training finished without a checkpoint")
        trained = result.checkpoint.path
        searchers = {}
        warm = warmup_checkpoint(result)
        if warm is not None:
            searchers["s3_warmup_only"] = warm
        searchers["s3_trained"] = trained
        log(f"trained searcher: {shown_path(trained, folder=True)}")
    with st.stage("5/5 evaluate naive RAG vs warm-up-only vs trained searcher"):
        summaries, _ = evaluate(cfg, retriever, generator, searchers, log=log)

    report_dir = cfg.path("report")
    metrics = [r for r in read_metrics(cfg.path("train", "metrics.jsonl")) if r.get("phase") != "warmup"]
    report_dir.mkdir(parents=True, exist_ok=True)
    plot_training(metrics, report_dir / "training.png")
    total = round(time.perf_counter() - t_start, 1)
    eval_dir = cfg.path("eval", cfg.eval.split)
    per_question = {name: scores_by_question(eval_dir / f"{name}.jsonl") for name in summaries}
    reading, figures = verdict(per_question, metrics)
    reading += searcher_lines(summaries)
    md = write_report(
        report_dir, summaries, title="s3-ray demo (embedded default)",
        extra={"stage_seconds": st.seconds, "total_seconds": total, "trained_checkpoint": trained,
               "train_questions": len(items), "train_dropped": dropped, "verdict": reading,
               "intervals": figures},
        notes=[*reading,
               f"{len(load_split(cfg.data, cfg.eval.split))} {cfg.eval.split} questions; "
               f"budgets init_k={cfg.rollout.init_k} top_k={cfg.rollout.top_k} "
               f"keep_per_turn={cfg.rollout.keep_per_turn} max_turns={cfg.rollout.max_turns}",
               f"training: {cfg.train.steps} {cfg.train.algorithm.upper()} steps x "
               f"{cfg.train.questions_per_step} questions x {cfg.train.group_size} samples; "
               f"curves in training.png",
               f"stages: {st.summary()}; total {format_seconds(total)}"],
    )
    return {"summaries": summaries, "report": str(md), "total_seconds": total}


def warmup_checkpoint(result: Any) -> str | None:
    """The step-0 checkpoint (after the format warm-up, before RL), if the run made one.

    >>> from types import SimpleNamespace as Ckpt
    >>> warmup_checkpoint(Ckpt(best_checkpoints=[(Ckpt(path="ckpt_2"), {"step": 2}), (Ckpt(path="ckpt_0"), {"step": 0})]))
    'ckpt_0'
    >>> warmup_checkpoint(Ckpt(best_checkpoints=None)) is None
    True
    """
    for ckpt, metrics in result.best_checkpoints or []:
        if metrics.get("step") == 0:
            return ckpt.path
    return None


def searcher_lines(summaries: dict[str, dict[str, float]]) -> list[str]:
    """How each evaluated searcher searched and kept the protocol, in plain words.

    >>> searcher_lines({"naive_rag": {"genacc": 0.3},
    ...                 "s3_trained": {"searches": 1.5, "searches_bridge": 2.0, "malformed": 0.025}})
    ['s3_trained: 1.5 searches per question (2.0 per bridge question); a malformed turn in 2.5% of test episodes']
    """
    out = []
    for name, s in summaries.items():
        if "malformed" not in s:
            continue
        bridge = f" ({s['searches_bridge']:.1f} per bridge question)" if "searches_bridge" in s else ""
        out.append(f"{name}: {s['searches']:.1f} searches per question{bridge}; a malformed turn in "
                   f"{100 * s['malformed']:.1f}% of test episodes")
    return out
