"""The plan of `python -m jobs.build_index`: corpus, index settings, where the index goes and who
encodes the passages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from s3_ray.config import S3Config
from s3_ray.plans.entries import model_entry
from s3_ray.plans.plan import Plan


def build_index_plan(cfg: S3Config, corpus: str | Path, workers: int, chunk_size: int,
                     gpus_per_worker: float) -> Plan:
    """`workers` > 0 encodes a dense or hybrid index with that many Ray tasks at a time."""
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
    if r.replica_shards > 1:
        index["replica_shards"] = r.replica_shards
    plan.add("index", index)
    if r.replica_shards > 1:
        plan.add("encoding", {"where": "one Ray task per shard (it encodes that shard's passages)",
                              "tasks": r.replica_shards, "cpus_per_task": 1.0, "gpus_per_task": gpus_per_worker})
    elif workers > 0 and r.backend in ("dense", "hybrid"):
        plan.add("encoding", {"where": "Ray tasks", "workers": workers, "chunk_size": chunk_size,
                              "cpus_per_task": 1.0, "gpus_per_task": gpus_per_worker,
                              "total_cpus": float(workers), "total_gpus": workers * gpus_per_worker})
    else:
        plan.add("encoding", {"where": "this process" if r.backend != "bm25" else "none (BM25)"})
    return plan
