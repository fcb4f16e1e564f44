"""The copilot Serve app: tiny-random searcher over a real BM25 retriever app, by handle and HTTP."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from fakes import bm25_index, free_port

from s3_ray.config import RetrievalConfig, RolloutConfig, SearcherConfig, ServeConfig
from s3_ray.retrieval import load_retriever

QUESTION = "Who is the mayor of Birch Falls?"



@pytest.mark.ray
def test_copilot_app_handle_http_and_errors(serve_instance, tmp_path: Path) -> None:
    from deployments.copilot import CopilotAppArgs, build_app
    from deployments.retriever import RetrieverAppArgs
    from deployments.retriever import build_app as build_retriever

    serve = serve_instance
    index_dir = bm25_index(tmp_path)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_retriever(RetrieverAppArgs(index_dir=index_dir, retriever_cpus=0.25)), name="retriever",
              route_prefix="/")
    args = CopilotAppArgs(
        searcher=SearcherConfig(model="tiny-random", max_new_tokens=6, temperature=0.7, num_threads=1),
        rollout=RolloutConfig(init_k=2, top_k=3, keep_per_turn=2, max_turns=1),
        serve=ServeConfig(copilot_cpus=0.25, copilot_max_batch_size=8, copilot_batch_wait_timeout_s=0.2),
    )
    handle = serve.run(build_app(args), name="copilot", route_prefix="/copilot")

    # handle: concurrent requests are merged into shared rollouts
    async def many() -> list:
        return await asyncio.gather(*[handle.search.remote(q) for q in [QUESTION, "Where is Dune Port?"] * 3])

    results = asyncio.run(many())
    init = [h.passage.id for h in load_retriever(RetrievalConfig(index_dir=index_dir)).search([QUESTION], 2)[0]]
    assert [d["id"] for d in results[0]["documents"]][:2] == init
    assert results[0] == results[2] == results[4]  # greedy: the same question gets the same answer
    for r in results:
        assert r["searches"] <= 1 and 1 <= r["turns"] <= 3
        assert len(r["documents"]) <= 2 + 2
        assert r["budget"] == {"init_k": 2, "top_k": 3, "keep_per_turn": 2, "max_turns": 1}
    stats = handle.stats.remote().result(timeout_s=30)
    assert stats["max_requests_per_batch"] > 1 and stats["rollouts"] < 6

    url = f"http://127.0.0.1:{port}/copilot"
    with httpx.Client(timeout=120) as http:
        health = http.get(f"{url}/health").json()
        assert health["status"] == "ok" and health["limits"] == {"top_k": 3, "keep_per_turn": 2, "max_turns": 1}
        resp = http.post(f"{url}/search", json={"question": QUESTION, "top_k": 2, "max_turns": 0})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["searches"] == 0 and [d["id"] for d in body["documents"]] == init
        assert set(body["documents"][0]) == {"id", "contents"}
        assert body["budget"]["top_k"] == 2 and body["budget"]["keep_per_turn"] == 2
        assert isinstance(body["trace"], list) and body["trace"][0].keys() >= {"text", "query", "retrieved_ids"}

        for bad, field in [({"question": QUESTION, "top_k": 4}, "top_k"),
                           ({"question": QUESTION, "max_turns": 2}, "max_turns"),
                           ({"question": QUESTION, "top_k": 1, "keep_per_turn": 2}, "keep_per_turn"),
                           ({"question": ""}, "question"),
                           ({"question": "   "}, "question"),
                           ({}, "question"),
                           ({"question": QUESTION, "top_k": "many"}, "top_k"),
                           ({"question": QUESTION, "topk": 2}, "topk")]:
            r = http.post(f"{url}/search", json=bad)
            assert r.status_code == 422, (bad, r.text)
            assert r.json()["detail"][0]["loc"][-1] == field, (bad, r.text)
        spec = http.get(f"{url}/openapi.json").json()
        assert "/search" in spec["paths"] and "SearchRequest" in spec["components"]["schemas"]
