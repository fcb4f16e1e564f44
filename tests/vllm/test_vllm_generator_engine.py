"""`generator.backend=vllm` on the real engine answers the embedded questions exactly as the
transformers backend does: same fitted prompts, same greedy answers, and the same gold-answer
log-likelihoods (the dense reward metric) within float tolerance."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from engine_start import MODEL, skip_without_vllm, start_or_fail

skip_without_vllm()

from s3_ray.eval.methods import NaiveRAG
from s3_ray.generation import build_answer_messages
from s3_ray.generation.hf import TransformersGenerator
from s3_ray.generation.vllm_backend import VLLMGenerator
from s3_ray.types import QAItem

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]  # a hang guard; ~1.5 min on 2 idle cores

QUESTIONS = 16
MAX_NEW, MAX_CONTEXT = 24, 768  # the generator config's defaults


def hf_generator() -> TransformersGenerator:
    return TransformersGenerator(MODEL, max_new_tokens=MAX_NEW, max_context_tokens=MAX_CONTEXT, num_threads=2)


@pytest.fixture(scope="module")
def vllm_generator() -> Iterator[VLLMGenerator]:
    """One generator engine for the module; stopped at the end."""
    gen = start_or_fail(lambda: VLLMGenerator(MODEL, max_new_tokens=MAX_NEW, max_context_tokens=MAX_CONTEXT),
                        "the vLLM generator engine")
    yield gen
    gen.close()


def test_answers_equal_the_transformers_backend(vllm_generator: VLLMGenerator, test_questions: list[QAItem],
                                                embedded_bm25: Any) -> None:
    items = test_questions[:QUESTIONS]
    contexts = NaiveRAG(embedded_bm25, 3).contexts(items)
    prompts = [build_answer_messages(it.question, out.passages) for it, out in zip(items, contexts)]
    hf = hf_generator()

    # the engine's own tokenizer and chat template render the same prompt ids, cut the same way
    assert [vllm_generator.fit(m) for m in prompts] == [hf.fit(m) for m in prompts]
    got = vllm_generator.generate(prompts)
    want = hf.generate(prompts)
    for i, (g, w) in enumerate(zip(got, want)):
        assert g == w, f"question {items[i].id} ({items[i].question!r}): vLLM {g!r} != transformers {w!r}"
    assert len(got) == QUESTIONS and sum(1 for a in got if a) >= QUESTIONS // 2  # real answers, not blanks
    stats = vllm_generator.stats()
    assert stats["prompts"] == QUESTIONS and stats["completion_tokens"] > 0
    assert stats["truncated_prompts"] == hf.stats()["truncated_prompts"]
    assert vllm_generator.decoding["backend"] == "vllm"


def test_answer_logprobs_equal_the_transformers_backend(vllm_generator: VLLMGenerator,
                                                        test_questions: list[QAItem], embedded_bm25: Any) -> None:
    items = test_questions[:8]
    contexts = NaiveRAG(embedded_bm25, 3).contexts(items)
    prompts = [build_answer_messages(it.question, out.passages) for it, out in zip(items, contexts)]
    golds = [[*it.golden_answers, "an answer that is wrong"] for it in items]
    got = vllm_generator.answer_logprobs(prompts, golds)
    want = hf_generator().answer_logprobs(prompts, golds)
    assert len(got) == len(items) and all(v < 0 for v in got)
    # bf16/fp32 kernels differ a little; a mean token log-probability is several nats wide
    assert got == pytest.approx(want, abs=0.05)
