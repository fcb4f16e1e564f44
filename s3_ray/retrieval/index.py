"""Build an index folder once and describe it with a manifest; load it only if it matches.

The manifest (`s3_ray.retrieval.manifest`) records the corpus hash and the parameters, so a
rebuild with nothing changed is a no-op, and a retriever is never served from an index built for
another corpus or other params. The folder is written beside its final place and renamed in, so
a crash leaves no half index. With `retrieval.replica_shards > 1` the index is a folder of shard
folders (`s3_ray.retrieval.shards`), each with its own manifest.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from s3_ray.config import RetrievalConfig
from s3_ray.data.corpus import read_corpus
from s3_ray.retrieval.base import Retriever
from s3_ray.retrieval.encoders import Encoder
from s3_ray.retrieval.folder import (
    BM25_SUBDIR,
    DENSE_SUBDIR,
    PassageEncodeFn,
    bm25_subdir,
    build_bm25,
    build_dense,
    check_manifest,
    dense_subdir,
    faiss_params,
    index_params,
    load_parts,
    reusable_embeddings,
    shard_params,
)
from s3_ray.retrieval.manifest import (
    FORMAT_VERSION,
    MANIFEST_FILE,
    IndexMismatchError,
    Manifest,
    dir_bytes,
    file_sha256,
    read_manifest,
    swap_in,
    write_manifest,
)
from s3_ray.retrieval.shard_merge import load_sharded_retriever
from s3_ray.retrieval.shards import ShardMap, build_sharded_index

__all__ = ["BM25_SUBDIR", "DENSE_SUBDIR", "FORMAT_VERSION", "MANIFEST_FILE", "IndexMismatchError", "Manifest",
           "PassageEncodeFn", "build_index", "faiss_params", "file_sha256", "index_params", "load_retriever",
           "read_manifest", "shard_params"]


def build_index(corpus_path: str | os.PathLike[str], cfg: RetrievalConfig, progress: bool = True, *,
                encoder: Encoder | None = None, encode_passages: PassageEncodeFn | None = None,
                shard_map: ShardMap | None = None) -> Manifest:
    """Build `cfg.index_dir` from the corpus, or return its manifest when it is already current.

    Dense/hybrid: passage embeddings come from `encode_passages` (e.g. Ray tasks across workers),
    else from `encoder` (else the configured one, loaded here), in process. Embeddings of the
    previous index are reused when the corpus and the encoder settings are unchanged. A sharded
    index (`replica_shards > 1`) builds its shards through `shard_map` (Ray tasks in
    `s3_ray.retrieval.ray_shards`; default: one after another in this process).
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
    if cfg.replica_shards > 1:
        return build_sharded_index(corpus, sha, cfg, shard_map=shard_map, encoder=encoder, progress=progress)
    start = time.perf_counter()
    from s3_ray.console import active

    steps = active().bar(3, f"index {corpus.name} (read, build, save)", unit="step", enabled=progress)
    passages = read_corpus(corpus)
    steps.update()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.building-", dir=target.parent))
    dim = None
    try:
        os.chmod(tmp, 0o755)  # mkdtemp creates 0700; the index is shared with other processes/users
        if cfg.backend in ("bm25", "hybrid"):
            build_bm25(passages, cfg, tmp / bm25_subdir(cfg.backend))
        if cfg.backend in ("dense", "hybrid"):
            same_corpus = old is not None and old.corpus_sha256 == sha and old.shards is None
            reuse = reusable_embeddings(old if same_corpus else None, target, cfg, len(passages))
            dim = build_dense(passages, cfg, tmp / dense_subdir(cfg.backend), reuse, encoder, encode_passages,
                              progress)
        steps.update()
        manifest = Manifest(format_version=FORMAT_VERSION, backend=cfg.backend, params=params,
                            corpus_path=str(corpus), corpus_sha256=sha, n_passages=len(passages),
                            build_seconds=round(time.perf_counter() - start, 4), index_bytes=dir_bytes(tmp),
                            created_at=time.time(), dim=dim, rebuilt=True)
        write_manifest(tmp, manifest)
        swap_in(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    steps.update()
    steps.close()
    return manifest


def load_retriever(cfg: RetrievalConfig, corpus_path: str | os.PathLike[str] | None = None, *,
                   encoder: Encoder | None = None) -> Retriever:
    """Open the index at `cfg.index_dir`; it must match the configured backend and parameters
    (and the corpus, when `corpus_path` is given). Dense/hybrid load the configured encoder
    unless one is passed. A sharded index opens every shard in this process and merges their
    top-k (the Serve app spreads them over replicas instead)."""
    manifest = read_manifest(cfg.index_dir)
    check_manifest(manifest, cfg, cfg.index_dir, index_params(cfg))
    if corpus_path is not None and file_sha256(corpus_path) != manifest.corpus_sha256:
        raise IndexMismatchError(f"{cfg.index_dir}: built from another corpus than {corpus_path}; rebuild it")
    if cfg.replica_shards > 1:
        return load_sharded_retriever(cfg, manifest, encoder=encoder)
    parts: list[Any] = load_parts(cfg, Path(cfg.index_dir), manifest, encoder)
    if cfg.backend == "hybrid":
        from s3_ray.retrieval.hybrid import HybridRetriever

        return HybridRetriever(parts, rrf_k=cfg.rrf_k, fusion_depth=cfg.fusion_depth)
    return parts[0]
