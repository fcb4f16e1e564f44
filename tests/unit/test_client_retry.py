"""Retry paths of the Serve-handle clients, driven by fake handles (no Ray cluster).

A fake handle plays a replica that dies (ActorDiedError) a given number of times before answering,
which is what a caller sees when Serve replaces a killed replica.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
from typing import Any

import pytest
import ray.exceptions as rex

from s3_ray.clients.generator import GeneratorCallError, GeneratorClient
from s3_ray.clients.retriever import RetrieverClient, RetrieverError
from s3_ray.types import Passage, SearchHit

HIT = SearchHit(Passage("d1", '"Title"\nText.'), 1.0)
PROMPT = [{"role": "user", "content": "q"}]


class _Response:
    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def result(self, timeout_s: float | None = None) -> Any:
        return self.fn()

    def __await__(self) -> Any:  # DeploymentResponse is awaitable too
        async def run() -> Any:
            return self.fn()

        return run().__await__()


class FakeHandle:
    """`handle.<method>.remote(...)` raises `errors` in order, then answers with `answer(*args)`."""

    def __init__(self, method: str, errors: list[BaseException], answer: Any) -> None:
        self.errors = list(errors)
        self.calls = 0
        outer = self

        class _Method:
            def remote(self, *args: Any) -> _Response:
                def run() -> Any:
                    outer.calls += 1
                    if outer.errors:
                        raise outer.errors.pop(0)
                    return answer(*args)

                return _Response(run)

        setattr(self, method, _Method())


def _app_error(cause: BaseException) -> BaseException:
    """What a Serve handle raises when the deployment's code raised `cause`."""
    return rex.RayTaskError("generate", "Traceback (most recent call last): ...", cause).as_instanceof_cause()


# --------------------------------------------------------------------------------------------
# RetrieverClient
# --------------------------------------------------------------------------------------------
def test_retriever_survives_replica_deaths_and_logs_each_retry(caplog: pytest.LogCaptureFixture) -> None:
    handle = FakeHandle("search", [rex.ActorDiedError(), rex.ActorUnavailableError("restarting", b"x" * 16)],
                        lambda qs, k: [[HIT] for _ in qs])
    client = RetrieverClient.from_handle(handle, retries=3, backoff_s=0.0)
    with caplog.at_level(logging.WARNING, logger="s3_ray.clients"):
        assert client.search(["a", "b"], 1) == [[HIT], [HIT]]
    assert handle.calls == 3 and client.failed_attempts == 2
    retries = [r.getMessage() for r in caplog.records]
    assert len(retries) == 2 and "attempt 1 of 4" in retries[0] and "ActorDiedError" in retries[0]


def test_retriever_gives_up_after_its_retries() -> None:
    handle = FakeHandle("search", [rex.ActorDiedError()] * 5, lambda qs, k: [[HIT] for _ in qs])
    client = RetrieverClient.from_handle(handle, retries=2, backoff_s=0.0)
    with pytest.raises(RetrieverError, match="retrieval from Serve handle failed after 3 attempts: ActorDiedError"):
        client.search(["a"], 1)
    assert handle.calls == 3 and client.failed_attempts == 3


def test_retriever_client_says_where_it_calls() -> None:
    assert RetrieverClient.from_app("r2").where == "Serve app 'r2'"
    assert RetrieverClient.from_url("http://127.0.0.1:9/retrieve").where == "http://127.0.0.1:9/retrieve"
    assert repr(RetrieverClient.from_handle(object())) == "RetrieverClient(Serve handle)"


def test_retriever_does_not_retry_an_error_of_the_deployment() -> None:
    handle = FakeHandle("search", [_app_error(ValueError("k must be in 1..100"))], lambda qs, k: [])
    client = RetrieverClient.from_handle(handle, retries=3, backoff_s=0.0)
    with pytest.raises(ValueError) as raised:
        client.search(["a"], 1000)
    assert "k must be in 1..100" in str(raised.value.cause)
    assert handle.calls == 1 and client.failed_attempts == 0


def test_retriever_by_app_name_looks_the_handle_up_again_after_a_death(monkeypatch: pytest.MonkeyPatch) -> None:
    from ray import serve

    handles = [FakeHandle("search", [rex.ActorDiedError()], lambda qs, k: [["stale"]]),
               FakeHandle("search", [], lambda qs, k: [[HIT] for _ in qs])]
    looked_up: list[str] = []

    def get_app_handle(name: str) -> FakeHandle:
        looked_up.append(name)
        return handles[len(looked_up) - 1]

    monkeypatch.setattr(serve, "get_app_handle", get_app_handle)
    client = RetrieverClient.from_app("retriever", retries=1, backoff_s=0.0)
    assert client.search(["a"], 1) == [[HIT]]
    assert looked_up == ["retriever", "retriever"]
    shipped = pickle.loads(pickle.dumps(client))  # a Ray worker gets no live handle, only the name
    assert shipped._backend.handle is None and shipped._backend.app_name == "retriever"


# --------------------------------------------------------------------------------------------
# GeneratorClient
# --------------------------------------------------------------------------------------------
def test_generator_survives_a_replica_death(caplog: pytest.LogCaptureFixture) -> None:
    handle = FakeHandle("generate", [rex.ActorDiedError()], lambda prompts: ["ok"] * len(prompts))
    client = GeneratorClient.from_handle(handle, retries=2, backoff_s=0.0)
    with caplog.at_level(logging.WARNING, logger="s3_ray.clients"):
        assert client.generate([PROMPT, PROMPT]) == ["ok", "ok"]
    assert handle.calls == 2 and client.failed_attempts == 1
    assert "generate attempt 1 of 3 failed: ActorDiedError" in caplog.records[0].getMessage()


def test_generator_fails_at_once_on_an_error_raised_by_the_deployment() -> None:
    handle = FakeHandle("generate", [_app_error(ValueError("prompt 0 is empty"))], lambda p: ["never"])
    client = GeneratorClient.from_handle(handle, retries=3, backoff_s=0.0)
    with pytest.raises(GeneratorCallError, match="failed in the deployment.*prompt 0 is empty"):
        client.generate([PROMPT])
    assert handle.calls == 1 and client.failed_attempts == 0


def test_generator_retries_a_timeout_raised_inside_the_deployment() -> None:
    handle = FakeHandle("generate", [_app_error(TimeoutError("backend did not answer"))], lambda p: ["ok"])
    client = GeneratorClient.from_handle(handle, retries=1, backoff_s=0.0)
    assert client.generate([PROMPT]) == ["ok"]
    assert handle.calls == 2 and client.failed_attempts == 1


def test_generator_async_path_retries_and_gives_up() -> None:
    handle = FakeHandle("generate", [rex.ActorDiedError()], lambda prompts: ["ok"] * len(prompts))
    client = GeneratorClient.from_handle(handle, retries=1, backoff_s=0.0)
    assert asyncio.run(client.agenerate([PROMPT])) == ["ok"]
    assert client.failed_attempts == 1

    dead = FakeHandle("generate", [rex.ActorDiedError()] * 3, lambda prompts: ["never"])
    client = GeneratorClient.from_handle(dead, retries=1, backoff_s=0.0)
    with pytest.raises(GeneratorCallError, match="failed after 2 attempts"):
        asyncio.run(client.agenerate([PROMPT]))
    assert dead.calls == 2


def test_http_client_sends_the_bearer_token_from_the_environment(monkeypatch):
    """The token comes from the named variable at call time and never sits in the pickled client."""

    import httpx

    from s3_ray.clients.retriever import RetrieverClient, RetrieverError

    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        return httpx.Response(200, json={"result": [[{"document": {"id": "d1", "contents": "\"T\"\nx"},
                                                       "score": 1.0}]]})

    client = RetrieverClient.from_url("http://127.0.0.1:9/retrieve", token_env="S3RAY_TEST_RETRIEVER_TOKEN",
                                      retries=0)
    client._backend._client = httpx.Client(transport=httpx.MockTransport(handler))
    monkeypatch.delenv("S3RAY_TEST_RETRIEVER_TOKEN", raising=False)
    with pytest.raises(RetrieverError, match="S3RAY_TEST_RETRIEVER_TOKEN"):
        client.search(["q"], 1)
    monkeypatch.setenv("S3RAY_TEST_RETRIEVER_TOKEN", "secret-token-0123456789")
    hits = client.search(["q"], 1)
    assert hits[0][0].passage.id == "d1" and seen == ["Bearer secret-token-0123456789"]
    assert b"secret-token" not in pickle.dumps(client)
