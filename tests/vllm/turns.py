"""What the real-engine searcher tests share: the greedy settings, recording every turn a policy
writes in a rollout, and one real optimizer step that changes what the model writes."""

from __future__ import annotations

from typing import Any

import torch

from engine_start import MODEL
from s3_ray.agent.prompt import build_searcher_messages, encode_prompt
from s3_ray.agent.rollout import initial_passages, run_rollout
from s3_ray.config import RolloutConfig, SearcherConfig
from s3_ray.rl.algo.batch import collate, first_trained_position, grid_logprobs
from s3_ray.types import QAItem, Trajectory

GREEDY = SearcherConfig(model=MODEL, temperature=0.0, max_new_tokens=32, max_prompt_tokens=1536, backend="vllm")
BUDGET = RolloutConfig(init_k=3, top_k=3, keep_per_turn=2, max_turns=2)
QUESTIONS = 3


class Recorder:
    """A policy that records every turn it writes (one list of token-id rows per call)."""

    def __init__(self, policy: Any) -> None:
        self.policy = policy
        self.calls: list[list[list[int]]] = []

    def generate(self, seqs: list[list[int]]) -> list[list[int]]:
        out = self.policy.generate(seqs)
        self.calls.append([list(row) for row in out])
        return out

    def reset_cache(self) -> None:
        release = getattr(self.policy, "reset_cache", None)
        if callable(release):
            release()


Turns = list[list[list[int]]]
"""Token ids of every row of every policy call, in call order."""


def rollout_turns(policy: Any, tok: Any, items: list[QAItem], retriever: Any) -> tuple[Turns, list[Trajectory]]:
    """Every turn `policy` wrote in one greedy rollout over `items`, and the trajectories."""
    rec = Recorder(policy)
    trajs = run_rollout(items, rec, tok, retriever, BUDGET, GREEDY)
    return rec.calls, trajs


def assert_same_turns(tok: Any, got: Turns, want: Turns) -> None:
    """Same number of policy calls, and every row of every call the same token ids."""
    assert [len(c) for c in got] == [len(c) for c in want]
    for call, (g, w) in enumerate(zip(got, want)):
        for row, (gi, wi) in enumerate(zip(g, w)):
            assert gi == wi, f"call {call}, row {row}: vLLM {tok.decode(gi)!r} != HF {tok.decode(wi)!r}"


def first_prompts(items: list[QAItem], tok: Any, retriever: Any) -> list[list[int]]:
    """The token ids each episode's first turn starts from (instruction, question, naive top-k)."""
    docs = initial_passages(items, retriever, BUDGET.init_k)
    return [encode_prompt(tok, build_searcher_messages(it.search_text, d, BUDGET)) for it, d in zip(items, docs)]


def sft_step(model: Any, tok: Any, items: list[QAItem], prompts: list[list[int]], target: str, lr: float) -> None:
    """One real optimizer step (AdamW) on the NLL of `target` as the first turn after each prompt."""
    ids = list(tok.encode(target, add_special_tokens=False))
    rows = [Trajectory(it, list(p), list(ids), [1] * len(ids)) for it, p in zip(items, prompts)]
    batch = collate(rows, pad_id=tok.pad_token_id)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    start = first_trained_position(batch.loss_mask)
    logp = grid_logprobs(model, batch.input_ids, batch.attention_mask, temperature=1.0, start=start).logprobs
    mask = batch.loss_mask[:, start:]
    loss = -(logp * mask).sum() / mask.sum()
    loss.backward()
    opt.step()
    model.eval()
    model.requires_grad_(False)
