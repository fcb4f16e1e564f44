"""Asynchronous training with rollout workers as Ray actors (local CPU Ray): learning under S = 2,
a worker killed mid-group, a trainer restarted from its checkpoint state."""

from __future__ import annotations

import statistics
import sys
from collections import Counter

import pytest
import torch

import fakes
from fakes import FakeRetriever
from s3_ray.clients import RetrieverClient
from s3_ray.config import load_config
from s3_ray.models import load_causal_lm
from s3_ray.types import QAItem, RewardResult, Trajectory

pytestmark = [pytest.mark.ray]
ITEMS = [QAItem(f"q{i}", q, ("x",)) for i, q in enumerate(
    ["Who founded Holt Company?", "Where is Cedar Works?", "Which river flows through Alder Town?",
     "Who is the mayor of Birch Falls?", "Where is Dune Port?", "What did Elm Mill do?"])]


@pytest.fixture(autouse=True)
def _ship_test_modules_by_value():
    import ray.cloudpickle

    for mod in (sys.modules[__name__], fakes):
        ray.cloudpickle.register_pickle_by_value(mod)
    yield
    for mod in (sys.modules[__name__], fakes):
        ray.cloudpickle.unregister_pickle_by_value(mod)


class LowTokenScorer:
    def __init__(self, vocab: int) -> None:
        self.half = vocab // 2

    def score(self, trajs: list[Trajectory]) -> list[RewardResult]:
        out = []
        for t in trajs:
            own = [tok for tok, m in zip(t.response_ids, t.loss_mask) if m]
            reward = sum(tok < self.half for tok in own) / len(own) if own else 0.0
            out.append(RewardResult(reward, {"genacc": reward}))
        return out


def _trainer(S: int, turns: int = 1, items=ITEMS, logs=None):
    from s3_ray.rl.loop.async_trainer import AsyncSearcherTrainer
    from s3_ray.rl.ray_train.rollout_pool import RayRolloutPool

    torch.manual_seed(0)
    cfg = load_config(None, ["searcher.model=tiny-random", "searcher.max_new_tokens=8", "searcher.temperature=1.0",
                             "searcher.max_prompt_tokens=512", f"rollout.max_turns={turns}",
                             "train.questions_per_step=2", "train.group_size=4", "train.lr=3e-2", "train.kl_coef=0.0",
                             "train.micro_batch=8", f"train.async.max_staleness={S}", "train.async.rollout_workers=2",
                             "train.async.worker_cpus=0.5"])
    model, tok = load_causal_lm("tiny-random", num_threads=1, for_training=True)
    say = logs.append if logs is not None else print
    pool = RayRolloutPool(cfg, RetrieverClient.in_process(FakeRetriever()), LowTokenScorer(len(tok)), log=say)
    trainer = AsyncSearcherTrainer(cfg, model, None, tok, pool, list(items), wait_timeout=300, log=say)
    drawn: Counter[str] = Counter()
    consumed: Counter[str] = Counter()
    draw, take = trainer.buffer.draw, trainer.buffer.take

    def counting_draw(n, v, ex):
        qs = draw(n, v, ex)
        drawn.update(q.id for q in qs)
        return qs

    def counting_take():
        groups = take()
        if groups is not None:
            consumed.update(g.ticket.item.id for g in groups)
        return groups

    trainer.buffer.draw, trainer.buffer.take = counting_draw, counting_take
    return trainer, pool, drawn, consumed


def _held(buffer) -> Counter[str]:
    return Counter([q.id for q in buffer.queue] + [t.item.id for t in buffer.in_flight.values()]
                   + [g.ticket.item.id for g in buffer.ready])


def test_toy_reward_rises_under_staleness_two(ray_session):
    trainer, pool, drawn, consumed = _trainer(S=2)
    try:
        steps = [trainer.train_step() for _ in range(12)]
    finally:
        pool.close()
    rewards = [m["reward"] for m in steps]
    assert statistics.mean(rewards[-3:]) > statistics.mean(rewards[:3]) + 0.2, rewards
    assert all(m["async/staleness_max"] <= 2 for m in steps)
    assert consumed + _held(trainer.buffer) == drawn


def test_a_killed_worker_loses_no_question_and_doubles_none(ray_session):
    import ray

    logs: list[str] = []
    trainer, pool, drawn, consumed = _trainer(S=1, turns=2, logs=logs)
    try:
        trainer.train_step()
        assert pool.running, "groups should be in flight through the update"
        _, slot = next(iter(pool.running.values()))
        victim = pool.actors[slot]
        ray.kill(victim, no_restart=True)
        steps = [trainer.train_step() for _ in range(3)]
    finally:
        pool.close()
    assert trainer.lost_groups == 1 and any("queued again" in line for line in logs), logs
    assert sum(m["async/lost_groups"] for m in steps) == 1
    assert all(m["async/staleness_max"] <= 1 for m in steps)
    assert consumed + _held(trainer.buffer) == drawn  # the lost group's question ran again, once


def test_a_restarted_trainer_resumes_its_cursor_and_buffer(ray_session):
    import copy

    first, pool, drawn, consumed = _trainer(S=1)
    try:
        for _ in range(2):
            first.train_step()
        state = copy.deepcopy(first.state())
        weights = {k: v.clone() for k, v in first.model.state_dict().items()}
    finally:
        pool.close()  # the trainer and its workers are gone
    in_flight = {qid for _, qid, _ in state["buffer"]["in_flight"]}
    second, pool2, drawn2, consumed2 = _trainer(S=1)
    try:
        second.model.load_state_dict(weights)
        second.load_state(state)
        second.steps_done = 2
        second.weights_changed()
        assert second.stream.state() == first.stream.state() and second.buffer.version == 2
        assert in_flight <= {q.id for q in second.buffer.queue}
        steps = [second.train_step() for _ in range(2)]
    finally:
        pool2.close()
    assert all(m["async/staleness_max"] <= 1 for m in steps)
    # every question the first run drew and did not train on, and every new one, is trained once or still held
    assert consumed + consumed2 + _held(second.buffer) == drawn + drawn2
