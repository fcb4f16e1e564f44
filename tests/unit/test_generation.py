"""Prompts, the transformers backend (tiny-random), the response cache and the generator client."""

from __future__ import annotations

import math
import multiprocessing
import pickle
from typing import Any

import pytest

from s3_ray.clients.generator import GeneratorCallError, GeneratorClient
from s3_ray.generation import (
    CachedGenerator,
    PromptTooLongError,
    ResponseCache,
    TransformersGenerator,
    build_answer_messages,
    build_judge_messages,
    format_context,
    parse_judge_reply,
)
from s3_ray.generation.prompt import split_context
from s3_ray.types import Passage

P1 = Passage("p1", '"Ada Lovelace"\nAda was a mathematician.')
P2 = Passage("p2", '"Charles Babbage"\nBabbage designed engines.')


class CountingGenerator:
    """Deterministic fake: echoes the user message; records every batch it is asked for."""

    def __init__(self, model_id: str = "fake", decoding: dict[str, Any] | None = None) -> None:
        self._model_id = model_id
        self._decoding = decoding or {"greedy": True}
        self.batches: list[int] = []

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def decoding(self) -> dict[str, Any]:
        return self._decoding

    def generate(self, prompts: list[list[dict[str, str]]]) -> list[str]:
        self.batches.append(len(prompts))
        return [f"ans:{m[-1]['content']}" for m in prompts]


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


# prompts ----------------------------------------------------------------------------------
def test_answer_prompt_matches_s3_wording() -> None:
    msgs = build_answer_messages("Who designed engines?", [P1, P2, P1])
    assert msgs[0]["role"] == "system" and msgs[1] == {"role": "user", "content": "Who designed engines?"}
    assert msgs[0]["content"] == (
        "Use the following contexts (some might be irrelevant) on demand:\nContexts:\n"
        "Doc 1 (Title: Ada Lovelace)\nAda was a mathematician.\n"
        "Doc 2 (Title: Charles Babbage)\nBabbage designed engines.\n"
        "\nImportant: You MUST directly answer the question without any other text and thinking."
    )


def test_format_context_renumbers_after_dedup() -> None:
    text = format_context([P2, P2, P1])
    assert text.startswith("Doc 1 (Title: Charles Babbage)") and "Doc 2 (Title: Ada Lovelace)" in text
    assert "Doc 3" not in text


def test_zero_shot_prompt_has_no_contexts_and_bad_question_fails() -> None:
    msgs = build_answer_messages("Q?", [])
    assert "Contexts" not in msgs[0]["content"] and split_context(msgs) is None
    with pytest.raises(ValueError, match="question"):
        build_answer_messages("  ", [P1])


def test_judge_prompt_and_reply() -> None:
    content = build_judge_messages("It is Paris", ["Paris", "City of Light"])[0]["content"]
    assert "It is Paris" in content and "['Paris', 'City of Light']" in content
    assert parse_judge_reply(" YES") and not parse_judge_reply("No.") and not parse_judge_reply("")


# transformers backend -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny() -> TransformersGenerator:
    import torch

    gen = TransformersGenerator("tiny-random", max_new_tokens=6, batch_size=3, max_context_tokens=160)
    torch.manual_seed(1)  # random init emits only newlines; spread the weights so outputs vary
    for p in gen.model.parameters():
        p.data.normal_(0.0, 0.5)
    return gen


def _prompts() -> list[list[dict[str, str]]]:
    qs = ["Who founded the company?", "Where was the mayor born?", "What year?", "In which town is the river?",
          "x", "Who is the founder of the town river company?", "When?"]
    return [build_answer_messages(q, [P1, P2][: i % 3]) for i, q in enumerate(qs)]


def test_tiny_batched_generation_keeps_order_and_counts_batches(tiny: TransformersGenerator) -> None:
    prompts = _prompts()
    before = tiny.stats()
    batched = tiny.generate(prompts)
    after = tiny.stats()
    assert len(batched) == len(prompts) and all(isinstance(a, str) and "\n" not in a for a in batched)
    assert len(set(batched)) > 1  # outputs really depend on the prompt
    assert after["batches"] - before["batches"] == math.ceil(len(prompts) / 3)
    assert after["max_batch"] == 3 and after["prompts"] - before["prompts"] == len(prompts)
    assert after["completion_tokens"] > before["completion_tokens"] and after["seconds"] > before["seconds"]
    one_by_one = [tiny.generate([p])[0] for p in prompts]
    assert batched == one_by_one  # left padding + sort/restore change nothing


def test_tiny_cuts_contexts_to_budget(tiny: TransformersGenerator) -> None:
    long_passages = [Passage(str(i), f'"Doc{i}"\n' + "river town company " * 30) for i in range(4)]
    msgs = build_answer_messages("Who founded the company?", long_passages)
    ids, cut = tiny.fit(msgs)
    assert cut and len(ids) <= tiny.max_context_tokens
    text = tiny.tokenizer.decode(ids)
    assert text.rstrip().endswith("Who founded the company?<|im_end|>\n<|im_start|>assistant")
    assert "Doc 1 (Title: Doc0)" in text and "Important: You MUST directly answer" in text
    short_ids, short_cut = tiny.fit(build_answer_messages("Q?", [P1]))
    assert not short_cut and len(short_ids) < len(ids)
    before = tiny.stats()["truncated_prompts"]
    assert len(tiny.generate([msgs])) == 1 and tiny.stats()["truncated_prompts"] == before + 1


def test_tiny_rejects_prompt_without_contexts_over_budget(tiny: TransformersGenerator) -> None:
    with pytest.raises(PromptTooLongError, match="max_context_tokens=160"):
        tiny.generate([user("word " * 400)])


def test_tiny_validates_prompts(tiny: TransformersGenerator) -> None:
    assert tiny.generate([]) == []
    with pytest.raises(ValueError, match=r"prompts\[1\]\[0\]"):
        tiny.generate([user("ok"), [{"role": "user", "text": "bad"}]])


# response cache -----------------------------------------------------------------------------
def test_cache_hits_misses_and_dedup(tmp_path) -> None:
    inner = CountingGenerator()
    gen = CachedGenerator(inner, ResponseCache(tmp_path / "c.sqlite"))
    assert gen.generate([user("a"), user("b"), user("a")]) == ["ans:a", "ans:b", "ans:a"]
    assert inner.batches == [2]  # one call, unique misses only
    assert gen.generate([user("b"), user("c"), user("a")]) == ["ans:b", "ans:c", "ans:a"]
    assert inner.batches == [2, 1]
    s = gen.stats()
    assert (s["cache_hits"], s["cache_misses"]) == (3, 3) and s["cache_hit_rate"] == pytest.approx(0.5)
    gen.generate([user("a")])
    assert inner.batches == [2, 1]  # all hits: inner not called


def test_cache_persists_across_instances_and_pickles(tmp_path) -> None:
    path = tmp_path / "sub" / "c.sqlite"
    CachedGenerator(CountingGenerator(), ResponseCache(path)).generate([user("q1"), user("q2")])
    cache = pickle.loads(pickle.dumps(ResponseCache(path)))
    inner = CountingGenerator()
    assert CachedGenerator(inner, cache).generate([user("q2"), user("q1")]) == ["ans:q2", "ans:q1"]
    assert inner.batches == [] and len(cache) == 2


def test_cache_invalidates_on_model_or_decoding_change(tmp_path) -> None:
    path = tmp_path / "c.sqlite"
    CachedGenerator(CountingGenerator(), ResponseCache(path)).generate([user("q")])
    for inner in (CountingGenerator(decoding={"greedy": True, "max_new_tokens": 99}), CountingGenerator("other")):
        CachedGenerator(inner, ResponseCache(path)).generate([user("q")])
        assert inner.batches == [1]
    same = CountingGenerator()
    CachedGenerator(same, ResponseCache(path)).generate([user("q")])
    assert same.batches == []


def _writer(path: str, start: int) -> None:
    cache = ResponseCache(path)
    for i in range(start, start + 50):
        cache.put_many({f"k{i}": f"v{i}"})


def test_cache_is_safe_for_concurrent_processes(tmp_path) -> None:
    path = str(tmp_path / "c.sqlite")
    ResponseCache(path)
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(path, s)) for s in (0, 50, 100)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    cache = ResponseCache(path)
    assert len(cache) == 150 and cache.get_many(["k0", "k149"]) == {"k0": "v0", "k149": "v149"}


# client -------------------------------------------------------------------------------------
def test_client_in_process_answer_builds_s3_prompts() -> None:
    inner = CountingGenerator()
    client = GeneratorClient.in_process(inner)
    assert client.answer(["Q1?", "Q2?"], [[P1], []]) == ["ans:Q1?", "ans:Q2?"]
    assert client.model_id == "fake" and inner.batches == [2]
    with pytest.raises(ValueError, match="2 questions but 1 contexts"):
        client.answer(["a", "b"], [[]])


class _Resp:
    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def result(self, timeout_s: float | None = None) -> Any:
        return self.fn()


class FlakyHandle:
    """Mimics a DeploymentHandle whose first `failures` generate calls time out."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0
        outer = self

        class _Method:
            def remote(self, prompts: Any) -> _Resp:
                def run() -> list[str]:
                    outer.calls += 1
                    if outer.calls <= outer.failures:
                        raise TimeoutError("replica busy")
                    return ["ok"] * len(prompts)
                return _Resp(run)

        self.generate = _Method()


def test_client_retries_then_gives_up() -> None:
    handle = FlakyHandle(failures=2)
    client = GeneratorClient.from_handle(handle, retries=2, backoff_s=0.0)
    assert client.generate([user("a")]) == ["ok"] and handle.calls == 3
    handle = FlakyHandle(failures=5)
    client = GeneratorClient.from_handle(handle, retries=1, backoff_s=0.0)
    with pytest.raises(GeneratorCallError, match="failed after 2 attempts"):
        client.generate([user("a")])


def test_client_from_app_pickles_without_handle() -> None:
    client = GeneratorClient.from_app("gen", timeout_s=5)
    client._handle = object()  # as if resolved in this process
    copy = pickle.loads(pickle.dumps(client))
    assert copy.app_name == "gen" and copy._handle is None and copy.timeout_s == 5
