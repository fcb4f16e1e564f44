"""Evaluate context methods (naive RAG, baselines, searchers) with the frozen generator.

    python -m jobs.evaluate --config jobs/configs/demo.yaml [--searcher LABEL=CHECKPOINT ...] [--dry-run] [key=value ...]

Methods come from `eval.methods` (`s3_ray.eval.methods.METHODS`: naive_rag, no_retrieval, s3 = the
untrained `searcher.model`, cot, rewrite, ircot, search_r1) plus one s3 method per `--searcher` /
`eval.checkpoints` entry. Searchers and baselines decode greedily.

Data: with `eval.datasets` empty, the `eval.split` of `data` (the embedded set by default), results
in <run_dir>/eval/<split>/. Otherwise every listed set (FlashRAG JSONL, s3 parquet, MIRAGE JSON,
or by name from the hub), sampled to `eval.limit`, results in <run_dir>/eval/<dataset>/<method>.jsonl
and a per-data-set + average report in <run_dir>/eval/report/. An interrupted run resumes where
it stopped. `--dry-run` resolves and prints the whole plan (config, data sets, methods, paths)
without starting Ray or loading models; it exits 2 when something in the plan is missing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from jobs import runtime
from s3_ray.config import S3Config, load_job_config
from s3_ray.types import QAItem

HUB_FORMAT = "hf"


def build_methods(cfg: S3Config, retriever: Any, searchers: dict[str, str]) -> list[Any]:
    from s3_ray.eval.methods import build_method

    greedy = cfg.searcher.model_copy(update={"temperature": 0.0})
    methods = []
    for kind in cfg.eval.methods:
        name = "s3_untrained" if kind == "s3" else kind
        methods.append(build_method(kind, retriever=retriever, rollout=cfg.rollout, searcher=greedy,
                                    model=cfg.searcher.model, name=name, eval_cfg=cfg.eval))
    for label, path in {**cfg.eval.checkpoints, **searchers}.items():
        methods.append(build_method("s3", retriever=retriever, rollout=cfg.rollout, searcher=greedy,
                                    model=path, name=label))
    return methods


def _dataset_path(path: str, fmt: str) -> str:
    """Files resolve against the cwd (the driver's), hub split names stay as they are."""
    return path if fmt == HUB_FORMAT else str(Path(path).expanduser().resolve())


def load_datasets(cfg: S3Config) -> dict[str, list[QAItem]]:
    """{dataset name: items}; a MIRAGE file contributes one entry per task."""
    from s3_ray.data.datasets import load_eval_dataset

    out: dict[str, list[QAItem]] = {}
    for spec in cfg.eval.datasets:
        items = load_eval_dataset(spec.name, _dataset_path(spec.path, spec.format), spec.format,
                                  limit=cfg.eval.limit, seed=cfg.eval.sample_seed, tasks=spec.tasks)
        groups: dict[str, list[QAItem]] = {}
        for item in items:
            groups.setdefault(item.meta["dataset"], []).append(item)
        clash = sorted(set(groups) & set(out))
        if clash:
            raise ValueError(f"eval.datasets[{spec.name}]: data set name(s) {clash} already used by another entry")
        out.update(groups)
    return out


def _counter(cfg: S3Config) -> Any:
    from s3_ray.eval.runner import token_counter

    return token_counter(cfg.eval.context_tokenizer) if cfg.eval.context_tokenizer else None


def plan(cfg: S3Config, searchers: dict[str, str]) -> tuple[dict[str, Any], list[str]]:
    """Everything the run would use, and what is missing; loads no model and touches no network."""
    from s3_ray.data.datasets import infer_format
    from s3_ray.data.embedded import resolve_paths
    from s3_ray.eval.methods import METHODS

    problems: list[str] = []

    def check(path: str | Path, what: str) -> dict[str, Any]:
        exists = Path(path).exists()
        if not exists:
            problems.append(f"{what}: {path} does not exist")
        return {"path": str(path), "exists": exists}

    datasets = []
    if cfg.eval.datasets:
        for spec in cfg.eval.datasets:
            fmt = spec.format
            if fmt == "auto":
                try:
                    fmt = infer_format(spec.path)
                except ValueError as err:
                    problems.append(f"eval.datasets[{spec.name}]: {err}")
            entry: dict[str, Any] = {"name": spec.name, "format": fmt, "limit": cfg.eval.limit,
                                     "seed": cfg.eval.sample_seed}
            if fmt == HUB_FORMAT:
                entry.update(source=f"hub RUC-NLPIR/FlashRAG_datasets/{spec.name}", split=spec.path)
            else:
                entry.update(check(_dataset_path(spec.path, fmt), f"eval.datasets[{spec.name}]"))
            if spec.tasks:
                entry["tasks"] = spec.tasks
            datasets.append(entry)
    else:
        datasets.append({"name": cfg.eval.split, "format": "flashrag", "limit": cfg.data.test_limit,
                         **check(resolve_paths(cfg.data).split(cfg.eval.split), f"data.{cfg.eval.split}_path")})

    methods = []
    for kind in cfg.eval.methods:
        if kind not in METHODS:
            problems.append(f"eval.methods: unknown method {kind!r}; known: {', '.join(sorted(METHODS))}")
        entry = {"name": "s3_untrained" if kind == "s3" else kind, "kind": kind}
        if kind == "s3":
            entry["model"] = cfg.searcher.model
        elif kind in ("cot", "rewrite", "ircot", "search_r1"):
            entry["model"] = cfg.eval.baseline_model or cfg.searcher.model
        methods.append(entry)
    for label, path in {**cfg.eval.checkpoints, **searchers}.items():
        methods.append({"name": label, "kind": "s3", **check(Path(path).expanduser().resolve(), f"checkpoint {label}")})

    r, g = cfg.retrieval, cfg.generator
    retrieval = {"backend": r.backend, "index_dir": r.index_dir, "index_built": (Path(r.index_dir) / "manifest.json").is_file()}
    if not retrieval["index_built"]:
        problems.append(f"retrieval.index_dir: no index at {r.index_dir}; build it with `python -m jobs.build_index`")
    if r.backend != "bm25":
        retrieval.update(encoder=r.encoder, index_type=r.index_type)
    generator = {"backend": g.backend, "model": g.model, "max_context_tokens": g.max_context_tokens}
    if g.backend == "openai":
        generator["base_url"] = g.base_url
        if not g.base_url:
            problems.append("generator.base_url must be set for the openai backend")
    report = cfg.path("eval", "report") if cfg.eval.datasets else cfg.path("eval", cfg.eval.split)
    return ({"run_dir": cfg.run_dir, "datasets": datasets, "methods": methods, "retrieval": retrieval,
             "generator": generator,
             "budgets": {"init_k": cfg.rollout.init_k, "top_k": cfg.rollout.top_k,
                         "keep_per_turn": cfg.rollout.keep_per_turn, "max_turns": cfg.rollout.max_turns},
             "context_size": f"tokens ({cfg.eval.context_tokenizer})" if cfg.eval.context_tokenizer else "words",
             "report_dir": str(report)}, problems)


def evaluate(cfg: S3Config, retriever: Any, generator: Any, searchers: dict[str, str],
             out_dir: Path | None = None) -> tuple[dict[str, dict[str, float]], Path]:
    """One split of `data` (the embedded set by default): {method: summary} and the report path."""
    from s3_ray.data.embedded import load_split
    from s3_ray.eval.report import write_report
    from s3_ray.eval.runner import run_suite

    items = load_split(cfg.data, cfg.eval.split)
    out = out_dir or cfg.path("eval", cfg.eval.split)
    runtime.log(f"evaluating on {len(items)} {cfg.eval.split} questions -> {out}")
    summaries = run_suite(build_methods(cfg, retriever, searchers), items, generator, out,
                          batch_size=cfg.generator.batch_size, log=runtime.log, count_tokens=_counter(cfg))
    md = write_report(out, summaries, extra={"config": cfg.model_dump()}, title=f"Evaluation ({cfg.eval.split})")
    return summaries, md


def evaluate_datasets(cfg: S3Config, retriever: Any, generator: Any, searchers: dict[str, str]
                      ) -> tuple[dict[str, dict[str, dict[str, float]]], Path]:
    """Every set of `eval.datasets`: {dataset: {method: summary}} and the report path."""
    from s3_ray.eval.dataset_report import write_dataset_report
    from s3_ray.eval.runner import run_datasets

    data = load_datasets(cfg)
    runtime.log("data sets: " + ", ".join(f"{k} ({len(v)})" for k, v in data.items()))
    results = run_datasets(build_methods(cfg, retriever, searchers), data, generator, cfg.path("eval"),
                           batch_size=cfg.generator.batch_size, log=runtime.log, count_tokens=_counter(cfg))
    md = write_dataset_report(cfg.path("eval", "report"), results, extra={"config": cfg.model_dump()})
    return results, md


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=runtime.DEFAULT_CONFIG, help="YAML config file")
    parser.add_argument("--searcher", action="append", default=[], metavar="LABEL=CHECKPOINT",
                        help="evaluate a searcher checkpoint under this label (repeatable)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the resolved plan (JSON) and exit; loads no model, starts no Ray")
    parser.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. eval.split=dev")
    args = parser.parse_args(argv)
    cfg = load_job_config(args.config, args.overrides)
    searchers = {}
    for spec in args.searcher:
        if "=" not in spec:
            parser.error(f"--searcher {spec!r}: expected LABEL=CHECKPOINT")
        label, path = spec.split("=", 1)
        searchers[label] = path

    if args.dry_run:
        resolved, problems = plan(cfg, searchers)
        print(json.dumps({"plan": resolved, "problems": problems}, indent=2))
        return 2 if problems else 0

    runtime.init_ray()
    runtime.deploy_services(cfg)
    retriever, generator = runtime.clients(cfg)
    if cfg.eval.datasets:
        _, md = evaluate_datasets(cfg, retriever, generator, searchers)
    else:
        _, md = evaluate(cfg, retriever, generator, searchers)
    print(md.read_text())
    print(f"report: {md.parent}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
