"""Build the retrieval index: `python -m jobs.build_index [--config C] [--corpus PATH] [--workers N] [--dry-run] [key=value ...]`.

Dense and hybrid indexes need the corpus encoded. By default that happens in this process; with
`--workers N` the passages are cut into chunks and encoded by Ray tasks on N workers (each loads
the encoder once and keeps it), with a progress bar over finished chunks. Submit it to a cluster
with `ray job submit -- python -m jobs.build_index --workers 8 retrieval.backend=dense`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from s3_ray.config import S3Config, load_job_config
from s3_ray.data.embedded import resolve_paths
from s3_ray.retrieval.encoders import Encoder, encoder_factory
from s3_ray.retrieval.index import build_index

_WORKER_ENCODERS: dict[Any, Encoder] = {}


def _encode_chunk(factory: Callable[[], Encoder], texts: list[str]) -> np.ndarray:
    """Runs inside a Ray worker; the encoder is loaded once per worker process and reused."""
    if factory not in _WORKER_ENCODERS:
        _WORKER_ENCODERS[factory] = factory()
    return _WORKER_ENCODERS[factory].encode_passages(texts)


def encode_with_ray(texts: list[str], factory: Callable[[], Encoder], workers: int, chunk_size: int = 512,
                    cpus_per_worker: float = 1.0, gpus_per_worker: float = 0.0,
                    progress: bool = True) -> np.ndarray:
    """Encode passages as Ray tasks over `workers` actors-worth of resources, in corpus order.

    At most `workers` chunks run at once, so a large corpus never floods the object store.
    """
    import ray
    from tqdm.auto import tqdm

    if workers < 1 or chunk_size < 1:
        raise ValueError(f"workers and chunk_size must be >= 1, got {workers}, {chunk_size}")
    if not ray.is_initialized():
        ray.init()
    remote = ray.remote(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker, max_retries=2)(_encode_chunk)
    factory_ref = ray.put(factory)
    starts = list(range(0, len(texts), chunk_size))
    results: dict[int, np.ndarray] = {}
    pending: dict[Any, int] = {}
    bar = tqdm(total=len(texts), desc=f"encode passages ({workers} workers)", unit="passage", disable=not progress)
    next_chunk = 0
    while next_chunk < len(starts) or pending:
        while next_chunk < len(starts) and len(pending) < workers:
            s = starts[next_chunk]
            pending[remote.remote(factory_ref, texts[s:s + chunk_size])] = s
            next_chunk += 1
        done, _ = ray.wait(list(pending), num_returns=1)
        s = pending.pop(done[0])
        results[s] = ray.get(done[0])
        bar.update(len(results[s]))
    bar.close()
    return np.concatenate([results[s] for s in starts])


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
    encode = None
    if args.workers > 0 and cfg.retrieval.backend in ("dense", "hybrid"):
        factory = encoder_factory(cfg.retrieval)

        def encode(texts: list[str]) -> np.ndarray:
            return encode_with_ray(texts, factory, args.workers, chunk_size=args.chunk_size,
                                   gpus_per_worker=args.gpus_per_worker, progress=not args.quiet)

    manifest = build_index(corpus, cfg.retrieval, progress=not args.quiet, encode_passages=encode)
    print(f"{cfg.retrieval.index_dir}: {manifest.summary()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
