"""Token-level RL losses: clipped policy gradient, KL to a reference, clipped value loss, entropy.

Every loss takes a (B, T) `mask` that is 1 only on the searcher's own tokens, so retrieved text
and padding never contribute. Losses are masked means over tokens; pass `normalizer` (the total
number of masked tokens of the whole batch) when a batch is split into micro-batches for
gradient accumulation, so that the accumulated gradient equals that of one token-level mean.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from s3_ray.rl.algo.advantages import masked_mean

__all__ = [
    "clipped_policy_loss",
    "entropy_from_logits",
    "kl_penalty",
    "kl_per_token",
    "masked_mean",
    "masked_sum_mean",
    "token_entropy",
    "value_loss",
]


def masked_sum_mean(x: Tensor, mask: Tensor, normalizer: float | None = None) -> Tensor:
    """Sum of `x` over the mask divided by `normalizer` (default: the mask's own token count).

    >>> masked_sum_mean(torch.tensor([2.0, 4.0, 8.0]), torch.tensor([1, 1, 0]), normalizer=4)
    tensor(1.5000)
    """
    if normalizer is None:
        return masked_mean(x, mask)
    if normalizer <= 0:
        raise ValueError(f"normalizer must be positive, got {normalizer}")
    return torch.where(mask > 0, x, torch.zeros_like(x)).sum() / normalizer


def clipped_policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_ratio: float,
    normalizer: float | None = None,
    weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """PPO's clipped surrogate, -min(r A, clip(r, 1 - eps, 1 + eps) A), as a token-level mean.

    `weights` (B, T), without gradient, multiply each token's term: the off-policy correction of
    tokens sampled by an older policy (`s3_ray.rl.algo.offpolicy`); None leaves the loss as it is.

    `advantages` is (B, T) or (B,) (one value per sequence, broadcast over its tokens).
    Stats: clip_frac (share of tokens where the clipped branch was chosen), approx_kl
    (mean of old_logp - logp) and ratio_mean.

    >>> lp = torch.tensor([[0.0, 0.0]]); old = torch.log(torch.tensor([[0.5, 0.5]]))
    >>> loss, st = clipped_policy_loss(lp, old, torch.tensor([1.0]), torch.tensor([[1, 1]]), 0.2)
    >>> round(loss.item(), 4), st["clip_frac"]
    (-1.2, 1.0)
    """
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)
    # zero the log-ratio off the mask *before* exp, so garbage there cannot overflow into nan grads
    log_ratio = torch.where(mask > 0, logp - old_logp, torch.zeros_like(logp))
    ratio = torch.exp(log_ratio)
    pg_unclipped = -advantages * ratio
    pg_clipped = -advantages * torch.clamp(ratio, 1.0 - clip_ratio, 1.0 + clip_ratio)
    per_token = torch.maximum(pg_unclipped, pg_clipped)
    if weights is not None:
        per_token = per_token * weights.detach()
    loss = masked_sum_mean(per_token, mask, normalizer)
    with torch.no_grad():
        stats = {
            "clip_frac": masked_mean((pg_clipped > pg_unclipped).to(logp.dtype), mask).item(),
            "approx_kl": masked_mean(-log_ratio, mask).item(),
            "ratio_mean": masked_mean(ratio, mask).item(),
        }
    return loss, stats


def kl_per_token(logp: Tensor, ref_logp: Tensor, kind: Literal["k1", "k3"] = "k3") -> Tensor:
    """Per-token estimate of KL(policy || reference) from sampled-token log-probs.

    k1 = logp - ref_logp (unbiased, can be negative); k3 = exp(ref - logp) - (ref - logp) - 1
    (unbiased, always >= 0, lower variance).

    >>> kl_per_token(torch.tensor([0.0]), torch.tensor([0.0]))
    tensor([0.])
    >>> kl_per_token(torch.tensor([-1.0]), torch.tensor([-2.0]), "k1")
    tensor([1.])
    """
    if kind == "k1":
        return logp - ref_logp
    if kind == "k3":
        d = ref_logp - logp
        return torch.exp(d) - d - 1.0
    raise ValueError(f"unknown KL estimator kind {kind!r}; expected 'k1' or 'k3'")


def kl_penalty(
    logp: Tensor,
    ref_logp: Tensor,
    mask: Tensor,
    kind: Literal["k1", "k3"] = "k3",
    normalizer: float | None = None,
) -> Tensor:
    """Masked token mean of `kl_per_token`: the KL term added to the loss (times kl_coef).

    >>> lp = torch.tensor([[-1.0, -5.0]]); ref = torch.tensor([[-2.0, 0.0]])
    >>> kl_penalty(lp, ref, torch.tensor([[1, 0]]), "k1")
    tensor(1.)
    >>> round(kl_penalty(lp, ref, torch.tensor([[1, 0]]), "k3").item(), 4)
    0.3679
    """
    keep = mask > 0
    safe_logp = torch.where(keep, logp, torch.zeros_like(logp))
    safe_ref = torch.where(keep, ref_logp, torch.zeros_like(ref_logp))
    return masked_sum_mean(kl_per_token(safe_logp, safe_ref, kind), mask, normalizer)


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    clip: float,
    normalizer: float | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Clipped value loss, 0.5 * max((V - R)^2, (V_clipped - R)^2), V_clipped within clip of V_old.

    >>> v = torch.tensor([[2.0, 0.0]]); old = torch.tensor([[0.0, 0.0]]); ret = torch.tensor([[1.0, 0.0]])
    >>> loss, st = value_loss(v, old, ret, torch.tensor([[1, 0]]), clip=0.5)
    >>> loss.item(), st["vf_clip_frac"]
    (0.5, 0.0)
    >>> round(value_loss(torch.tensor([[0.5]]), old[:, :1], torch.tensor([[3.0]]), torch.tensor([[1]]), 0.2)[0].item(), 4)
    3.92
    """
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    err = (values - returns) ** 2
    err_clipped = (clipped - returns) ** 2
    per_token = 0.5 * torch.maximum(err, err_clipped)
    loss = masked_sum_mean(per_token, mask, normalizer)
    with torch.no_grad():
        stats = {"vf_clip_frac": masked_mean((err_clipped > err).to(values.dtype), mask).item()}
    return loss, stats


def token_entropy(logits: Tensor) -> Tensor:
    """Entropy of the categorical distribution at every position: (..., V) -> (...).

    >>> round(token_entropy(torch.zeros(4)).item(), 4)  # uniform over 4 = log 4
    1.3863
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


def entropy_from_logits(logits: Tensor, mask: Tensor, normalizer: float | None = None) -> Tensor:
    """Masked token mean of the policy entropy; `logits` is (B, T, V), `mask` (B, T).

    >>> logits = torch.tensor([[[0.0, 0.0], [100.0, 0.0]]])
    >>> round(entropy_from_logits(logits, torch.tensor([[1, 0]])).item(), 4)
    0.6931
    """
    return masked_sum_mean(token_entropy(logits), mask, normalizer)
