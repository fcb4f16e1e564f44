"""Advantage estimators against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from s3_ray.rl.algo.advantages import gae, group_relative_advantages, masked_whiten, rloo_advantages


def test_grpo_matches_hand_computation():
    # group a: rewards 1, 0, 0 -> mean 1/3, unbiased std sqrt(1/3)
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.2, 0.6])
    adv = group_relative_advantages(rewards, ["a", "a", "a", "b", "b"])
    std_a = math.sqrt(((2 / 3) ** 2 + 2 * (1 / 3) ** 2) / 2)
    expected_a = [(2 / 3) / std_a, (-1 / 3) / std_a, (-1 / 3) / std_a]
    std_b = math.sqrt((0.2**2 + 0.2**2) / 1)
    expected_b = [-0.2 / std_b, 0.2 / std_b]
    assert adv.tolist() == pytest.approx(expected_a + expected_b, rel=1e-4)


def test_grpo_groups_are_interleaved_by_id_not_position():
    adv = group_relative_advantages(torch.tensor([1.0, 5.0, 0.0, 3.0]), ["x", "y", "x", "y"], normalize_std=False)
    assert adv.tolist() == pytest.approx([0.5, 1.0, -0.5, -1.0])


def test_grpo_singletons_and_constant_groups_give_zero():
    adv = group_relative_advantages(torch.tensor([7.0, 0.3, 0.3, 0.3]), ["solo", "g", "g", "g"])
    assert adv.tolist() == [0.0, 0.0, 0.0, 0.0]


def test_grpo_rejects_mismatched_ids():
    with pytest.raises(ValueError, match="group_ids has 1 entries"):
        group_relative_advantages(torch.tensor([1.0, 2.0]), ["a"])
    with pytest.raises(ValueError, match="1-D"):
        group_relative_advantages(torch.ones(2, 2), ["a", "b"])


def test_rloo_leave_one_out_baseline():
    adv = rloo_advantages(torch.tensor([3.0, 1.0, 2.0, 9.0]), ["g", "g", "g", "solo"])
    # 3 - mean(1, 2) = 1.5 ; 1 - mean(3, 2) = -1.5 ; 2 - mean(3, 1) = 0
    assert adv.tolist() == pytest.approx([1.5, -1.5, 0.0, 0.0])


def test_gae_gamma_lambda_one_is_reward_minus_value():
    # with gamma = lam = 1 and a terminal reward, A_t = R - V_t on every action token
    r = torch.tensor([[0.0, 0.0, 2.0]])
    v = torch.tensor([[0.5, 1.0, 1.5]])
    m = torch.ones(1, 3)
    adv, ret = gae(r, v, m, 1.0, 1.0)
    assert adv.tolist()[0] == pytest.approx([1.5, 1.0, 0.5])
    assert ret.tolist()[0] == pytest.approx([2.0, 2.0, 2.0])


def test_gae_hand_computed_with_discount():
    r = torch.tensor([[0.0, 1.0]])
    v = torch.tensor([[0.5, 0.25]])
    m = torch.ones(1, 2)
    adv, ret = gae(r, v, m, gamma=0.9, lam=0.8)
    d1 = 1.0 - 0.25
    d0 = 0.0 + 0.9 * 0.25 - 0.5
    assert adv.tolist()[0] == pytest.approx([d0 + 0.9 * 0.8 * d1, d1])
    assert ret.tolist()[0] == pytest.approx([d0 + 0.72 * d1 + 0.5, d1 + 0.25])


def test_gae_skips_masked_tokens_entirely():
    # values and rewards under mask 0 must not influence any advantage
    r = torch.tensor([[0.0, 0.0, 0.0, 1.0]])
    v = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
    m = torch.tensor([[1, 0, 0, 1]])
    adv, _ = gae(r, v, m, 0.9, 0.95)
    v2 = v.clone()
    v2[0, 1:3] = torch.tensor([50.0, -7.0])
    r2 = r.clone()
    r2[0, 1] = 3.0
    adv2, _ = gae(r2, v2, m, 0.9, 0.95)
    assert torch.allclose(adv, adv2)
    assert adv[0, 1:3].tolist() == [0.0, 0.0]
    # the two action tokens behave as if adjacent
    dense, _ = gae(torch.tensor([[0.0, 1.0]]), torch.tensor([[0.1, 0.4]]), torch.ones(1, 2), 0.9, 0.95)
    assert adv[0, [0, 3]].tolist() == pytest.approx(dense[0].tolist())


def test_masked_whiten_ignores_masked_values():
    x = torch.tensor([[1.0, 2.0, 1000.0], [3.0, -1000.0, 0.0]])
    m = torch.tensor([[1, 1, 0], [1, 0, 0]])
    w = masked_whiten(x, m)
    sel = w[m.bool()]
    assert sel.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert sel.std().item() == pytest.approx(1.0, rel=1e-5)
    assert w[~m.bool()].tolist() == [0.0, 0.0, 0.0]
