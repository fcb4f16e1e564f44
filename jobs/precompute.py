"""Precompute the naive-RAG baseline of one split (needed by the Gain-Beyond-RAG reward).

    python -m jobs.precompute [--config PATH] [--split train] [--serve] [--dry-run] [key=value ...]

In-process by default (loads the index and the generator here); with `--serve` it joins Ray and
calls the `retriever` and `generator` Serve apps (deploying them if they are not running).
Rerunning resumes: ids already in
`<run_dir>/baseline/<split>.jsonl` are skipped.
"""

from __future__ import annotations

import argparse
import sys

from jobs import runtime
from s3_ray.config import S3Config, load_job_config


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m jobs.precompute", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=runtime.DEFAULT_CONFIG, help="YAML config file")
    p.add_argument("--split", default="train", choices=["train", "dev", "test"])
    p.add_argument("--serve", action="store_true", help="use the running 'retriever'/'generator' Serve apps")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved plan (JSON) and exit; loads no model, starts no Ray")
    p.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. rollout.init_k=3")
    return p.parse_args(argv)


def dry_run(cfg: S3Config, split: str, serve: bool) -> int:
    """The plan: data, index, generator (or Serve apps) and the baseline file it fills."""
    from jobs.plan import (
        Plan,
        baseline_entry,
        data_entry,
        generator_entry,
        index_entry,
        serve_entry,
    )

    plan = Plan("precompute", cfg)
    plan.add("split", split)
    plan.add("init_k", cfg.rollout.init_k)
    if serve:
        plan.add("serve", serve_entry(cfg, plan))
    else:
        plan.add("in_process", {"retriever": cfg.retrieval.backend, "generator": generator_entry(cfg, plan)})
    plan.add("index", index_entry(cfg, plan))
    plan.add("data", data_entry(cfg, plan, [split]))
    plan.add("baseline", baseline_entry(cfg, plan, split, required=False))
    return plan.emit()


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    cfg = load_job_config(args.config, args.overrides)
    if args.dry_run:
        return dry_run(cfg, args.split, args.serve)

    from s3_ray.clients.generator import GeneratorClient
    from s3_ray.clients.retriever import RetrieverClient
    from s3_ray.reward.baseline import open_baseline, precompute_split

    open_baseline(cfg, args.split)  # fail on a settings mismatch before loading any model
    if args.serve:
        runtime.init_ray()
        runtime.deploy_services(cfg)
        retriever, generator = runtime.clients(cfg)
    else:
        from s3_ray.generation import build_generator
        from s3_ray.retrieval.index import load_retriever

        retriever = RetrieverClient.in_process(load_retriever(cfg.retrieval))
        generator = GeneratorClient.in_process(build_generator(cfg.generator))
    precompute_split(cfg, args.split, retriever, generator, batch_size=args.batch_size,
                     progress=not args.no_progress, log=runtime.log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
