"""The OpenAI-compatible backend against a real HTTP server on 127.0.0.1 (FastAPI in a thread)."""

from __future__ import annotations

import asyncio
import pickle
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI, Request  # module level: the handler's annotations are resolved here
from fastapi.responses import JSONResponse

from s3_ray.config import GeneratorConfig
from s3_ray.generation import (
    CachedGenerator,
    OpenAICompatError,
    OpenAICompatGenerator,
    PromptTooLongError,
    ResponseCache,
    build_generator,
    cache_key,
)
from s3_ray.generation.fit import CharEstimateCounter, ChatTemplateCounter, load_local_tokenizer
from s3_ray.generation.prompt import build_answer_messages, split_context
from s3_ray.types import Passage

KEY = "sk-test-SECRET-9f8e7d"


class FakeOpenAI:
    """Chat-completions server whose failures and delays are scripted per test."""

    def __init__(self) -> None:
        self.fail_plan: Counter[str] = Counter()  # user content -> how many 500s before success
        self.status_for: dict[str, int] = {}       # user content -> permanent status
        self.required_key: str | None = None
        self.delay_s = 0.0
        self.in_flight = 0
        self.max_in_flight = 0
        self.requests = 0
        self.bodies: list[dict[str, Any]] = []
        self.prompt_logprobs = False  # like vLLM's server: log-probs of the prompt's own tokens
        self.app = self._build()

    def _build(self) -> Any:
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Any:
            body = await request.json()
            self.requests += 1
            self.bodies.append(body)
            auth = request.headers.get("authorization", "")
            if self.required_key is not None and auth != f"Bearer {self.required_key}":
                # a careless server that echoes the credential it got
                return JSONResponse({"error": {"message": f"Incorrect API key provided: {auth}"}}, status_code=401)
            content = body["messages"][-1]["content"]
            if content in self.status_for:
                return JSONResponse({"error": {"message": "bad request"}}, status_code=self.status_for[content])
            if self.fail_plan[content] > 0:
                self.fail_plan[content] -= 1
                return JSONResponse({"error": {"message": "overloaded"}}, status_code=500)
            if self.prompt_logprobs and body.get("prompt_logprobs") is not None:
                assert body["continue_final_message"] and not body["add_generation_prompt"]
                # one "token" per word of the whole prompt; each word w has log-prob -len(w)/10
                words = " ".join(m["content"] for m in body["messages"]).split(" ")
                entries = [None] + [{str(i): {"logprob": -len(w) / 10, "rank": 1, "decoded_token": f" {w}"}}
                                    for i, w in enumerate(words[1:], 1)]
                return {"id": "x", "object": "chat.completion", "model": body["model"], "prompt_logprobs": entries,
                        "choices": [{"index": 0, "finish_reason": "length",
                                     "message": {"role": "assistant", "content": "x"}}]}
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                await asyncio.sleep(self.delay_s)
            finally:
                self.in_flight -= 1
            return {"id": "x", "object": "chat.completion", "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": f" echo:{content}\nmore text"}}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}}

        return app


@pytest.fixture()
def server() -> Iterator[tuple[FakeOpenAI, str]]:
    import uvicorn

    fake = FakeOpenAI()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(fake.app, log_level="error", lifespan="off"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 10
    while not srv.started:
        if time.time() > deadline:
            raise RuntimeError("fake server did not start")
        time.sleep(0.01)
    yield fake, f"http://127.0.0.1:{port}/v1"
    srv.should_exit = True
    thread.join(timeout=5)
    sock.close()


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "Answer."}, {"role": "user", "content": text}]


def make(url: str, **kw: Any) -> OpenAICompatGenerator:
    kw.setdefault("backoff_s", 0.01)
    return OpenAICompatGenerator("served-model", url, api_key_env="S3RAY_TEST_KEY", **kw)


def test_answers_in_order_first_line_and_usage(server, monkeypatch) -> None:
    fake, url = server
    monkeypatch.setenv("S3RAY_TEST_KEY", KEY)
    fake.required_key = KEY
    gen = make(url, max_new_tokens=7, max_concurrency=4)
    prompts = [user(f"q{i}") for i in range(10)]
    assert gen.generate(prompts) == [f"echo:q{i}" for i in range(10)]
    body = fake.bodies[0]
    assert body["model"] == "served-model" and body["max_tokens"] == 7 and body["temperature"] == 0.0
    assert body["messages"] in prompts
    s = gen.stats()
    assert (s["calls"], s["prompts"], s["requests"], s["retries"]) == (1, 10, 10, 0)
    assert (s["prompt_tokens"], s["completion_tokens"]) == (100, 30)
    assert s["completion_tokens_per_s"] > 0 and 0 < s["latency_p50_s"] <= s["latency_p95_s"]
    assert gen.generate([]) == []


def test_retries_after_500_then_succeeds(server) -> None:
    fake, url = server
    fake.fail_plan["flaky"] = 2
    gen = make(url, max_retries=3)
    assert gen.generate([user("flaky"), user("fine")]) == ["echo:flaky", "echo:fine"]
    assert fake.requests == 4 and gen.stats()["retries"] == 2


def test_gives_up_after_max_retries_naming_the_status(server) -> None:
    fake, url = server
    fake.fail_plan["down"] = 10
    gen = make(url, max_retries=2)
    with pytest.raises(OpenAICompatError, match=r"failed after 3 attempts, last HTTP 500.*overloaded"):
        gen.generate([user("down")])
    assert fake.requests == 3


def test_400_is_not_retried(server) -> None:
    fake, url = server
    fake.status_for["bad"] = 400
    gen = make(url, max_retries=3)
    with pytest.raises(OpenAICompatError, match="HTTP 400"):
        gen.generate([user("bad")])
    assert fake.requests == 1


def test_401_is_clear_and_never_shows_the_key(server, monkeypatch) -> None:
    fake, url = server
    fake.required_key = "the-right-key"
    monkeypatch.setenv("S3RAY_TEST_KEY", KEY)
    gen = make(url, max_retries=3)
    with pytest.raises(OpenAICompatError) as info:
        gen.generate([user("q")])
    msg = str(info.value)
    assert "authentication failed (HTTP 401)" in msg and "$S3RAY_TEST_KEY" in msg
    assert KEY not in msg and "***" in msg  # the server echoed it; it was scrubbed
    assert fake.requests == 1
    for text in (repr(gen), gen.model_id, str(gen.decoding), cache_key(gen.model_id, gen.decoding, user("q"))):
        assert KEY not in text
    assert KEY.encode() not in pickle.dumps(gen)


def test_concurrency_bound_is_respected(server) -> None:
    fake, url = server
    fake.delay_s = 0.05
    gen = make(url, max_concurrency=3)
    start = time.perf_counter()
    assert len(gen.generate([user(f"c{i}") for i in range(12)])) == 12
    elapsed = time.perf_counter() - start
    assert fake.max_in_flight == 3 and gen.stats()["max_in_flight"] == 3
    assert elapsed >= 4 * 0.05  # 12 requests, 3 at a time, 50 ms each
    gen1 = make(url, max_concurrency=1)
    fake.max_in_flight = 0
    gen1.generate([user(f"d{i}") for i in range(4)])
    assert fake.max_in_flight == 1


def test_connection_refused_is_retried_then_reported() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    gen = make(f"http://127.0.0.1:{port}/v1", max_retries=2)
    with pytest.raises(OpenAICompatError, match=r"failed after 3 attempts: ConnectError"):
        gen.generate([user("q")])
    assert gen.stats()["retries"] == 2


def test_pickled_generator_works_and_cache_wraps_it(server, tmp_path) -> None:
    fake, url = server
    gen = pickle.loads(pickle.dumps(make(url)))
    cached = CachedGenerator(gen, ResponseCache(tmp_path / "c.sqlite"))
    assert cached.generate([user("a"), user("a"), user("b")]) == ["echo:a", "echo:a", "echo:b"]
    assert cached.generate([user("a")]) == ["echo:a"]
    assert fake.requests == 2 and cached.stats()["cache_hits"] == 2


def test_build_generator_openai_and_validation(server, tmp_path) -> None:
    _, url = server
    gen = build_generator(GeneratorConfig(backend="openai", model="served-model", base_url=url, cache_path=None))
    assert isinstance(gen, OpenAICompatGenerator) and gen.generate([user("x")]) == ["echo:x"]
    cached = build_generator(GeneratorConfig(backend="openai", model="m", base_url=url,
                                             cache_path=str(tmp_path / "c.sqlite")))
    assert isinstance(cached, CachedGenerator) and cached.decoding["backend"] == "openai"
    with pytest.raises(ValueError, match="generator.base_url must be set"):
        build_generator(GeneratorConfig(backend="openai"))
    with pytest.raises(ValueError, match="http"):
        OpenAICompatGenerator("m", "127.0.0.1:8000")
    with pytest.raises(ValueError, match="temperature=0.5 is only supported by the openai backend"):
        build_generator(GeneratorConfig(temperature=0.5))


# context budget ---------------------------------------------------------------------------------
QUESTION = "Who founded the river company?"
LONG = [Passage(str(i), f'"Doc{i}"\n' + "river town company founder " * 40) for i in range(4)]


def test_long_context_is_cut_by_the_estimate_without_a_tokenizer(server) -> None:
    fake, url = server
    msgs = build_answer_messages(QUESTION, LONG)
    gen = make(url, max_context_tokens=300)
    assert gen.decoding["context_fit"] == "chars/3"
    assert gen.generate([msgs]) == [f"echo:{QUESTION}"]
    sent = fake.bodies[-1]["messages"]
    assert sent[1]["content"] == QUESTION
    assert len(sent[0]["content"]) < len(msgs[0]["content"]) and split_context(sent) is not None
    assert "Doc 1 (Title: Doc0)" in sent[0]["content"] and "Doc 4 (Title: Doc3)" not in sent[0]["content"]
    assert len(CharEstimateCounter().render(sent)) <= 300 < len(CharEstimateCounter().render(msgs))
    assert gen.stats()["truncated_prompts"] == 1
    roomy = make(url, max_context_tokens=100_000)
    roomy.generate([msgs])
    assert fake.bodies[-1]["messages"] == msgs and roomy.stats()["truncated_prompts"] == 0
    with pytest.raises(PromptTooLongError, match="max_context_tokens=300 and has no contexts"):
        gen.generate([user("word " * 400)])
    assert len(fake.bodies) == 2  # the over-long prompt never reached the server


def test_long_context_is_cut_with_a_local_tokenizer(server) -> None:
    fake, url = server
    gen = OpenAICompatGenerator("tiny-random", url, max_context_tokens=160)
    assert gen.decoding["context_fit"] == "tokenizer"
    msgs = build_answer_messages(QUESTION, LONG)
    assert gen.generate([msgs]) == [f"echo:{QUESTION}"]
    sent = fake.bodies[-1]["messages"]
    counter = ChatTemplateCounter(load_local_tokenizer("tiny-random"))
    assert len(counter.render(sent)) <= 160 < len(counter.render(msgs))
    assert sent[1]["content"] == QUESTION and "Important: You MUST directly answer" in sent[0]["content"]


def test_decoding_and_pickle_carry_max_context_tokens(server) -> None:
    _, url = server
    a, b = make(url, max_context_tokens=256), make(url, max_context_tokens=512)
    assert a.decoding["max_context_tokens"] == 256 and b.decoding["max_context_tokens"] == 512
    assert cache_key(a.model_id, a.decoding, user("q")) != cache_key(b.model_id, b.decoding, user("q"))
    assert pickle.loads(pickle.dumps(a)).decoding == a.decoding
    built = build_generator(GeneratorConfig(backend="openai", model="served-model", base_url=url, cache_path=None,
                                            max_context_tokens=96))
    assert built.decoding["max_context_tokens"] == 96
    with pytest.raises(ValueError, match="max_context_tokens"):
        make(url, max_context_tokens=0)


def test_answer_logprobs_from_prompt_logprobs_best_alias(server) -> None:
    fake, url = server
    fake.prompt_logprobs = True
    gen = make(url)
    got = gen.answer_logprobs([user("Where?"), user("Who?")], [["Paris", "the city of Paris"], ["Ada"]])
    # "Paris": one word of 5 letters (-0.5); "the city of Paris": mean of -0.3, -0.4, -0.2, -0.5 = -0.35
    assert got == pytest.approx([-0.35, -0.3])
    body = fake.bodies[-1]
    assert body["messages"][-1]["role"] == "assistant" and body["max_tokens"] == 1


def test_a_server_without_prompt_logprobs_is_refused_in_one_line(server, tmp_path) -> None:
    from s3_ray.clients.generator import GeneratorClient
    from s3_ray.config import RewardConfig
    from s3_ray.generation.likelihood import AnswerLogprobUnsupported
    from s3_ray.reward import BaselineCache, BaselineSettings, RewardScorer

    fake, url = server  # answers chat completions, ignores prompt_logprobs (like hosted APIs)
    with pytest.raises(AnswerLogprobUnsupported, match="no prompt_logprobs"):
        make(url).answer_logprobs([user("Where?")], [["Paris"]])
    settings = BaselineSettings(generator="served-model", init_k=3, retriever="r", backend="openai", decoding="d")
    scorer = RewardScorer(GeneratorClient.in_process(make(url)), BaselineCache(tmp_path / "b.jsonl", settings),
                          RewardConfig(metric="answer_logprob"))
    with pytest.raises(AnswerLogprobUnsupported, match="reward.metric=answer_logprob needs") as info:
        scorer.check_metric()
    assert "\n" not in str(info.value)
    fake.status_for["Paris"] = 400  # a server that rejects the parameter (the probe's gold answer)
    with pytest.raises(AnswerLogprobUnsupported, match="refused prompt log-probs"):
        scorer.check_metric()
