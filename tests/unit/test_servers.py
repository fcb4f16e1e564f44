"""The retriever and generator servers built directly, without Serve: handle methods, HTTP routes
through their own FastAPI app, the shared guard and counters, and the builders' path handling."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from fakes import bm25_index
from fastapi.testclient import TestClient

from s3_ray.config import GeneratorConfig
from s3_ray.serving.served import generator_served
from s3_ray.types import Passage, SearchHit

TOKEN_ENV, TOKEN = "S3RAY_SERVERS_TEST_TOKEN", "tok-" + "abcdef0123" * 2


def test_retriever_server_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from deployments.retriever import RetrieverAppArgs, RetrieverServer

    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    server = RetrieverServer(RetrieverAppArgs(index_dir=bm25_index(tmp_path), max_batch=3, auth_token_env=TOKEN_ENV,
                                              max_text_chars=40))
    hits = asyncio.run(server.search(["mayor of Birch Falls", "Dune Port harbour"], 2))
    assert len(hits) == 2 and len(hits[0]) == 2 and isinstance(hits[0][0], SearchHit)
    assert hits[0][0].passage.id == "p3" and hits[1][0].passage.id == "p7"
    with pytest.raises(ValueError, match="exceeds max_batch=3"):
        asyncio.run(server.search(["a"] * 4, 1))

    http = TestClient(server.asgi_app())
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert http.get("/health").json()["passages"] == 8
    assert http.post("/retrieve", json={"queries": ["Dune Port"], "topk": 1}).status_code == 401
    r = http.post("/retrieve", json={"queries": ["Dune Port"], "topk": 1, "return_scores": False}, headers=auth)
    assert r.status_code == 200 and r.json()["result"][0][0]["id"] == "p7"
    r = http.post("/retrieve", json={"queries": ["ok", "q" * 41], "topk": 1}, headers=auth)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["queries", 1]
    assert http.post("/retrieve", content=b"{oops", headers=auth).status_code == 400
    assert server.stats() == {"requests_per_batch": {1: 2}, "max_requests_per_batch": 1}


def test_large_retriever_requests_skip_the_merge(tmp_path: Path) -> None:
    """A request with `serve.retriever_merge_below` queries or more runs at once; smaller ones go
    through the merged body (the one Serve's batching waits on)."""
    from deployments.retriever import RetrieverAppArgs, RetrieverServer

    server = RetrieverServer(RetrieverAppArgs(index_dir=bm25_index(tmp_path), retriever_merge_below=2))
    merged_calls = []
    body = server._search_merged

    async def spy(queries: list[str], k: int) -> list:
        merged_calls.append(len(queries))
        return await body(queries, k)

    server._search_merged = spy  # type: ignore[method-assign]
    big = asyncio.run(server.search(["mayor of Birch Falls", "Dune Port harbour", "x"], 1))
    assert [h[0].passage.id for h in big[:2]] == ["p3", "p7"] and merged_calls == []
    small = asyncio.run(server.search(["Dune Port harbour"], 1))
    assert small[0][0].passage.id == "p7" and merged_calls == [1]
    assert server.stats()["requests_per_batch"] == {1: 2}


def test_retriever_builder_resolves_a_relative_index_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from deployments.retriever import RetrieverAppArgs, build_app

    monkeypatch.chdir(tmp_path)
    app = build_app({"index_dir": "runs/index", "max_batch_size": 4, "retriever_cpus": 0.5})
    [args] = app._bound_deployment.init_args
    assert args.retrieval.index_dir == str(tmp_path / "runs" / "index")
    assert app._bound_deployment.ray_actor_options["num_cpus"] == 0.5
    assert app._bound_deployment.name == "RetrieverDeployment"
    assert RetrieverAppArgs(index_dir="/abs/index").absolute().retrieval.index_dir == "/abs/index"


def test_generator_server_in_process(tmp_path: Path) -> None:
    from deployments.generator import GeneratorAppArgs, GeneratorServer

    server = GeneratorServer(GeneratorAppArgs(generator=GeneratorConfig(model="tiny-random", max_new_tokens=3,
                                                                        cache_path=str(tmp_path / "g.sqlite"))))
    passage = Passage("p1", '"Ada Lovelace"\nAda was a mathematician.')
    http = TestClient(server.asgi_app())
    assert http.get("/health").json() == {"status": "ok", "model": "tiny-random"}
    one = http.post("/answer", json={"question": "Who was Ada?", "passages": [passage.to_dict()]})
    assert one.status_code == 200 and isinstance(one.json()["answer"], str)
    both = http.post("/answer/batch", json={"questions": ["Who was Ada?", "Zero-shot?"],
                                            "passages": [[passage.to_dict()], []]})
    assert both.status_code == 200 and both.json()["answers"][0] == one.json()["answer"]
    r = http.post("/answer/batch", json={"questions": ["a?"], "passages": []})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "passages"]
    stats = server.stats()
    assert stats["requests_per_batch"] == {1: 2} and stats["cache_hits"] == 1 and stats["cache_misses"] == 2
    assert server.model_id() == "tiny-random"
    assert server.describe() == generator_served(server.args.generator)  # what a job compares before reuse


def test_generator_builder_resolves_a_relative_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from deployments.generator import GeneratorAppArgs, build_app

    monkeypatch.chdir(tmp_path)
    app = build_app(GeneratorAppArgs(generator=GeneratorConfig(cache_path="cache/g.sqlite"), generator_gpus=1))
    [args] = app._bound_deployment.init_args
    assert args.generator.cache_path == str(tmp_path / "cache" / "g.sqlite")
    assert app._bound_deployment.ray_actor_options["num_gpus"] == 1
    assert GeneratorAppArgs(generator=GeneratorConfig(cache_path=None)).absolute().generator.cache_path is None
