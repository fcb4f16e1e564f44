"""Which faiss build is installed, and how many GPUs a dense index may use.

faiss ships as several distributions that all install the one `faiss` package: faiss-cpu (the
`dense` extra), faiss-gpu (the `dense-gpu` extra) and older names of the GPU build. Two of them in
one environment overwrite each other's files, so `import_faiss` refuses that state and names them.

`retrieval.faiss_gpu` decides where the Flat and IVF-PQ shards live (`gpus_for_shards`):

* `auto` (the default): on every GPU faiss sees, shards spread round-robin; in host memory when
  faiss is a CPU build, when it sees no GPU, or for HNSW (faiss has no GPU HNSW). A CPU build of
  faiss on a machine where CUDA shows a GPU is logged as a warning that names the fix.
* `true`: GPUs are required. Loading fails, naming the key and the fix, when the index is HNSW,
  when faiss is a CPU build, or when faiss sees no GPU.
* `false`: host memory, always.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
from collections.abc import Callable, Sequence
from typing import Any

from s3_ray.config import FaissGpu

log = logging.getLogger(__name__)

CPU_BUILD = "faiss-cpu"
GPU_BUILD = "faiss-gpu"
# Every distribution that installs the `faiss` package; the last two are older names of the GPU build.
FAISS_DISTRIBUTIONS = (CPU_BUILD, GPU_BUILD, "faiss-gpu-cu12", "faiss-gpu-cu11")

INSTALL_GPU = ("pip uninstall -y faiss-cpu && pip install 's3-ray[dense-gpu]' "
               "(or S3RAY_EXTRAS=test,dense-gpu bash setup.sh)")


class FaissBuildError(RuntimeError):
    """The installed faiss cannot do what the configuration asks (or two builds are installed)."""


def installed_builds(version: Callable[[str], str] = importlib.metadata.version) -> list[str]:
    """The faiss distributions installed in this environment, in `FAISS_DISTRIBUTIONS` order."""
    found = []
    for name in FAISS_DISTRIBUTIONS:
        try:
            version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        found.append(name)
    return found


def require_one_build(builds: Sequence[str]) -> None:
    """Refuse an environment where several faiss builds share the `faiss` package.

    >>> require_one_build(["faiss-cpu"])
    >>> require_one_build(["faiss-cpu", "faiss-gpu"])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    s3_ray.retrieval.faiss_build.FaissBuildError: faiss-cpu and faiss-gpu are both installed ...
    """
    if len(builds) > 1:
        keep = GPU_BUILD if any(b != CPU_BUILD for b in builds) else builds[0]
        raise FaissBuildError(
            f"{' and '.join(builds)} are both installed and overwrite each other's files in the one "
            f"`faiss` package, so which build runs is undefined. Keep one: pip uninstall -y {' '.join(builds)} "
            f"&& pip install {keep} (the s3-ray extras: dense = faiss-cpu, dense-gpu = faiss-gpu)")


@functools.cache
def import_faiss() -> Any:
    """The faiss module, after checking that exactly one build is installed; an error says how to
    install it when none is (it comes with an optional extra)."""
    require_one_build(installed_builds())
    try:
        import faiss
    except ImportError as err:
        raise ImportError("dense retrieval needs faiss: pip install 's3-ray[dense]' (faiss-cpu), or "
                          "'s3-ray[dense-gpu]' (faiss-gpu) on a CUDA host") from err
    return faiss


def faiss_gpus(faiss: Any) -> int | None:
    """GPUs the faiss module can use: None for a CPU build (no GPU support compiled in)."""
    if not hasattr(faiss, "StandardGpuResources"):
        return None
    return int(faiss.get_num_gpus())


def cuda_device_count() -> int:
    """GPUs CUDA shows this process (after CUDA_VISIBLE_DEVICES); 0 with a CPU build of torch."""
    import torch

    return int(torch.cuda.device_count())


def gpus_for_shards(faiss_gpu: FaissGpu, faiss_gpu_count: int | None, visible_gpus: Callable[[], int],
                    hnsw: bool) -> int:
    """How many GPUs to spread the shards over (0: host memory), or FaissBuildError.

    `faiss_gpu_count` is `faiss_gpus(faiss)` (None: CPU build); `visible_gpus` (CUDA's count) is
    asked only when faiss would use no GPU, to say why. The module docstring has the rules.

    >>> gpus_for_shards("auto", 4, lambda: 4, hnsw=False), gpus_for_shards("auto", 4, lambda: 4, hnsw=True)
    (4, 0)
    >>> gpus_for_shards("auto", None, lambda: 0, hnsw=False), gpus_for_shards(False, 4, lambda: 4, hnsw=False)
    (0, 0)
    """
    if faiss_gpu is False:
        return 0
    required = faiss_gpu is True
    if hnsw:
        if required:
            raise FaissBuildError("retrieval.faiss_gpu: true, but faiss cannot run an hnsw index on a GPU; use "
                                  "retrieval.index_type flat or ivfpq, or retrieval.faiss_gpu: auto to keep "
                                  "hnsw in host memory")
        return 0
    if faiss_gpu_count is None:
        visible = visible_gpus()
        if visible and required:
            raise FaissBuildError(f"retrieval.faiss_gpu: true and CUDA shows {visible} GPU(s), but the installed "
                                  f"faiss is a CPU build (faiss-cpu, the `dense` extra). Install the GPU build: "
                                  f"{INSTALL_GPU}; or set retrieval.faiss_gpu: auto to search in host memory")
        if required:
            raise FaissBuildError("retrieval.faiss_gpu: true, but no GPU is visible to this process and the "
                                  "installed faiss is a CPU build. On a GPU node install the GPU build "
                                  f"({INSTALL_GPU}) and give the retriever a GPU (serve.retriever_gpus > 0); "
                                  "or set retrieval.faiss_gpu: auto (GPU when there is one) or false")
        if visible:
            log.warning("CUDA shows %d GPU(s), but the installed faiss is a CPU build, so the dense index is "
                        "searched in host memory (retrieval.faiss_gpu: auto). For GPU search: %s; to keep "
                        "it on CPU without this warning, set retrieval.faiss_gpu: false", visible, INSTALL_GPU)
        return 0
    if faiss_gpu_count == 0:
        visible = visible_gpus()
        seen = (f"CUDA shows {visible} GPU(s) but faiss (GPU build) sees none of them: check that its CUDA 12 "
                "libraries load (python -c 'import faiss; print(faiss.get_num_gpus())')" if visible
                else "faiss (GPU build) sees no GPU in this process")
        if required:
            raise FaissBuildError(f"retrieval.faiss_gpu: true, but {seen}. Give the retriever a GPU "
                                  "(serve.retriever_gpus > 0 for the Serve app; CUDA_VISIBLE_DEVICES must not be "
                                  "empty) or set retrieval.faiss_gpu: auto or false")
        if visible:
            log.warning("%s; the dense index is searched in host memory (retrieval.faiss_gpu: auto)", seen)
        return 0
    return faiss_gpu_count


FAISS_SCRATCH_BYTES = 1536 << 20
"""Temporary memory a `StandardGpuResources` reserves on a GPU of more than 8 GiB (faiss' default)."""

GIB = float(1 << 30)


def gpu_bytes_per_vector(index: Any, fp16: bool) -> int:
    """Bytes one vector of `index` takes on a GPU: a Flat index stores it (fp16: 2 bytes a
    dimension, else 4); an IVF index its code plus a 64-bit id.

    >>> import types
    >>> flat = types.SimpleNamespace(d=768)
    >>> gpu_bytes_per_vector(flat, fp16=True), gpu_bytes_per_vector(flat, fp16=False)
    (1536, 3072)
    >>> gpu_bytes_per_vector(types.SimpleNamespace(d=768, nlist=1024, code_size=48), fp16=True)
    56
    """
    if hasattr(index, "nlist"):
        return int(index.code_size) + 8
    return int(index.d) * (2 if fp16 else 4)


def gpu_free_bytes(n_gpus: int) -> list[int]:
    """Free memory of each of the first `n_gpus` GPUs this process sees (CUDA's numbering, as faiss')."""
    import torch

    return [int(torch.cuda.mem_get_info(i)[0]) for i in range(n_gpus)]


def check_gpu_room(need: Sequence[int], free: Sequence[int]) -> None:
    """Refuse to copy an index to GPUs when a GPU lacks room for its part (`need[i]` bytes, plus
    faiss' scratch memory): raised before any copy, so a replica fails in one line instead of a
    CUDA out-of-memory half way through a 30 GiB copy.

    >>> check_gpu_room([10 << 30], [24 << 30])
    >>> check_gpu_room([30 << 30], [24 << 30])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    s3_ray.retrieval.faiss_build.FaissBuildError: the dense index needs 31.5 GiB on GPU 0 ...
    """
    for i, (n, f) in enumerate(zip(need, free)):
        if n + FAISS_SCRATCH_BYTES > f:
            raise FaissBuildError(
                f"the dense index needs {(n + FAISS_SCRATCH_BYTES) / GIB:.1f} GiB on GPU {i} ({n / GIB:.1f} GiB of "
                f"vectors, {FAISS_SCRATCH_BYTES / GIB:.1f} GiB faiss scratch) and {f / GIB:.1f} GiB is free there: give "
                "each retriever replica more GPUs (serve.retriever_gpus; the index is split over them), keep the "
                "vectors in fp16 (retrieval.faiss_gpu_fp16: true), use retrieval.index_type ivfpq (docs/retrieval.md), "
                "or retrieval.faiss_gpu: false")
