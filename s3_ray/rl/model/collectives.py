"""Every all-reduce the training step makes, on the device its process group's backend needs.

Ray Train runs gloo on CPU workers and NCCL on GPU workers, and NCCL reduces only CUDA tensors:
a CPU tensor handed to it fails at the first step of a multi-GPU run. So no module calls
`torch.distributed.all_reduce` itself; they call `all_reduce` here, which puts the tensor on
`group_device()` and brings the result back to where it came from.

Outside a process group (one worker, tests, sweep trials) every function is the identity.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def active() -> bool:
    """Whether a process group is up (then every rank must make the same calls, in order)."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if active() else 1


def group_device() -> torch.device:
    """The device collectives of the default process group run on: the current CUDA device for
    NCCL (and other accelerator backends), the CPU for gloo."""
    import torch.distributed as dist

    backend = str(dist.get_backend()).lower()
    if backend == "gloo":
        return torch.device("cpu")
    if backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    # mixed "cpu:gloo,cuda:nccl" groups and other accelerators: use the accelerator when present
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def all_reduce(tensor: Tensor, op: str = "sum") -> Tensor:
    """`tensor` reduced over every rank (`op`: sum, max or min), on the tensor's own device.

    The input is not modified. Gradients (already on the training device) pass through without
    a copy when that device is the group's.
    """
    import torch.distributed as dist

    if not active():
        return tensor
    ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
    if op not in ops:
        raise ValueError(f"op must be one of {sorted(ops)}, got {op!r}")
    device = group_device()
    work = tensor.detach().to(device, copy=True)
    dist.all_reduce(work, op=ops[op])
    return work.to(tensor.device)


def all_reduce_(tensor: Tensor, op: str = "sum") -> Tensor:
    """In-place `all_reduce` (for gradients): `tensor` holds the reduced value afterwards."""
    if active():
        tensor.copy_(all_reduce(tensor, op))
    return tensor


def reduce_floats(values: list[float], op: str = "sum") -> list[float]:
    """A few Python numbers reduced over every rank in one call (float64).

    >>> reduce_floats([1.5, 2.0])   # outside a process group: unchanged
    [1.5, 2.0]
    """
    if not active():
        return list(values)
    out = all_reduce(torch.tensor(values, dtype=torch.float64), op)
    return [float(v) for v in out.tolist()]


def agree_on_stop(reason: str | None) -> str | None:
    """Every rank must stop at the same step (or the others hang in the next collective)."""
    (flag,) = reduce_floats([1.0 if reason is not None else 0.0], op="max")
    if flag > 0 and reason is None:
        return "collapse guard tripped on another worker"
    return reason


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's picklable `obj`, in rank order ([obj] outside a process group)."""
    import torch.distributed as dist

    if not active():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """A picklable object from rank `src` to every rank (identity outside a process group)."""
    import torch.distributed as dist

    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, device=group_device())
    return box[0]


def barrier() -> None:
    """Wait until every rank got here (nothing outside a process group)."""
    import torch.distributed as dist

    if active():
        dist.barrier()


def rank() -> int:
    """This process's rank in the default group (0 outside a process group)."""
    import torch.distributed as dist

    return dist.get_rank() if active() else 0
