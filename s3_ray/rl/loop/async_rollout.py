"""What one rollout worker does in asynchronous training, without Ray: roll out a group, score it,
take new weights between turns.

`GroupRunner` owns a rollout engine (HFPolicy over its own copy of the searcher), the retriever
client and the reward scorer. `set_weights` may be called from another thread while a group runs:
the weights wait until the current turn (one `generate` over the group's live episodes) is over
and are loaded before the next one, so a turn is never split between two policies and every
turn records the version that wrote it (`Trajectory.turn_versions`); the runner counts the turns
that ran on after a push (`turns_after_push`) and logs which group took the new weights mid-way.
The Ray actor (`s3_ray.rl.ray_train.rollout_pool`) wraps one runner; `InProcessPool` runs
runners in this process (tests, and a one-process run).
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from typing import Any

from s3_ray.config import S3Config
from s3_ray.types import QAItem, Trajectory


class VersionedPolicy:
    """An HFPolicy that loads pending weights between turns (see `GroupRunner`)."""

    def __init__(self, runner: GroupRunner) -> None:
        self.runner = runner
        self.stats = runner.policy.stats

    @property
    def version(self) -> int:
        return self.runner.version

    @property
    def last_logprobs(self) -> list[list[float]]:
        return self.runner.policy.last_logprobs

    def generate(self, seqs: list[list[int]]) -> list[list[int]]:
        self.runner.apply_pending(between_turns=True)
        return self.runner.policy.generate(seqs)

    def reset_cache(self) -> None:
        self.runner.policy.reset_cache()


class GroupRunner:
    def __init__(self, cfg: S3Config, model: Any, tokenizer: Any, retriever: Any, scorer: Any,
                 name: str = "rollout", log: Callable[[str], None] = print) -> None:
        from s3_ray.agent.policy import HFPolicy

        self.cfg, self.model, self.tokenizer = cfg, model, tokenizer
        self.retriever, self.scorer, self.name, self.log = retriever, scorer, name, log
        self.model.eval()
        self.policy = HFPolicy(model, tokenizer, cfg.searcher)
        self.generation = -1         # which push the loaded weights came from
        self.version = -1            # the policy version they are
        self.turns_after_push = 0    # turns a group ran after a push reached this worker, before loading it
        self.mid_group_loads = 0     # groups that took new weights between two of their turns
        self._pending: tuple[int, int, dict[str, Any]] | None = None
        self._lock = threading.Lock()
        self._running = False

    def set_weights(self, generation: int, version: int, weights: dict[str, Any]) -> None:
        """New weights; loaded at once when no group runs, else after the current turn."""
        with self._lock:
            if self._pending is None or generation > self._pending[0]:
                self._pending = (generation, version, weights)
        if not self._running:
            self.apply_pending()

    def apply_pending(self, between_turns: bool = False) -> None:
        import torch

        with self._lock:
            pending, self._pending = self._pending, None
        if pending is None or pending[0] <= self.generation:
            return
        generation, version, weights = pending
        with torch.no_grad():
            missing, unexpected = self.model.load_state_dict(weights, strict=False)
        if unexpected or [m for m in missing if m in weights]:
            raise ValueError(f"{self.name}: pushed weights do not fit the rollout model (unexpected {unexpected[:3]})")
        self.policy.reset_cache()  # its KV cache was computed by the old weights
        if between_turns:
            self.mid_group_loads += 1
            self.log(f"[s3-ray] {self.name}: finished its in-flight turn on version {self.version}, "
                     f"continues the group on version {version}")
        self.generation, self.version = generation, version

    def run(self, item: QAItem, generation: int, version: int, weights: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Roll out and score one group of `item` starting on push `generation` (fetched through
        `weights()` when this worker holds an older one); returns {"trajectories", "info"}."""
        from s3_ray.agent.rollout import run_rollout
        from s3_ray.rl.loop.trainer import attach_rewards

        self.apply_pending()
        if self.generation < generation:
            self.set_weights(generation, version, weights())
            self.apply_pending()
        self._running = True
        try:
            loads_before = self.mid_group_loads
            items = [item] * self.cfg.train.group_size
            trajs = run_rollout(items, VersionedPolicy(self), self.tokenizer, self.retriever, self.cfg.rollout,
                                self.cfg.searcher)
        finally:
            self._running = False
        attach_rewards(trajs, self.scorer.score(trajs))
        switched = self.mid_group_loads - loads_before
        self.turns_after_push += switched
        return {"trajectories": trajs, "info": {"mid_group_loads": float(switched), "version": float(self.version)}}


class InProcessPool:
    """Rollout workers as `GroupRunner`s in this process: `start` queues a group, `wait` runs one of
    the queued groups (a random one, as completions arrive in any order) and returns it."""

    def __init__(self, runners: list[GroupRunner], seed: int = 0) -> None:
        self.runners = runners
        self.rng = random.Random(seed)
        self.started: list[tuple[int, QAItem, int]] = []  # (ticket index, item, generation)
        self.generation = -1
        self.version = 0
        self._weights: dict[str, Any] = {}

    def free(self) -> int:
        return len(self.runners) - len(self.started)

    def publish(self, version: int, weights: dict[str, Any]) -> None:
        self.generation += 1
        self.version, self._weights = version, weights
        for r in self.runners:
            r.set_weights(self.generation, version, weights)

    def start(self, index: int, item: QAItem) -> None:
        if not self.free():
            raise RuntimeError("no free rollout worker")
        self.started.append((index, item, self.generation))

    def wait(self, timeout: float | None = None) -> list[tuple[int, list[Trajectory] | None, dict[str, float]]]:
        if not self.started:
            return []
        index, item, generation = self.started.pop(self.rng.randrange(len(self.started)))
        runner = self.runners[len(self.started) % len(self.runners)]
        out = runner.run(item, generation, self.version, lambda: self._weights)
        return [(index, out["trajectories"], out["info"])]

    def close(self) -> None:
        self.started.clear()
