"""How many threads a CPU replica's torch and faiss use, set explicitly from the CPUs it reserves.

Ray sets `OMP_NUM_THREADS` to a worker's whole CPUs, and to 1 for a fractional reservation (the
retriever's `serve.retriever_cpus` defaults to 0.25 so the demo fits on 2 cores), so without this
a replica would encode queries on one thread because of a default nobody chose. A replica calls
`set_replica_threads` before it loads anything; `replica_threads` is what the plan shows.
"""

from __future__ import annotations

import math
import os


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no sched_getaffinity (macOS)
        return max(1, os.cpu_count() or 1)


def replica_threads(cpus: float, threads: int | None, cores: int | None = None) -> int:
    """`threads` when set, else the reserved `cpus` rounded up; at least 1 and at most `cores`.

    >>> replica_threads(0.25, None), replica_threads(1.5, None), replica_threads(2.0, None, cores=2)
    (1, 2, 2)
    >>> replica_threads(8.0, None, cores=2), replica_threads(0.25, 3, cores=2)
    (2, 2)
    """
    n = threads if threads is not None else math.ceil(cpus)
    if cores is not None:
        n = min(n, cores)
    return max(1, int(n))


def set_replica_threads(n: int) -> int:
    """Make this process's torch intra-op pool and faiss's OpenMP pool use `n` threads; returns `n`."""
    if n < 1:
        raise ValueError(f"thread count must be at least 1, got {n}")
    import torch

    torch.set_num_threads(n)
    try:
        import faiss
    except ImportError:  # a BM25-only install has no faiss
        return n
    faiss.omp_set_num_threads(n)
    return n


def local_serve_cpus(cores: int, others: float, default: float) -> float:
    """The retriever's CPUs when `s3-ray serve` starts its own Ray on this machine and the config
    leaves `serve.retriever_cpus` unset: the cores the other apps do not reserve, at least `default`.

    >>> local_serve_cpus(2, 0.0, 0.25), local_serve_cpus(2, 0.5, 0.25), local_serve_cpus(1, 1.0, 0.25)
    (2.0, 1.5, 0.25)
    """
    return max(float(default), round(cores - others, 3))
