"""Build the retrieval index.

    python -m jobs.build_index [--config C] [--corpus PATH] [--workers N] [--dry-run] [--verbose] [key=value ...]

Dense and hybrid indexes need the corpus encoded. By default that happens in this process; with
`--workers N` the passages are cut into chunks and encoded by Ray tasks on N workers (each loads
the encoder once and keeps it), with a progress bar over the encoded passages. Submit it to a
cluster with `ray job submit -- python -m jobs.build_index --workers 8 retrieval.backend=dense`.
With `retrieval.replica_shards > 1` the
corpus is cut into that many shards, built in parallel as Ray tasks (one per shard; each encodes
its own passages, `--gpus-per-worker` GPUs each); an unchanged shard is not rebuilt.
Ray's and the encoder's own output goes to `<run_dir>/logs/`.
"""

from __future__ import annotations

import argparse

from jobs import runtime
from s3_ray.config import load_job_config
from s3_ray.console import JobConsole, shown_path
from s3_ray.data.embedded import resolve_paths
from s3_ray.plans.build_index import build_index_plan
from s3_ray.retrieval.index import build_index
from s3_ray.retrieval.ray_encode import ray_passage_encoder
from s3_ray.retrieval.ray_shards import ray_shard_map


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m jobs.build_index", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=None, help="YAML config (defaults when omitted)")
    ap.add_argument("--corpus", default=None, help="corpus JSONL (default: data.corpus_path, else the embedded one)")
    ap.add_argument("--workers", type=int, default=0,
                    help="encode dense embeddings with N Ray workers (0: in this process)")
    ap.add_argument("--chunk-size", type=int, default=512, help="passages per Ray task (with --workers)")
    ap.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs per encoding task (with --workers)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    ap.add_argument("--dry-run", action="store_true",
                    help="print the resolved plan (JSON) and exit; loads no model, starts no Ray")
    runtime.add_verbose_flag(ap)
    ap.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. retrieval.index_dir=runs/idx")
    args = ap.parse_args(argv)
    if args.workers < 0:
        ap.error("--workers must be >= 0")
    job = JobConsole("index", verbose=args.verbose)
    return job.run(lambda: _run(job, args))


def _run(job: JobConsole, args: argparse.Namespace) -> int:
    cfg = load_job_config(args.config, args.overrides)
    corpus = args.corpus or resolve_paths(cfg.data).corpus
    plan = build_index_plan(cfg, corpus, args.workers, args.chunk_size, args.gpus_per_worker)
    if args.dry_run:
        return plan.emit()
    plan.require()  # the corpus, before an encoder loads or Ray starts
    with job.logging_to(cfg.run_dir) as console:
        sharded = cfg.retrieval.replica_shards > 1
        encode = None if sharded else ray_passage_encoder(cfg.retrieval, args.workers, chunk_size=args.chunk_size,
                                                          gpus_per_worker=args.gpus_per_worker,
                                                          progress=not args.quiet)
        if encode is not None or sharded:
            runtime.init_ray()
        shard_map = ray_shard_map(gpus_per_task=args.gpus_per_worker) if sharded else None
        manifest = build_index(corpus, cfg.retrieval, progress=not args.quiet, encode_passages=encode,
                               shard_map=shard_map)
        console.result(f"{shown_path(cfg.retrieval.index_dir, folder=True)}: {manifest.summary()}")
        job.finished()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
