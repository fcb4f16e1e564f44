"""Build the retrieval index: `python -m jobs.build_index [--config C] [--corpus PATH] [--workers N] [--dry-run] [key=value ...]`.

Dense and hybrid indexes need the corpus encoded. By default that happens in this process; with
`--workers N` the passages are cut into chunks and encoded by Ray tasks on N workers (each loads
the encoder once and keeps it), with a progress bar over finished chunks. Submit it to a cluster
with `ray job submit -- python -m jobs.build_index --workers 8 retrieval.backend=dense`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from s3_ray.config import S3Config, load_job_config
from s3_ray.data.embedded import resolve_paths
from s3_ray.retrieval.index import build_index
from s3_ray.retrieval.ray_encode import ray_passage_encoder


def dry_run(cfg: S3Config, corpus: str | Path, workers: int, chunk_size: int, gpus_per_worker: float) -> int:
    """The plan: corpus, index settings, where the index goes and who encodes the passages."""
    from jobs.plan import Plan, model_entry

    plan = Plan("build_index", cfg)
    r = cfg.retrieval
    plan.add("corpus", plan.file(corpus, "corpus"))
    index: dict[str, Any] = {"backend": r.backend, "index_dir": plan.output(r.index_dir),
                             "manifest": plan.output(Path(r.index_dir) / "manifest.json")}
    if r.backend == "bm25":
        index.update(k1=r.k1, b=r.b, impl=r.bm25_impl)
    else:
        index.update(encoder=r.encoder, index_type=r.index_type, num_shards=r.num_shards, max_length=r.max_length)
        if Path(r.encoder).expanduser().exists():
            index["encoder_source"] = model_entry(r.encoder, "retrieval.encoder", plan)
    plan.add("index", index)
    if workers > 0 and r.backend in ("dense", "hybrid"):
        plan.add("encoding", {"where": "Ray tasks", "workers": workers, "chunk_size": chunk_size,
                              "cpus_per_task": 1.0, "gpus_per_task": gpus_per_worker,
                              "total_cpus": float(workers), "total_gpus": workers * gpus_per_worker})
    else:
        plan.add("encoding", {"where": "this process" if r.backend != "bm25" else "none (BM25)"})
    return plan.emit()


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
    ap.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. retrieval.index_dir=runs/idx")
    args = ap.parse_args(argv)
    if args.workers < 0:
        ap.error("--workers must be >= 0")
    cfg = load_job_config(args.config, args.overrides)
    corpus = args.corpus or resolve_paths(cfg.data).corpus
    if args.dry_run:
        return dry_run(cfg, corpus, args.workers, args.chunk_size, args.gpus_per_worker)
    encode = ray_passage_encoder(cfg.retrieval, args.workers, chunk_size=args.chunk_size,
                                 gpus_per_worker=args.gpus_per_worker, progress=not args.quiet)
    manifest = build_index(corpus, cfg.retrieval, progress=not args.quiet, encode_passages=encode)
    print(f"{cfg.retrieval.index_dir}: {manifest.summary()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
