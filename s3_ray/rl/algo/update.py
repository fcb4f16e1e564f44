"""The policy update: scored trajectories in, one optimiser step (per epoch) out.

`PolicyUpdater.step` reads top to bottom:

1. pad the trajectories (`collate`), count the searcher tokens (the token-mean denominator);
2. compute old-policy log-probs (and, for PPO, old values) once, without gradients, and the
   reference log-probs when a KL term is on;
3. advantages: GRPO = group-relative rewards broadcast over each trajectory's searcher tokens;
   RLOO = reward minus the mean of the other samples of its group, broadcast likewise;
   PPO = GAE with the reward on the last searcher token, whitened over the batch;
4. micro-batches with gradient accumulation: clipped PG + kl_coef * KL - entropy_coef * entropy
   (+ vf_coef * value loss for PPO); gradients are reduced across workers only on the last one;
5. gradient clipping and one AdamW step (skipped when the gradient is not finite);
6. the KL controller sees the step's KL (fixed coefficient, or adaptive with `train.kl_target`).

The model may be wrapped in DistributedDataParallel (Ray Train's `prepare_model`): forwards go
through the wrapper so gradients are all-reduced; config lookups go to `.module`. Or it may be
sharded with FSDP (`s3_ray.rl.model.sharding`): then parameters, gradients and the optimiser state are
shards, and `state_dict()` / `load_state_dict()` gather and cut the optimiser state, so what a
checkpoint holds is the same plain state as without sharding.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from s3_ray.config import TrainConfig
from s3_ray.rl.algo.advantages import (
    gae,
    group_relative_advantages,
    masked_mean,
    masked_var,
    masked_whiten,
    rloo_advantages,
)
from s3_ray.rl.algo.batch import (
    TrainBatch,
    can_share_prefix,
    collate,
    first_trained_position,
    grid_logprobs,
    token_logprobs,
)
from s3_ray.rl.algo.critic import ValueHead, last_token_rewards
from s3_ray.rl.algo.kl_control import KLController
from s3_ray.rl.algo.offpolicy import WeightStats, importance_weights
from s3_ray.rl.model import collectives, sharding
from s3_ray.rl.algo.losses import (
    clipped_policy_loss,
    kl_penalty,
    masked_sum_mean,
    value_loss,
)
from s3_ray.types import Trajectory


def _is_distributed(model: Any) -> bool:
    """Whether `model` trains across workers (DDP-wrapped or FSDP-sharded, in a live process group)."""
    wrapped = isinstance(model, nn.parallel.DistributedDataParallel) or sharding.is_sharded(model)
    return wrapped and collectives.active()


def blank_row(t: Trajectory) -> Trajectory:
    """A copy of `t` that trains nothing (loss mask cleared, reward 0, a group of its own)."""
    from dataclasses import replace

    from s3_ray.types import QAItem

    return replace(t, item=QAItem("__padding__", t.item.question, t.item.golden_answers), reward=0.0,
                   loss_mask=[0] * len(t.loss_mask), metrics={})


class PolicyUpdater:
    """Owns the AdamW optimiser (and, for PPO, the value head) of one training process."""

    def __init__(self, model: Any, ref_model: Any | None, cfg: TrainConfig, pad_id: int,
                 temperature: float = 1.0) -> None:
        """`temperature` is the rollout's sampling temperature: log-probs are taken at it, so the
        ratio compares the same distributions the trajectories were sampled from."""
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.model = model
        self.ref_model = ref_model
        self.cfg = cfg
        self.pad_id = int(pad_id)
        self.temperature = float(temperature)
        self.micro_batch = cfg.micro_batch
        self.ppo_epochs = cfg.ppo_epochs
        self.use_kl = cfg.kl_coef > 0 and ref_model is not None
        self.kl_ctl = KLController.from_config(cfg)
        # Whether the policy may differ from the reference (then a KL-only step still has a gradient).
        self.moved_from_ref = False
        self.policy_params = [p for p in model.parameters() if p.requires_grad]
        if not self.policy_params:
            raise ValueError("the policy has no trainable parameters (was it loaded with for_training=True?)")
        groups: list[dict[str, Any]] = [{"params": self.policy_params, "lr": cfg.lr, "weight_decay": cfg.weight_decay}]
        self.value_head: ValueHead | None = None
        if cfg.algorithm == "ppo":
            self.value_head = ValueHead.for_policy(model)
            groups.append(self.value_head.param_group(cfg))
        elif cfg.algorithm not in ("grpo", "rloo"):
            raise ValueError(f"train.algorithm must be 'grpo', 'rloo' or 'ppo', got {cfg.algorithm!r}")
        self.optimizer = torch.optim.AdamW(groups)
        # asynchronous training: correct each token for the policy that sampled it (rl/algo/offpolicy.py)
        self.correction = cfg.async_.correction if cfg.async_.enabled else None

    # ---------------------------------------------------------------- state
    def state_dict(self, keep: bool = True) -> dict[str, Any]:
        """Optimiser, KL coefficient and value head (PPO): everything a resume needs beyond the policy.

        With a sharded policy the optimiser state is gathered: a collective, every rank calls it;
        `keep=False` (the ranks that write nothing) gathers without keeping the optimiser state.
        """
        optimizer = (sharding.full_optimizer_state(self.optimizer, keep=keep) if sharding.is_sharded(self.model)
                     else self.optimizer.state_dict())
        state: dict[str, Any] = {"optimizer": optimizer, **self.scalar_state()}
        if self.value_head is not None:
            state["value_head"] = self.value_head.state_dict()
        return state

    def scalar_state(self) -> dict[str, Any]:
        """The state beyond the optimiser and the trained modules (KL coefficient, reference flag):
        what a sharded checkpoint keeps beside the tensors it writes with `trained_modules`."""
        return {"moved_from_ref": self.moved_from_ref, "kl_controller": self.kl_ctl.state_dict()}

    def trained_modules(self) -> nn.ModuleDict:
        """Every module `optimizer` updates, by name: the policy and (PPO) the value head. A sharded
        checkpoint saves their weights and the optimiser state keyed by these names."""
        modules = {"policy": self.model}
        if self.value_head is not None:
            modules["value_head"] = self.value_head
        return nn.ModuleDict(modules)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "optimizer" not in state:
            raise KeyError("updater state has no 'optimizer' entry")
        if self.value_head is not None:
            if "value_head" not in state:
                raise KeyError("PPO updater state has no 'value_head' entry (was it saved by a GRPO run?)")
            self.value_head.load_state_dict(state["value_head"])
        optimizer = state["optimizer"]
        if sharding.is_sharded(self.model):  # plain saved state -> this rank's shards
            optimizer = sharding.shard_optimizer_state(self.optimizer, optimizer)
        self.optimizer.load_state_dict(optimizer)
        self.load_scalar_state(state)

    def load_scalar_state(self, state: dict[str, Any]) -> None:
        """The inverse of `scalar_state`."""
        if self.kl_ctl.adaptive and "kl_controller" not in state:
            raise KeyError("updater state has no 'kl_controller' entry, which an adaptive-KL run needs")
        self.moved_from_ref = bool(state.get("moved_from_ref", True))
        if self.kl_ctl.adaptive:
            self.kl_ctl.load_state_dict(state["kl_controller"])

    # ---------------------------------------------------------------- forward passes
    def _forward(self, mb: TrainBatch, entropy_grad: bool,
                 entropy: bool = True) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """(log-probs, entropies | None, values | None) on the (b, t-1) grid of one micro-batch.

        Columns before the micro-batch's first trained token are 0 (never computed). Log-probs
        and entropies come from `grid_logprobs`, `train.logits_chunk` tokens of logits at a time.
        """
        start = first_trained_position(mb.loss_mask)
        out = grid_logprobs(
            self.model, mb.input_ids, mb.attention_mask, self.temperature, start,
            entropy=entropy, entropy_grad=entropy_grad, hidden=self.value_head is not None,
            share_prefix=self.cfg.share_prefix and self.value_head is None and can_share_prefix(self.model),
            chunk=self.cfg.logits_chunk,
        )
        values = None
        if self.value_head is not None and out.hidden is not None:
            values = F.pad(self.value_head(out.hidden).cpu(), (start, 0))
        ent = F.pad(out.entropy.cpu(), (start, 0)) if out.entropy is not None else None
        return F.pad(out.logprobs.cpu(), (start, 0)), ent, values

    @torch.no_grad()
    def _old_policy(self, batch: TrainBatch) -> tuple[Tensor, Tensor | None]:
        """Old log-probs (B, T-1) and, for PPO, old values (B, T-1) from one gradient-free pass."""
        logp_out = torch.zeros(batch.loss_mask.shape, dtype=torch.float32)
        values_out = torch.zeros_like(logp_out) if self.value_head is not None else None
        for start in range(0, len(batch), self.micro_batch):
            stop = min(start + self.micro_batch, len(batch))
            logp, _, values = self._forward(batch.rows(start, stop), entropy_grad=False, entropy=False)
            logp_out[start:stop, : logp.shape[1]] = logp
            if values_out is not None and values is not None:
                values_out[start:stop, : values.shape[1]] = values
        return logp_out, values_out

    # ---------------------------------------------------------------- the step
    def _advantages(self, batch: TrainBatch, mask: Tensor, old_values: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """(advantages (B, T-1), returns (B, T-1) | None): GRPO/RLOO without a critic, PPO with GAE."""
        if old_values is None:
            if self.cfg.algorithm == "rloo":
                seq_adv = rloo_advantages(batch.rewards, batch.group_ids)
            else:
                seq_adv = group_relative_advantages(batch.rewards, batch.group_ids)
            return seq_adv.unsqueeze(-1) * mask, None
        token_rewards = last_token_rewards(batch.rewards, mask)
        adv, returns = gae(token_rewards, old_values, mask, self.cfg.gamma, self.cfg.lam)
        return masked_whiten(adv, mask), returns

    def step(self, trajectories: list[Trajectory], filler: Trajectory | None = None) -> dict[str, float]:
        """One update on `trajectories`; returns scalar metrics for logging.

        Across workers the batches may differ in size (dynamic sampling keeps different numbers of
        groups per worker, possibly none): every worker then pads to the largest with rows that
        train nothing (copies of a trajectory, or of `filler`, with their loss mask cleared), so all
        run the same forward/backward passes, and token means are taken over the searcher tokens
        of all workers together.
        """
        rows = self._padded(list(trajectories), filler)
        batch = collate(rows, self.pad_id, self.cfg.max_seq_len)
        n_tok = batch.num_tokens
        denom = float(n_tok)  # the token-mean denominator; over all workers, per worker's share
        if _is_distributed(self.model):
            (total,) = collectives.reduce_floats([float(n_tok)])
            denom = total / collectives.world_size()
        if denom == 0:
            ids = sorted({t.item.id for t in trajectories})
            raise ValueError(f"no searcher tokens (loss_mask all 0) in the batch of items {ids[:5]}")
        mask = batch.loss_mask.float()
        if self.correction is not None and batch.behaviour_logp is None:
            raise ValueError(f"train.async.correction={self.correction} needs the log-probs the rollout sampled with: "
                             "some trajectories carry no behaviour_logprobs (the rollout engine did not report them)")
        # One on-policy epoch without a critic: the old policy *is* the current one, so the ratio's
        # denominator is the forward pass's own detached log-probs and a whole extra pass is saved.
        on_policy = self.ppo_epochs == 1 and self.value_head is None
        old_logp, old_values = (None, None) if on_policy else self._old_policy(batch)
        adv, returns = self._advantages(batch, mask, old_values)
        kl_coef = self.kl_ctl.value
        real = max(1, len(trajectories))
        common = {"kl_coef": kl_coef, "response_tokens": float(n_tok), "searcher_tokens_mean": n_tok / real,
                  "reward_mean": batch.rewards.mean().item(), "lr": float(self.optimizer.param_groups[0]["lr"])}
        if not self._has_gradient(adv):
            # Every group scored alike and the policy still equals its reference: the loss is
            # exactly flat (and the KL is 0), so the forward/backward passes are skipped.
            if self.use_kl:
                self.kl_ctl.update(0.0)
            return {"loss": 0.0, "pg_loss": 0.0, "kl": 0.0, "update_skipped": 1.0, "adv_mean": 0.0,
                    "adv_std": 0.0, **common}
        t_ref = time.perf_counter()
        ref_logp = (token_logprobs(self.ref_model, batch, self.temperature, self.micro_batch,
                                   share_prefix=self.cfg.share_prefix and can_share_prefix(self.ref_model),
                                   logits_chunk=self.cfg.logits_chunk)
                    if self.use_kl else None)
        t_ref = time.perf_counter() - t_ref
        t_policy = time.perf_counter()

        totals: dict[str, float] = {}
        for _ in range(self.ppo_epochs):
            for key, value in self._epoch(batch, mask, denom, old_logp, ref_logp, adv, old_values, returns,
                                          kl_coef).items():
                totals[key] = totals.get(key, 0.0) + value / self.ppo_epochs
        t_policy = time.perf_counter() - t_policy
        self.moved_from_ref = True
        if self.use_kl:
            self.kl_ctl.update(self._mean_over_workers(totals["kl"]))
        positions = sum(len(mb) * mb.input_ids.shape[1] for mb in
                        (batch.rows(i, min(i + self.micro_batch, len(batch))) for i in range(0, len(batch), self.micro_batch)))
        totals.update({"time/ref_forward_s": t_ref, "time/policy_fwd_bwd_s": t_policy,
                       "update/rows": float(len(trajectories)), "update/positions": float(positions)})
        totals.update({
            "update_skipped": 0.0,
            "adv_mean": masked_mean(adv, mask).item(),
            "adv_std": masked_var(adv, mask).sqrt().item(),
            **common,
        })
        if returns is not None and old_values is not None:
            totals["value_mean"] = masked_mean(old_values, mask).item()
            totals["return_mean"] = masked_mean(returns, mask).item()
        return totals

    def _epoch(
        self,
        batch: TrainBatch,
        mask: Tensor,
        n_tok: float,
        old_logp: Tensor | None,
        ref_logp: Tensor | None,
        adv: Tensor,
        old_values: Tensor | None,
        returns: Tensor | None,
        kl_coef: float,
    ) -> dict[str, float]:
        """Gradient accumulation over micro-batches, then one clipped optimiser step.

        A non-finite gradient norm (identical on every rank, as gradients are reduced across workers)
        skips the optimiser step, so a diverged batch never writes NaN into the weights.
        """
        cfg = self.cfg
        self.optimizer.zero_grad(set_to_none=True)
        sums = {"loss": 0.0, "pg_loss": 0.0, "kl": 0.0, "entropy": 0.0, "clip_frac": 0.0, "approx_kl": 0.0}
        if self.value_head is not None:
            sums.update({"value_loss": 0.0, "vf_clip_frac": 0.0})
        starts = list(range(0, len(batch), self.micro_batch))
        weight_stats = WeightStats()
        for i, start in enumerate(starts):
            stop = min(start + self.micro_batch, len(batch))
            mb = batch.rows(start, stop)
            width = mb.loss_mask.shape[1]
            mmask = mask[start:stop, :width]
            local = mask.sum().item()
            share = mmask.sum().item() / local if local else 0.0  # per-micro-batch means -> this worker's means
            with sharding.grad_sync(self.model, sync=i == len(starts) - 1):
                logp, entropy, values = self._forward(mb, entropy_grad=cfg.entropy_coef > 0)
                old = logp.detach() if old_logp is None else old_logp[start:stop, :width]
                weights = None
                if self.correction is not None and mb.behaviour_logp is not None:
                    weights, raw = importance_weights(self.correction, old, mb.behaviour_logp, mmask,
                                                      cfg.async_.tis_cap)
                    weight_stats.add(weights, raw, mmask, cfg.async_.tis_cap)
                pg, pg_stats = clipped_policy_loss(logp, old, adv[start:stop, :width], mmask, cfg.clip_ratio, n_tok,
                                                   weights=weights)
                ent = masked_sum_mean(entropy, mmask, n_tok)
                loss = pg - cfg.entropy_coef * ent
                if ref_logp is not None:
                    kl = kl_penalty(logp, ref_logp[start:stop, :width], mmask, cfg.kl_estimator, n_tok)
                    loss = loss + kl_coef * kl
                    sums["kl"] += kl.item()
                if values is not None and old_values is not None and returns is not None:
                    vl, v_stats = value_loss(
                        values, old_values[start:stop, :width], returns[start:stop, :width], mmask,
                        cfg.value_clip, n_tok,
                    )
                    loss = loss + cfg.vf_coef * vl
                    sums["value_loss"] += vl.item()
                    sums["vf_clip_frac"] += v_stats["vf_clip_frac"] * share
                loss.backward()
            sums["loss"] += loss.item()
            sums["pg_loss"] += pg.item()
            sums["entropy"] += ent.item()
            sums["clip_frac"] += pg_stats["clip_frac"] * share
            sums["approx_kl"] += pg_stats["approx_kl"] * share
        sums.update(weight_stats.metrics())
        sums["grad_norm"] = sharding.total_norm(torch.nn.utils.clip_grad_norm_(self.policy_params, cfg.max_grad_norm))
        if self.value_head is not None:
            if _is_distributed(self.model):
                self.value_head.average_grads()
            torch.nn.utils.clip_grad_norm_(list(self.value_head.parameters()), cfg.max_grad_norm)
        sums["nonfinite_grad"] = 0.0 if torch.isfinite(torch.tensor(sums["grad_norm"])) else 1.0
        if not sums["nonfinite_grad"]:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return sums

    def _padded(self, rows: list[Trajectory], filler: Trajectory | None) -> list[Trajectory]:
        """`rows` padded with rows that train nothing to the largest batch of any worker."""
        if not _is_distributed(self.model):
            if not rows:
                raise ValueError("PolicyUpdater.step got no trajectories")
            return rows
        (largest,) = collectives.reduce_floats([float(len(rows))], op="max")
        template = rows[0] if rows else filler
        if len(rows) < largest and template is None:
            raise ValueError("this worker has no trajectories to pad its batch with; pass filler=")
        while len(rows) < largest:
            rows.append(blank_row(template))
        return rows

    def _has_gradient(self, adv: Tensor) -> bool:
        """False only when the step's loss is provably flat on every worker (then it is skipped)."""
        if self.value_head is not None or (self.use_kl and self.moved_from_ref):
            return True
        signal = float(not bool((adv == 0).all()))  # NaN counts as signal: it must surface
        if _is_distributed(self.model):
            (signal,) = collectives.reduce_floats([signal], op="max")  # every rank must take the same branch
        return signal > 0

    def _mean_over_workers(self, value: float) -> float:
        """`value` averaged over workers, so every rank's KL controller takes the same step."""
        if not _is_distributed(self.model):
            return value
        (total,) = collectives.reduce_floats([value])
        return total / collectives.world_size()
