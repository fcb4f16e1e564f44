"""Corpus encoding on Ray: passages cut into chunks, encoded by Ray tasks, reassembled in corpus order.

Each worker process loads the encoder once (from a picklable factory) and keeps it for the
chunks it gets next. `ray` is imported when encoding runs; the bar goes to the job's console.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from s3_ray.config import RetrievalConfig
from s3_ray.retrieval.encoders import Encoder, encoder_factory
from s3_ray.retrieval.index import PassageEncodeFn

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

    from s3_ray.console import active

    if workers < 1 or chunk_size < 1:
        raise ValueError(f"workers and chunk_size must be >= 1, got {workers}, {chunk_size}")
    if not ray.is_initialized():
        ray.init()
    remote = ray.remote(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker, max_retries=2)(_encode_chunk)
    factory_ref = ray.put(factory)
    starts = list(range(0, len(texts), chunk_size))
    results: dict[int, np.ndarray] = {}
    pending: dict[Any, int] = {}
    bar = active().bar(len(texts), f"encode passages ({workers} workers)", unit="passage", enabled=progress)
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


def ray_passage_encoder(cfg: RetrievalConfig, workers: int, chunk_size: int = 512, gpus_per_worker: float = 0.0,
                        progress: bool = True) -> PassageEncodeFn | None:
    """`build_index(..., encode_passages=...)` encoding the configured encoder on `workers` Ray
    tasks at a time; None (encode in process, or nothing to encode for BM25) when `workers` is 0
    or the backend is not dense or hybrid.

    >>> ray_passage_encoder(RetrievalConfig(backend="bm25"), workers=4) is None
    True
    """
    if workers <= 0 or cfg.backend not in ("dense", "hybrid"):
        return None
    factory = encoder_factory(cfg)

    def encode(texts: list[str]) -> np.ndarray:
        return encode_with_ray(texts, factory, workers, chunk_size=chunk_size, gpus_per_worker=gpus_per_worker,
                               progress=progress)

    return encode
