"""The serving pieces the three apps share (no Ray cluster): builder args, routes and the FastAPI
app over one server, merged batch methods and their counters, and the Serve wiring."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import Field, ValidationError

from s3_ray.config import GeneratorConfig, S3Config, SearcherConfig, ServeConfig, load_config
from s3_ray.serving import (
    GUARD_REJECTIONS,
    ApiInfo,
    AppArgs,
    Batching,
    BatchStats,
    Guard,
    build_api,
    get,
    merged,
    post,
    replica_options,
    serve_deployment,
    split_merged,
)

TOKEN_ENV, TOKEN = "S3RAY_SERVING_TEST_TOKEN", "tok-" + "0123456789" * 2


class _Args(AppArgs):
    generator: GeneratorConfig = GeneratorConfig()
    serve: ServeConfig = ServeConfig()
    name: str = Field("Echo", min_length=1)


class _Overlapping(AppArgs):
    generator: GeneratorConfig = GeneratorConfig()
    searcher: SearcherConfig = SearcherConfig()


def test_flat_keys_go_to_the_section_that_has_them() -> None:
    a = _Args.model_validate({"model": "m", "max_new_tokens": "7", "generator_cpus": 0.25, "name": "X",
                              "serve": {"port": 8001}})
    assert (a.generator.model, a.generator.max_new_tokens, a.name) == ("m", 7, "X")
    assert (a.serve.generator_cpus, a.serve.port) == (0.25, 8001)
    # a section given as a model still takes flat keys next to it
    b = _Args(generator=GeneratorConfig(model="m"), max_batch_size=4)
    assert b.generator.model == "m" and b.serve.max_batch_size == 4


@pytest.mark.parametrize("data, message", [
    ({"modle": "m"}, "modle"),                                            # unknown: named
    ({"model": "a", "generator": {"model": "b"}}, "given both flat and under generator"),
    ({"serve": {"port": 0}}, "serve.port"),                               # the section's own checks
])
def test_bad_args_name_the_key(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as err:
        _Args.model_validate(data)
    assert message in str(err.value)


def test_a_key_two_sections_have_must_be_nested() -> None:
    with pytest.raises(ValidationError, match="'model' is a field of generator and searcher"):
        _Overlapping.model_validate({"model": "m"})
    assert _Overlapping.model_validate({"searcher": {"model": "m"}, "top_p": 0.5}).searcher.top_p == 0.5


def test_from_config_takes_the_sections_and_coerce_validates_dicts() -> None:
    cfg = load_config(None, ["generator.max_new_tokens=5", "serve.generator_gpus=1"])
    a = _Args.from_config(cfg, name="Y")
    assert a.generator == cfg.generator and a.serve == cfg.serve and a.name == "Y"
    assert _Args.coerce(a) is a
    assert _Args.coerce({"max_new_tokens": 9}).generator.max_new_tokens == 9
    assert set(_Args.sections()) == {"generator", "serve"}
    assert isinstance(cfg, S3Config)


class _Echo:
    """A server in the apps' shape: a merged batch method, handle methods, marked HTTP handlers."""

    def __init__(self, args: _Args) -> None:
        self.guard = Guard.from_config(args.serve)
        self.batches = BatchStats()

    async def shout(self, text: str) -> str:
        return await self._shout_merged(text)

    @merged
    async def _shout_merged(self, texts: list[str]) -> list[str]:
        self.batches.record(len(texts))
        return [t.upper() for t in texts]

    def asgi_app(self) -> Any:
        return build_api(self, ApiInfo(title="echo", version="2"), self.guard)

    @get("/health")
    async def health(self) -> dict[str, str]:
        return {"status": "ok"}

    @post("/shout", responses=GUARD_REJECTIONS)
    async def shout_endpoint(self, body: dict[str, str]) -> dict[str, str]:
        self.guard.require_text([(("body", "text"), body["text"])])
        return {"text": await self.shout(body["text"])}


def test_server_runs_without_serve_behind_its_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    server = _Echo(_Args(auth_token_env=TOKEN_ENV, max_text_chars=16))
    assert asyncio.run(server.shout("hi")) == "HI"  # a merged method called alone is a batch of one
    http = TestClient(server.asgi_app())
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert http.get("/health").json() == {"status": "ok"}
    assert http.post("/shout", json={"text": "hey"}).status_code == 401
    assert http.post("/shout", json={"text": "hey"}, headers=auth).json() == {"text": "HEY"}
    r = http.post("/shout", json={"text": "x" * 17}, headers=auth)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "text"]
    spec = http.get("/openapi.json", headers=auth).json()
    assert spec["info"] == {"title": "echo", "version": "2"}
    assert set(spec["paths"]) == {"/health", "/shout"} and "413" in spec["paths"]["/shout"]["post"]["responses"]
    assert server.batches.as_dict() == {"requests_per_batch": {1: 2}, "max_requests_per_batch": 1}


def test_build_api_needs_a_marked_handler() -> None:
    class Bare:
        pass

    with pytest.raises(TypeError, match="Bare marks no HTTP handler"):
        build_api(Bare(), ApiInfo(title="bare"), Guard())
    with pytest.raises(ValueError, match="must start with '/'"):
        get("health")


def test_split_merged_refuses_a_count_mismatch() -> None:
    with pytest.raises(RuntimeError, match="returned 1 results for 2 inputs"):
        split_merged(["a"], [["q1"], ["q2"]])


def test_replica_options_per_app() -> None:
    s = ServeConfig(retriever_replicas=2, retriever_gpus=0.5, copilot_cpus=0.25, health_check_period_s=3,
                    graceful_shutdown_timeout_s=5)
    r = replica_options(s, "retriever", "R")
    assert (r["name"], r["num_replicas"], r["ray_actor_options"]) == ("R", 2, {"num_cpus": 0.25, "num_gpus": 0.5})
    assert (r["health_check_period_s"], r["graceful_shutdown_timeout_s"]) == (3, 5)
    assert replica_options(s, "copilot", "C")["ray_actor_options"] == {"num_cpus": 0.25, "num_gpus": 0.0}


def test_serve_deployment_batches_the_merged_methods_and_builds_http_per_replica() -> None:
    dep = serve_deployment(_Echo, {"_shout_merged": Batching(5, 0.2)}, name="Echo", num_replicas=2)
    assert dep.name == "Echo" and dep.num_replicas == 2
    served = dep.func_or_class
    assert issubclass(served, _Echo) and served.__name__ == "_Echo"
    assert served._shout_merged._get_max_batch_size() == 5
    assert served._shout_merged._get_batch_wait_timeout_s() == 0.2
    assert callable(served.__serve_build_asgi_app__)
    assert _Echo._shout_merged is not served._shout_merged  # the plain class is left as it was

    with pytest.raises(ValueError, match=r"exactly its merged methods \['_shout_merged'\]"):
        serve_deployment(_Echo, {})

    class Renamed(_Echo):
        alias = _Echo._shout_merged

    with pytest.raises(TypeError, match="must keep its body's name"):
        serve_deployment(Renamed, {"_shout_merged": Batching(1, 0), "alias": Batching(1, 0)})
