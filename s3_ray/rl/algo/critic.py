"""PPO's critic: a linear value head on the policy's detached hidden states, its optimiser group,
the per-token rewards it regresses on, and its gradient averaging across workers.

GRPO and RLOO have no critic; `PolicyUpdater` builds a `ValueHead` only for `train.algorithm: ppo`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from s3_ray.config import TrainConfig
from s3_ray.models import unwrap
from s3_ray.rl.model import collectives


def hidden_size(model: Any) -> int:
    """The width of `model`'s last hidden state (also for multimodal configs with a text config)."""
    config = unwrap(model).config
    size = getattr(config, "hidden_size", None)
    if size is None and hasattr(config, "get_text_config"):
        size = getattr(config.get_text_config(), "hidden_size", None)
    if size is None:
        raise ValueError(f"cannot find hidden_size in the config of {type(unwrap(model)).__name__}")
    return int(size)


class ValueHead(nn.Module):
    """A linear critic on the policy's last hidden state: (B, T, H) -> (B, T).

    It reads *detached* hidden states, so the value loss trains only this head and never moves
    the policy (the paper uses a separate critic model; sharing a trunk would couple the two).
    """

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.proj = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    @classmethod
    def for_policy(cls, model: Any) -> ValueHead:
        """A head as wide as `model`'s hidden state, on the device of its parameters."""
        return cls(hidden_size(model)).to(next(model.parameters()).device)

    def forward(self, hidden: Tensor) -> Tensor:
        return self.proj(hidden.detach().float()).squeeze(-1)

    def param_group(self, cfg: TrainConfig) -> dict[str, Any]:
        """The head's AdamW group: `train.value_lr` (default 10 x `train.lr`), no weight decay."""
        return {"params": list(self.parameters()),
                "lr": cfg.value_lr if cfg.value_lr is not None else 10 * cfg.lr, "weight_decay": 0.0}

    def average_grads(self) -> None:
        """Average the head's gradients over workers (it lives outside the DDP / FSDP wrapper);
        the caller calls it only when training is distributed."""
        world = collectives.world_size()
        for p in self.parameters():
            if p.grad is not None:
                collectives.all_reduce_(p.grad)
                p.grad /= world


def last_token_rewards(rewards: Tensor, mask: Tensor) -> Tensor:
    """(B, T) zeros with each row's reward on its last masked-in token (rows without one get none).

    >>> last_token_rewards(torch.tensor([2.0, 5.0]), torch.tensor([[1, 1, 0], [0, 0, 0]]))
    tensor([[0., 2., 0.],
            [0., 0., 0.]])
    """
    b, t_len = mask.shape
    out = torch.zeros((b, t_len), dtype=rewards.dtype)
    positions = torch.arange(t_len).expand(b, t_len)
    last = torch.where(mask > 0, positions, torch.full_like(positions, -1)).max(dim=1).values
    rows = torch.nonzero(last >= 0).squeeze(-1)
    out[rows, last[rows]] = rewards[rows]
    return out
