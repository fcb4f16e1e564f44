"""Evaluate context methods (naive RAG, baselines, searchers) with the frozen generator.

    python -m jobs.evaluate --config jobs/configs/demo.yaml [--searcher LABEL=CHECKPOINT ...] [--dry-run]
                            [--in-driver] [--task-cpus 0.5] [key=value ...]

Methods come from `eval.methods` (`s3_ray.eval.methods.METHODS`: naive_rag, no_retrieval, s3 = the
untrained `searcher.model`, cot, rewrite, ircot, search_r1, search_o1) plus one s3 method per
`--searcher` / `eval.checkpoints` entry. Searchers and baselines decode greedily. With
`reward.use_judge`, GenAcc is span match OR the generator-as-judge (as in the reward).

Every (method, data set) pair runs as its own Ray task (`--task-cpus` logical CPUs each; the task
builds its method and calls the retriever and generator Serve apps through picklable clients);
`--in-driver` runs the pairs one after the other in this process instead.

Data: with `eval.datasets` empty, the `eval.split` of `data` (the embedded set by default), results
in <run_dir>/eval/<split>/. Otherwise every listed set (FlashRAG JSONL, s3 parquet, MIRAGE JSON,
or by name from the hub), sampled to `eval.limit`, results in <run_dir>/eval/<dataset>/<method>.jsonl
and a per-data-set + average report in <run_dir>/eval/report/. An interrupted run resumes where
it stopped. `--dry-run` resolves and prints the whole plan (config, data sets, methods, paths)
without starting Ray or loading models; it lists missing inputs and exits 2 on contradictions.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jobs import runtime
from s3_ray.config import S3Config, load_job_config
from s3_ray.types import QAItem

HUB_FORMAT = "hf"


DEFAULT_TASK_CPUS = 0.5
"""Logical CPUs a (method, data set) Ray task reserves: the heavy work (retrieval, the frozen
generator) runs in the Serve apps, so a task mostly waits on them or runs a small LM."""


def method_refs(cfg: S3Config, retriever: Any, searchers: dict[str, str]) -> list[Any]:
    """Every method to evaluate as a `MethodRef`: its label and a picklable factory (nothing loaded)."""
    from s3_ray.eval.methods import build_method
    from s3_ray.eval.runner import MethodRef

    greedy = cfg.searcher.model_copy(update={"temperature": 0.0})
    refs = []
    for kind in cfg.eval.methods:
        name = "s3_untrained" if kind == "s3" else kind
        refs.append(MethodRef(name, functools.partial(
            build_method, kind, retriever=retriever, rollout=cfg.rollout, searcher=greedy,
            model=cfg.searcher.model, name=name, eval_cfg=cfg.eval)))
    for label, path in {**cfg.eval.checkpoints, **searchers}.items():
        refs.append(MethodRef(label, functools.partial(
            build_method, "s3", retriever=retriever, rollout=cfg.rollout, searcher=greedy, model=path, name=label)))
    return refs


def build_methods(cfg: S3Config, retriever: Any, searchers: dict[str, str]) -> list[Any]:
    """The methods, built (models loaded) in this process."""
    return [ref.build() for ref in method_refs(cfg, retriever, searchers)]


def ray_map(num_cpus: float = DEFAULT_TASK_CPUS, wait_s: float = 60.0,
            log: Callable[[str], None] = runtime.log) -> Any:
    """A `PairMap` running each (method, data set) pair as a Ray task.

    Every pair writes its own JSONL, so a failed pair loses nothing the others did: all pairs run
    to the end, then one error names every failure (rerun to resume them). Waits are bounded by
    `wait_s` and report what is still running.
    """
    if num_cpus <= 0:
        raise ValueError(f"--task-cpus must be > 0, got {num_cpus}")

    def run(fn: Any, jobs: list[Any]) -> list[Any]:
        import ray

        task = ray.remote(num_cpus=num_cpus, max_retries=1)(fn)
        refs = [task.remote(job) for job in jobs]
        label = {ref: f"{job.dataset or 'eval'}/{job.method.name}" for ref, job in zip(refs, jobs)}
        results: dict[Any, Any] = {}
        failed: list[str] = []
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=wait_s)
            for ref in ready:
                try:
                    results[ref] = ray.get(ref, timeout=wait_s)
                except Exception as err:  # noqa: BLE001 -- collected, reported together below
                    failed.append(f"{label[ref]}: {type(err).__name__}: {err}")
                    log(f"pair {label[ref]} failed: {err}")
            if not ready:
                log(f"{len(pending)} of {len(refs)} pairs still running: "
                    + ", ".join(label[r] for r in pending[:6]) + (" ..." if len(pending) > 6 else ""))
        if failed:
            raise RuntimeError(f"{len(failed)} of {len(refs)} (method, data set) pairs failed; the finished ones "
                               "are saved and a rerun resumes the rest:\n  " + "\n  ".join(failed))
        return [results[r] for r in refs]

    return run


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


def plan(cfg: S3Config, searchers: dict[str, str]) -> tuple[dict[str, Any], list[str], list[str]]:
    """(plan, missing, problems): everything the run would use, the inputs not there yet (an
    index, a data file, a checkpoint) and contradictions that fail whatever exists. Loads no
    model and touches no network."""
    from s3_ray.data.datasets import infer_format
    from s3_ray.data.embedded import resolve_paths
    from s3_ray.eval.methods import BASELINES, METHODS

    problems: list[str] = []
    missing: list[str] = []

    def check(path: str | Path, what: str) -> dict[str, Any]:
        exists = Path(path).exists()
        if not exists:
            missing.append(f"{what}: {path} does not exist")
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
        elif kind in BASELINES:
            entry["model"] = cfg.eval.baseline_model or cfg.searcher.model
        methods.append(entry)
    for label, path in {**cfg.eval.checkpoints, **searchers}.items():
        methods.append({"name": label, "kind": "s3", **check(Path(path).expanduser().resolve(), f"checkpoint {label}")})

    r, g = cfg.retrieval, cfg.generator
    retrieval = {"backend": r.backend, "index_dir": r.index_dir, "index_built": (Path(r.index_dir) / "manifest.json").is_file()}
    if not retrieval["index_built"]:
        missing.append(f"retrieval.index_dir: no index at {r.index_dir}; build it with `python -m jobs.build_index`")
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
             "judge": cfg.reward.use_judge,
             "report_dir": str(report)}, missing, problems)


def _methods(cfg: S3Config, retriever: Any, searchers: dict[str, str], map_fn: Any) -> list[Any]:
    """Factories when pairs run elsewhere (each task builds its own), else methods built once here
    and reused across data sets."""
    return method_refs(cfg, retriever, searchers) if map_fn is not None else build_methods(cfg, retriever, searchers)


def evaluate(cfg: S3Config, retriever: Any, generator: Any, searchers: dict[str, str],
             out_dir: Path | None = None, map_fn: Any = None) -> tuple[dict[str, dict[str, float]], Path]:
    """One split of `data` (the embedded set by default): {method: summary} and the report path.
    `map_fn` (e.g. `ray_map()`) runs the methods elsewhere; None: one after the other, here."""
    from s3_ray.data.embedded import load_split
    from s3_ray.eval.report import write_report
    from s3_ray.eval.runner import run_suite

    items = load_split(cfg.data, cfg.eval.split)
    out = out_dir or cfg.path("eval", cfg.eval.split)
    runtime.log(f"evaluating on {len(items)} {cfg.eval.split} questions -> {out}")
    summaries = run_suite(_methods(cfg, retriever, searchers, map_fn), items, generator, out,
                          batch_size=cfg.generator.batch_size, log=runtime.log, count_tokens=_counter(cfg),
                          judge=cfg.reward.use_judge, map_fn=map_fn)
    md = write_report(out, summaries, extra={"config": cfg.model_dump()}, title=f"Evaluation ({cfg.eval.split})")
    return summaries, md


def evaluate_datasets(cfg: S3Config, retriever: Any, generator: Any, searchers: dict[str, str],
                      map_fn: Any = None) -> tuple[dict[str, dict[str, dict[str, float]]], Path]:
    """Every set of `eval.datasets`: {dataset: {method: summary}} and the report path."""
    from s3_ray.eval.dataset_report import write_dataset_report
    from s3_ray.eval.runner import run_datasets

    data = load_datasets(cfg)
    runtime.log("data sets: " + ", ".join(f"{k} ({len(v)})" for k, v in data.items()))
    results = run_datasets(_methods(cfg, retriever, searchers, map_fn), data, generator, cfg.path("eval"),
                           batch_size=cfg.generator.batch_size, log=runtime.log, count_tokens=_counter(cfg),
                           judge=cfg.reward.use_judge, map_fn=map_fn)
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
    parser.add_argument("--in-driver", action="store_true",
                        help="run the (method, data set) pairs one after the other in this process, not as Ray tasks")
    parser.add_argument("--task-cpus", type=float, default=DEFAULT_TASK_CPUS,
                        help=f"logical CPUs per (method, data set) Ray task (default {DEFAULT_TASK_CPUS})")
    parser.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. eval.split=dev")
    args = parser.parse_args(argv)
    cfg = load_job_config(args.config, args.overrides)
    searchers = {}
    for spec in args.searcher:
        if "=" not in spec:
            parser.error(f"--searcher {spec!r}: expected LABEL=CHECKPOINT")
        label, path = spec.split("=", 1)
        searchers[label] = path

    if args.task_cpus <= 0:
        parser.error(f"--task-cpus must be > 0, got {args.task_cpus}")

    if args.dry_run:  # the same shape and exit status as every job's --dry-run (jobs/plan.py)
        resolved, missing, problems = plan(cfg, searchers)
        print(json.dumps({"job": "evaluate", "plan": resolved, "missing": missing, "problems": problems}, indent=2))
        if problems:
            print(f"[s3-ray] dry run of evaluate: {len(problems)} problem(s)", file=sys.stderr)
        return 2 if problems else 0

    runtime.init_ray()
    runtime.deploy_services(cfg)
    retriever, generator = runtime.clients(cfg)
    map_fn = None if args.in_driver else ray_map(args.task_cpus)
    if cfg.eval.datasets:
        _, md = evaluate_datasets(cfg, retriever, generator, searchers, map_fn=map_fn)
    else:
        _, md = evaluate(cfg, retriever, generator, searchers, map_fn=map_fn)
    print(md.read_text())
    print(f"report: {md.parent}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
