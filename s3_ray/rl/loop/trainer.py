"""One searcher-training process, read top to bottom: rollout -> reward -> policy update.

No Ray here: `s3_ray.rl.ray_train.worker` wraps this in a Ray Train worker, and tests drive it directly
with in-process retriever and generator clients.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any

from s3_ray.config import S3Config
from s3_ray.models import unwrap
from s3_ray.rl.model import collectives
from s3_ray.rl.loop.curriculum import Curriculum
from s3_ray.rl.loop.sampling import GroupSampler, has_signal
from s3_ray.rl.model.weight_sync import RolloutWeights
from s3_ray.types import QAItem, RewardResult, Trajectory


@dataclass
class QuestionStream:
    """Questions in a seeded order, reshuffled every epoch; its cursor is checkpointed."""

    items: list[QAItem]
    seed: int
    epoch: int = 0
    cursor: int = 0
    _order: list[int] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if not self.items:
            raise ValueError("no training questions: the data split (after filtering) is empty")
        self._shuffle()

    def _shuffle(self) -> None:
        self._order = list(range(len(self.items)))
        random.Random(self.seed * 1_000_003 + self.epoch).shuffle(self._order)

    def take(self, n: int) -> list[QAItem]:
        out = []
        for _ in range(n):
            if self.cursor >= len(self._order):
                self.epoch += 1
                self.cursor = 0
                self._shuffle()
            out.append(self.items[self._order[self.cursor]])
            self.cursor += 1
        return out

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "cursor": self.cursor}

    def load_state(self, state: dict[str, int]) -> None:
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
        self._shuffle()


class SearcherTrainer:
    """Owns the policy, its updater and the question stream of one training process."""

    def __init__(self, cfg: S3Config, model: Any, ref_model: Any, tokenizer: Any, retriever: Any,
                 scorer: Any, items: list[QAItem], rank: int = 0, rollout_model: Any = None,
                 world: int = 1) -> None:
        """`items` are this worker's questions (of `world` workers); it takes its share of the
        global `train.questions_per_step` / `warmup_batch`. `rollout_model`: an unsharded copy that
        samples the rollouts while `model` is FSDP-sharded (transformers backend); its weights
        follow `model` after every change."""
        self.cfg = cfg
        self.rollout_model = rollout_model
        self.rank = rank  # offsets the vLLM engine's sampling seed, as torch's is offset per worker
        self.world = world
        self.tokenizer = tokenizer
        self.retriever = retriever
        self.scorer = scorer
        self.stream = QuestionStream(items, seed=cfg.seed)
        tc = cfg.train
        self.curriculum = Curriculum(self.stream, window=tc.curriculum_window, patience=tc.curriculum_patience,
                                     rest=tc.curriculum_rest, focus=tc.curriculum_focus) if tc.curriculum else None
        self.sampler = GroupSampler(tc, self._draw, self._rollout_and_score, world=world,
                                    observe=self.curriculum.observe if self.curriculum is not None else None)
        self.steps_done = 0
        self._costs: dict[str, float] = {}  # this step's rollout and reward costs (seconds, tokens, calls)
        # the vLLM engine (searcher.backend="vllm", built with the first rollout) or the rollout copy
        self.rollout_weights = RolloutWeights(copy=rollout_model)
        self.set_policy(model, ref_model)

    def set_policy(self, model: Any, ref_model: Any) -> None:
        """Train `model` (against `ref_model` for the KL term) with a fresh updater and optimiser.

        Used once more after a LoRA format warm-up, whose adapter is merged away and replaced
        by a new one: the parameters the optimiser held no longer exist.
        """
        from s3_ray.rl.algo.update import PolicyUpdater

        self.model = model
        self.weights_changed()
        self.updater = PolicyUpdater(model, ref_model, self.cfg.train, pad_id=self.tokenizer.pad_token_id,
                                     temperature=max(self.cfg.searcher.temperature, 1e-3))

    def weights_changed(self) -> None:
        """Note that the policy's weights moved (an update, the warm-up, a checkpoint load): a vLLM
        rollout engine or the rollout copy gets them before its next rollout."""
        self.rollout_weights.mark_stale()

    def sync_rollout_weights(self) -> float:
        """Push the current weights into the vLLM engine or the rollout copy if it holds older ones;
        returns seconds. With a sharded policy this gathers its weights: every rank calls it."""
        return self.rollout_weights.push(self.model)

    def _rollout_policy(self, bare: Any) -> Any:
        """A fresh HFPolicy over the model (or its rollout copy), or the one vLLM engine holding the
        current weights."""
        from s3_ray.agent.policy import make_policy

        searcher = self.cfg.searcher
        if searcher.backend != "vllm":
            self.sync_rollout_weights()
            return make_policy(self.rollout_model if self.rollout_model is not None else bare, self.tokenizer, searcher)
        if self.rollout_weights.engine is None:  # on this worker's GPU, with the current weights
            self.rollout_weights.start_engine(self.model, self.tokenizer, searcher, seed=self.cfg.seed + self.rank)
        self.sync_rollout_weights()
        return self.rollout_weights.engine

    def rollout(self, items: list[QAItem]) -> list[Trajectory]:
        from s3_ray.agent.rollout import run_rollout

        bare = unwrap(self.model)
        was_training = bare.training
        bare.eval()
        try:
            policy = self._rollout_policy(bare)
            before = policy.stats.as_dict()
            trajs = run_rollout(items, policy, self.tokenizer, self.retriever, self.cfg.rollout, self.cfg.searcher)
            after = policy.stats.as_dict()
            for key in ("prefill_tokens", "prefill_seconds", "decode_seconds", "tokens_generated"):
                name = "rollout/decode_tokens" if key == "tokens_generated" else f"rollout/{key}"
                self._costs[name] = self._costs.get(name, 0.0) + after[key] - before[key]
            return trajs
        finally:
            bare.train(was_training)

    def _rollout_and_score(self, batch: list[QAItem]) -> tuple[list[Trajectory], float, float]:
        """Roll `batch` out and give every trajectory its reward: (trajectories, rollout s, reward s)."""
        t0 = time.perf_counter()
        trajs = self.rollout(batch)
        t1 = time.perf_counter()
        attach_rewards(trajs, self.scorer.score(trajs))
        for key, value in getattr(self.scorer, "last_call", {}).items():
            self._costs[f"reward/{key}"] = self._costs.get(f"reward/{key}", 0.0) + value
        return trajs, t1 - t0, time.perf_counter() - t1

    def _draw(self, n: int, step: int, exclude: set[str]) -> list[QAItem]:
        return self.curriculum.take(n, step, exclude) if self.curriculum is not None else self.stream.take(n)

    def train_step(self) -> dict[str, float]:
        """One RL step: sample groups (rollout -> reward, in rounds until enough carry a signal, with
        dynamic sampling), then one policy update on the groups kept (gradients averaged over the
        workers). Each round is this worker's share of `questions_per_step` questions x `group_size`."""
        from s3_ray.agent.rollout import rollout_stats

        self._costs = {}
        sample = self.sampler.sample(self.steps_done)
        trajs = sample.trajectories
        t0 = time.perf_counter()
        kept = sample.kept_trajectories
        if self.sampler.dynamic and sample.total_signal == 0:
            metrics = {"update_skipped": 1.0, "loss": 0.0, "pg_loss": 0.0, "kl": 0.0, "adv_mean": 0.0, "adv_std": 0.0}
        else:
            self.rollout_weights.release()  # a vLLM engine sleeps through the update; the push wakes it
            metrics = dict(self.updater.step(kept, filler=trajs[0]))
        t_update = time.perf_counter() - t0
        self.steps_done += 1
        self.weights_changed()
        if self.rollout_weights.needed:
            metrics["time/weight_sync_s"] = self.sync_rollout_weights()
        metrics.update(rollout_stats(trajs))
        metrics.update(_mean_metrics(trajs, ("genacc", "gbr", "baseline_genacc", "em", "f1")))
        metrics.update(sample.metrics())
        metrics.update(self._costs)
        if self.curriculum is not None:
            metrics.update(self.curriculum.stats())
        metrics["context_tokens_mean"] = self._context_tokens(trajs)
        metrics["reward"] = sum(t.reward for t in trajs) / len(trajs)
        learned = [g for g in sample.kept if has_signal(g)]
        if learned:
            metrics["reward_learned"] = learned_reward(learned)
        metrics["time/rollout_s"] = sample.rollout_s
        metrics["time/reward_s"] = sample.reward_s
        metrics["time/update_s"] = t_update
        if sample.total_signal:
            seconds = sample.rollout_s + sample.reward_s + t_update
            metrics["time/per_signal_group_s"] = seconds * self.world / sample.total_signal
        return metrics

    def warmup(self, log=None) -> list[float]:
        """Supervised format warm-up (cfg.train.warmup_steps); teaches the tags, never answers."""
        import torch

        from s3_ray.rl.loop.warmup import warmup_step

        steps = self.cfg.train.warmup_steps
        if steps == 0:
            return []
        rng = random.Random(self.cfg.seed + 17)
        optimizer = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad],
                                      lr=self.cfg.train.warmup_lr)
        stream = QuestionStream(self.stream.items, seed=self.cfg.seed + 1)
        losses = []
        for i in range(steps):
            items = stream.take(self.cfg.train.warmup_batch // self.world)
            loss = warmup_step(self.model, self.tokenizer, self.retriever, items, self.cfg.rollout, rng, optimizer,
                               stop_fraction=self.cfg.train.warmup_stop_fraction,
                               follow_fraction=self.cfg.train.warmup_follow_fraction,
                               follow_docs=self.cfg.train.warmup_follow_docs,
                               logits_chunk=self.cfg.train.logits_chunk)
            losses.append(loss)
            if log is not None:
                log({"warmup/loss": loss}, i)
        self.weights_changed()
        return losses


    def _context_tokens(self, trajs: list[Trajectory]) -> float:
        """Mean searcher-tokenizer length of the context each episode hands to the generator."""
        total = 0
        for t in trajs:
            total += sum(len(self.tokenizer.encode(p.contents, add_special_tokens=False)) for p in t.context)
        return total / len(trajs) if trajs else 0.0

    def state(self) -> dict[str, Any]:
        """The question stream (and the curriculum, merged over all workers: a collective when there are
        several), for checkpoints."""
        state: dict[str, Any] = {"stream": self.stream.state()}
        if self.curriculum is not None:
            records: dict[str, Any] = {}
            for part in collectives.all_gather_object(self.curriculum.state()["records"]) if self.world > 1 \
                    else [self.curriculum.state()["records"]]:
                records.update(part)
            state["curriculum"] = {"stream": self.stream.state(), "records": records}
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        self.stream.load_state(state["stream"])
        if self.curriculum is not None and "curriculum" in state:
            self.curriculum.load_state(state["curriculum"])


def learned_reward(groups: list[list[Trajectory]]) -> float:
    """Mean over the groups that carry a gradient (rewards differ) of their mean reward.

    >>> q = QAItem("q", "?", ("a",))
    >>> learned_reward([[Trajectory(q, [1], reward=0.0), Trajectory(q, [1], reward=1.0)],
    ...                 [Trajectory(q, [1], reward=1.0), Trajectory(q, [1], reward=1.0), Trajectory(q, [1], reward=0.0)]])
    0.5833333333333333
    """
    return sum(sum(t.reward for t in g) / len(g) for g in groups) / len(groups)


def attach_rewards(trajs: list[Trajectory], results: list[RewardResult]) -> list[float]:
    """Give each trajectory the reward the scorer returned for it (what the update trains on) and
    its parts (for the step's metrics); returns the rewards in order."""
    if len(results) != len(trajs):
        raise ValueError(f"the reward scorer returned {len(results)} results for {len(trajs)} trajectories")
    for t, r in zip(trajs, results):
        t.reward = float(r.reward)
        t.metrics.update(r.metrics)
    return [t.reward for t in trajs]


def _mean_metrics(trajs: list[Trajectory], keys: tuple[str, ...]) -> dict[str, float]:
    out = {}
    for key in keys:
        vals = [t.metrics[key] for t in trajs if key in t.metrics]
        if vals:
            out[key] = sum(vals) / len(vals)
    return out
