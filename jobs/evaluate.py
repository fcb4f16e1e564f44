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
import json
import sys
from pathlib import Path
from typing import Any

from jobs import runtime
from s3_ray.config import S3Config, load_job_config
from s3_ray.eval.ray_pairs import DEFAULT_TASK_CPUS, ray_map
from s3_ray.eval.suite import evaluate, evaluate_datasets


def plan(cfg: S3Config, searchers: dict[str, str]) -> tuple[dict[str, Any], list[str], list[str]]:
    """(plan, missing, problems): everything the run would use, the inputs not there yet (an
    index, a data file, a checkpoint) and contradictions that fail whatever exists. Loads no
    model and touches no network."""
    from s3_ray.data.datasets import dataset_path, infer_format
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
            if fmt == "hf":
                entry.update(source=f"hub RUC-NLPIR/FlashRAG_datasets/{spec.name}", split=spec.path)
            else:
                entry.update(check(dataset_path(spec.path, fmt), f"eval.datasets[{spec.name}]"))
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
    map_fn = None if args.in_driver else ray_map(args.task_cpus, log=runtime.log)
    if cfg.eval.datasets:
        _, md = evaluate_datasets(cfg, retriever, generator, searchers, map_fn=map_fn, log=runtime.log)
    else:
        _, md = evaluate(cfg, retriever, generator, searchers, map_fn=map_fn, log=runtime.log)
    print(md.read_text())
    print(f"report: {md.parent}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
