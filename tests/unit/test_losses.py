"""RL losses: hand-computed values and the loss mask."""

from __future__ import annotations

import math

import pytest
import torch

from s3_ray.rl.algo.losses import (
    clipped_policy_loss,
    entropy_from_logits,
    kl_penalty,
    masked_mean,
    value_loss,
)


def test_masked_mean_and_empty_mask():
    assert masked_mean(torch.tensor([[1.0, 5.0], [3.0, 100.0]]), torch.tensor([[1, 0], [1, 0]])).item() == 2.0
    assert masked_mean(torch.tensor([4.0]), torch.tensor([0])).item() == 0.0


def test_clipped_policy_loss_hand_values():
    old = torch.log(torch.tensor([[0.5, 0.5, 0.5]]))
    # ratios 1.1 (inside), 1.5 (clipped for A>0), 0.5 (clipped for A<0)
    logp = old + torch.log(torch.tensor([[1.1, 1.5, 0.5]]))
    adv = torch.tensor([[1.0, 2.0, -1.0]])
    loss, st = clipped_policy_loss(logp, old, adv, torch.ones(1, 3), clip_ratio=0.2)
    # per token: -1.1 ; -min(3.0, 2.4) = -2.4 ; -min(-0.5, -0.8) = 0.8
    assert loss.item() == pytest.approx((-1.1 - 2.4 + 0.8) / 3, rel=1e-5)
    assert st["clip_frac"] == pytest.approx(2 / 3)
    assert st["ratio_mean"] == pytest.approx((1.1 + 1.5 + 0.5) / 3, rel=1e-5)


def test_clipped_loss_gradient_is_zero_where_clipped():
    old = torch.zeros(1, 2)
    logp = torch.tensor([[0.5, 0.05]], requires_grad=True)  # ratio e^0.5 > 1.2 clipped ; e^0.05 inside
    loss, _ = clipped_policy_loss(logp, old, torch.tensor([1.0]), torch.ones(1, 2), 0.2)
    loss.backward()
    assert logp.grad[0, 0].item() == 0.0
    assert logp.grad[0, 1].item() == pytest.approx(-math.exp(0.05) / 2, rel=1e-5)


def test_masked_tokens_do_not_change_any_loss():
    g = torch.Generator().manual_seed(0)
    logp, old, ref = (torch.randn(2, 5, generator=g) for _ in range(3))
    values, old_values, returns = (torch.randn(2, 5, generator=g) for _ in range(3))
    adv = torch.randn(2, 5, generator=g)
    logits = torch.randn(2, 5, 7, generator=g)
    mask = torch.tensor([[1, 0, 1, 0, 0], [0, 1, 1, 1, 0]])

    def all_losses(lp, o, r, v, ov, rt, a, lg):
        return [
            clipped_policy_loss(lp, o, a, mask, 0.2)[0].item(),
            kl_penalty(lp, r, mask, "k3").item(),
            kl_penalty(lp, r, mask, "k1").item(),
            value_loss(v, ov, rt, mask, 0.5)[0].item(),
            entropy_from_logits(lg, mask).item(),
        ]

    before = all_losses(logp, old, ref, values, old_values, returns, adv, logits)
    off = mask == 0
    scrambled = [t.clone() for t in (logp, old, ref, values, old_values, returns, adv)]
    for t in scrambled:
        t[off] = torch.randn(int(off.sum()), generator=g) * 100
    lg = logits.clone()
    lg[off] = torch.randn(int(off.sum()), 7, generator=g) * 100
    after = all_losses(*scrambled, lg)
    assert after == pytest.approx(before, rel=1e-6)


def test_kl_estimators_hand_values():
    logp = torch.tensor([[-1.0, -0.5]])
    ref = torch.tensor([[-1.5, -0.5]])
    mask = torch.ones(1, 2)
    assert kl_penalty(logp, ref, mask, "k1").item() == pytest.approx(0.25)
    k3 = math.exp(-0.5) + 0.5 - 1.0
    assert kl_penalty(logp, ref, mask, "k3").item() == pytest.approx(k3 / 2, rel=1e-5)
    with pytest.raises(ValueError, match="unknown KL estimator"):
        kl_penalty(logp, ref, mask, "k2")  # type: ignore[arg-type]


def test_normalizer_splits_a_mean_across_micro_batches():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    m = torch.tensor([[1, 1], [1, 0]])
    full = kl_penalty(x, torch.zeros_like(x), m, "k1").item()
    parts = sum(kl_penalty(x[i : i + 1], torch.zeros(1, 2), m[i : i + 1], "k1", normalizer=3).item() for i in range(2))
    assert parts == pytest.approx(full) == pytest.approx(2.0)


def test_value_loss_clipping_hand_values():
    values = torch.tensor([[1.0, 0.1]])
    old = torch.tensor([[0.0, 0.0]])
    returns = torch.tensor([[0.0, 1.0]])
    loss, st = value_loss(values, old, returns, torch.ones(1, 2), clip=0.5)
    # token 0: max((1-0)^2, (0.5-0)^2) = 1 ; token 1: max(0.81, 0.81) = 0.81
    assert loss.item() == pytest.approx(0.5 * (1.0 + 0.81) / 2, rel=1e-5)
    assert st["vf_clip_frac"] == 0.0
    loss2, st2 = value_loss(torch.tensor([[-1.0]]), torch.tensor([[0.0]]), torch.tensor([[1.0]]), torch.ones(1, 1), 0.5)
    # clipped -0.5 -> (1.5)^2 = 2.25 > unclipped 4? no: unclipped (-2)^2 = 4 is larger
    assert loss2.item() == pytest.approx(2.0)
    assert st2["vf_clip_frac"] == 0.0


def test_entropy_uniform_and_peaked():
    logits = torch.stack([torch.zeros(8), torch.tensor([50.0] + [0.0] * 7)]).unsqueeze(0)
    assert entropy_from_logits(logits, torch.tensor([[1, 0]])).item() == pytest.approx(math.log(8), rel=1e-5)
    assert entropy_from_logits(logits, torch.tensor([[0, 1]])).item() == pytest.approx(0.0, abs=1e-6)
