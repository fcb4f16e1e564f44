"""Adaptive KL controller: hand-computed updates, and its wiring into PolicyUpdater."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from s3_ray.config import TrainConfig
from s3_ray.models import load_causal_lm
from s3_ray.rl.algo.kl_control import KLController, adaptive_kl_coef
from s3_ray.rl.algo.update import PolicyUpdater
from s3_ray.types import QAItem, Trajectory

torch.set_num_threads(1)


def test_update_rule_matches_hand_computation():
    # kl/target - 1 = 0.1 (inside the clip): 0.2 * (1 + 0.1 * 1/5) = 0.204
    assert adaptive_kl_coef(0.2, kl=0.11, target=0.1, horizon=5) == pytest.approx(0.204)
    # kl/target - 1 = -0.5 clipped to -0.2, 3 steps over horizon 6: 0.2 * (1 - 0.2 * 0.5) = 0.18
    assert adaptive_kl_coef(0.2, kl=0.05, target=0.1, horizon=6, n_steps=3) == pytest.approx(0.18)
    # huge KL: error clipped to +0.2
    assert adaptive_kl_coef(1.0, kl=50.0, target=0.1, horizon=1) == pytest.approx(1.2)
    with pytest.raises(ValueError, match="target > 0"):
        adaptive_kl_coef(0.1, 0.1, target=0.0, horizon=1)


def test_controller_sequence_and_state():
    ctl = KLController(0.1, target=0.02, horizon=10)
    values = [ctl.update(kl) for kl in (0.04, 0.04, 0.01, float("nan"), 0.021)]
    expected, c = [], 0.1
    for kl in (0.04, 0.04, 0.01):
        c *= 1 + max(-0.2, min(0.2, kl / 0.02 - 1)) / 10
        expected.append(c)
    expected.append(c)  # NaN KL: unchanged
    c *= 1 + (0.021 / 0.02 - 1) / 10
    expected.append(c)
    assert values == pytest.approx(expected, rel=1e-12)
    other = KLController(0.1, target=0.02, horizon=10)
    other.load_state_dict(ctl.state_dict())
    assert other.value == ctl.value
    fixed = KLController(0.3)
    assert fixed.update(10.0) == 0.3 and not fixed.adaptive
    with pytest.raises(ValueError, match="kl_target needs train.kl_coef > 0"):
        KLController(0.0, target=0.1)


def _trajs(tok):
    ids = list(tok("<query>founder born town</query>", add_special_tokens=False)["input_ids"])
    return [Trajectory(QAItem("q", "q", ("a",)), [1, 2, 3], ids, [1] * len(ids), reward=r) for r in (1.0, 0.0, 0.5)]


def test_updater_adapts_logs_and_checkpoints_the_coefficient():
    model, tok = load_causal_lm("tiny-random", for_training=True)
    ref = copy.deepcopy(model).eval().requires_grad_(False)
    cfg = TrainConfig(lr=1e-2, kl_coef=0.1, kl_target=1e-6, kl_horizon=2)
    up = PolicyUpdater(model, ref, cfg, pad_id=tok.pad_token_id)
    first = up.step(_trajs(tok))
    assert first["kl_coef"] == 0.1 and first["kl"] == pytest.approx(0.0, abs=1e-7)
    # KL 0 (< target): error -0.2 over horizon 2 -> x0.9
    assert up.kl_ctl.value == pytest.approx(0.09)
    second = up.step(_trajs(tok))
    assert second["kl_coef"] == pytest.approx(0.09)
    assert second["kl"] > 1e-6 and up.kl_ctl.value == pytest.approx(0.09 * 1.1)
    restored = PolicyUpdater(copy.deepcopy(model), ref, cfg, pad_id=tok.pad_token_id)
    restored.load_state_dict(up.state_dict())
    assert restored.kl_ctl.value == pytest.approx(0.099)
    fixed = PolicyUpdater(copy.deepcopy(model), ref, TrainConfig(lr=1e-2, kl_coef=0.1), pad_id=tok.pad_token_id)
    for _ in range(2):
        assert fixed.step(_trajs(tok))["kl_coef"] == 0.1
    assert math.isclose(fixed.kl_ctl.value, 0.1)
