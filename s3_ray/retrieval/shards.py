"""A corpus cut into `retrieval.replica_shards` shard folders, each a complete index of its rows.

    index_dir/manifest.json        the whole index: corpus hash, params, and every shard's ShardInfo
    index_dir/shard_000/ ...       one index folder per contiguous row range, with its own manifest

A shard's manifest records its rows, the hash of its passages and, for BM25, the hash of the
corpus-wide statistics its scores use (`bm25_stats`): every BM25 shard is scored with the whole
corpus's document frequencies and average length, so a merged sharded search returns the scores
of the unsharded index. Building has two steps, each one task per shard through `shard_map` (Ray
tasks in `ray_shards`; default in this process): count each shard's BM25 statistics (kept in the
shard folder, reused while its passages are unchanged), then build each shard. A shard whose
passages, parameters and statistics are unchanged is not rebuilt; its manifest only takes the new
corpus hash.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from s3_ray.config import RetrievalConfig
from s3_ray.data.corpus import read_corpus
from s3_ray.retrieval.bm25_stats import CorpusStats
from s3_ray.retrieval.dense import shard_bounds
from s3_ray.retrieval.encoders import Encoder
from s3_ray.retrieval.folder import (
    bm25_subdir,
    build_bm25,
    build_dense,
    dense_subdir,
    index_params,
    reusable_embeddings,
    shard_params,
)
from s3_ray.retrieval.manifest import (
    FORMAT_VERSION,
    MANIFEST_FILE,
    IndexMismatchError,
    Manifest,
    ShardInfo,
    dir_bytes,
    read_manifest,
    swap_in,
    write_manifest,
)
from s3_ray.types import Passage

STATS_FILE = "bm25_stats.json"  # in a shard folder: that shard's own counts (summed into the corpus's)

ShardMap = Callable[[Callable[[Any], Any], Sequence[Any]], list[Any]]
"""(function, items) -> [function(item) for item in items], in order; may run them in parallel."""


def run_in_process(fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
    return [fn(item) for item in items]


def shard_dir(index_dir: str | os.PathLike[str], shard: int) -> Path:
    return Path(index_dir) / f"shard_{shard:03d}"


def passages_sha256(passages: Sequence[Passage]) -> str:
    """Hash of the passages' ids and contents, in order.

    >>> passages_sha256([Passage("a", "x")]) == passages_sha256([Passage("a", "y")])
    False
    """
    h = hashlib.sha256()
    for p in passages:
        h.update(p.id.encode() + b"\0" + p.contents.encode() + b"\1")
    return h.hexdigest()


def uses_bm25(cfg: RetrievalConfig) -> bool:
    return cfg.backend in ("bm25", "hybrid")


@dataclass(frozen=True)
class ShardJob:
    """What one task needs to count or build one shard (picklable, for Ray tasks)."""

    corpus_path: str
    corpus_sha256: str
    cfg: RetrievalConfig
    shard: int
    of: int
    rows: tuple[int, int]
    stats: CorpusStats | None = None  # the corpus's, for the build step of a BM25 shard
    encoder_factory: Callable[[], Encoder] | None = None  # None: the task loads retrieval.encoder

    def passages(self) -> list[Passage]:
        return read_corpus(self.corpus_path)[self.rows[0]:self.rows[1]]

    @property
    def folder(self) -> Path:
        return shard_dir(self.cfg.index_dir, self.shard)


def _current(job: ShardJob) -> Manifest | None:
    try:
        m = read_manifest(job.folder)
    except IndexMismatchError:
        return None
    return m if m.shard is not None else None


def count_shard(job: ShardJob) -> tuple[str, CorpusStats]:
    """Step 1 (BM25): the shard's passage hash and its own BM25 counts (reused from its folder
    while its passages are unchanged)."""
    from s3_ray.retrieval.bm25 import tokenize

    passages = job.passages()
    sha = passages_sha256(passages)
    old = _current(job)
    kept = job.folder / STATS_FILE
    if old is not None and old.shard is not None and old.shard.shard_sha256 == sha and kept.is_file():
        return sha, CorpusStats.load(kept)
    return sha, CorpusStats.of_tokens(tokenize(passages))


def build_shard(job: ShardJob) -> Manifest:
    """Step 2: the shard's folder, or only a new corpus hash in its manifest when nothing it holds changed."""
    start = time.perf_counter()
    cfg, passages = job.cfg, job.passages()
    info = ShardInfo(shard=job.shard, of=job.of, rows=job.rows, shard_sha256=passages_sha256(passages),
                     stats_sha256=job.stats.sha256() if job.stats is not None else None)
    params = shard_params(cfg)
    old = _current(job)
    if old is not None and (old.format_version, old.backend, old.params, old.shard) == (
            FORMAT_VERSION, cfg.backend, params, info):
        if old.corpus_sha256 != job.corpus_sha256 or old.corpus_path != job.corpus_path:
            old = old.model_copy(update={"corpus_sha256": job.corpus_sha256, "corpus_path": job.corpus_path})
            write_manifest(job.folder, old)
        return old.model_copy(update={"rebuilt": False})
    job.folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{job.folder.name}.building-", dir=job.folder.parent))
    dim = None
    try:
        os.chmod(tmp, 0o755)
        if uses_bm25(cfg):
            from s3_ray.retrieval.bm25 import tokenize

            tokens = tokenize(passages)
            CorpusStats.of_tokens(tokens).save(tmp / STATS_FILE)
            build_bm25(passages, cfg, tmp / bm25_subdir(cfg.backend), stats=job.stats, tokens=tokens)
        if cfg.backend in ("dense", "hybrid"):
            same = old is not None and old.shard is not None and old.shard.shard_sha256 == info.shard_sha256
            reuse = reusable_embeddings(old if same else None, job.folder, cfg, len(passages))
            encoder = job.encoder_factory() if job.encoder_factory is not None and reuse is None else None
            dim = build_dense(passages, cfg, tmp / dense_subdir(cfg.backend), reuse, encoder, None, progress=False)
        manifest = Manifest(format_version=FORMAT_VERSION, backend=cfg.backend, params=params,
                            corpus_path=job.corpus_path, corpus_sha256=job.corpus_sha256, n_passages=len(passages),
                            build_seconds=round(time.perf_counter() - start, 4), index_bytes=dir_bytes(tmp),
                            created_at=time.time(), dim=dim, shard=info, rebuilt=True)
        write_manifest(tmp, manifest)
        swap_in(tmp, job.folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def build_sharded_index(corpus: Path, corpus_sha256: str, cfg: RetrievalConfig, *, shard_map: ShardMap | None = None,
                        encoder: Encoder | None = None, progress: bool = False) -> Manifest:
    """Build (or update) every shard of `cfg.index_dir`, then its top manifest (written last).
    Each shard's task encodes its own passages with `encoder` when given, else loads retrieval.encoder."""
    start = time.perf_counter()
    run = shard_map or run_in_process
    target = Path(cfg.index_dir)
    n = len(read_corpus(corpus))  # also checks every line and that ids are unique corpus-wide
    bounds = shard_bounds(n, cfg.replica_shards)
    _clear_unsharded(target)
    factory = (lambda: encoder) if encoder is not None else None
    jobs = [ShardJob(str(corpus), corpus_sha256, cfg, i, len(bounds), rows, encoder_factory=factory)
            for i, rows in enumerate(bounds)]
    if uses_bm25(cfg):
        counted = run(count_shard, jobs)
        stats = CorpusStats.merged([s for _, s in counted])
        jobs = [dataclasses.replace(j, stats=stats) for j in jobs]
    manifests: list[Manifest] = run(build_shard, jobs)
    for stale in sorted(target.glob("shard_*")):  # shards of an earlier, larger replica_shards
        if stale.is_dir() and stale.name not in {shard_dir(target, j.shard).name for j in jobs}:
            shutil.rmtree(stale, ignore_errors=True)
    top = Manifest(format_version=FORMAT_VERSION, backend=cfg.backend, params=index_params(cfg),
                   corpus_path=str(corpus), corpus_sha256=corpus_sha256, n_passages=n,
                   build_seconds=round(time.perf_counter() - start, 4), index_bytes=dir_bytes(target),
                   created_at=time.time(), dim=manifests[0].dim, shards=[m.shard for m in manifests if m.shard],
                   rebuilt=any(m.rebuilt for m in manifests))
    write_manifest(target, top)
    return top


def _clear_unsharded(target: Path) -> None:
    """An unsharded index in the folder is moved out of the way (the shard folders replace it)."""
    if not (target / MANIFEST_FILE).is_file():
        target.mkdir(parents=True, exist_ok=True)
        return
    try:
        sharded = read_manifest(target).shards is not None
    except IndexMismatchError:
        sharded = False
    if not sharded:
        fresh = Path(tempfile.mkdtemp(prefix=f".{target.name}.building-", dir=target.parent))
        os.chmod(fresh, 0o755)
        swap_in(fresh, target)

