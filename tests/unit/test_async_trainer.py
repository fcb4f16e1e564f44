"""The asynchronous trainer with rollout workers in this process: it learns under S = 2, keeps
every group within S versions, reports staleness and importance weights, and resumes."""

from __future__ import annotations

import copy
import statistics

import torch

from fakes import FakeRetriever
from s3_ray.clients import RetrieverClient
from s3_ray.config import load_config
from s3_ray.models import load_causal_lm
from s3_ray.rl.loop.async_rollout import GroupRunner, InProcessPool
from s3_ray.rl.loop.async_trainer import AsyncSearcherTrainer
from s3_ray.types import QAItem, RewardResult, Trajectory

torch.set_num_threads(1)
ITEMS = [QAItem(f"q{i}", q, ("x",)) for i, q in enumerate(
    ["Who founded Holt Company?", "Where is Cedar Works?", "Which river flows through Alder Town?",
     "Who is the mayor of Birch Falls?"])]


class LowTokenScorer:
    """Share of the searcher's own tokens in the lower half of the vocabulary (as in test_trainer_learns)."""

    def __init__(self, vocab: int) -> None:
        self.half = vocab // 2

    def score(self, trajs: list[Trajectory]) -> list[RewardResult]:
        out = []
        for t in trajs:
            own = [tok for tok, m in zip(t.response_ids, t.loss_mask) if m]
            reward = sum(tok < self.half for tok in own) / len(own) if own else 0.0
            out.append(RewardResult(reward, {"genacc": reward}))
        return out


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
