"""Advantage estimators: group-relative (GRPO), leave-one-out (RLOO) and GAE (PPO).

All functions are pure torch and work on CPU tensors of any float dtype. Sequence tensors are
(B, T) aligned with the token-logprob grid of `s3_ray.rl.algo.batch` (entry t scores token t + 1).
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import Tensor


def _group_indices(group_ids: list[str], n: int) -> list[list[int]]:
    """Row indices of each group, in first-seen order; checks lengths agree."""
    if len(group_ids) != n:
        raise ValueError(f"group_ids has {len(group_ids)} entries but rewards has {n}")
    groups: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(group_ids):
        groups[g].append(i)
    return list(groups.values())


def group_relative_advantages(
    rewards: Tensor, group_ids: list[str], normalize_std: bool = True, eps: float = 1e-6
) -> Tensor:
    """GRPO advantages: reward minus its group's mean, divided by the group's (unbiased) std.

    The group of a trajectory is its question, so the baseline is "how well do samples of this
    same question do". A group of one, or one whose rewards are all equal, carries no signal and
    gets advantage 0.

    >>> group_relative_advantages(torch.tensor([1.0, 0.0, 0.5, 0.5, 2.0]), ["a", "a", "b", "b", "c"])
    tensor([ 0.7071, -0.7071,  0.0000,  0.0000,  0.0000])
    >>> group_relative_advantages(torch.tensor([3.0, 1.0]), ["q", "q"], normalize_std=False)
    tensor([ 1., -1.])
    """
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D (N,), got shape {tuple(rewards.shape)}")
    out = torch.zeros_like(rewards)
    for idx in _group_indices(group_ids, rewards.numel()):
        if len(idx) < 2:
            continue
        r = rewards[idx]
        centred = r - r.mean()
        if normalize_std:
            centred = centred / (r.std(unbiased=True) + eps)
        out[idx] = centred
    return out


def rloo_advantages(rewards: Tensor, group_ids: list[str]) -> Tensor:
    """REINFORCE leave-one-out: reward minus the mean reward of the *other* samples of its group.

    Unbiased, because the baseline never depends on the sample it scores. Groups of one get 0.

    >>> rloo_advantages(torch.tensor([1.0, 0.0, 0.0, 4.0]), ["a", "a", "a", "b"])
    tensor([ 1.0000, -0.5000, -0.5000,  0.0000])
    """
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D (N,), got shape {tuple(rewards.shape)}")
    out = torch.zeros_like(rewards)
    for idx in _group_indices(group_ids, rewards.numel()):
        n = len(idx)
        if n < 2:
            continue
        r = rewards[idx]
        out[idx] = r - (r.sum() - r) / (n - 1)
    return out


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of `x` over positions where `mask` is 1 (0 when the mask is empty).

    Masked-out entries are selected away, not multiplied by 0, so an inf or nan there
    (e.g. a log-prob of a padding token) cannot poison the result.

    >>> masked_mean(torch.tensor([1.0, 2.0, float("nan")]), torch.tensor([1, 1, 0]))
    tensor(1.5000)
    """
    keep = mask > 0
    return torch.where(keep, x, torch.zeros_like(x)).sum() / keep.sum().clamp(min=1).to(x.dtype)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of `x` over masked positions (Bessel-corrected when `unbiased` and count > 1).

    >>> masked_var(torch.tensor([1.0, 3.0, 100.0]), torch.tensor([1, 1, 0]))
    tensor(2.)
    """
    count = (mask > 0).sum().to(x.dtype)
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased and count > 1:
        var = var * count / (count - 1)
    return var


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Normalise `x` to unit variance (and zero mean if `shift_mean`) over masked positions.

    Positions outside the mask are returned as 0 so they can never leak into a loss.

    >>> masked_whiten(torch.tensor([1.0, 3.0, 7.0]), torch.tensor([1, 1, 0]))
    tensor([-0.7071,  0.7071,  0.0000])
    """
    mean = masked_mean(x, mask)
    var = masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return torch.where(mask > 0, out, torch.zeros_like(out))


@torch.no_grad()
def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over (B, T) token sequences.

    `rewards` is zero except where a reward is paid (the last searcher token in s3). Positions
    with mask 0 (retrieved text, padding) are not actions: they are skipped, so the value and the
    running advantage flow through them unchanged from the next searcher token back to the
    previous one. A reward on a masked position is therefore ignored; put it on a masked-in token.
    Returns (advantages, returns) with returns = advantages + values; both are 0 outside the mask.
    Advantages are not whitened here (see `masked_whiten`).

    >>> r = torch.tensor([[0.0, 0.0, 0.0, 1.0]])
    >>> v = torch.tensor([[0.5, 9.0, 0.25, 0.5]])
    >>> m = torch.tensor([[1, 0, 1, 1]])
    >>> adv, ret = gae(r, v, m, gamma=1.0, lam=1.0)
    >>> adv
    tensor([[0.5000, 0.0000, 0.7500, 0.5000]])
    >>> ret
    tensor([[1., 0., 1., 1.]])
    >>> gae(r, v, m, gamma=0.5, lam=0.5)[0]
    tensor([[-0.3438,  0.0000,  0.1250,  0.5000]])
    """
    if not (rewards.shape == values.shape == mask.shape) or rewards.dim() != 2:
        raise ValueError(
            f"rewards, values and mask must share one (B, T) shape; got {tuple(rewards.shape)}, "
            f"{tuple(values.shape)}, {tuple(mask.shape)}"
        )
    m = mask.to(values.dtype)
    b, t_len = rewards.shape
    next_value = torch.zeros(b, dtype=values.dtype, device=values.device)
    last_gae = torch.zeros_like(next_value)
    advantages = torch.zeros_like(values)
    for t in reversed(range(t_len)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        cur = delta + gamma * lam * last_gae
        last_gae = m[:, t] * cur + (1 - m[:, t]) * last_gae
        next_value = m[:, t] * values[:, t] + (1 - m[:, t]) * next_value
        advantages[:, t] = torch.where(m[:, t] > 0, cur, torch.zeros_like(cur))
    returns = torch.where(m > 0, advantages + values, torch.zeros_like(values))
    return advantages, returns
