"""The generator Serve app on local CPU Ray: handle calls are batched, HTTP routes answer."""

from __future__ import annotations

import httpx
import pytest
from fakes import free_port

from s3_ray.clients.generator import GeneratorClient
from s3_ray.config import GeneratorConfig, ServeConfig
from s3_ray.generation import build_answer_messages
from s3_ray.types import Passage

pytestmark = pytest.mark.ray



def test_generator_app_batches_handle_calls_and_serves_http(serve_instance, tmp_path) -> None:
    from deployments.generator import GeneratorAppArgs, build_app

    serve = serve_instance
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    args = GeneratorAppArgs(
        generator=GeneratorConfig(model="tiny-random", max_new_tokens=4, cache_path=str(tmp_path / "gen.sqlite")),
        serve=ServeConfig(generator_cpus=0.5, max_batch_size=8, batch_wait_timeout_s=0.2),
    )
    handle = serve.run(build_app(args), name="generator", route_prefix="/generator")

    passage = Passage("p1", '"Ada Lovelace"\nAda was a mathematician.')
    prompts = [[build_answer_messages(f"Question number {i}?", [passage])] for i in range(8)]
    responses = [handle.generate.remote(p) for p in prompts]  # in flight together
    results = [r.result(timeout_s=120) for r in responses]
    assert [len(r) for r in results] == [1] * 8 and all(isinstance(r[0], str) for r in results)
    stats = handle.stats.remote().result(timeout_s=30)
    assert stats["max_requests_per_batch"] > 1, stats
    assert sum(n * c for n, c in stats["requests_per_batch"].items()) == 8
    assert stats["cache_misses"] == 8 and stats["batches"] < 8

    client = GeneratorClient.from_app("generator", timeout_s=60)
    assert client.model_id == "tiny-random"
    again = client.answer(["Question number 3?", "Question number 5?"], [[passage], [passage]])
    assert again == [results[3][0], results[5][0]]
    assert handle.stats.remote().result(timeout_s=30)["cache_hits"] == 2

    base = f"http://127.0.0.1:{port}/generator"
    assert httpx.get(f"{base}/health", timeout=30).json() == {"status": "ok", "model": "tiny-random"}
    body = {"question": "Question number 3?", "passages": [passage.to_dict()]}
    r = httpx.post(f"{base}/answer", json=body, timeout=60)
    assert r.status_code == 200 and r.json() == {"answer": results[3][0]}
    r = httpx.post(f"{base}/answer/batch", json={"questions": ["Question number 5?", "Zero-shot?"],
                                                   "passages": [[passage.to_dict()], []]}, timeout=60)
    assert r.status_code == 200 and len(r.json()["answers"]) == 2 and r.json()["answers"][0] == results[5][0]
    r = httpx.post(f"{base}/answer/batch", json={"questions": ["a?"], "passages": []}, timeout=30)
    assert r.status_code == 422 and "1 questions but 0 passage lists" in r.text
    r = httpx.post(f"{base}/answer", json={"question": "", "passages": []}, timeout=30)
    assert r.status_code == 422
