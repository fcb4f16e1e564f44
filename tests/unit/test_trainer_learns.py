"""The whole training step (rollout -> reward -> update) learns: on a toy reward that only the
searcher's own tokens decide, twelve GRPO steps of the tiny model must move the reward it earns,
and the reward (not drift) decides the direction."""

from __future__ import annotations

import statistics

import torch

from fakes import FakeRetriever, LowTokenScorer
from s3_ray.clients import RetrieverClient
from s3_ray.config import load_config
from s3_ray.models import load_causal_lm
from s3_ray.rl.loop.trainer import SearcherTrainer
from s3_ray.types import QAItem


def _run(steps: int, lr: float, low: bool = True) -> list[float]:
    torch.manual_seed(0)
    cfg = load_config(None, ["searcher.model=tiny-random", "searcher.max_new_tokens=8", "searcher.temperature=1.0",
                             "searcher.max_prompt_tokens=512", "rollout.max_turns=1", "train.questions_per_step=2",
                             "train.group_size=4", f"train.lr={lr}", "train.kl_coef=0.0", "train.micro_batch=8"])
    model, tok = load_causal_lm("tiny-random", num_threads=1, for_training=True)
    items = [QAItem(f"q{i}", q, ("x",)) for i, q in enumerate(
        ["Who founded Holt Company?", "Where is Cedar Works?", "Which river flows through Alder Town?",
         "Who is the mayor of Birch Falls?"])]
    trainer = SearcherTrainer(cfg, model, None, tok, RetrieverClient.in_process(FakeRetriever()),
                              LowTokenScorer(len(tok), low=low), items)
    return [trainer.train_step()["reward"] for _ in range(steps)]


def test_twelve_grpo_steps_raise_the_reward_of_the_whole_loop():
    rewards = _run(steps=12, lr=3e-2)
    first, last = statistics.mean(rewards[:3]), statistics.mean(rewards[-3:])
    assert last > first + 0.2, rewards
    assert last > 0.75, rewards


def test_the_reward_decides_what_is_learned():
    # the opposite reward on the same loop: the share of lower-half tokens must fall instead
    rewards = _run(steps=12, lr=3e-2, low=False)
    low_share = [1.0 - r for r in rewards]
    assert statistics.mean(low_share[-3:]) < statistics.mean(low_share[:3]) - 0.2, rewards
