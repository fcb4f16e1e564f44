"""Evaluate context methods (naive RAG, searchers, ...) with the frozen generator.

    python -m jobs.evaluate --config jobs/configs/demo.yaml [--searcher LABEL=CHECKPOINT ...] [key=value ...]

Methods come from `eval.methods` (naive_rag, no_retrieval, s3 = the untrained `searcher.model`)
plus one s3 method per `--searcher` / `eval.checkpoints` entry. Searchers decode greedily.
Results: <run_dir>/eval/<split>/{<method>.jsonl, results.json, results.md, accuracy.png}; an
interrupted run resumes where it stopped.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from jobs import runtime
from s3_ray.config import S3Config, load_job_config


def build_methods(cfg: S3Config, retriever: Any, searchers: dict[str, str]) -> list[Any]:
    from s3_ray.eval.methods import build_method

    greedy = cfg.searcher.model_copy(update={"temperature": 0.0})
    methods = []
    for kind in cfg.eval.methods:
        name = "s3_untrained" if kind == "s3" else kind
        methods.append(build_method(kind, retriever=retriever, rollout=cfg.rollout, searcher=greedy,
                                    model=cfg.searcher.model, name=name))
    for label, path in {**cfg.eval.checkpoints, **searchers}.items():
        methods.append(build_method("s3", retriever=retriever, rollout=cfg.rollout, searcher=greedy,
                                    model=path, name=label))
    return methods


def evaluate(cfg: S3Config, retriever: Any, generator: Any, searchers: dict[str, str],
             out_dir: Path | None = None) -> tuple[dict[str, dict[str, float]], Path]:
    from s3_ray.data.embedded import load_split
    from s3_ray.eval.report import write_report
    from s3_ray.eval.runner import run_suite

    items = load_split(cfg.data, cfg.eval.split)
    out = out_dir or cfg.path("eval", cfg.eval.split)
    runtime.log(f"evaluating on {len(items)} {cfg.eval.split} questions -> {out}")
    summaries = run_suite(build_methods(cfg, retriever, searchers), items, generator, out,
                          batch_size=cfg.generator.batch_size, log=runtime.log)
    md = write_report(out, summaries, extra={"config": cfg.model_dump()}, title=f"Evaluation ({cfg.eval.split})")
    return summaries, md


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=runtime.DEFAULT_CONFIG, help="YAML config file")
    parser.add_argument("--searcher", action="append", default=[], metavar="LABEL=CHECKPOINT",
                        help="evaluate a searcher checkpoint under this label (repeatable)")
    parser.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. eval.split=dev")
    args = parser.parse_args(argv)
    cfg = load_job_config(args.config, args.overrides)
    searchers = {}
    for spec in args.searcher:
        if "=" not in spec:
            parser.error(f"--searcher {spec!r}: expected LABEL=CHECKPOINT")
        label, path = spec.split("=", 1)
        searchers[label] = path

    runtime.init_ray()
    runtime.deploy_services(cfg)
    retriever, generator = runtime.clients(cfg)
    _, md = evaluate(cfg, retriever, generator, searchers)
    print(md.read_text())
    print(f"report: {md.parent}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
