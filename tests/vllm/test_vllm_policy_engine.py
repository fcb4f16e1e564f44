"""`searcher.backend=vllm` on the real engine (SmolLM2-135M-Instruct, fp32, CPU build of vLLM):
greedy rollouts equal `HFPolicy`'s turn for turn, and after a weight push the engine samples from
the new weights (equal greedy turns, log-probs equal to the trainer's)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest

from engine_start import MODEL, skip_without_vllm, start_or_fail

skip_without_vllm()

from s3_ray.agent.policy import HFPolicy
from s3_ray.agent.vllm_policy import VLLMPolicy
from s3_ray.rl.algo.batch import collate, token_logprobs
from s3_ray.rl.model.weight_sync import iter_policy_weights
from s3_ray.types import QAItem, Trajectory
from turns import GREEDY, QUESTIONS, assert_same_turns, first_prompts, rollout_turns, sft_step

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(1200)]  # a hang guard; ~2-3 min on 2 idle cores

BUCKET_BYTES = 16 << 20
"""Small buckets: a weight push reaches the worker in dozens of pieces, each loaded as whole layers."""

LOGPROB_TOL = 1e-3
"""Engine vs trainer log-probs of the same tokens, both fp32. They differ only by rounding: vLLM
fuses q/k/v and gate/up into single matmuls and runs its own paged CPU attention, transformers
runs separate matmuls and SDPA, so sums are taken in another order through 30 layers (measured:
max 3e-5 over 72 sampled tokens, 4.5e-5 in other runs; 1e-3 leaves 20x room). Stale weights (the
model before the push) are off by several nats (measured 8.2), which the test checks too
(> 100 x the tolerance)."""


@pytest.fixture(scope="module")
def engine(smollm2: tuple[Any, Any]) -> Iterator[VLLMPolicy]:
    """One rollout engine for the module (a start costs ~40 s here); stopped at the end."""
    _, tok = smollm2
    policy = start_or_fail(lambda: VLLMPolicy(MODEL, tok, GREEDY, seed=0, bucket_bytes=BUCKET_BYTES),
                           "the vLLM rollout engine")
    yield policy
    policy.close()


@pytest.fixture(scope="module")
def items(test_questions: list[QAItem]) -> list[QAItem]:
    return test_questions[:QUESTIONS]


def test_greedy_rollout_turns_equal_hfpolicy(engine: VLLMPolicy, smollm2: tuple[Any, Any], items: list[QAItem],
                                             embedded_bm25: Any) -> None:
    model, tok = smollm2
    got, got_trajs = rollout_turns(engine, tok, items, embedded_bm25)
    want, want_trajs = rollout_turns(HFPolicy(model, tok, GREEDY), tok, items, embedded_bm25)
    assert_same_turns(tok, got, want)
    assert [t.response_ids for t in got_trajs] == [t.response_ids for t in want_trajs]
    # real turns: tag-ended ones, and (the untrained model rambles) rows cut by the token budget
    assert all(sum(t.loss_mask) > 0 for t in got_trajs)
    assert any(len(row) == GREEDY.max_new_tokens for call in got for row in call)


def engine_logprobs(policy: VLLMPolicy, prompts: list[list[int]],
                    max_tokens: int) -> list[tuple[list[int], list[float]]]:
    """Sample at temperature 1 on the engine; (token ids, their log-probs as the engine reports them)."""
    import vllm

    params = [vllm.SamplingParams(temperature=1.0, max_tokens=max_tokens, logprobs=0, seed=i)
              for i in range(len(prompts))]
    outs = policy.llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    result = []
    for out in outs:
        comp = out.outputs[0]
        ids = list(comp.token_ids)
        result.append((ids, [step[t].logprob for t, step in zip(ids, comp.logprobs)]))
    return result


def trainer_logprobs(model: Any, tok: Any, prompts: list[list[int]], samples: list[list[int]],
                     items: list[QAItem]) -> list[list[float]]:
    """`token_logprobs` (the trainer's old-policy log-probs) of each sample after its prompt."""
    rows = [Trajectory(it, list(p), list(s), [1] * len(s)) for it, p, s in zip(items, prompts, samples)]
    batch = collate(rows, pad_id=tok.pad_token_id)
    lp = token_logprobs(model, batch, temperature=1.0)
    return [lp[i][batch.loss_mask[i].bool()].tolist() for i in range(len(rows))]


def test_weight_push_then_turns_and_logprobs_follow_the_new_weights(engine: VLLMPolicy, smollm2: tuple[Any, Any],
                                                                    items: list[QAItem], embedded_bm25: Any) -> None:
    """Last in the module: it leaves the engine on the trained weights."""
    base, tok = smollm2
    prompts = first_prompts(items, tok, embedded_bm25)
    before = engine.generate(prompts)

    trainee = copy.deepcopy(base)
    trainee.requires_grad_(True)
    sft_step(trainee, tok, items[:2], prompts[:2], '<query>{"query": "founder of the town"}</query>', lr=5e-4)
    seconds = engine.load_weights(iter_policy_weights(trainee))  # streamed, BUCKET_BYTES at a time
    sync = engine.last_sync
    print(f"\nweight push: {sync.tensors} tensors, {sync.nbytes / 2**20:.1f} MiB in {seconds:.2f} s; "
          f"rows resumed after a false <search_complete> so far: {engine.resumed_rows}")
    assert engine.weight_syncs == 1 and sync.nbytes > 10 * BUCKET_BYTES  # loaded over many partial reloads

    got, got_trajs = rollout_turns(engine, tok, items, embedded_bm25)
    want, _ = rollout_turns(HFPolicy(trainee, tok, GREEDY), tok, items, embedded_bm25)
    assert got[0] != before, "the pushed weights did not change the engine's greedy turns"
    assert_same_turns(tok, got, want)
    assert sum(t.metrics["searches"] for t in got_trajs) >= 1  # the new weights search: multi-turn episodes

    samples = engine_logprobs(engine, prompts, max_tokens=24)
    ids = [s for s, _ in samples]
    new = trainer_logprobs(trainee, tok, prompts, ids, items)
    old = trainer_logprobs(base, tok, prompts, ids, items)
    assert [len(e) for _, e in samples] == [len(n) for n in new]
    diff_new = max(abs(a - b) for (_, e), n in zip(samples, new) for a, b in zip(e, n))
    diff_old = max(abs(a - b) for (_, e), o in zip(samples, old) for a, b in zip(e, o))
    n_tokens = sum(len(s) for s in ids)
    print(f"log-probs of {n_tokens} sampled tokens: max |engine - trainer| = {diff_new:.2e} "
          f"(trainer on the weights before the push: {diff_old:.2e})")
    assert n_tokens >= 40
    assert diff_new < LOGPROB_TOL
    assert diff_old > 100 * LOGPROB_TOL
