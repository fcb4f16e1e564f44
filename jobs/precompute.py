"""Precompute the naive-RAG baseline of one split (needed by the Gain-Beyond-RAG reward).

    python -m jobs.precompute [--config PATH] [--split train] [--serve] [--shards N]
                              [--task-cpus 1] [--task-gpus 0] [--dry-run] [--verbose] [key=value ...]

In-process by default (loads the index and the generator here); with `--serve` it joins Ray and
calls the `retriever` and `generator` Serve apps (deploying them if they are not running).
With `--shards N` the questions still missing are split over N Ray tasks (`--task-cpus` /
`--task-gpus` each); every task loads its own index and generator (or, with `--serve`, calls the
apps, whose replicas then share the load) and writes its own shard file, merged at the end.
Rerunning resumes: ids already in `<run_dir>/baseline/<split>.jsonl` or in a shard file left by a
crashed run are skipped. The inputs (data file, index, generator model) are checked before
anything starts; Ray's and the models' own output goes to `<run_dir>/logs/`.
"""

from __future__ import annotations

import argparse
import functools
import sys
from typing import Any

from jobs import runtime
from s3_ray.config import S3Config, load_job_config
from s3_ray.console import JobConsole
from s3_ray.pipeline.baseline_shards import fill_shard, run_sharded
from s3_ray.plans.precompute import precompute_plan
from s3_ray.types import QAItem


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m jobs.precompute", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=runtime.DEFAULT_CONFIG, help="YAML config file")
    p.add_argument("--split", default="train", choices=["train", "dev", "test"])
    p.add_argument("--serve", action="store_true", help="use the running 'retriever'/'generator' Serve apps")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--shards", type=int, default=1, help="Ray tasks the missing questions are split over (1: none)")
    p.add_argument("--task-cpus", type=float, default=1.0, help="logical CPUs per shard task")
    p.add_argument("--task-gpus", type=float, default=0.0, help="GPUs per shard task (in-process generator)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved plan (JSON) and exit; loads no model, starts no Ray")
    runtime.add_verbose_flag(p)
    p.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. rollout.init_k=3")
    args = p.parse_args(argv)
    if args.shards < 1:
        p.error(f"--shards must be >= 1, got {args.shards}")
    if args.task_cpus <= 0 or args.task_gpus < 0:
        p.error(f"--task-cpus must be > 0 and --task-gpus >= 0, got {args.task_cpus} and {args.task_gpus}")
    return args


def shard_task(cfg: S3Config, shard_file: str, items: list[QAItem], serve: bool, batch_size: int) -> int:
    """One shard, run inside a Ray task: answer `items` into `shard_file`. Returns how many."""
    return fill_shard(cfg, shard_file, items, *_backends(cfg, serve), batch_size)


def _backends(cfg: S3Config, serve: bool) -> tuple[Any, Any]:
    """(retriever, generator) clients: the Serve apps, or models loaded in this process."""
    from s3_ray.clients.generator import GeneratorClient
    from s3_ray.clients.retriever import RetrieverClient

    if serve:
        return runtime.clients(cfg)
    from s3_ray.generation import build_generator
    from s3_ray.retrieval.index import load_retriever

    return (RetrieverClient.in_process(load_retriever(cfg.retrieval)),
            GeneratorClient.in_process(build_generator(cfg.generator)))


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    job = JobConsole("precompute", verbose=args.verbose)
    return job.run(lambda: _run(job, args))


def _run(job: JobConsole, args: argparse.Namespace) -> int:
    cfg = load_job_config(args.config, args.overrides)
    plan = precompute_plan(cfg, args.split, args.serve, args.shards)
    if args.dry_run:
        return plan.emit()
    plan.require()  # the baseline's settings too: a mismatch is a problem, found before any model loads

    from s3_ray.reward.precompute import precompute_split
    from s3_ray.reward.summary import summarize_split

    with job.logging_to(cfg.run_dir):
        if args.serve or args.shards > 1:
            runtime.init_ray()
        if args.serve:
            runtime.deploy_services(cfg)
        if args.shards > 1:
            task = functools.partial(shard_task, cfg, serve=args.serve, batch_size=args.batch_size)
            run_sharded(cfg, args.split, args.shards, task, args.task_cpus, args.task_gpus, log=runtime.log)
            summarize_split(cfg, args.split, log=runtime.log)
        else:
            retriever, generator = _backends(cfg, args.serve)
            precompute_split(cfg, args.split, retriever, generator, batch_size=args.batch_size,
                             progress=not args.no_progress, log=runtime.log)
        job.finished()
    return 0


if __name__ == "__main__":
    sys.exit(main())
