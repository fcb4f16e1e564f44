"""One index folder: its build parameters, building its parts (BM25, dense) and opening them.

A whole index is one such folder; a sharded index is one per shard (`s3_ray.retrieval.shards`).
faiss, the encoder and pyserini are imported only where a part that needs them is built or opened.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from s3_ray.config import RetrievalConfig
from s3_ray.retrieval.bm25_stats import CorpusStats
from s3_ray.retrieval.dense import FaissParams
from s3_ray.retrieval.encoders import Encoder, encoder_spec
from s3_ray.retrieval.manifest import FORMAT_VERSION, IndexMismatchError, Manifest
from s3_ray.types import Passage

BM25_SUBDIR, DENSE_SUBDIR = "bm25", "dense"

PassageEncodeFn = Callable[[list[str]], np.ndarray]


def _bm25_params(cfg: RetrievalConfig) -> dict[str, Any]:
    params: dict[str, Any] = {"k1": cfg.k1, "b": cfg.b}
    if cfg.bm25_impl != "bm25s":
        params["impl"] = cfg.bm25_impl
    return params


def faiss_params(cfg: RetrievalConfig) -> FaissParams:
    return FaissParams(index_type=cfg.index_type, num_shards=cfg.num_shards, hnsw_m=cfg.hnsw_m,
                       hnsw_ef_construction=cfg.hnsw_ef_construction, ivf_nlist=cfg.ivf_nlist,
                       pq_m=cfg.pq_m, pq_nbits=cfg.pq_nbits, refine=cfg.pq_refine, opq=cfg.opq)


def _dense_params(cfg: RetrievalConfig) -> dict[str, Any]:
    return {"encoder": encoder_spec(cfg).as_dict(), **faiss_params(cfg).as_dict()}


def shard_params(cfg: RetrievalConfig) -> dict[str, Any]:
    """The build parameters of one index folder: the whole index, or one of its shards."""
    if cfg.backend == "bm25":
        return _bm25_params(cfg)
    if cfg.backend == "dense":
        return _dense_params(cfg)
    if cfg.backend == "hybrid":
        return {"bm25": _bm25_params(cfg), "dense": _dense_params(cfg)}
    raise ValueError(f"unknown retrieval backend {cfg.backend!r}")


def index_params(cfg: RetrievalConfig) -> dict[str, Any]:
    """The build-time parameters recorded in (and compared against) the manifest; `replica_shards`
    only when the index is cut into shard folders (so unsharded manifests stay as they were)."""
    return shard_params(cfg) | ({"replica_shards": cfg.replica_shards} if cfg.replica_shards > 1 else {})


def dense_subdir(backend: str) -> str:
    return DENSE_SUBDIR if backend == "hybrid" else ""


def bm25_subdir(backend: str) -> str:
    return BM25_SUBDIR if backend == "hybrid" else ""


def build_bm25(passages: list[Passage], cfg: RetrievalConfig, directory: Path, stats: CorpusStats | None = None,
               tokens: Any = None) -> None:
    if cfg.bm25_impl == "pyserini":
        from s3_ray.retrieval.lucene import LuceneBM25Retriever

        LuceneBM25Retriever.build(passages, directory)
        return
    from s3_ray.retrieval.bm25 import BM25Retriever

    BM25Retriever.build(passages, k1=cfg.k1, b=cfg.b, progress=False, stats=stats, tokens=tokens).save(directory)


def reusable_embeddings(old: Manifest | None, target: Path, cfg: RetrievalConfig, n: int) -> np.ndarray | None:
    """Embeddings of the folder's current index, if its encoder setup is this one and its row count
    `n` (the caller checks that the passages are the same)."""
    if old is None or old.format_version != FORMAT_VERSION:
        return None
    old_dense = old.params.get("dense", old.params) if old.backend in ("dense", "hybrid") else {}
    if old_dense.get("encoder") != encoder_spec(cfg).as_dict():
        return None
    from s3_ray.retrieval.dense import load_embeddings

    emb = load_embeddings(target / dense_subdir(old.backend))
    return np.array(emb) if emb is not None and emb.shape[0] == n else None


def _encode_in_process(encoder: Encoder, texts: list[str], batch: int, progress: bool) -> np.ndarray:
    from s3_ray.console import active

    chunks = []
    with active().bar(len(texts), "encode passages", unit="passage", enabled=progress) as bar:
        for start in range(0, len(texts), batch):
            chunks.append(encoder.encode_passages(texts[start:start + batch]))
            bar.update(len(chunks[-1]))
    return np.concatenate(chunks)


def _check_embeddings(emb: np.ndarray, n: int) -> np.ndarray:
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] != n:
        raise ValueError(f"passage encoder returned shape {emb.shape}, expected ({n}, dim)")
    norms = np.linalg.norm(emb, axis=1)
    if not np.allclose(norms, 1.0, atol=1e-3):
        bad = int(np.argmax(np.abs(norms - 1.0)))
        raise ValueError(f"passage encoder must return unit vectors; row {bad} has norm {norms[bad]:.4f}")
    return emb


def build_dense(passages: list[Passage], cfg: RetrievalConfig, directory: Path, reuse: np.ndarray | None,
                encoder: Encoder | None, encode_passages: PassageEncodeFn | None, progress: bool) -> int:
    from s3_ray.retrieval.dense import build_shards, save_dense

    texts = [p.contents for p in passages]
    if reuse is not None:
        emb = reuse
    elif encode_passages is not None:
        emb = encode_passages(texts)
    else:
        if encoder is None:
            from s3_ray.retrieval.encoders import load_encoder

            encoder = load_encoder(encoder_spec(cfg), cfg.encode_batch_size, cfg.encoder_runtime)
        emb = _encode_in_process(encoder, texts, cfg.encode_batch_size, progress)
    emb = _check_embeddings(emb, len(passages))
    shards, offsets = build_shards(emb, faiss_params(cfg))
    save_dense(directory, passages, shards, offsets, emb)
    return int(emb.shape[1])


def check_manifest(manifest: Manifest, cfg: RetrievalConfig, where: str, params: dict[str, Any]) -> None:
    """Refuse a folder built in another format or with other parameters than `params`."""
    if manifest.format_version != FORMAT_VERSION:
        raise IndexMismatchError(f"{where}: index format {manifest.format_version}, "
                                 f"this version reads {FORMAT_VERSION}; rebuild it")
    if manifest.backend != cfg.backend or manifest.params != params:
        raise IndexMismatchError(f"{where}: built as {manifest.backend} {manifest.params}, config asks for "
                                 f"{cfg.backend} {params}; rebuild it")


def load_parts(cfg: RetrievalConfig, root: Path, manifest: Manifest, encoder: Encoder | None) -> list[Any]:
    """The folder's retrievers: BM25 and/or dense, in that order. Dense loads the configured
    encoder unless one is passed."""
    parts: list[Any] = []
    if cfg.backend in ("bm25", "hybrid"):
        parts.append(_load_bm25(cfg, root / bm25_subdir(cfg.backend)))
    if cfg.backend in ("dense", "hybrid"):
        from s3_ray.retrieval.dense import DenseRetriever
        from s3_ray.retrieval.encoders import load_encoder

        enc = encoder if encoder is not None else \
            load_encoder(encoder_spec(cfg), cfg.encode_batch_size, cfg.encoder_runtime)
        if manifest.dim is not None and enc.dim != manifest.dim:
            raise IndexMismatchError(f"{root}: built with {manifest.dim}-dim embeddings, the encoder "
                                     f"gives {enc.dim}")
        parts.append(DenseRetriever.load(root / dense_subdir(cfg.backend), enc, ef_search=cfg.hnsw_ef_search,
                                         nprobe=cfg.ivf_nprobe, faiss_gpu=cfg.faiss_gpu,
                                         k_factor=cfg.refine_k_factor, mmap=cfg.pq_refine == "mmap",
                                         fp16=cfg.faiss_gpu_fp16))
    for part in parts:
        if len(part) != manifest.n_passages:
            raise IndexMismatchError(f"{root}: manifest says {manifest.n_passages} passages, "
                                     f"found {len(part)} in the {type(part).__name__} index")
    return parts


def _load_bm25(cfg: RetrievalConfig, directory: Path) -> Any:
    if cfg.bm25_impl == "pyserini":
        from s3_ray.retrieval.lucene import LuceneBM25Retriever

        return LuceneBM25Retriever(directory, k1=cfg.k1, b=cfg.b)
    from s3_ray.retrieval.bm25 import BM25Retriever

    return BM25Retriever.load(directory)
