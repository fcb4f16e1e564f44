"""What Ray Train ranks reported checkpoints by: finite, so its JSON snapshot restores it."""

from __future__ import annotations

import json
import math

import pytest

from s3_ray.rl.model.checkpoint_score import UNSCORED, checkpoint_score


@pytest.mark.parametrize("reward", [float("nan"), float("inf"), float("-inf"), None, "0.5"])
def test_unknown_or_diverged_rewards_rank_last_with_a_finite_score(reward) -> None:
    metrics = {"step": 0} if reward is None else {"step": 0, "reward": reward}
    score = checkpoint_score(metrics)
    assert score == UNSCORED and math.isfinite(score)
    assert json.loads(json.dumps({"s": score}))["s"] == score  # survives a JSON snapshot as a number


@pytest.mark.parametrize("reward", [0.25, -3.0, 0, 1])
def test_a_finite_reward_is_the_score(reward) -> None:
    assert checkpoint_score({"reward": reward}) == float(reward) > UNSCORED
