"""Off-policy correction for asynchronous training: tokens sampled by an older policy.

With `train.async.max_staleness` S > 0 a trajectory may have been written by a policy up to S
updates older than the one being trained (and, within one trajectory, by several: the rollout
worker takes new weights between turns). The rollout engine records, per token, the log-prob it
sampled with (the *behaviour* policy, `Trajectory.behaviour_logprobs`); the update also knows the
*proximal* policy, the one before this update (its log-probs are the PPO ratio's denominator:
the old-policy pass, or the forward's own detached log-probs in one on-policy epoch). The ratio is
clipped around the proximal policy, and each token's policy-gradient term is multiplied by a
weight for the gap between proximal and behaviour:

* ``tis`` (truncated importance sampling): w = min(pi_prox / pi_behaviour, C). A token whose
  ratio exceeds C still trains, at weight C (bounded variance, a small bias).
* ``decoupled`` (decoupled PPO, AReaL): w = pi_prox / pi_behaviour, and a token whose weight
  exceeds C is masked out (w = 0) instead of truncated, as AReaL's behaviour-weight cap does.

When behaviour and proximal agree (a synchronous step, nothing stale) every weight is exp(0) = 1
exactly, and either correction leaves the loss and its gradients unchanged.

>>> import torch
>>> prox = torch.log(torch.tensor([[0.5, 0.3, 0.9]])); beh = torch.log(torch.tensor([[0.5, 0.1, 0.3]]))
>>> w, raw = importance_weights("tis", prox, beh, torch.tensor([[1, 1, 1]]), cap=2.0)
>>> [round(x, 4) for x in w[0].tolist()], [round(x, 4) for x in raw[0].tolist()]
([1.0, 2.0, 2.0], [1.0, 3.0, 3.0])
>>> [round(x, 4) for x in importance_weights("decoupled", prox, beh, torch.tensor([[1, 1, 1]]), 2.0)[0][0].tolist()]
[1.0, 0.0, 0.0]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

CORRECTIONS = ("tis", "decoupled")


def importance_weights(kind: str, prox_logp: Tensor, behaviour_logp: Tensor, mask: Tensor,
                       cap: float) -> tuple[Tensor, Tensor]:
    """(weights used, raw weights pi_prox / pi_behaviour), both (B, T) without gradient, 0 off the mask."""
    if kind not in CORRECTIONS:
        raise ValueError(f"train.async.correction must be one of {CORRECTIONS}, got {kind!r}")
    if cap < 1.0:
        raise ValueError(f"train.async.tis_cap must be >= 1, got {cap}")
    keep = mask > 0
    with torch.no_grad():
        # zero the log-ratio off the mask before exp, so padding cannot overflow
        log_w = torch.where(keep, prox_logp.detach().float() - behaviour_logp.float(), torch.zeros_like(prox_logp))
        raw = torch.where(keep, torch.exp(log_w), torch.zeros_like(log_w))
        if kind == "tis":
            used = torch.clamp(raw, max=cap)
        else:
            used = torch.where(raw <= cap, raw, torch.zeros_like(raw))
    return used, raw


@dataclass
class WeightStats:
    """Running importance-weight statistics over the tokens of one update."""

    tokens: float = 0.0
    total: float = 0.0
    largest: float = 0.0
    truncated: float = 0.0   # tokens whose raw weight exceeded the cap (truncated or masked out)
    log_gap: float = 0.0     # sum of log(pi_prox / pi_behaviour): the behaviour KL estimate

    def add(self, used: Tensor, raw: Tensor, mask: Tensor, cap: float) -> None:
        keep = mask > 0
        n = float(keep.sum().item())
        if n == 0:
            return
        self.tokens += n
        self.total += float(used[keep].sum().item())
        self.largest = max(self.largest, float(raw[keep].max().item()))
        self.truncated += float((raw[keep] > cap).sum().item())
        self.log_gap += float(torch.log(raw[keep].clamp_min(1e-30)).sum().item())

    def metrics(self) -> dict[str, float]:
        """`is/weight_mean` (of the weights used), `is/weight_max` (raw), `is/truncated_share`, `is/log_ratio_mean`."""
        if self.tokens == 0:
            return {}
        return {"is/weight_mean": self.total / self.tokens, "is/weight_max": self.largest,
                "is/truncated_share": self.truncated / self.tokens, "is/log_ratio_mean": self.log_gap / self.tokens}
