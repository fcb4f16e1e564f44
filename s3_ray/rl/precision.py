"""The dtypes the searcher trains and samples in, decided once from the device it trains on.

On a GPU the trained policy keeps float32 master weights (DDP and FSDP alike) and every training
forward computes in bfloat16 under `torch.autocast` (`training_autocast`, entered by
`s3_ray.rl.batch.grid_logits` and the format warm-up). AdamW moves a weight by about `lr` per
step, and the paper's lr 1e-6 is far below bfloat16's resolution (8 mantissa bits: a weight of
0.02 moves in steps of 1.2e-4), so bf16 weights would round such updates away; float32 (24 bits:
steps of 1.9e-9 at 0.02) keeps them. The frozen models, the KL reference and the rollout copy,
never take an update, so they are held in bfloat16: autocast rounds the policy's weights to
bfloat16 in every matmul anyway, and half the bytes is half the memory.

On CPU everything stays float32 without autocast: gloo reduces fp32, the tests compare exact
values, and CPU bf16 matmuls are no faster on the machines this runs on.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Precision:
    """`master`: the trained weights; `frozen`: KL reference and rollout copy; `compute`: the
    autocast dtype of training forwards (None: no autocast)."""

    master: Any
    frozen: Any
    compute: Any | None


def device_type(device: Any) -> str:
    """"cuda", "cpu", ... of a torch.device, a device string or None (None: "cpu")."""
    if device is None:
        return "cpu"
    return str(getattr(device, "type", device)).split(":", 1)[0]


def precision_for(device: Any) -> Precision:
    """The dtypes of a searcher trained on `device`.

    >>> precision_for("cpu")
    Precision(master=torch.float32, frozen=torch.float32, compute=None)
    >>> precision_for("cuda:1")
    Precision(master=torch.float32, frozen=torch.bfloat16, compute=torch.bfloat16)
    """
    import torch

    if device_type(device) == "cuda":
        return Precision(master=torch.float32, frozen=torch.bfloat16, compute=torch.bfloat16)
    return Precision(master=torch.float32, frozen=torch.float32, compute=None)


def training_autocast(device: Any) -> contextlib.AbstractContextManager[Any]:
    """The context every training forward of a model on `device` runs in: bf16 autocast on a GPU
    (over fp32 master weights), nothing on CPU."""
    import torch

    compute = precision_for(device).compute
    if compute is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type(device), dtype=compute)
