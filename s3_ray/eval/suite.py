"""The evaluation a config describes: its methods, its data sets, and the run that writes the report.

`evaluate` scores every method on the `eval.split` of `data` (the embedded set by default);
`evaluate_datasets` on every set of `eval.datasets`. Both resume per (method, data set) pair and
take a `map_fn` (e.g. `s3_ray.eval.ray_pairs.ray_map()`) that decides where the pairs run.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from s3_ray.config import S3Config
from s3_ray.console import shown_path
from s3_ray.eval.methods import MODEL_FREE, ContextMethod, build_method
from s3_ray.eval.runner import MethodRef, PairMap, run_datasets, run_suite, token_counter
from s3_ray.types import QAItem


def method_refs(cfg: S3Config, retriever: Any, searchers: dict[str, str]) -> list[MethodRef]:
    """Every method to evaluate as a `MethodRef`: its label and a picklable factory (nothing loaded).

    `eval.methods` (`s3` is the untrained `searcher.model`, labelled `s3_untrained`), then one s3
    method per `eval.checkpoints` and `searchers` entry (label -> checkpoint). All decode greedily.
    """
    greedy = cfg.searcher.model_copy(update={"temperature": 0.0})
    refs = []
    for kind in cfg.eval.methods:
        name = "s3_untrained" if kind == "s3" else kind
        refs.append(MethodRef(name, functools.partial(
            build_method, kind, retriever=retriever, rollout=cfg.rollout, searcher=greedy,
            model=cfg.searcher.model, name=name, eval_cfg=cfg.eval), loads_model=kind not in MODEL_FREE))
    for label, path in {**cfg.eval.checkpoints, **searchers}.items():
        refs.append(MethodRef(label, functools.partial(
            build_method, "s3", retriever=retriever, rollout=cfg.rollout, searcher=greedy, model=path, name=label)))
    return refs


def build_methods(cfg: S3Config, retriever: Any, searchers: dict[str, str]) -> list[ContextMethod]:
    """The methods, built (models loaded) in this process."""
    return [ref.build() for ref in method_refs(cfg, retriever, searchers)]


def load_datasets(cfg: S3Config) -> dict[str, list[QAItem]]:
    """{dataset name: items} of `eval.datasets`, each sampled to `eval.limit`; a MIRAGE file
    contributes one entry per task. A name used twice is an error naming the entry."""
    from s3_ray.data.datasets import dataset_path, load_eval_dataset

    out: dict[str, list[QAItem]] = {}
    for spec in cfg.eval.datasets:
        items = load_eval_dataset(spec.name, dataset_path(spec.path, spec.format), spec.format,
                                  limit=cfg.eval.limit, seed=cfg.eval.sample_seed, tasks=spec.tasks)
        groups: dict[str, list[QAItem]] = {}
        for item in items:
            groups.setdefault(item.meta["dataset"], []).append(item)
        clash = sorted(set(groups) & set(out))
        if clash:
            raise ValueError(f"eval.datasets[{spec.name}]: data set name(s) {clash} already used by another entry")
        out.update(groups)
    return out


def _counter(cfg: S3Config) -> Callable[[str], int] | None:
    """Context size in tokens of `eval.context_tokenizer`, or None (words)."""
    return token_counter(cfg.eval.context_tokenizer) if cfg.eval.context_tokenizer else None


def _methods(cfg: S3Config, retriever: Any, searchers: dict[str, str],
             map_fn: PairMap | None) -> list[ContextMethod | MethodRef]:
    """Factories when pairs run elsewhere (each task builds its own), else methods built once here
    and reused across data sets."""
    if map_fn is not None:
        return list(method_refs(cfg, retriever, searchers))
    return list(build_methods(cfg, retriever, searchers))


def evaluate(cfg: S3Config, retriever: Any, generator: Any, searchers: dict[str, str],
             out_dir: Path | None = None, map_fn: PairMap | None = None,
             log: Callable[[str], None] = print) -> tuple[dict[str, dict[str, float]], Path]:
    """One split of `data` (the embedded set by default): {method: summary} and the report path.
    `map_fn` runs the methods elsewhere; None: one after the other, here."""
    from s3_ray.data.embedded import load_split
    from s3_ray.eval.report import write_report

    items = load_split(cfg.data, cfg.eval.split)
    out = out_dir or cfg.path("eval", cfg.eval.split)
    log(f"evaluating on {len(items)} {cfg.eval.split} questions -> {shown_path(out, folder=True)}")
    summaries = run_suite(_methods(cfg, retriever, searchers, map_fn), items, generator, out,
                          batch_size=cfg.generator.batch_size, log=log, count_tokens=_counter(cfg),
                          judge=cfg.reward.use_judge, map_fn=map_fn)
    md = write_report(out, summaries, extra={"config": cfg.model_dump()}, title=f"Evaluation ({cfg.eval.split})")
    return summaries, md


def evaluate_datasets(cfg: S3Config, retriever: Any, generator: Any, searchers: dict[str, str],
                      map_fn: PairMap | None = None,
                      log: Callable[[str], None] = print) -> tuple[dict[str, dict[str, dict[str, float]]], Path]:
    """Every set of `eval.datasets`: {dataset: {method: summary}} and the report path."""
    from s3_ray.eval.dataset_report import write_dataset_report

    data = load_datasets(cfg)
    log("data sets: " + ", ".join(f"{k} ({len(v)})" for k, v in data.items()))
    results = run_datasets(_methods(cfg, retriever, searchers, map_fn), data, generator, cfg.path("eval"),
                           batch_size=cfg.generator.batch_size, log=log, count_tokens=_counter(cfg),
                           judge=cfg.reward.use_judge, map_fn=map_fn)
    md = write_dataset_report(cfg.path("eval", "report"), results, extra={"config": cfg.model_dump()})
    return results, md
