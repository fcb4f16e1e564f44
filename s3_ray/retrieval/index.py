"""Build an index folder once and describe it with a manifest; load it only if it matches.

The manifest records the corpus hash and the parameters, so a rebuild with nothing changed is a
no-op, and a retriever is never served from an index built for another corpus or other params.
The folder is written beside its final place and renamed in, so a crash leaves no half index.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from s3_ray.config import RetrievalConfig
from s3_ray.data.corpus import read_corpus
from s3_ray.data.jsonl import write_json
from s3_ray.retrieval.base import Retriever
from s3_ray.retrieval.dense import FaissParams
from s3_ray.retrieval.encoders import Encoder, encoder_spec
from s3_ray.types import Passage

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
BM25_SUBDIR, DENSE_SUBDIR = "bm25", "dense"

PassageEncodeFn = Callable[[list[str]], np.ndarray]


class IndexMismatchError(RuntimeError):
    """The index folder is missing, unreadable, or was built with other settings."""


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format_version: int
    backend: str
    params: dict[str, Any]
    corpus_path: str
    corpus_sha256: str
    n_passages: int
    build_seconds: float
    index_bytes: int
    created_at: float
    dim: int | None = Field(None, description="Embedding dimension (dense and hybrid indexes).")
    rebuilt: bool = Field(True, exclude=True, description="False when build_index found it up to date.")

    def summary(self) -> str:
        """One line for logs.

        >>> Manifest(format_version=1, backend="bm25", params={"k1": 0.9}, corpus_path="c.jsonl",
        ...          corpus_sha256="ab" * 32, n_passages=3, build_seconds=0.01, index_bytes=2048,
        ...          created_at=0.0, rebuilt=False).summary()
        'bm25 index of 3 passages (c.jsonl, sha256 abababababab), 2.0 KiB, built in 0.01 s, up to date'
        """
        state = "rebuilt" if self.rebuilt else "up to date"
        return (f"{self.backend} index of {self.n_passages} passages ({self.corpus_path}, sha256 "
                f"{self.corpus_sha256[:12]}), {self.index_bytes / 1024:.1f} KiB, built in "
                f"{self.build_seconds:.2f} s, {state}")


def file_sha256(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _bm25_params(cfg: RetrievalConfig) -> dict[str, Any]:
    params: dict[str, Any] = {"k1": cfg.k1, "b": cfg.b}
    if cfg.bm25_impl != "bm25s":
        params["impl"] = cfg.bm25_impl
    return params


def faiss_params(cfg: RetrievalConfig) -> FaissParams:
    return FaissParams(index_type=cfg.index_type, num_shards=cfg.num_shards, hnsw_m=cfg.hnsw_m,
                       hnsw_ef_construction=cfg.hnsw_ef_construction, ivf_nlist=cfg.ivf_nlist,
                       pq_m=cfg.pq_m, pq_nbits=cfg.pq_nbits)


def _dense_params(cfg: RetrievalConfig) -> dict[str, Any]:
    return {"encoder": encoder_spec(cfg).as_dict(), **faiss_params(cfg).as_dict()}


def index_params(cfg: RetrievalConfig) -> dict[str, Any]:
    """The build-time parameters recorded in (and compared against) the manifest."""
    if cfg.backend == "bm25":
        return _bm25_params(cfg)
    if cfg.backend == "dense":
        return _dense_params(cfg)
    if cfg.backend == "hybrid":
        return {"bm25": _bm25_params(cfg), "dense": _dense_params(cfg)}
    raise ValueError(f"unknown retrieval backend {cfg.backend!r}")


def _dense_subdir(backend: str) -> str:
    return DENSE_SUBDIR if backend == "hybrid" else ""


def read_manifest(index_dir: str | os.PathLike[str]) -> Manifest:
    path = Path(index_dir) / MANIFEST_FILE
    if not path.is_file():
        raise IndexMismatchError(f"no index at {Path(index_dir)} (missing {MANIFEST_FILE}); "
                                 "build it with `python -m jobs.build_index`")
    try:
        return Manifest.model_validate(json.loads(path.read_text()) | {"rebuilt": False})
    except (ValueError, TypeError) as err:
        raise IndexMismatchError(f"{path}: unreadable manifest ({err})") from None


def _dir_bytes(d: Path) -> int:
    return sum(f.stat().st_size for f in d.rglob("*") if f.is_file())


def build_index(corpus_path: str | os.PathLike[str], cfg: RetrievalConfig, progress: bool = True, *,
                encoder: Encoder | None = None, encode_passages: PassageEncodeFn | None = None) -> Manifest:
    """Build `cfg.index_dir` from the corpus, or return its manifest when it is already current.

    Dense/hybrid: passage embeddings come from `encode_passages` (e.g. Ray tasks across workers),
    else from `encoder` (else the configured one, loaded here), in process. Embeddings of the
    previous index are reused when the corpus and the encoder settings are unchanged.
    """
    corpus = Path(corpus_path)
    if not corpus.is_file():
        raise FileNotFoundError(f"corpus not found: {corpus}")
    sha, params = file_sha256(corpus), index_params(cfg)
    target = Path(cfg.index_dir)
    old = None
    if (target / MANIFEST_FILE).is_file():
        try:
            old = read_manifest(target)
        except IndexMismatchError:
            old = None
        if old is not None and (old.format_version, old.backend, old.params, old.corpus_sha256) == (
                FORMAT_VERSION, cfg.backend, params, sha):
            return old
    start = time.perf_counter()
    steps = tqdm(total=3, desc=f"index {corpus.name}", disable=not progress)
    passages = read_corpus(corpus)
    steps.update()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.building-", dir=target.parent))
    dim = None
    try:
        os.chmod(tmp, 0o755)  # mkdtemp creates 0700; the index is shared with other processes/users
        if cfg.backend in ("bm25", "hybrid"):
            _build_bm25(passages, cfg, tmp / (BM25_SUBDIR if cfg.backend == "hybrid" else ""))
        if cfg.backend in ("dense", "hybrid"):
            reuse = _reusable_embeddings(old, target, cfg, sha, len(passages))
            dim = _build_dense(passages, cfg, tmp / _dense_subdir(cfg.backend), reuse, encoder, encode_passages,
                               progress)
        steps.update()
        manifest = Manifest(format_version=FORMAT_VERSION, backend=cfg.backend, params=params,
                            corpus_path=str(corpus), corpus_sha256=sha, n_passages=len(passages),
                            build_seconds=round(time.perf_counter() - start, 4), index_bytes=_dir_bytes(tmp),
                            created_at=time.time(), dim=dim, rebuilt=True)
        write_json(tmp / MANIFEST_FILE, manifest.model_dump())
        _swap_in(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    steps.update()
    steps.close()
    return manifest


def _build_bm25(passages: list[Passage], cfg: RetrievalConfig, directory: Path) -> None:
    if cfg.bm25_impl == "pyserini":
        from s3_ray.retrieval.lucene import LuceneBM25Retriever

        LuceneBM25Retriever.build(passages, directory)
        return
    from s3_ray.retrieval.bm25 import BM25Retriever

    BM25Retriever.build(passages, k1=cfg.k1, b=cfg.b, progress=False).save(directory)


def _reusable_embeddings(old: Manifest | None, target: Path, cfg: RetrievalConfig, sha: str,
                         n: int) -> np.ndarray | None:
    """Embeddings of the current index, if they were made from this corpus by this encoder setup."""
    if old is None or old.corpus_sha256 != sha or old.format_version != FORMAT_VERSION:
        return None
    old_dense = old.params.get("dense", old.params) if old.backend in ("dense", "hybrid") else {}
    if old_dense.get("encoder") != encoder_spec(cfg).as_dict():
        return None
    from s3_ray.retrieval.dense import load_embeddings

    emb = load_embeddings(target / _dense_subdir(old.backend))
    return np.array(emb) if emb is not None and emb.shape[0] == n else None


def _encode_in_process(encoder: Encoder, texts: list[str], batch: int, progress: bool) -> np.ndarray:
    chunks = []
    for start in tqdm(range(0, len(texts), batch), desc="encode passages", unit="batch", disable=not progress):
        chunks.append(encoder.encode_passages(texts[start:start + batch]))
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


def _build_dense(passages: list[Passage], cfg: RetrievalConfig, directory: Path, reuse: np.ndarray | None,
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

            encoder = load_encoder(encoder_spec(cfg), cfg.encode_batch_size)
        emb = _encode_in_process(encoder, texts, cfg.encode_batch_size, progress)
    emb = _check_embeddings(emb, len(passages))
    shards, offsets = build_shards(emb, faiss_params(cfg))
    save_dense(directory, passages, shards, offsets, emb)
    return int(emb.shape[1])


def _swap_in(new: Path, target: Path) -> None:
    """Replace `target` by `new` with renames only; the old folder is deleted last."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}-{time.time_ns()}")
        os.replace(target, old)
    os.replace(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def load_retriever(cfg: RetrievalConfig, corpus_path: str | os.PathLike[str] | None = None, *,
                   encoder: Encoder | None = None) -> Retriever:
    """Open the index at `cfg.index_dir`; it must match the configured backend and parameters
    (and the corpus, when `corpus_path` is given). Dense/hybrid load the configured encoder
    unless one is passed."""
    manifest = read_manifest(cfg.index_dir)
    if manifest.format_version != FORMAT_VERSION:
        raise IndexMismatchError(f"{cfg.index_dir}: index format {manifest.format_version}, "
                                 f"this version reads {FORMAT_VERSION}; rebuild it")
    if manifest.backend != cfg.backend or manifest.params != index_params(cfg):
        raise IndexMismatchError(f"{cfg.index_dir}: built as {manifest.backend} {manifest.params}, config asks for "
                                 f"{cfg.backend} {index_params(cfg)}; rebuild it")
    if corpus_path is not None and file_sha256(corpus_path) != manifest.corpus_sha256:
        raise IndexMismatchError(f"{cfg.index_dir}: built from another corpus than {corpus_path}; rebuild it")
    root = Path(cfg.index_dir)
    parts: list[Any] = []
    if cfg.backend in ("bm25", "hybrid"):
        parts.append(_load_bm25(cfg, root / (BM25_SUBDIR if cfg.backend == "hybrid" else "")))
    if cfg.backend in ("dense", "hybrid"):
        from s3_ray.retrieval.dense import DenseRetriever
        from s3_ray.retrieval.encoders import load_encoder

        enc = encoder if encoder is not None else load_encoder(encoder_spec(cfg), cfg.encode_batch_size)
        if manifest.dim is not None and enc.dim != manifest.dim:
            raise IndexMismatchError(f"{cfg.index_dir}: built with {manifest.dim}-dim embeddings, the encoder "
                                     f"gives {enc.dim}")
        parts.append(DenseRetriever.load(root / _dense_subdir(cfg.backend), enc, ef_search=cfg.hnsw_ef_search,
                                         nprobe=cfg.ivf_nprobe, faiss_gpu=cfg.faiss_gpu))
    for part in parts:
        if len(part) != manifest.n_passages:
            raise IndexMismatchError(f"{cfg.index_dir}: manifest says {manifest.n_passages} passages, "
                                     f"found {len(part)} in the {type(part).__name__} index")
    if cfg.backend == "hybrid":
        from s3_ray.retrieval.hybrid import HybridRetriever

        return HybridRetriever(parts, rrf_k=cfg.rrf_k, fusion_depth=cfg.fusion_depth)
    return parts[0]


def _load_bm25(cfg: RetrievalConfig, directory: Path) -> Any:
    if cfg.bm25_impl == "pyserini":
        from s3_ray.retrieval.lucene import LuceneBM25Retriever

        return LuceneBM25Retriever(directory, k1=cfg.k1, b=cfg.b)
    from s3_ray.retrieval.bm25 import BM25Retriever

    return BM25Retriever.load(directory)
