"""A LoRA run on the real engine (`searcher.lora_push: adapter`): the engine serves LoRA, takes
the base weights once, and after a real update of the adapter gets the adapter alone (a new
LoRARequest); its greedy turns then equal `HFPolicy`'s on the peft model."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest

from engine_start import skip_without_vllm, start_or_fail

skip_without_vllm()

from s3_ray.agent.policy import HFPolicy
from s3_ray.config import TrainConfig
from s3_ray.rl.model.lora import apply_lora
from s3_ray.rl.model.weight_sync import RolloutWeights
from s3_ray.types import QAItem
from turns import GREEDY, QUESTIONS, assert_same_turns, first_prompts, rollout_turns, sft_step

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(1200)]  # a hang guard; ~2 min on 2 idle cores

LORA = TrainConfig(lora_rank=8, lora_alpha=16, kl_coef=0.0)


@pytest.fixture(scope="module")
def lora_run(smollm2: tuple[Any, Any]) -> Iterator[tuple[Any, RolloutWeights]]:
    """(peft policy, its rollout weights with a LoRA-serving engine loaded with the base)."""
    base, tok = smollm2
    policy = apply_lora(copy.deepcopy(base), LORA)
    weights = RolloutWeights()
    start_or_fail(lambda: weights.start_engine(policy, tok, GREEDY, seed=0), "the LoRA-serving vLLM engine")
    yield policy, weights
    weights.engine.close()


def test_adapter_push_then_turns_equal_hfpolicy_on_the_peft_model(lora_run: tuple[Any, RolloutWeights],
                                                                  smollm2: tuple[Any, Any], test_questions: list[QAItem],
                                                                  embedded_bm25: Any) -> None:
    policy, weights = lora_run
    engine = weights.engine
    _, tok = smollm2
    items = test_questions[:QUESTIONS]
    assert engine.max_lora_rank == 8 and engine.weight_syncs == 1  # the base, once
    base_bytes = engine.last_sync.nbytes
    weights.push(policy)  # the (still zero) adapter
    before, _ = rollout_turns(engine, tok, items, embedded_bm25)

    prompts = first_prompts(items, tok, embedded_bm25)
    policy.requires_grad_(False)
    for name, p in policy.named_parameters():
        p.requires_grad_(".lora_" in name)
    sft_step(policy, tok, items[:2], prompts[:2], '<query>{"query": "founder of the town"}</query>', lr=1e-2)
    weights.mark_stale()
    seconds = weights.push(policy)
    sync = engine.last_sync
    print(f"\nadapter push: {sync.nbytes / 2**20:.2f} MiB in {seconds:.3f} s "
          f"(the base weights were {base_bytes / 2**20:.0f} MiB)")
    assert sync.kind == "adapter" and sync.nbytes < base_bytes / 20 and engine.weight_syncs == 3
    assert engine.adapter.lora_int_id == 3

    got, got_trajs = rollout_turns(engine, tok, items, embedded_bm25)
    want, _ = rollout_turns(HFPolicy(policy, tok, GREEDY), tok, items, embedded_bm25)
    assert got != before, "the pushed adapter did not change the engine's greedy turns"
    assert_same_turns(tok, got, want)
    assert sum(t.metrics["searches"] for t in got_trajs) >= 1
