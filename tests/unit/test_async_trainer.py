"""The asynchronous trainer with rollout workers in this process: it learns under S = 2, keeps
every group within S versions, reports staleness and importance weights, and resumes."""

from __future__ import annotations

import copy
import statistics

import pytest
import torch

from fakes import FakeRetriever, LowTokenScorer
from s3_ray.clients import RetrieverClient
from s3_ray.config import load_config
from s3_ray.models import load_causal_lm
from s3_ray.rl.loop.async_rollout import GroupRunner, InProcessPool
from s3_ray.rl.loop.async_trainer import AsyncSearcherTrainer
from s3_ray.types import QAItem

torch.set_num_threads(1)
ITEMS = [QAItem(f"q{i}", q, ("x",)) for i, q in enumerate(
    ["Who founded Holt Company?", "Where is Cedar Works?", "Which river flows through Alder Town?",
     "Who is the mayor of Birch Falls?"])]


def _trainer(S: int, workers: int = 3, extra: tuple[str, ...] = (), logs: list[str] | None = None):
    torch.manual_seed(0)
    cfg = load_config(None, ["searcher.model=tiny-random", "searcher.max_new_tokens=8", "searcher.temperature=1.0",
                             "searcher.max_prompt_tokens=512", "rollout.max_turns=1", "train.questions_per_step=2",
                             "train.group_size=4", "train.lr=3e-2", "train.kl_coef=0.0", "train.micro_batch=8",
                             f"train.async.max_staleness={S}", *extra])
    model, tok = load_causal_lm("tiny-random", num_threads=1, for_training=True)
    retriever = RetrieverClient.in_process(FakeRetriever())
    say = logs.append if logs is not None else (lambda s: None)
    runners = [GroupRunner(cfg, copy.deepcopy(model), tok, retriever, LowTokenScorer(len(tok)), name=f"w{i}", log=say)
               for i in range(workers)]
    return AsyncSearcherTrainer(cfg, model, None, tok, InProcessPool(runners, seed=1), ITEMS, log=say)


def test_toy_reward_rises_under_staleness_two_with_every_group_within_two_versions():
    trainer = _trainer(S=2)
    steps = [trainer.train_step() for _ in range(12)]
    rewards = [m["reward"] for m in steps]
    assert statistics.mean(rewards[-3:]) > statistics.mean(rewards[:3]) + 0.2, rewards
    assert all(m["async/staleness_max"] <= 2 for m in steps)
    assert sum(m["async/staleness_1"] + m["async/staleness_2"] for m in steps) > 0  # it did run ahead
    for m in steps:
        assert sum(m[f"async/staleness_{k}"] for k in range(3)) == 2
        # every taken group has signal here (no dynamic sampling drops): the learned reward is the step's
        if m["sample/signal_groups"] == 2:
            assert m["reward_learned"] == pytest.approx(m["reward"])
        elif m["sample/signal_groups"] == 0:
            assert "reward_learned" not in m
    updated = [m for m in steps if not m["update_skipped"]]
    assert len(updated) >= 10
    for m in updated:
        assert m["is/weight_max"] > 0 and 0.0 <= m["is/truncated_share"] <= 1.0 and m["is/weight_mean"] > 0
    # stale groups were sampled by other weights: their importance weights are not all 1
    assert any(m["is/log_ratio_mean"] != 0.0 for m in updated)


def test_checkpoint_state_resumes_the_buffer_and_the_question_cursor():
    trainer = _trainer(S=1, workers=2)
    for _ in range(2):
        trainer.train_step()
    state = trainer.state()
    assert state["buffer"]["version"] == 2 and state["stream"]["cursor"] > 0
    other = _trainer(S=1, workers=2)
    other.load_state(state)
    assert other.buffer.version == 2 and other.stream.state() == trainer.stream.state()
    pending = {q for _, q, _ in state["buffer"]["in_flight"]} | set(state["buffer"]["queue"])
    assert {q.id for q in other.buffer.queue} >= pending
    other.steps_done = 2
    m = other.train_step()
    assert m["async/staleness_max"] <= 1


def test_a_push_during_a_group_is_loaded_after_the_current_turn():
    """Weights pushed while a group runs (here: from the retriever call between turn 1 and 2) are
    loaded before turn 2, never inside a turn; the turns record their versions and the worker says so."""
    logs: list[str] = []
    cfg = load_config(None, ["searcher.model=tiny-random", "searcher.max_new_tokens=6", "searcher.temperature=1.0",
                             "searcher.max_prompt_tokens=512", "rollout.max_turns=2", "train.group_size=2",
                             "train.async.max_staleness=1"])
    model, tok = load_causal_lm("tiny-random", num_threads=1, for_training=True)
    newer = {k: v + 0.01 for k, v in model.state_dict().items()}

    class PushingRetriever:
        def __init__(self) -> None:
            self.inner, self.calls = FakeRetriever(), 0

        def search(self, queries, k):
            self.calls += 1
            if self.calls == 2:  # the first call is the initial documents, the second follows turn 1
                runner.set_weights(1, 5, newer)
            return self.inner.search(queries, k)

    runner = GroupRunner(cfg, copy.deepcopy(model), tok, RetrieverClient.in_process(PushingRetriever()),
                         LowTokenScorer(len(tok)), name="w0", log=logs.append)
    script = '<query>{"query": "Holt"}</query>'

    def first_turn_searches(seqs):  # turn 1 always searches, so the episode has a second turn
        runner.policy.last_logprobs = [[-1.0] * len(tok.encode(script, add_special_tokens=False)) for _ in seqs]
        return [list(tok.encode(script, add_special_tokens=False)) for _ in seqs]

    real = runner.policy.generate
    calls = []
    runner.policy.generate = lambda seqs: (calls.append(runner.version), first_turn_searches(seqs) if len(calls) == 1
                                           else real(seqs))[1]
    runner.set_weights(0, 4, model.state_dict())
    out = runner.run(ITEMS[0], generation=0, version=4, weights=lambda: model.state_dict())
    assert calls[:2] == [4, 5]
    assert all(t.turn_versions[:2] == [4, 5] for t in out["trajectories"])
    assert out["info"]["mid_group_loads"] == 1.0
    assert any("finished its in-flight turn on version 4, continues the group on version 5" in s for s in logs)
    assert all(torch.equal(v, newer[k]) for k, v in runner.model.state_dict().items())
