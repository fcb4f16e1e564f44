"""Hybrid (RRF) fusion maths, the hybrid index build/load, and the pyserini guard."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from s3_ray.config import RetrievalConfig
from s3_ray.data.corpus import write_corpus
from s3_ray.retrieval import HybridRetriever, build_index, load_retriever, rrf_fuse
from s3_ray.retrieval.lucene import LuceneUnavailableError, check_lucene_available
from s3_ray.types import Passage, SearchHit
from test_dense import CORPUS, HashEncoder


def _hits(*ids: str) -> list[SearchHit]:
    return [SearchHit(Passage(i, f"text {i}"), 10.0 - n) for n, i in enumerate(ids)]


def test_rrf_scores_are_reciprocal_rank_sums() -> None:
    fused = rrf_fuse([_hits("a", "b", "c"), _hits("c", "a", "d")], k=10, rrf_k=60)
    got = {h.passage.id: h.score for h in fused}
    assert got == pytest.approx({"a": 1 / 61 + 1 / 62, "c": 1 / 63 + 1 / 61, "b": 1 / 62, "d": 1 / 63})
    assert [h.passage.id for h in fused] == ["a", "c", "b", "d"]
    # the raw scores do not matter, only ranks: scaling one list changes nothing
    scaled = [SearchHit(h.passage, h.score * 1000) for h in _hits("c", "a", "d")]
    assert rrf_fuse([_hits("a", "b", "c"), scaled], 10, 60) == fused
    # k truncates; a smaller rrf_k rewards top ranks more
    assert [h.passage.id for h in rrf_fuse([_hits("a", "b", "c"), _hits("c", "a", "d")], 2, 60)] == ["a", "c"]
    assert rrf_fuse([_hits("x", "y")], 1, 1)[0].score == pytest.approx(0.5)


def test_rrf_ties_and_empty_lists() -> None:
    # b and a both reach rank 1 once and rank 2 once: equal score, tie broken by best rank then id
    fused = rrf_fuse([_hits("b", "a"), _hits("a", "b")], 2, 60)
    assert [h.passage.id for h in fused] == ["a", "b"] and fused[0].score == fused[1].score
    assert rrf_fuse([[], []], 3, 60) == []
    assert [h.passage.id for h in rrf_fuse([[], _hits("z")], 3, 60)] == ["z"]
    with pytest.raises(ValueError, match="rrf_k must be >= 1"):
        rrf_fuse([], 3, 0)


class _Fixed:
    def __init__(self, ids: list[str]) -> None:
        self.ids, self.ks = ids, []

    def __len__(self) -> int:
        return 4

    def search(self, queries, k):
        self.ks.append(k)
        return [_hits(*self.ids[:k]) for _ in queries]


def test_hybrid_retriever_fetches_fusion_depth() -> None:
    a, b = _Fixed(["p", "q", "r"]), _Fixed(["r", "s"])
    h = HybridRetriever([a, b], rrf_k=60, fusion_depth=3)
    out = h.search(["x", "y"], 2)
    assert [x.passage.id for x in out[0]] == ["r", "p"] and out[0] == out[1]
    assert a.ks == [3] and b.ks == [3]
    h.search(["x"], 5)
    assert a.ks[-1] == 5        # depth is at least k
    with pytest.raises(ValueError, match="at least two"):
        HybridRetriever([a])


def test_hybrid_index_build_and_load(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    write_corpus(corpus, CORPUS)
    cfg = RetrievalConfig(backend="hybrid", index_dir=str(tmp_path / "index"), encoder="hash-test")
    enc = HashEncoder()
    m = build_index(corpus, cfg, progress=False, encoder=enc)
    assert set(m.params) == {"bm25", "dense"} and m.params["bm25"] == {"k1": 0.9, "b": 0.4} and m.dim == 32
    assert sorted(p.name for p in (tmp_path / "index").iterdir()) == ["bm25", "dense", "manifest.json"]
    assert not build_index(corpus, cfg.model_copy(update={"rrf_k": 10}), progress=False, encoder=enc).rebuilt
    r = load_retriever(cfg, encoder=enc)
    assert isinstance(r, HybridRetriever) and len(r) == 300 and r.rrf_k == 60
    target = CORPUS[7]
    hit = r.search([target.contents], 3)[0][0]
    assert hit.passage == target and hit.score == pytest.approx(2 / 61)   # rank 1 in both lists
    # bm25 params change -> rebuilt, and the embeddings are reused (no new encoder call)
    calls = enc.passage_calls
    assert build_index(corpus, cfg.model_copy(update={"k1": 1.2}), progress=False, encoder=enc).rebuilt
    assert enc.passage_calls == calls


def test_pyserini_guard_names_extra_and_java(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import s3_ray.retrieval.lucene as lucene

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(lucene.importlib.util, "find_spec",
                        lambda name, *a: None if name == "pyserini" else real_find_spec(name, *a))
    with pytest.raises(LuceneUnavailableError, match=r"pyserini and a Java 21 runtime: install the `sparse` extra"):
        check_lucene_available()
    corpus = tmp_path / "corpus.jsonl"
    write_corpus(corpus, CORPUS[:5])
    cfg = RetrievalConfig(bm25_impl="pyserini", index_dir=str(tmp_path / "index"))
    with pytest.raises(LuceneUnavailableError, match="sparse"):
        build_index(corpus, cfg, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.jsonl"]     # nothing half-built
    # pyserini present but no Java 21
    monkeypatch.setattr(lucene.importlib.util, "find_spec", lambda name, *a: object())
    monkeypatch.setattr(lucene, "_java_home", lambda: None)
    with pytest.raises(LuceneUnavailableError, match="needs Java 21, found no Java runtime"):
        check_lucene_available()
    monkeypatch.setattr(lucene, "_java_home", lambda: "/opt/jdk17")
    monkeypatch.setattr(lucene, "_java_major", lambda home: 17)
    with pytest.raises(LuceneUnavailableError, match="found Java 17 at /opt/jdk17"):
        check_lucene_available()
