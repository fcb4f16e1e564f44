"""IVF-PQ with refine (faiss' re-ranking of the best PQ candidates): recall, the memory-mapped
exact vectors, manifests and search settings. Recall and memory figures are measured in
benchmarks/retrieval/retrieval_bench.py; here only that refine works and helps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from s3_ray.config import RetrievalConfig
from s3_ray.retrieval.dense import DenseRetriever, FaissParams, build_faiss_index, set_search_params
from s3_ray.retrieval.folder import index_params
from s3_ray.serving.served import search_settings
from s3_ray.types import Passage


def _vectors(n: int = 4000, dim: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Clustered unit vectors with a decaying spectrum (as text embeddings have), and queries near them."""
    rng = np.random.default_rng(seed)
    scale = (np.arange(1, dim + 1) ** -0.5).astype(np.float32)
    centres = rng.standard_normal((40, dim)).astype(np.float32) * scale
    x = centres[rng.integers(0, 40, n)] + 0.3 * rng.standard_normal((n, dim)).astype(np.float32) * scale
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[rng.integers(0, n, 200)] + 0.05 * rng.standard_normal((200, dim)).astype(np.float32)
    return x, q / np.linalg.norm(q, axis=1, keepdims=True)


def _recall(index, x: np.ndarray, q: np.ndarray, k: int = 10) -> float:
    truth = (q @ x.T).argsort(axis=1)[:, ::-1][:, :k]
    _, ids = index.search(q, k)
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(ids, truth)]))


def test_refine_recovers_recall_that_pq_loses() -> None:
    x, q = _vectors()
    base = dict(index_type="ivfpq", ivf_nlist=16, pq_m=4, pq_nbits=6)
    plain = build_faiss_index(x, FaissParams(**base))
    set_search_params(plain, 64, 8)
    refined = {kind: build_faiss_index(x, FaissParams(**base, refine=kind)) for kind in ("fp16", "mmap")}
    for index in refined.values():
        set_search_params(index, 64, 8, k_factor=16)
    r_plain = _recall(plain, x, q)
    assert r_plain < 0.8, r_plain  # 4 bytes per vector lose the order of near neighbours
    for kind, index in refined.items():
        assert _recall(index, x, q) >= 0.95, kind
    # exact re-ranking: the scores of the returned passages are their true inner products
    d, i = refined["mmap"].search(q[:5], 3)
    np.testing.assert_allclose(d, np.take_along_axis(q[:5] @ x.T, i, 1), rtol=1e-5)
    opq = build_faiss_index(x, FaissParams(**base, refine="fp16", opq=True))
    set_search_params(opq, 64, 8, k_factor=16)
    assert _recall(opq, x, q) >= 0.95


class _Fixed:
    def __init__(self, dim: int) -> None:
        self.dim = dim


def test_mmap_refine_saves_and_loads_memory_mapped(tmp_path: Path) -> None:
    x, q = _vectors()
    passages = [Passage(str(i), f"p{i}") for i in range(len(x))]
    params = FaissParams("ivfpq", ivf_nlist=16, pq_m=4, pq_nbits=6, refine="mmap")
    r = DenseRetriever.build(passages, x, _Fixed(32), params)
    r.save(tmp_path / "dense", x)
    in_memory = r.search_vectors(q, 10)
    loaded = DenseRetriever.load(tmp_path / "dense", _Fixed(32), nprobe=16, k_factor=8, mmap=True)
    set_search_params(r._shards[0], 64, 16, 8)
    np.testing.assert_array_equal(loaded.search_vectors(q, 10)[1], r.search_vectors(q, 10)[1])
    assert in_memory[1].shape == (200, 10)
    with pytest.raises(Exception, match="host memory only"):
        DenseRetriever.load(tmp_path / "dense", _Fixed(32), faiss_gpu=True, mmap=True)


def test_refine_settings_in_manifest_and_served() -> None:
    old = index_params(RetrievalConfig(backend="dense", index_type="ivfpq", encoder="e"))
    assert "refine" not in old and "opq" not in old  # indexes built before refine existed still match
    cfg = RetrievalConfig(backend="dense", index_type="ivfpq", encoder="e", pq_refine="mmap", opq=True)
    assert index_params(cfg)["refine"] == "mmap" and index_params(cfg)["opq"] is True
    assert search_settings(cfg) == ("ivf_nprobe", "refine_k_factor")
    assert FaissParams("ivfpq", ivf_nlist=64, pq_m=8, refine="sq8").factory_string() == "IVF64,PQ8x8,Refine(SQ8)"
