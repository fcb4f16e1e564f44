"""Where a rollout engine runs beside the trainer that feeds it, and how the two split the GPU.

Ray Train gives every worker of a node the same ``CUDA_VISIBLE_DEVICES`` (the GPUs of all its
workers there) and each worker its own device within it (`ray.train.torch.get_device()`, made
current by `s3_ray.rl.ray_train.worker`). A `vllm.LLM` started without a device takes the first visible
GPU, so every worker's engine would land on GPU 0. vLLM 0.32's ``device_ids`` engine argument
(``--device-ids``) names the GPU instead: an index into ``CUDA_VISIBLE_DEVICES`` when that is set
(physical ids otherwise), which is exactly the ordinal torch gives the worker's device; vLLM maps
it for its engine process, and ``CUDA_VISIBLE_DEVICES`` itself is left alone (it cannot move a
CUDA context this process already holds, and NCCL reads it). With ``tensor_parallel_size: 1``
(one GPU per engine) vLLM runs its uniprocess executor, where ``device_ids`` applies.

Memory: the engine takes ``searcher.gpu_memory_utilization`` of the GPU's total memory for its
weights, activations and KV cache (vLLM refuses to start unless that much is free), the trainer
keeps the rest. `check_memory_split` refuses a split that cannot work before any engine starts:
the engine's share must be free now, and the trainer's steady state must fit in what is left:
what it has allocated (weights, reference), plus a gradient and two AdamW moments per trainable
parameter that the first update allocates (the engine starts with the first rollout, before any
update), plus `CUDA_CONTEXT_BYTES` for its CUDA context. Activations are not counted: leave them
headroom, or shrink them (`train.micro_batch`, `train.gradient_checkpointing`).
"""

from __future__ import annotations

import math
from typing import Any

GIB = float(1 << 30)

CUDA_CONTEXT_BYTES = 1 << 30
"""What the trainer process's CUDA context and allocator cache take beyond its tensors (~0.5-1 GiB)."""


def model_device(model: Any) -> Any:
    """The torch.device of `model`'s first parameter (a sharded one's local device too)."""
    return next(iter(model.parameters())).device


def device_ids(device: Any) -> list[int]:
    """vLLM's ``device_ids`` for an engine on the CUDA `device`: its ordinal among the visible
    GPUs (the current device for a bare "cuda")."""
    import torch

    index = device.index if device.index is not None else torch.cuda.current_device()
    return [int(index)]


def _local_bytes(p: Any) -> int:
    local = p.to_local() if hasattr(p, "to_local") else p  # an FSDP shard counts its local part
    return int(local.numel()) * int(local.element_size())


def trainer_bytes(model: Any, device: Any) -> int:
    """The trainer's steady-state tensors on `device` once it has updated: allocated now, plus a
    gradient (where none exists yet) and two AdamW moments per trainable parameter."""
    import torch

    pending = 0
    for p in model.parameters():
        if getattr(p, "requires_grad", False):
            size = _local_bytes(p)
            pending += 2 * size + (size if getattr(p, "grad", None) is None else 0)
    return int(torch.cuda.memory_allocated(device)) + pending


def check_memory_split(device: Any, share: float, trainer_need: int) -> None:
    """Refuse an engine share (`searcher.gpu_memory_utilization`) of `device` that is not free
    now, or that leaves the trainer (`trainer_need` bytes) too little."""
    import torch

    free, total = (int(v) for v in torch.cuda.mem_get_info(device))
    engine = share * total
    left = total - engine
    need = trainer_need + CUDA_CONTEXT_BYTES
    where = f"searcher.gpu_memory_utilization={share} gives the vLLM engine {engine / GIB:.1f} GiB of {device}'s {total / GIB:.1f} GiB"
    if need > left:
        raise ValueError(
            f"{where}; the trainer there needs ~{need / GIB:.1f} GiB (weights and reference allocated now, "
            f"a gradient and two AdamW moments per trainable parameter, {CUDA_CONTEXT_BYTES / GIB:.0f} GiB of CUDA "
            f"context) of the {left / GIB:.1f} GiB left: lower searcher.gpu_memory_utilization to at most "
            f"{max(0.0, math.floor(100 * (1 - need / total)) / 100):.2f}, or shrink the trainer (train.lora_rank, train.parallel=fsdp)")
    if free < engine:
        raise ValueError(f"{where}, but only {free / GIB:.1f} GiB is free there now: lower "
                         "searcher.gpu_memory_utilization or free the GPU")


def place_engine(colocate_with: Any, share: float) -> dict[str, Any]:
    """`vllm.LLM` keyword arguments that put an engine on the GPU of the trainer's model
    `colocate_with` after checking the memory split; {} when that model is not on a GPU (or
    there is none), so vLLM places the engine as its platform does."""
    if colocate_with is None:
        return {}
    device = model_device(colocate_with)
    if getattr(device, "type", None) != "cuda":
        return {}
    check_memory_split(device, share, trainer_bytes(colocate_with, device))
    return {"device_ids": device_ids(device)}
