"""The guarded HTTP apps under bad input: auth, limits, and schema-driven fuzzing from the live
`/openapi.json` (schemathesis): no request may produce a 5xx, and every 4xx carries a JSON `detail`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import pytest
from fakes import bm25_index, free_port

from s3_ray.config import RolloutConfig, SearcherConfig, ServeConfig

TOKEN_ENV = "S3RAY_FUZZ_TEST_TOKEN"
TOKEN = "fuzz-" + "0123456789abcdef" * 2
# Set at import (collection), before the session's Ray starts: replicas inherit Ray's environment.
os.environ.setdefault(TOKEN_ENV, TOKEN)
AUTH = {"Authorization": f"Bearer {os.environ[TOKEN_ENV]}"}
MAX_TEXT, MAX_BYTES = 64, 4096



def _fuzz(url: str, path: str, examples: int) -> dict[int, int]:
    """Positive and negative cases for `POST path` from the live schema; returns status counts."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", headers=AUTH, timeout=30)
    op = schema[path]["POST"]
    seen: dict[int, int] = {}

    @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(case=st.one_of(op.as_strategy(GenerationMode.POSITIVE), op.as_strategy(GenerationMode.NEGATIVE)))
    def check(case: Any) -> None:
        resp = case.call(base_url=url, headers=AUTH, timeout=60)
        seen[resp.status_code] = seen.get(resp.status_code, 0) + 1
        assert resp.status_code < 500, (case.body, resp.status_code, resp.text[:500])
        if resp.status_code >= 400:
            assert resp.json().get("detail"), (case.body, resp.text[:500])  # JSON, with a detail

    check()
    return seen


def _assert_guarded(http: httpx.Client, url: str, path: str, body: dict[str, Any]) -> None:
    """401 without (or with a wrong) token everywhere but /health, the schema included."""
    assert http.get(f"{url}/health").status_code == 200
    r = http.post(url + path, json=body)
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer"), r.text
    assert TOKEN not in r.text
    assert http.get(f"{url}/openapi.json").status_code == 401
    assert http.get(f"{url}/openapi.json", headers={"Authorization": "Bearer not-the-token-at-all"}).status_code == 401


def _assert_body_limits(http: httpx.Client, endpoint: str) -> None:
    """413 over the byte limit, by Content-Length and by the bytes of a chunked body."""
    r = http.post(endpoint, content=b"{" + b" " * MAX_BYTES + b"}", headers=AUTH)
    assert r.status_code == 413 and f"{MAX_BYTES} bytes" in r.json()["detail"], r.text
    chunks = iter([b'{"x": "' + b"a" * 1500] + [b"a" * 1500] * 3 + [b'"}'])  # no Content-Length: chunked
    r = http.post(endpoint, content=chunks, headers=AUTH | {"Content-Type": "application/json"})
    assert r.status_code == 413 and "max_request_bytes" in r.json()["detail"], r.text


@pytest.mark.ray
def test_guarded_apps_survive_fuzzing(serve_instance, tmp_path: Path) -> None:
    from deployments.copilot import CopilotAppArgs
    from deployments.copilot import build_app as build_copilot
    from deployments.retriever import RetrieverAppArgs
    from deployments.retriever import build_app as build_retriever

    serve = serve_instance
    index_dir = bm25_index(tmp_path)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    guard = {"auth_token_env": TOKEN_ENV, "max_request_bytes": MAX_BYTES, "max_text_chars": MAX_TEXT}
    serve.run(build_retriever(RetrieverAppArgs(index_dir=index_dir, max_batch=4, retriever_cpus=0.25, **guard)),
              name="retriever", route_prefix="/")
    copilot = CopilotAppArgs(
        searcher=SearcherConfig(model="tiny-random", max_new_tokens=6, num_threads=1),
        rollout=RolloutConfig(init_k=2, top_k=3, keep_per_turn=2, max_turns=1),
        serve=ServeConfig(copilot_cpus=0.25, copilot_batch_wait_timeout_s=0.0, **guard),
    )
    serve.run(build_copilot(copilot), name="copilot", route_prefix="/copilot")
    url = f"http://127.0.0.1:{port}"

    with httpx.Client(timeout=60) as http:
        _assert_guarded(http, url, "/retrieve", {"queries": ["Birch Falls"], "topk": 1})
        _assert_guarded(http, f"{url}/copilot", "/search", {"question": "Who is the mayor?"})
        ok = http.post(f"{url}/retrieve", json={"queries": ["mayor of Birch Falls"], "topk": 2}, headers=AUTH)
        assert ok.status_code == 200 and len(ok.json()["result"][0]) == 2, ok.text
        r = http.post(f"{url}/retrieve", json={"queries": ["ok", "q" * (MAX_TEXT + 1)]}, headers=AUTH)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["queries", 1], r.text
        assert "max_text_chars" in r.json()["detail"][0]["msg"]
        r = http.post(f"{url}/retrieve", content=b"[" * 2000 + b"]" * 2000, headers=AUTH)
        assert r.status_code == 400, r.text  # nested too deep to parse: a client error, not a crash
        r = http.post(f"{url}/retrieve", content=b'{"queries": "\\ud800", "\\udc00": 1}', headers=AUTH)
        assert r.status_code == 422, r.text
        _assert_body_limits(http, f"{url}/retrieve")

        ok = http.post(f"{url}/copilot/search", json={"question": "Who is the mayor of Birch Falls?"}, headers=AUTH)
        assert ok.status_code == 200 and ok.json()["documents"], ok.text
        r = http.post(f"{url}/copilot/search", json={"question": "q" * (MAX_TEXT + 1)}, headers=AUTH)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "question"], r.text
        r = http.post(f"{url}/copilot/search", content=b'{"question": ["\\ud800"]}',
                      headers=AUTH | {"Content-Type": "application/json"})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "question", r.text
        _assert_body_limits(http, f"{url}/copilot/search")

    retrieve_seen = _fuzz(url, "/retrieve", examples=50)
    copilot_seen = _fuzz(f"{url}/copilot", "/search", examples=30)
    assert 200 in retrieve_seen and 422 in retrieve_seen, retrieve_seen
    assert 422 in copilot_seen, copilot_seen
