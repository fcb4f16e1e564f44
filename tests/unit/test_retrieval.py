"""BM25 retriever, index build/manifest, HTTP schema and the in-process client."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
from pydantic import ValidationError

from s3_ray.clients import RetrieverClient, RetrieverError
from s3_ray.config import RetrievalConfig
from s3_ray.data.corpus import write_corpus
from s3_ray.retrieval import BM25Retriever, IndexMismatchError, Retriever, build_index, load_retriever
from s3_ray.retrieval.schema import RetrieveRequest, hits_to_json, json_to_hits
from s3_ray.types import Passage

TINY = [
    Passage("a", '"Harbour"\nThe harbour of Velmora shelters fishing boats from winter storms.'),
    Passage("b", '"Violin"\nA violin is a bowed string instrument with four strings.'),
    Passage("c", '"Bakery"\nThe bakery sells rye bread, pastries and sweet buns every morning.'),
    Passage("d", '"Storms"\nWinter storms flooded the coastal roads near the harbour.'),
]


@pytest.fixture
def tiny() -> BM25Retriever:
    return BM25Retriever.build(TINY)


def test_known_nearest_neighbours(tiny: BM25Retriever) -> None:
    hits = tiny.search(["string instruments", "bread pastry", "harbour storms", "Velmora"], 2)
    assert hits[0][0].passage.id == "b"
    assert hits[1][0].passage.id == "c"          # "pastry" stems to the same term as "pastries"
    assert {h.passage.id for h in hits[2]} == {"a", "d"}
    assert [h.passage.id for h in hits[3]] == ["a"]  # only one passage matches; zero scores dropped
    assert hits[2][0].score >= hits[2][1].score > 0
    assert isinstance(tiny, Retriever) and len(tiny) == 4


def test_edge_queries(tiny: BM25Retriever) -> None:
    hits = tiny.search(["", "the of and", "zzzunknown", "violin"], 50)   # k clamped to 4
    assert hits[:3] == [[], [], []]
    assert [h.passage.id for h in hits[3]] == ["b"]
    assert tiny.search([], 3) == []
    with pytest.raises(ValueError, match="k must be >= 1"):
        tiny.search(["violin"], 0)
    with pytest.raises(TypeError):
        tiny.search("violin", 1)  # type: ignore[arg-type]


def test_save_load_roundtrip_without_pickle(tiny: BM25Retriever, tmp_path: Path) -> None:
    tiny.save(tmp_path / "idx")
    assert not list((tmp_path / "idx").glob("*.pkl"))
    loaded = BM25Retriever.load(tmp_path / "idx")
    q = ["harbour storms", "violin strings"]
    assert [[(h.passage, round(h.score, 5)) for h in r] for r in loaded.search(q, 3)] == \
           [[(h.passage, round(h.score, 5)) for h in r] for r in tiny.search(q, 3)]
    with pytest.raises(FileNotFoundError, match="not a BM25 index folder"):
        BM25Retriever.load(tmp_path)


def test_build_index_manifest_and_noop(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    write_corpus(corpus, TINY)
    cfg = RetrievalConfig(index_dir=str(tmp_path / "index"))
    m1 = build_index(corpus, cfg, progress=False)
    assert m1.rebuilt and m1.n_passages == 4 and m1.params == {"k1": 0.9, "b": 0.4} and m1.index_bytes > 0
    on_disk = json.loads((tmp_path / "index" / "manifest.json").read_text())
    assert on_disk["corpus_sha256"] == m1.corpus_sha256 and "rebuilt" not in on_disk
    m2 = build_index(corpus, cfg, progress=False)
    assert not m2.rebuilt and m2.created_at == m1.created_at
    # changed params -> rebuild; changed corpus -> rebuild
    m3 = build_index(corpus, cfg.model_copy(update={"k1": 1.5}), progress=False)
    assert m3.rebuilt and m3.params["k1"] == 1.5
    write_corpus(corpus, TINY[:3])
    m4 = build_index(corpus, cfg, progress=False)
    assert m4.rebuilt and m4.n_passages == 3 and m4.corpus_sha256 != m1.corpus_sha256
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.jsonl", "index"]   # no temp/old folders left
    r = load_retriever(cfg, corpus_path=corpus)
    assert len(r) == 3 and r.search(["bread"], 1)[0][0].passage.id == "c"


def test_load_retriever_errors(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    write_corpus(corpus, TINY)
    cfg = RetrievalConfig(index_dir=str(tmp_path / "index"))
    with pytest.raises(IndexMismatchError, match="no index at .*jobs.build_index"):
        load_retriever(cfg)
    build_index(corpus, cfg, progress=False)
    with pytest.raises(IndexMismatchError, match="config asks for"):
        load_retriever(cfg.model_copy(update={"b": 0.75}))
    other = tmp_path / "other.jsonl"
    write_corpus(other, TINY[:2])
    with pytest.raises(IndexMismatchError, match="another corpus"):
        load_retriever(cfg, corpus_path=other)


def test_failed_build_leaves_no_half_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    corpus = tmp_path / "corpus.jsonl"
    write_corpus(corpus, TINY)
    cfg = RetrievalConfig(index_dir=str(tmp_path / "index"))
    build_index(corpus, cfg, progress=False)

    def boom(self, directory):
        raise OSError("disk full")

    monkeypatch.setattr(BM25Retriever, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        build_index(corpus, cfg.model_copy(update={"k1": 2.0}), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.jsonl", "index"]
    assert len(load_retriever(cfg)) == 4   # the previous index is intact


def test_schema_validation() -> None:
    ok = RetrieveRequest.model_validate({"queries": ["a", "b"], "topk": 5, "return_scores": False})
    assert ok.topk == 5 and not ok.return_scores
    bad = [
        ({"queries": [], "topk": 3}, "queries"),
        ({"queries": ["a", 3], "topk": 3}, "queries"),
        ({"queries": "a", "topk": 3}, "queries"),
        ({"queries": ["a"], "topk": 0}, "topk"),
        ({"queries": ["a"], "topk": 101}, "topk"),
        ({"queries": ["a"], "topk": 3, "extra": 1}, "extra"),
    ]
    for body, field in bad:
        with pytest.raises(ValidationError) as err:
            RetrieveRequest.model_validate(body)
        assert err.value.errors()[0]["loc"][0] == field
    with pytest.raises(ValidationError, match="exceeds max_batch=2"):
        RetrieveRequest.model_validate({"queries": ["a"] * 3}, context={"max_batch": 2})


def test_schema_roundtrip(tiny: BM25Retriever) -> None:
    hits = tiny.search(["harbour", "violin"], 2)
    assert json_to_hits(hits_to_json(hits), n_queries=2) == hits
    bare = json_to_hits(hits_to_json(hits, return_scores=False))
    assert [[h.passage for h in q] for q in bare] == [[h.passage for h in q] for q in hits]
    with pytest.raises(ValueError, match="2 result lists for 3 queries"):
        json_to_hits(hits_to_json(hits), n_queries=3)
    with pytest.raises(ValueError, match=r"result\[0\]\[0\] is not a document"):
        json_to_hits({"result": [[{"document": {"id": "1"}, "score": 1.0}]]})


def test_in_process_client_and_pickling(tiny: BM25Retriever) -> None:
    client = RetrieverClient.in_process(tiny)
    assert client.search(["violin"], 1)[0][0].passage.id == "b"
    assert client.search([], 3) == []
    url_client = RetrieverClient.from_url("http://127.0.0.1:9/retrieve", retries=1, backoff_s=0.01, timeout_s=0.5)
    clone = pickle.loads(pickle.dumps(url_client))
    with pytest.raises(RetrieverError, match="failed after 2 attempts"):
        clone.search(["x"], 1)   # nothing listens on port 9: connection refused, retried, then a clear error
    app_client = pickle.loads(pickle.dumps(RetrieverClient.from_app("retriever")))
    assert "retriever" in repr(app_client)
    with pytest.raises(ValueError, match="http://"):
        RetrieverClient.from_url("127.0.0.1:8000/retrieve")


class _Flaky:
    def __init__(self, fails: int) -> None:
        self.fails, self.calls = fails, 0

    def search(self, queries, k):
        self.calls += 1
        if self.calls <= self.fails:
            from s3_ray.retry import Transient

            raise Transient("replica restarting")
        return [[] for _ in queries]


def test_client_retries_transient_errors() -> None:
    flaky = _Flaky(fails=2)
    assert RetrieverClient.in_process(flaky, retries=2, backoff_s=0.0).search(["q"], 1) == [[]]
    assert flaky.calls == 3
    with pytest.raises(RetrieverError, match="failed after 2 attempts: replica restarting"):
        RetrieverClient.in_process(_Flaky(fails=5), retries=1, backoff_s=0.0).search(["q"], 1)


def test_bm25_retriever_survives_pickling():
    import pickle

    from s3_ray.retrieval.bm25 import BM25Retriever
    from s3_ray.types import Passage

    r = BM25Retriever.build([Passage("a", '"Hamlet"\nA tragedy by Shakespeare.'), Passage("b", '"Oslo"\nA city.')])
    r2 = pickle.loads(pickle.dumps(r))
    assert [h.passage.id for h in r2.search(["shakespeare tragedy"], 1)[0]] == ["a"]
