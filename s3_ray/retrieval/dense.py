"""Dense retrieval over faiss: Flat (exact), HNSW (graph) or IVF-PQ (compressed) indexes.

IVF-PQ alone ranks by approximate (PQ) scores; with `refine` it keeps the best `k * k_factor`
PQ candidates and re-ranks them with stored vectors (faiss' refine step): `sq8` / `fp16` copies
in memory, or `mmap` = the exact fp32 vectors in the index file, memory-mapped when the index
is opened, so only the pages a query touches are read. `opq` adds a learned rotation before PQ.

The corpus embeddings are kept as `embeddings.npy` (plain numpy, never pickle) so another index
type can be built later without re-encoding. The rows can be split into `num_shards` contiguous
ranges, one faiss index each; a query searches every shard and the per-shard top-k lists are
merged, so an index larger than one device's memory can be spread over several (see
`faiss_build` for when `faiss_gpu` puts them on GPUs; else all in host memory). On GPUs the
vectors are held in fp16 (`GpuClonerOptions.useFloat16`, `faiss_gpu_fp16`): with at least as
many shard files as GPUs the files go round-robin, one GPU each; with fewer, every file is
split over all the GPUs (`index_cpu_to_all_gpus` with `shard=True`), so a replica given N GPUs
holds 1/N of the index on each. The bytes each GPU gets are checked against its free memory
before anything is copied. faiss is imported only when an index is built or opened.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from s3_ray.config import FaissGpu
from s3_ray.data.corpus import read_corpus, write_corpus
from s3_ray.retrieval.encoders import Encoder
from s3_ray.retrieval.faiss_build import (check_gpu_room, cuda_device_count, faiss_gpus, gpu_bytes_per_vector,
                                          gpu_free_bytes, gpus_for_shards, import_faiss)
from s3_ray.types import Passage, SearchHit

PASSAGES_FILE = "passages.jsonl"
EMBEDDINGS_FILE = "embeddings.npy"
META_FILE = "dense.json"
# faiss index_factory suffix of each refine kind; `mmap` stores exact fp32 vectors (IndexRefineFlat)
# that `DenseRetriever.load` memory-maps instead of reading into memory.
REFINE_SUFFIX = {"none": "", "sq8": ",Refine(SQ8)", "fp16": ",Refine(SQfp16)", "mmap": ",RFlat"}


@dataclass(frozen=True)
class FaissParams:
    """Build-time parameters of one index type (what the manifest records)."""

    index_type: str = "flat"
    num_shards: int = 1
    hnsw_m: int = 32
    hnsw_ef_construction: int = 80
    ivf_nlist: int = 1024
    pq_m: int = 48
    pq_nbits: int = 8
    refine: str = "none"
    opq: bool = False

    def as_dict(self) -> dict[str, Any]:
        """Only the fields that matter for this index type.

        >>> FaissParams("hnsw", hnsw_m=16).as_dict()
        {'index_type': 'hnsw', 'num_shards': 1, 'hnsw_m': 16, 'hnsw_ef_construction': 80}
        >>> FaissParams("ivfpq", refine="fp16").as_dict()["refine"]
        'fp16'
        """
        keep = {"flat": (), "hnsw": ("hnsw_m", "hnsw_ef_construction"),
                "ivfpq": ("ivf_nlist", "pq_m", "pq_nbits")}[self.index_type]
        d = asdict(self)
        out = {k: v for k, v in d.items() if k in ("index_type", "num_shards") or k in keep}
        if self.index_type == "ivfpq":  # only when set: manifests written before these fields stay valid
            out |= {k: d[k] for k, default in (("refine", "none"), ("opq", False)) if d[k] != default}
        return out

    def factory_string(self) -> str:
        """The faiss `index_factory` description of an ivfpq index with OPQ and/or refine.

        >>> FaissParams("ivfpq", ivf_nlist=1024, pq_m=48, refine="fp16", opq=True).factory_string()
        'OPQ48,IVF1024,PQ48x8,Refine(SQfp16)'
        """
        return (f"{f'OPQ{self.pq_m},' if self.opq else ''}IVF{self.ivf_nlist},PQ{self.pq_m}x{self.pq_nbits}"
                f"{REFINE_SUFFIX[self.refine]}")


def shard_bounds(n: int, num_shards: int) -> list[tuple[int, int]]:
    """Contiguous row ranges of near-equal size.

    >>> shard_bounds(10, 3)
    [(0, 3), (3, 7), (7, 10)]
    """
    if num_shards < 1 or num_shards > n:
        raise ValueError(f"num_shards must be in 1..{n} (the number of passages), got {num_shards}")
    edges = np.linspace(0, n, num_shards + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


def merge_topk(scores: Sequence[np.ndarray], ids: Sequence[np.ndarray], offsets: Sequence[int],
               k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-shard (n_queries, k_i) results into global top-k; faiss' -1 (no hit) is dropped
    (its score becomes -inf and its id -1). Ties keep the lower global row first.

    >>> s, i = merge_topk([np.array([[0.9, 0.1]]), np.array([[0.5, 0.4]])],
    ...                   [np.array([[1, 0]]), np.array([[0, -1]])], [0, 10], 3)
    >>> s.round(2).tolist(), i.tolist()
    ([[0.9, 0.5, 0.1]], [[1, 10, 0]])
    """
    all_ids = np.concatenate([np.where(i >= 0, i + off, -1) for i, off in zip(ids, offsets)], axis=1)
    all_scores = np.concatenate([np.where(i >= 0, s, -np.inf) for s, i in zip(scores, ids)], axis=1)
    order = np.lexsort((np.where(all_ids < 0, np.iinfo(np.int64).max, all_ids), -all_scores), axis=1)[:, :k]
    return np.take_along_axis(all_scores, order, 1), np.take_along_axis(all_ids, order, 1)


def _check_buildable(p: FaissParams, n_rows: int, dim: int) -> None:
    if p.refine not in REFINE_SUFFIX:
        raise ValueError(f"unknown retrieval.pq_refine {p.refine!r}; expected one of {', '.join(REFINE_SUFFIX)}")
    if p.index_type == "ivfpq":
        if dim % p.pq_m:
            raise ValueError(f"retrieval.pq_m={p.pq_m} must divide the embedding dim {dim}")
        need = max(p.ivf_nlist, 2 ** p.pq_nbits)
        if n_rows < need:
            raise ValueError(f"ivfpq needs at least max(retrieval.ivf_nlist, 2**retrieval.pq_nbits) = {need} "
                             f"passages per shard to train, a shard has {n_rows}; lower ivf_nlist/pq_nbits "
                             "or num_shards, or use index_type flat/hnsw")


def build_faiss_index(vectors: np.ndarray, p: FaissParams) -> Any:
    """One inner-product faiss index over unit vectors (trained first where the type needs it)."""
    faiss = import_faiss()

    x = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = x.shape
    _check_buildable(p, n, dim)
    if p.index_type == "flat":
        index = faiss.IndexFlatIP(dim)
    elif p.index_type == "hnsw":
        index = faiss.IndexHNSWFlat(dim, p.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = p.hnsw_ef_construction
    elif p.index_type == "ivfpq" and (p.refine != "none" or p.opq):
        index = faiss.index_factory(dim, p.factory_string(), faiss.METRIC_INNER_PRODUCT)
        index.train(x)
    elif p.index_type == "ivfpq":
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFPQ(quantizer, dim, p.ivf_nlist, p.pq_m, p.pq_nbits, faiss.METRIC_INNER_PRODUCT)
        index.train(x)
    else:
        raise ValueError(f"unknown retrieval.index_type {p.index_type!r}; expected flat, hnsw or ivfpq")
    index.add(x)
    return index


def set_search_params(index: Any, ef_search: int, nprobe: int, k_factor: int = 8) -> None:
    """Apply search-time knobs (HNSW efSearch, IVF nprobe, refine k_factor) to a CPU index."""
    faiss = import_faiss()

    if hasattr(index, "k_factor"):
        index.k_factor = k_factor
    if hasattr(index, "hnsw"):
        index.hnsw.efSearch = ef_search
    base = faiss.downcast_index(index.base_index) if hasattr(index, "base_index") else index  # refine wraps IVF
    ivf = faiss.try_extract_index_ivf(base)
    if ivf is not None:
        ivf.nprobe = nprobe


def build_shards(embeddings: np.ndarray, params: FaissParams) -> tuple[list[Any], list[int]]:
    """One faiss index per row range; returns (shards, first global row of each)."""
    if len(embeddings) == 0:
        raise ValueError("cannot build a dense index over an empty corpus")
    bounds = shard_bounds(len(embeddings), params.num_shards)
    for a, b in bounds:  # fail before spending time on the first shard
        _check_buildable(params, b - a, embeddings.shape[1])
    return [build_faiss_index(embeddings[a:b], params) for a, b in bounds], [a for a, _ in bounds]


def save_dense(directory: str | os.PathLike[str], passages: Sequence[Passage], shards: Sequence[Any],
               offsets: Sequence[int], embeddings: np.ndarray | None = None) -> None:
    """Write a dense index folder: passages, shard files (faiss' own format), embeddings.npy, dense.json."""
    faiss = import_faiss()

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    write_corpus(d / PASSAGES_FILE, passages)
    if embeddings is not None:
        np.save(d / EMBEDDINGS_FILE, np.asarray(embeddings, dtype=np.float32), allow_pickle=False)
    for i, shard in enumerate(shards):
        faiss.write_index(shard, str(d / f"shard_{i:03d}.faiss"))
    meta = {"dim": int(shards[0].d), "offsets": list(offsets), "sizes": [int(s.ntotal) for s in shards]}
    (d / META_FILE).write_text(json.dumps(meta))


def load_embeddings(directory: str | os.PathLike[str]) -> np.ndarray | None:
    """The saved corpus embeddings (memory-mapped), or None when the folder has none."""
    path = Path(directory) / EMBEDDINGS_FILE
    return np.load(path, mmap_mode="r", allow_pickle=False) if path.is_file() else None


def _gpus_for(shard: Any, faiss_gpu: FaissGpu, faiss: Any) -> int:
    """GPUs for shards like this one; a refined IVF-PQ index (faiss has no GPU refine) stays in host memory."""
    from s3_ray.retrieval.faiss_build import FaissBuildError

    if hasattr(shard, "k_factor"):
        if faiss_gpu is True:
            raise FaissBuildError("retrieval.faiss_gpu: true, but an ivfpq index with retrieval.pq_refine runs in "
                                  "host memory only; set retrieval.faiss_gpu: auto or false, or pq_refine: none")
        return 0
    return gpus_for_shards(faiss_gpu, faiss_gpus(faiss), cuda_device_count, hnsw=hasattr(shard, "hnsw"))


class DenseRetriever:
    """Encoder + one or more faiss shards; scores are cosine similarities (higher is better)."""

    def __init__(self, passages: Sequence[Passage], shards: Sequence[Any], offsets: Sequence[int],
                 encoder: Encoder) -> None:
        total = sum(int(s.ntotal) for s in shards)
        if total != len(passages):
            raise ValueError(f"faiss shards hold {total} vectors but {len(passages)} passages were given")
        if any(int(s.d) != encoder.dim for s in shards):
            raise ValueError(f"index dim {shards[0].d} != encoder dim {encoder.dim}: built with another encoder")
        self._passages = list(passages)
        self._shards = list(shards)
        self._offsets = list(offsets)
        self.encoder = encoder
        self._gpu: Any = None

    @classmethod
    def build(cls, passages: Sequence[Passage], embeddings: np.ndarray, encoder: Encoder,
              params: FaissParams) -> DenseRetriever:
        """Index precomputed passage embeddings (row i = passages[i])."""
        if embeddings.shape != (len(passages), encoder.dim):
            raise ValueError(f"embeddings have shape {embeddings.shape}, expected ({len(passages)}, {encoder.dim})")
        shards, offsets = build_shards(embeddings, params)
        return cls(passages, shards, offsets, encoder)

    def save(self, directory: str | os.PathLike[str], embeddings: np.ndarray | None = None) -> None:
        """Write shards (faiss' own format), the passages, and the embeddings when given."""
        save_dense(directory, self._passages, self._shards, self._offsets, embeddings)

    @classmethod
    def load(cls, directory: str | os.PathLike[str], encoder: Encoder, ef_search: int = 64, nprobe: int = 16,
             faiss_gpu: FaissGpu = "auto", k_factor: int = 8, mmap: bool = False,
             fp16: bool = True) -> DenseRetriever:
        """Open what `save` wrote; Flat/IVF shards go to GPUs as `faiss_gpu` decides
        (`faiss_build.gpus_for_shards`: "auto", True = required, False = host memory), their
        vectors in fp16 unless `fp16` is false (see the module docstring for how they are spread).
        `mmap` memory-maps the stored vectors (the `mmap` refine kind) instead of reading them;
        refined indexes stay in host memory."""
        faiss = import_faiss()

        d = Path(directory)
        if not (d / META_FILE).is_file():
            raise FileNotFoundError(f"not a dense index folder (no {META_FILE}): {d}")
        meta = json.loads((d / META_FILE).read_text())
        shards = []
        n_gpus = 0
        for i, size in enumerate(meta["sizes"]):
            path = d / f"shard_{i:03d}.faiss"
            if not path.is_file():
                raise FileNotFoundError(f"{d}: shard file {path.name} is missing")
            shard = faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC if mmap else 0)
            if int(shard.ntotal) != size:
                raise ValueError(f"{path}: holds {shard.ntotal} vectors, {META_FILE} says {size}")
            if i == 0:  # all shards have one type; refuse before reading the rest of a large index
                n_gpus = _gpus_for(shard, faiss_gpu, faiss)
            set_search_params(shard, ef_search, nprobe, k_factor)
            shards.append(shard)
        retriever = cls(read_corpus(d / PASSAGES_FILE), shards, meta["offsets"], encoder)
        if n_gpus:
            retriever._to_gpus(n_gpus, fp16)
        return retriever

    def _to_gpus(self, n_gpus: int, fp16: bool = True) -> None:
        """Copy the shards to `n_gpus` GPUs: round-robin when there are at least as many shard
        files as GPUs, else each file split over all of them; vectors in fp16 when `fp16`."""
        faiss = import_faiss()

        per_vector = gpu_bytes_per_vector(self._shards[0], fp16)
        spread = len(self._shards) < n_gpus
        need = [0] * n_gpus
        for i, shard in enumerate(self._shards):
            size = int(shard.ntotal) * per_vector
            if spread:
                for g in range(n_gpus):
                    need[g] += -(-size // n_gpus)
            else:
                need[i % n_gpus] += size
        check_gpu_room(need, gpu_free_bytes(n_gpus))
        if spread:
            co = faiss.GpuMultipleClonerOptions()
            co.useFloat16 = fp16
            co.shard = True  # rows split over the GPUs (not replicated); results merged by faiss
            self._gpu = []
            self._shards = [faiss.index_cpu_to_all_gpus(s, co=co, ngpu=n_gpus) for s in self._shards]
            return
        co = faiss.GpuClonerOptions()
        co.useFloat16 = fp16
        self._gpu = [faiss.StandardGpuResources() for _ in range(n_gpus)]
        self._shards = [faiss.index_cpu_to_gpu(self._gpu[i % n_gpus], i % n_gpus, s, co)
                        for i, s in enumerate(self._shards)]

    @property
    def on_gpu(self) -> bool:
        return self._gpu is not None

    def __len__(self) -> int:
        return len(self._passages)

    @property
    def passages(self) -> list[Passage]:
        return list(self._passages)

    def passage(self, row: int) -> Passage:
        """The passage at `row` of this index."""
        return self._passages[row]

    @property
    def num_shards(self) -> int:
        return len(self._shards)

    def search_vectors(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, global row ids) for query vectors, merged over shards; -1 marks no hit."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        kk = min(k, len(self._passages))
        results = [shard.search(q, min(kk, int(shard.ntotal))) for shard in self._shards]
        if len(results) == 1:
            return results[0]
        return merge_topk([r[0] for r in results], [r[1] for r in results], self._offsets, kk)

    def search(self, queries: list[str], k: int) -> list[list[SearchHit]]:
        """Encode the batch once, search every shard, merge; empty queries get no hits."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if isinstance(queries, str) or not all(isinstance(q, str) for q in queries):
            raise TypeError("queries must be a list of strings")
        out: list[list[SearchHit]] = [[] for _ in queries]
        live = [i for i, q in enumerate(queries) if q.strip()]
        if not live:
            return out
        scores, ids = self.search_vectors(self.encoder.encode_queries([queries[i] for i in live]), k)
        for row, i in enumerate(live):
            out[i] = [SearchHit(self._passages[int(j)], float(s)) for s, j in zip(scores[row], ids[row]) if j >= 0]
        return out
