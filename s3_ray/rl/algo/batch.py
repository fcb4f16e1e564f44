"""From scored trajectories to padded training tensors, and per-token log-probs of a model.

Alignment convention used by every RL module: a causal LM's logits at position t predict token
t + 1, so the "token grid" of a (B, T) input is (B, T - 1) and its entry t scores input token
t + 1. `TrainBatch.loss_mask`, `token_logprobs`, advantages and values all live on that grid.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from s3_ray.models.kv import cache_field
from s3_ray.rl.model.precision import training_autocast
from s3_ray.types import Trajectory

DEFAULT_LOGITS_CHUNK = 1024
"""Tokens per LM-head chunk when no config says (`train.logits_chunk`)."""


@dataclass
class TrainBatch:
    """Right-padded prompt + response tensors of B trajectories."""

    input_ids: Tensor        # (B, T) prompt + response, right-padded with pad_id
    attention_mask: Tensor   # (B, T) 1 on real tokens, 0 on padding
    loss_mask: Tensor        # (B, T-1) 1 where the predicted token (t + 1) is a searcher token
    rewards: Tensor          # (B,) float32 trajectory rewards
    group_ids: list[str]     # (B,) question id of each row: the GRPO group
    # (B, T-1) the log-prob each trained token was sampled with (the rollout's behaviour policy),
    # on the token grid; None unless every trajectory recorded them
    behaviour_logp: Tensor | None = None

    @property
    def num_tokens(self) -> int:
        """Number of searcher tokens (the denominator of every token-level mean)."""
        return int(self.loss_mask.sum().item())

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def rows(self, start: int, stop: int) -> TrainBatch:
        """A micro-batch view of rows [start, stop), trimmed to its own longest sequence."""
        attn = self.attention_mask[start:stop]
        length = int(attn.sum(dim=1).max().item())
        return TrainBatch(
            input_ids=self.input_ids[start:stop, :length],
            attention_mask=attn[:, :length],
            loss_mask=self.loss_mask[start:stop, : length - 1],
            rewards=self.rewards[start:stop],
            group_ids=self.group_ids[start:stop],
            behaviour_logp=None if self.behaviour_logp is None else self.behaviour_logp[start:stop, : length - 1],
        )


def _check(traj: Trajectory, row: int) -> None:
    where = f"trajectory {row} (item {traj.item.id!r})"
    if not traj.prompt_ids:
        raise ValueError(f"{where}: prompt_ids is empty; the first response token needs a context")
    if not traj.response_ids:
        raise ValueError(f"{where}: response_ids is empty; there is nothing to train on")
    if len(traj.loss_mask) != len(traj.response_ids):
        raise ValueError(
            f"{where}: loss_mask has {len(traj.loss_mask)} entries but response_ids has {len(traj.response_ids)}"
        )
    bad = sorted({m for m in traj.loss_mask if m not in (0, 1)})
    if bad:
        raise ValueError(f"{where}: loss_mask must hold only 0/1, found {bad}")


def collate(trajectories: list[Trajectory], pad_id: int, max_len: int | None = None) -> TrainBatch:
    """Pad trajectories into one `TrainBatch`.

    With `max_len`, an over-long prompt is cut from the left (its oldest tokens go, as the rollout
    does with its rolling context); a response that alone does not fit is an error, because
    cutting it would drop the turns the reward was paid for.

    >>> from s3_ray.types import QAItem
    >>> t1 = Trajectory(QAItem("q", "?", ("a",)), [5, 6], [7, 8, 9], [1, 0, 1], reward=1.0)
    >>> t2 = Trajectory(QAItem("q", "?", ("a",)), [5], [7], [1])
    >>> b = collate([t1, t2], pad_id=0)
    >>> b.input_ids.tolist(), b.attention_mask.tolist()
    ([[5, 6, 7, 8, 9], [5, 7, 0, 0, 0]], [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    >>> b.loss_mask.tolist()
    [[0, 1, 0, 1], [1, 0, 0, 0]]
    >>> collate([t1], pad_id=0, max_len=4).input_ids.tolist()
    [[6, 7, 8, 9]]
    """
    if not trajectories:
        raise ValueError("collate needs at least one trajectory")
    if max_len is not None and max_len < 2:
        raise ValueError(f"max_len must be >= 2, got {max_len}")
    rows: list[tuple[list[int], list[int]]] = []
    behaviour: list[list[float]] | None = [] if all(t.behaviour_logprobs is not None for t in trajectories) else None
    for i, traj in enumerate(trajectories):
        _check(traj, i)
        prompt = list(traj.prompt_ids)
        if max_len is not None:
            if len(traj.response_ids) > max_len - 1:
                raise ValueError(
                    f"trajectory {i} (item {traj.item.id!r}): response of {len(traj.response_ids)} tokens "
                    f"does not fit max_len={max_len} with at least one prompt token"
                )
            keep = max_len - len(traj.response_ids)
            prompt = prompt[-keep:]
        ids = prompt + list(traj.response_ids)
        # token grid entry t scores token t + 1: prompt tokens after the first are never trained
        grid = [0] * (len(prompt) - 1) + [int(m) for m in traj.loss_mask]
        rows.append((ids, grid))
        if behaviour is not None:
            sampled = list(traj.behaviour_logprobs or [])
            if len(sampled) != len(traj.response_ids):
                raise ValueError(f"trajectory {i} (item {traj.item.id!r}): {len(sampled)} behaviour log-probs for "
                                 f"{len(traj.response_ids)} response tokens")
            behaviour.append([0.0] * (len(prompt) - 1) + [float(x) for x in sampled])
    width = max(len(ids) for ids, _ in rows)
    b = len(rows)
    input_ids = torch.full((b, width), pad_id, dtype=torch.long)
    attention = torch.zeros((b, width), dtype=torch.long)
    loss_mask = torch.zeros((b, width - 1), dtype=torch.long)
    for i, (ids, grid) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention[i, : len(ids)] = 1
        if grid:
            loss_mask[i, : len(grid)] = torch.tensor(grid, dtype=torch.long)
    behaviour_logp = None
    if behaviour is not None:
        behaviour_logp = torch.zeros((b, width - 1), dtype=torch.float32)
        for i, row in enumerate(behaviour):
            if row:
                behaviour_logp[i, : len(row)] = torch.tensor(row, dtype=torch.float32)
    return TrainBatch(
        input_ids=input_ids,
        attention_mask=attention,
        loss_mask=loss_mask,
        rewards=torch.tensor([float(t.reward) for t in trajectories], dtype=torch.float32),
        group_ids=[t.item.id for t in trajectories],
        behaviour_logp=behaviour_logp,
    )


def _device_of(model: Any) -> torch.device:
    return next(model.parameters()).device


def first_trained_position(loss_mask: Tensor) -> int:
    """The first grid column any row trains on (0 if none): logits left of it are never needed.

    >>> first_trained_position(torch.tensor([[0, 0, 1, 1], [0, 0, 0, 1]]))
    2
    """
    cols = torch.nonzero(loss_mask.any(dim=0)).flatten()
    return int(cols[0].item()) if cols.numel() else 0


def common_prefix(input_ids: Tensor, attention_mask: Tensor) -> int:
    """How many leading tokens every row shares (real tokens only; rows are right-padded).

    >>> common_prefix(torch.tensor([[1, 2, 3, 9], [1, 2, 4, 0]]), torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]))
    2
    """
    lengths = attention_mask.sum(dim=1)
    limit = int(lengths.min().item())
    same = (input_ids[:, :limit] == input_ids[:1, :limit]).all(dim=0)
    differ = torch.nonzero(~same).flatten()
    return int(differ[0].item()) if differ.numel() else limit


def _shared_prefix_past(model: Any, input_ids: Tensor, length: int) -> Any:
    """The KV cache of the first `length` tokens, computed once (one row) and expanded to every row.

    Gradients flow back through the expansion into the one prefix computation, so the parameter
    gradients equal those of a full forward per row."""
    bare = getattr(model, "module", model)
    decoder = bare.get_decoder()
    out = decoder(input_ids=input_ids[:1, :length], use_cache=True)
    past = getattr(out, cache_field())
    past.batch_repeat_interleave(input_ids.shape[0])
    return past


def can_share_prefix(model: Any) -> bool:
    """Whether `grid_logprobs` may read a shared prefix once: an HF causal LM (or a DDP/peft wrapper of
    one) that is not FSDP-sharded (its root must run every forward) and does not recompute
    activations (gradient checkpointing turns the KV cache off in training)."""
    from s3_ray.rl.model.sharding import is_sharded

    bare = getattr(model, "module", model)
    if not hasattr(bare, "get_decoder") or is_sharded(bare):
        return False
    inner = bare.get_base_model() if hasattr(bare, "peft_config") else bare
    # newer transformers name it is_activation_checkpointing (the old name warns), older ones
    # is_gradient_checkpointing: read whichever exists, the new one first
    name = "is_activation_checkpointing" if hasattr(type(inner), "is_activation_checkpointing") else \
        "is_gradient_checkpointing"
    return not getattr(inner, name, False)


@dataclass
class GridOutput:
    """What `grid_logprobs` computes for grid columns [start, T-1) of a (B, T) batch."""

    logprobs: Tensor        # (B, T-1-start) float32 log p(token t + 1 | tokens <= t) at the temperature
    entropy: Tensor | None  # (B, T-1-start) float32 entropy of that distribution, when asked for
    hidden: Tensor | None   # (B, T-1-start, H) the final hidden states that feed the LM head, when asked for


def _parts(model: Any) -> tuple[Any, Any, contextlib.AbstractContextManager[Any]]:
    """(what to call for the forward, the bare HF model, the context the whole pass runs in).

    DDP: the forward goes through the wrapper (so gradients are all-reduced), the parts come from
    `.module`. A LoRA policy's adapter-off reference (`adapters_off`) runs forward *and* head with
    the adapter switched off. FSDP-sharded and peft models are their own bare model."""
    if hasattr(model, "adapters_off"):
        return model.policy, model.policy, model.adapters_off()
    return model, getattr(model, "module", model), contextlib.nullcontext()


def _plain_head(bare: Any) -> Any:
    """The output projection, when logits are exactly `head(last hidden state)`; else a clear error."""
    config = getattr(bare, "config", None)
    for name in ("final_logit_softcapping", "logit_scale", "logits_scaling"):
        value = getattr(config, name, None)
        if value not in (None, 1, 1.0):
            raise ValueError(f"{type(bare).__name__} post-processes its logits (config.{name}={value}); "
                             "chunked log-probs support models whose logits are lm_head(hidden) only")
    head = bare.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(bare).__name__} has no output embeddings (lm_head) to score tokens with")
    return head


def _head_chunk(head: Any, hidden: Tensor, targets: Tensor, temperature: float, want_entropy: bool,
                device: torch.device) -> tuple[Tensor, Tensor]:
    """Log-probs of `targets` and entropies for a chunk of (n, H) hidden states: the (n, V) logits
    live only inside this call (under checkpointing, backward recomputes them)."""
    with training_autocast(device):
        logits = head(hidden)
    logits = logits.float()
    if temperature != 1.0:  # dividing by 1 is exact: skip the copy
        logits = logits / temperature
    logp = gather_logprobs(logits, targets)
    if not want_entropy:
        return logp, logp.new_zeros(0)
    all_logp = torch.log_softmax(logits, dim=-1)
    return logp, -(all_logp.exp() * all_logp).sum(dim=-1)


def _chunked_head(head: Any, hidden: Tensor, targets: Tensor, temperature: float, chunk: int,
                  want_entropy: bool, device: torch.device) -> tuple[Tensor, Tensor | None]:
    """(B, L) log-probs (and entropies) from (B, L, H) hidden states, `chunk` tokens at a time.

    With gradients on, each chunk runs under non-reentrant activation checkpointing: only its
    hidden states are kept, and the backward recomputes its logits. So the peak is a few (chunk, V)
    float32 tensors instead of several (B, L, V) ones, forward and backward alike."""
    from torch.utils.checkpoint import checkpoint

    b, length, size = hidden.shape
    grad = torch.is_grad_enabled() and (hidden.requires_grad or any(p.requires_grad for p in head.parameters()))
    logps, ents = [], []
    for h, t in zip(hidden.reshape(b * length, size).split(chunk), targets.reshape(-1).split(chunk)):
        if grad:
            lp, ent = checkpoint(_head_chunk, head, h, t, temperature, want_entropy, device, use_reentrant=False)
        else:
            lp, ent = _head_chunk(head, h, t, temperature, want_entropy, device)
        logps.append(lp)
        ents.append(ent)
    logp = torch.cat(logps).reshape(b, length)
    return logp, (torch.cat(ents).reshape(b, length) if want_entropy else None)


@contextlib.contextmanager
def _head_gathered(bare: Any) -> Iterator[None]:
    """Under FSDP the head belongs to the root unit: a trainable root keeps its weights gathered
    after the forward (for the backward), a frozen one (the KL reference) frees them at once. The
    chunked head runs after the forward, so it gathers them here when they were freed, and frees
    them again after a gradient-free pass."""
    from s3_ray.rl.model.sharding import is_sharded, is_sharded_tensor

    head = bare.get_output_embeddings()
    if not is_sharded(bare) or not any(is_sharded_tensor(p) for p in head.parameters()):
        yield
        return
    bare.unshard()
    try:
        yield
    finally:
        if not torch.is_grad_enabled():
            bare.reshard()


def grid_logprobs(
    model: Any,
    input_ids: Tensor,
    attention_mask: Tensor,
    temperature: float,
    start: int = 0,
    *,
    entropy: bool = False,
    entropy_grad: bool = True,
    hidden: bool = False,
    share_prefix: bool = False,
    chunk: int = DEFAULT_LOGITS_CHUNK,
) -> GridOutput:
    """Float32 log-probs at `temperature` (and entropies, hidden states) for grid columns [start, T-1).

    The model runs without its vocabulary projection over the grid (`logits_to_keep=1`: one
    position per row) and the final hidden states are read from its decoder; the LM head then
    scores `chunk` tokens at a time (`_chunked_head`), so no (B, T, V) logits ever exist. With
    start > 0 the columns left of it (the prompt: the bulk of s3 sequences) are never scored.
    The forward is called on whatever object is given, so DDP wrappers all-reduce gradients as
    usual. `share_prefix` (see `can_share_prefix`) reads the tokens every row shares, up to
    `start`, once: a GRPO group's rows share their whole prompt, and any batch the searcher's
    instructions. Every training forward (policy, old policy, reference; the shared prefix and
    the head chunks too) runs under `training_autocast`: bf16 compute over fp32 master weights on
    a GPU (`s3_ray.rl.model.precision`), plain fp32 on CPU; the log-softmax is float32 either way.
    `entropy_grad=False` returns entropies without a gradient.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 for log-probs (greedy has none), got {temperature}")
    if chunk < 1:
        raise ValueError(f"train.logits_chunk must be >= 1, got {chunk}")
    t_len = input_ids.shape[1]
    if not 0 <= start < t_len - 1:
        raise ValueError(f"start must be in [0, {t_len - 1}), got {start}")
    forward, bare, context = _parts(model)
    head = _plain_head(bare)
    device = next(bare.parameters()).device
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    with context:
        prefix = min(common_prefix(input_ids, attention_mask), start) if share_prefix and len(input_ids) > 1 else 0
        kwargs: dict[str, Any] = {"use_cache": prefix > 0, "logits_to_keep": 1}
        captured: list[Tensor] = []

        def keep_hidden(_module: Any, _args: Any, out: Any) -> None:
            captured.append(out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0])

        with training_autocast(device):
            if prefix > 0:
                kwargs[cache_field()] = _shared_prefix_past(forward, input_ids, prefix)
                kwargs["position_ids"] = torch.arange(prefix, t_len, device=device).expand(len(input_ids), -1)
                input_ids_fed = input_ids[:, prefix:]
            else:
                input_ids_fed = input_ids
            handle = bare.get_decoder().register_forward_hook(keep_hidden)
            try:
                forward(input_ids=input_ids_fed, attention_mask=attention_mask, **kwargs)
            finally:
                handle.remove()
        if len(captured) != 1:
            raise RuntimeError(f"expected one decoder output from the forward, saw {len(captured)}")
        states = captured[0][:, start - prefix : t_len - 1 - prefix]
        with _head_gathered(bare):
            logp, ent = _chunked_head(head, states, input_ids[:, start + 1 :], temperature, chunk, entropy, device)
    if ent is not None and not entropy_grad:
        ent = ent.detach()
    return GridOutput(logprobs=logp, entropy=ent, hidden=states if hidden else None)


def gather_logprobs(logits: Tensor, targets: Tensor) -> Tensor:
    """log softmax(logits)[target] without materialising the full log-softmax twice.

    >>> gather_logprobs(torch.zeros(1, 1, 4), torch.tensor([[2]])).exp()
    tensor([[0.2500]])
    """
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


@torch.no_grad()
def token_logprobs(model: Any, batch: TrainBatch, temperature: float = 1.0, chunk_size: int = 4,
                   share_prefix: bool = False, logits_chunk: int = DEFAULT_LOGITS_CHUNK) -> Tensor:
    """(B, T-1) log p(token t + 1 | tokens <= t) without gradients, `chunk_size` rows per forward
    and `logits_chunk` tokens per LM-head chunk (`grid_logprobs`).

    Used for the old-policy and reference log-probs. Columns left of a chunk's first trained
    token, and padding, hold 0 or meaningless values: always combine with `batch.loss_mask`.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    b, t_len = batch.input_ids.shape
    out = torch.zeros((b, t_len - 1), dtype=torch.float32)
    for lo in range(0, b, chunk_size):
        mb = batch.rows(lo, min(lo + chunk_size, b))
        start = first_trained_position(mb.loss_mask)
        lp = grid_logprobs(model, mb.input_ids, mb.attention_mask, temperature, start, share_prefix=share_prefix,
                           chunk=logits_chunk).logprobs.cpu()
        out[lo : lo + len(mb), start : start + lp.shape[1]] = lp
    return out
