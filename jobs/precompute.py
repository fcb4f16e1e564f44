"""Precompute the naive-RAG baseline of one split (needed by the Gain-Beyond-RAG reward).

    python -m jobs.precompute [--config PATH] [--split train] [--serve] [--shards N]
                              [--task-cpus 1] [--task-gpus 0] [--dry-run] [key=value ...]

In-process by default (loads the index and the generator here); with `--serve` it joins Ray and
calls the `retriever` and `generator` Serve apps (deploying them if they are not running).
With `--shards N` the questions still missing are split over N Ray tasks (`--task-cpus` /
`--task-gpus` each); every task loads its own index and generator (or, with `--serve`, calls the
apps, whose replicas then share the load) and writes its own shard file, merged at the end.
Rerunning resumes: ids already in `<run_dir>/baseline/<split>.jsonl` or in a shard file left by a
crashed run are skipped.
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
    p.add_argument("--shards", type=int, default=1, help="Ray tasks the missing questions are split over (1: none)")
    p.add_argument("--task-cpus", type=float, default=1.0, help="logical CPUs per shard task")
    p.add_argument("--task-gpus", type=float, default=0.0, help="GPUs per shard task (in-process generator)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved plan (JSON) and exit; loads no model, starts no Ray")
    p.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. rollout.init_k=3")
    args = p.parse_args(argv)
    if args.shards < 1:
        p.error(f"--shards must be >= 1, got {args.shards}")
    if args.task_cpus <= 0 or args.task_gpus < 0:
        p.error(f"--task-cpus must be > 0 and --task-gpus >= 0, got {args.task_cpus} and {args.task_gpus}")
    return args


def shard_task(cfg: S3Config, shard_file: str, items: list, serve: bool, batch_size: int) -> int:
    """One shard, run inside a Ray task: answer `items` into `shard_file`. Returns how many."""
    from s3_ray.reward.baseline_file import BaselineCache
    from s3_ray.reward.fingerprint import baseline_settings
    from s3_ray.reward.precompute import precompute_baseline

    retriever, generator = _backends(cfg, serve)
    cache = BaselineCache(shard_file, baseline_settings(cfg))
    counts = precompute_baseline(items, retriever, generator, cfg.rollout.init_k, cache,
                                 batch_size=batch_size, progress=False)
    return counts["computed"]


def _backends(cfg: S3Config, serve: bool) -> tuple:
    """(retriever, generator) clients: the Serve apps, or models loaded in this process."""
    from s3_ray.clients.generator import GeneratorClient
    from s3_ray.clients.retriever import RetrieverClient

    if serve:
        return runtime.clients(cfg)
    from s3_ray.generation import build_generator
    from s3_ray.retrieval.index import load_retriever

    return (RetrieverClient.in_process(load_retriever(cfg.retrieval)),
            GeneratorClient.in_process(build_generator(cfg.generator)))


def run_sharded(cfg: S3Config, args: argparse.Namespace) -> dict:
    """Split the missing questions over `args.shards` Ray tasks; every shard file is merged at the end."""
    import ray

    from s3_ray.data.embedded import load_split
    from s3_ray.reward.fingerprint import open_baseline
    from s3_ray.reward.shards import precompute_sharded

    items = load_split(cfg.data, args.split)
    main = open_baseline(cfg, args.split)
    task = ray.remote(num_cpus=args.task_cpus, num_gpus=args.task_gpus, max_retries=1)(shard_task)

    def run(jobs: list) -> None:
        refs = {task.remote(cfg, str(path), qs, args.serve, args.batch_size): (i, len(qs)) for i, path, qs in jobs}
        runtime.log(f"{sum(n for _, n in refs.values())} questions over {len(refs)} shard tasks")
        failed = []
        for ref in refs:  # wait for all, so every finished shard is merged even if one fails
            try:
                ray.get(ref)
            except Exception as err:  # noqa: BLE001 -- reported together below
                failed.append(f"shard {refs[ref][0]}: {type(err).__name__}: {err}")
        if failed:
            from s3_ray.reward.shards import merge_shards

            merge_shards(main, [it.id for it in items])
            raise RuntimeError(f"{len(failed)} shard task(s) failed; finished work is saved and a rerun resumes "
                               "the rest:\n  " + "\n  ".join(failed))

    counts = precompute_sharded(items, main, args.shards, run)
    runtime.log(f"baseline {args.split} ({main.path}): {counts['total']} questions, {counts['computed']} computed "
                f"in {counts['shards']} shards, {counts['recovered']} recovered from shard files, "
                f"{counts['skipped']} already stored")
    return counts


def dry_run(cfg: S3Config, split: str, serve: bool, shards: int = 1) -> int:
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
    plan.add("shards", shards)
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
        return dry_run(cfg, args.split, args.serve, args.shards)

    from s3_ray.reward.fingerprint import open_baseline
    from s3_ray.reward.precompute import precompute_split
    from s3_ray.reward.summary import summarize_split

    open_baseline(cfg, args.split)  # fail on a settings mismatch before loading any model
    if args.serve or args.shards > 1:
        runtime.init_ray()
    if args.serve:
        runtime.deploy_services(cfg)
    if args.shards > 1:
        run_sharded(cfg, args)
        summarize_split(cfg, args.split, log=runtime.log)
        return 0
    retriever, generator = _backends(cfg, args.serve)
    precompute_split(cfg, args.split, retriever, generator, batch_size=args.batch_size,
                     progress=not args.no_progress, log=runtime.log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
