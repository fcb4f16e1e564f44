"""Dynamic sampling (as in DAPO): a step keeps sampling groups until enough of them carry a signal.

A group is one question's `train.group_size` rollouts. GRPO and RLOO learn only from a group whose
rewards differ; a flat group has advantage 0 everywhere, so its forward/backward passes and its
reference forward buy nothing. With `train.min_signal_groups > 0` a step samples rounds of
`train.questions_per_step` questions (over all workers) until the workers together hold that
many groups with differing rewards, or `train.max_sample_rounds` rounds were spent; only those
groups go into the update. All workers sample the same number of rounds (they agree on the global
count after every round), so they stay in step.

With `min_signal_groups = 0` a step is one round and every group enters the update (the update
itself then skips a provably flat batch).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from s3_ray.config import TrainConfig
from s3_ray.rl.model import collectives
from s3_ray.types import QAItem, Trajectory


def has_signal(group: list[Trajectory]) -> bool:
    """Whether the group's rewards differ (a NaN counts as signal: it must reach the update and surface).

    >>> from s3_ray.types import QAItem
    >>> q = QAItem("q", "?", ("a",))
    >>> has_signal([Trajectory(q, [1], reward=0.0), Trajectory(q, [1], reward=1.0)])
    True
    >>> has_signal([Trajectory(q, [1], reward=1.0), Trajectory(q, [1], reward=1.0)])
    False
    """
    rewards = [t.reward for t in group]
    if any(math.isnan(r) for r in rewards):
        return True
    return len(group) > 1 and max(rewards) - min(rewards) > 1e-9


def success(t: Trajectory) -> int:
    """A rollout "succeeded" when the generator answered right (`genacc`), or, for a scorer that
    reports no accuracy, when its reward is positive."""
    acc = t.metrics.get("genacc")
    return int(acc > 0.5) if acc is not None else int(t.reward > 0)


def split_groups(trajs: list[Trajectory]) -> list[list[Trajectory]]:
    """Consecutive trajectories of the same question form a group (the rollout keeps them together)."""
    groups: list[list[Trajectory]] = []
    for t in trajs:
        if groups and groups[-1][0].item.id == t.item.id:
            groups[-1].append(t)
        else:
            groups.append([t])
    return groups


@dataclass
class Sample:
    """What a step sampled on this worker, and the totals over all workers."""

    groups: list[list[Trajectory]] = field(default_factory=list)   # every group this worker sampled
    kept: list[list[Trajectory]] = field(default_factory=list)     # the groups that enter the update
    rounds: int = 0
    rollout_s: float = 0.0
    reward_s: float = 0.0
    total_groups: int = 0          # over all workers
    total_signal: int = 0
    total_episodes: int = 0

    @property
    def trajectories(self) -> list[Trajectory]:
        return [t for g in self.groups for t in g]

    @property
    def kept_trajectories(self) -> list[Trajectory]:
        return [t for g in self.kept for t in g]

    def metrics(self) -> dict[str, float]:
        return {"sample/rounds": float(self.rounds), "sample/groups": float(self.total_groups),
                "sample/signal_groups": float(self.total_signal), "sample/episodes": float(self.total_episodes),
                "sample/signal_share": self.total_signal / self.total_groups if self.total_groups else 0.0}


class GroupSampler:
    """Runs the rounds of one step.

    `draw(n, step, exclude)` returns this worker's `n` questions (the stream, or the curriculum);
    `run(batch)` rolls the batch out and scores it, returning trajectories with their rewards and
    (rollout seconds, reward seconds); `observe(question_id, successes, flat, step)` (optional)
    hears how every group went.
    """

    def __init__(self, cfg: TrainConfig, draw: Callable[[int, int, set[str]], list[QAItem]],
                 run: Callable[[list[QAItem]], tuple[list[Trajectory], float, float]], world: int = 1,
                 observe: Callable[[str, list[int], bool, int], None] | None = None) -> None:
        self.cfg = cfg
        self.draw = draw
        self.run = run
        self.world = world
        self.observe = observe

    @property
    def dynamic(self) -> bool:
        return self.cfg.min_signal_groups > 0

    def sample(self, step: int) -> Sample:
        tc = self.cfg
        out = Sample()
        while True:
            asked = {g[0].item.id for g in out.groups}
            questions = self.draw(tc.questions_per_step // self.world, step, asked)
            trajs, rollout_s, reward_s = self.run([q for q in questions for _ in range(tc.group_size)])
            out.rollout_s += rollout_s
            out.reward_s += reward_s
            out.rounds += 1
            for group in split_groups(trajs):
                signal = has_signal(group)
                out.groups.append(group)
                if signal or not self.dynamic:
                    out.kept.append(group)
                if self.observe is not None:
                    self.observe(group[0].item.id, [success(t) for t in group], not signal, step)
            signal_groups = sum(1 for g in out.groups if has_signal(g))
            totals = [float(signal_groups), float(len(out.groups)), float(sum(len(g) for g in out.groups))]
            if self.world > 1:
                totals = collectives.reduce_floats(totals)  # every worker decides on the same numbers
            out.total_signal, out.total_groups, out.total_episodes = (int(x) for x in totals)
            if not self.dynamic or out.total_signal >= tc.min_signal_groups or out.rounds >= tc.max_sample_rounds:
                return out

