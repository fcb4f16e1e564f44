"""The retriever Serve app (handle + HTTP) and the HTTP client against a Search-R1 style server."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import httpx
import pytest
from fakes import free_port

from s3_ray.clients import RetrieverClient, RetrieverError
from s3_ray.config import RetrievalConfig
from s3_ray.data.corpus import write_corpus
from s3_ray.retrieval import BM25Retriever, build_index
from s3_ray.retrieval.schema import hits_to_json
from s3_ray.types import Passage, SearchHit

TINY = [
    Passage("a", '"Harbour"\nThe harbour of Velmora shelters fishing boats from winter storms.'),
    Passage("b", '"Violin"\nA violin is a bowed string instrument with four strings.'),
    Passage("c", '"Bakery"\nThe bakery sells rye bread, pastries and sweet buns every morning.'),
    Passage("d", '"Storms"\nWinter storms flooded the coastal roads near the harbour.'),
]



@pytest.mark.ray
def test_retriever_app_handle_and_http(serve_instance, tmp_path: Path) -> None:
    from deployments.retriever import RetrieverAppArgs, build_app

    serve = serve_instance
    corpus = tmp_path / "corpus.jsonl"
    write_corpus(corpus, TINY)
    index_dir = str(tmp_path / "index")
    build_index(corpus, RetrievalConfig(index_dir=index_dir), progress=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    args = RetrieverAppArgs(index_dir=index_dir, max_batch=4, retriever_cpus=0.25, retriever_threads=2,
                            max_batch_size=8, batch_wait_timeout_s=0.02)
    handle = serve.run(build_app(args), name="retriever", route_prefix="/")

    # handle calls: typed results; concurrent calls with different k are batched and each gets its own k
    hits = handle.search.remote(["violin strings", "harbour storms"], 2).result(timeout_s=60)
    assert isinstance(hits[0][0], SearchHit) and hits[0][0].passage.id == "b"
    assert {h.passage.id for h in hits[1]} == {"a", "d"}

    async def many() -> list:
        return await asyncio.gather(*[handle.search.remote([q], k) for q, k in
                                      [("bread", 1), ("harbour", 3), ("violin", 2), ("storms", 1)] * 4])

    results = asyncio.run(many())
    assert [len(r[0]) for r in results[:4]] == [1, 2, 1, 1]
    assert results[0][0][0].passage.id == "c"
    # those 16 concurrent callers shared retriever calls (serve.batch over the merged body)
    assert handle.stats.remote().result(timeout_s=30)["max_requests_per_batch"] > 1

    # the client over the handle and by app name
    client = RetrieverClient.from_app("retriever", timeout_s=30)
    assert client.search(["bakery"], 1)[0][0].passage.id == "c"
    assert RetrieverClient.from_handle(handle).search(["violin"], 1)[0][0].passage.id == "b"

    # HTTP: Search-R1 schema
    url = f"http://127.0.0.1:{port}"
    with httpx.Client(timeout=30) as http:
        health = http.get(f"{url}/health").json()
        assert health["passages"] == 4
        assert health["threads"] == 2  # serve.retriever_threads, not the OMP_NUM_THREADS=1 Ray gives 0.25 CPU
        # 1, 2 and 3 queries, with and without scores: one result list per query, same documents
        queries = ["violin", "bread", "harbour storms"]
        for n in (1, 2, 3):
            scored = http.post(f"{url}/retrieve", json={"queries": queries[:n], "topk": 1, "return_scores": True})
            bare = http.post(f"{url}/retrieve", json={"queries": queries[:n], "topk": 1, "return_scores": False})
            assert scored.status_code == 200 and bare.status_code == 200, (n, scored.text, bare.text)
            scored_docs = [[hit["document"] for hit in q] for q in scored.json()["result"]]
            assert len(scored_docs) == n and all(len(q) == 1 for q in scored_docs)
            assert all(isinstance(hit["score"], float) for q in scored.json()["result"] for hit in q)
            assert bare.json()["result"] == scored_docs
        # 8 concurrent one-query HTTP clients are encoded/searched together: fewer calls than requests
        before = sum(handle.stats.remote().result(timeout_s=30)["requests_per_batch"].values())
        barrier, answers = threading.Barrier(8), []

        def one(q: str) -> None:
            with httpx.Client(timeout=30) as c:
                barrier.wait()
                answers.append(c.post(f"{url}/retrieve", json={"queries": [q], "topk": 1}).json())

        clients_ = [threading.Thread(target=one, args=(q,)) for q in ["violin", "bread"] * 4]
        for t in clients_:
            t.start()
        for t in clients_:
            t.join()
        assert len(answers) == 8 and all(len(a["result"]) == 1 for a in answers)
        after = sum(handle.stats.remote().result(timeout_s=30)["requests_per_batch"].values())
        assert after - before < 8
        resp = http.post(f"{url}/retrieve", json={"queries": ["violin", "bread"], "topk": 2,
                                                  "return_scores": True})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["result"][0][0]["document"] == {"id": "b", "contents": TINY[1].contents}
        assert body["result"][0][0]["score"] > 0
        bare = http.post(f"{url}/retrieve", json={"queries": ["violin"], "topk": 1, "return_scores": False}).json()
        assert bare == {"result": [[{"id": "b", "contents": TINY[1].contents}]]}
        for bad, field in [({"queries": [], "topk": 1}, "queries"), ({"queries": ["a"], "topk": 0}, "topk"),
                           ({"queries": ["a"], "topk": 1000}, "topk"),
                           ({"queries": ["a"] * 5, "topk": 1}, "queries")]:
            r = http.post(f"{url}/retrieve", json=bad)
            assert r.status_code == 422, (bad, r.text)
            assert r.json()["detail"][0]["loc"][0] == field
        assert http.post(f"{url}/retrieve", content=b"{oops").status_code == 400
    http_client = RetrieverClient.from_url(f"{url}/retrieve")
    assert http_client.search(["harbour"], 1)[0][0].passage.id in {"a", "d"}


@pytest.mark.ray
def test_url_client_against_search_r1_style_server(tmp_path: Path) -> None:
    """Any server speaking the Search-R1 schema works; a 503 is retried, a 4xx fails at once."""
    import uvicorn
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    retriever = BM25Retriever.build(TINY)
    calls = {"n": 0}
    app = FastAPI()

    @app.post("/retrieve")
    async def retrieve(body: dict) -> JSONResponse:
        calls["n"] += 1
        if calls["n"] == 1:
            return JSONResponse({"detail": "warming up"}, status_code=503)
        if body["topk"] > 10:
            return JSONResponse({"detail": "topk too large"}, status_code=422)
        hits = retriever.search(body["queries"], body["topk"])
        return JSONResponse(hits_to_json(hits, return_scores=body.get("return_scores", True)))

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.time() + 20
        while not server.started and time.time() < deadline:
            time.sleep(0.05)
        client = RetrieverClient.from_url(f"http://127.0.0.1:{port}/retrieve", retries=2, backoff_s=0.05)
        hits = client.search(["violin", "bread"], 2)
        assert calls["n"] == 2 and hits[0][0].passage.id == "b" and hits[1][0].passage.id == "c"
        with pytest.raises(RetrieverError, match="HTTP 422"):
            client.search(["violin"], 50)
        assert calls["n"] == 3
    finally:
        server.should_exit = True
        thread.join(timeout=10)
