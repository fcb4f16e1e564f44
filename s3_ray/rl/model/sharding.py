"""FSDP (`train.parallel: fsdp`): the searcher's parameters, gradients and optimiser state are
sharded over the Train workers with PyTorch's FSDP2 (`torch.distributed.fsdp.fully_shard`).

Each decoder layer (the classes the model lists in `_no_split_modules`) becomes one FSDP unit
and the root holds the rest (embeddings, final norm, head), so a forward or backward gathers one
layer's weights at a time. On a GPU the sharded master weights stay in float32 and each layer
computes in bfloat16 (`MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)`): small
learning rates such as the paper's 1e-6 would be rounded away by bf16 weights. On CPU (gloo)
everything stays float32.

What the rest of the package needs from a sharded model lives here, and every function that
touches sharded tensors is a *collective*: all ranks must call it, in the same order.

* `full_state_dict` gathers the plain (unsharded) weights, one tensor at a time, for a
  checkpoint's HF export, the rollout copy and a vLLM engine (FSDP checkpoints themselves are
  written shard by shard: `s3_ray.rl.model.sharded_checkpoint`);
* `load_full_state_dict` / `shard_optimizer_state` take plain tensors (a plain checkpoint) back
  into the sharded model and optimiser, each rank keeping its own shard;
* `full_optimizer_state` gathers the optimiser state into that plain, index-keyed form.

Nothing here imports at package import time beyond torch. `gather`, `iter_full_state`,
`full_state_dict`, `grad_sync` and `total_norm` also take plain models and tensors.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn


def _dtensor_cls() -> type | None:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch built without distributed support
        return None
    return DTensor


def is_sharded_tensor(t: Any) -> bool:
    cls = _dtensor_cls()
    return cls is not None and isinstance(t, cls)


def is_sharded(model: Any) -> bool:
    """Whether `model` was wrapped by `shard_model` (FSDP2 turns its class into an FSDPModule)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:
        return False
    return isinstance(model, FSDPModule)


def layer_classes(model: nn.Module) -> set[type]:
    """The decoder-layer classes to shard one by one: HF's `_no_split_modules` names."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    classes = {type(m) for m in model.modules() if type(m).__name__ in names}
    if not classes:
        raise ValueError(f"{type(model).__name__} names no decoder-layer class in _no_split_modules "
                         f"({sorted(names)}); FSDP needs one unit per layer (use train.parallel=ddp)")
    return classes


def shard_model(model: nn.Module, *, mixed_precision: bool | None = None, trainable: bool = True,
                device: Any = None) -> nn.Module:
    """Shard `model` in place over the default process group (one FSDP unit per decoder layer).

    `mixed_precision` (default: on CUDA) computes in bfloat16 over float32 master weights;
    the model must then hold float32 weights. `trainable=False` shards a frozen model (the KL
    reference): it is only ever run forward, so every unit, the root included, frees its gathered
    weights right after its forward. `device` (default: where the weights are) is where the shards
    will live: a model built on the meta device is sharded first and only then given storage
    (`s3_ray.rl.model.sharded_load`), so its device is named here.
    """
    import torch.distributed as dist
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("train.parallel=fsdp needs an initialised process group (Ray Train's TorchTrainer "
                           "sets one up per worker)")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    if mixed_precision is None:
        mixed_precision = device.type == "cuda"
    if mixed_precision and next(model.parameters()).dtype != torch.float32:
        raise ValueError("FSDP mixed precision needs float32 master weights; load the model in float32")
    kwargs: dict[str, Any] = {}
    if device.type != "cpu":
        from torch.distributed.device_mesh import init_device_mesh

        kwargs["mesh"] = init_device_mesh(device.type, (dist.get_world_size(),))
    if mixed_precision:
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    classes = tuple(layer_classes(model))
    for module in list(model.modules()):
        if isinstance(module, classes):
            fully_shard(module, **kwargs)
    # FSDP2 keeps the root's weights (embeddings, head) gathered after a forward, for the backward
    # that follows; a frozen model has no backward, so it frees them at once.
    fully_shard(model, **kwargs, **({} if trainable else {"reshard_after_forward": True}))
    if not trainable:
        model.requires_grad_(False)
    return model


def plain_class(model: nn.Module) -> type:
    """The model's own class under FSDP2's dynamic `FSDP<Name>` subclass (for configs and names)."""
    if not is_sharded(model):
        return type(model)
    from torch.distributed.fsdp import FSDPModule

    for cls in type(model).__mro__[1:]:
        if not issubclass(cls, FSDPModule):
            return cls
    raise TypeError(f"cannot find the plain class of {type(model).__name__}")


def gather(t: Tensor) -> Tensor:
    """The whole tensor behind a shard (an all-gather: collective); plain tensors pass through."""
    return t.full_tensor() if is_sharded_tensor(t) else t


def iter_full_state(model: nn.Module, cpu: bool = True, dtype: Any = None) -> Iterator[tuple[str, Tensor]]:
    """(name, plain tensor) for every entry of `model.state_dict()`, one gather at a time;
    floating-point tensors cast to `dtype` when given (as each is gathered).

    Collective: every rank must drain the iterator. Only tied tensors are held beyond what the
    consumer keeps.
    """
    # Tied weights (one Parameter under two names, e.g. embeddings and head) are gathered once and
    # stay one tensor, so an HF writer sees them as tied. Every rank derives the same names.
    tied = tied_names(model)
    owners = set(tied.values())
    kept: dict[str, Tensor] = {}
    for name, t in model.state_dict().items():
        key = tied.get(name, name)
        if key in kept:
            yield name, kept[key]
            continue
        full = gather(t.detach())
        if dtype is not None and full.is_floating_point():
            full = full.to(dtype)
        full = full.cpu() if cpu else full
        if key in owners:
            kept[key] = full
        yield name, full


def tied_names(model: nn.Module) -> dict[str, str]:
    """{name: first name} for every parameter name beyond the first one a shared Parameter has.

    >>> lin = nn.Linear(2, 2); m = nn.ModuleDict({"a": lin, "b": lin})
    >>> tied_names(m)
    {'b.weight': 'a.weight', 'b.bias': 'a.bias'}
    """
    first: dict[int, str] = {}
    out = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        owner = first.setdefault(id(p), name)
        if owner != name:
            out[name] = owner
    return out


def full_state_dict(model: nn.Module, cpu: bool = True, keep: bool = True, dtype: Any = None) -> dict[str, Tensor]:
    """The plain state dict of a (possibly sharded) model; collective for a sharded one.
    Floating-point tensors are cast to `dtype` when given, one at a time as they are gathered.

    `keep=False` takes part in the gathers but keeps nothing (returns {}): the ranks that do not
    write a checkpoint need not hold a whole copy of the model.
    """
    if not keep:
        if is_sharded(model):
            for _ in iter_full_state(model, cpu=False):
                pass
        return {}
    return dict(iter_full_state(model, cpu=cpu, dtype=dtype))


def _shard_like(full: Tensor, like: Tensor) -> Tensor:
    """`full` (the same on every rank) cut to this rank's shard of `like`'s layout; no communication."""
    from torch.distributed.tensor import distribute_tensor

    full = full.to(device=like.device, dtype=like.dtype)
    return distribute_tensor(full, like.device_mesh, like.placements, src_data_rank=None)


@torch.no_grad()
def load_full_state_dict(model: nn.Module, weights: dict[str, Tensor], where: str = "checkpoint") -> list[str]:
    """Copy plain `weights` into a sharded model (each rank keeps its shard); returns the model's
    keys that `weights` lacks (tied copies a saved HF folder omits). No communication."""
    current = model.state_dict()
    unexpected = sorted(set(weights) - set(current))
    if unexpected:
        raise ValueError(f"{where}: weights not in the model: {unexpected[:5]}")
    for name, target in current.items():
        if name not in weights:
            continue
        full = weights[name]
        if tuple(full.shape) != tuple(target.shape):
            raise ValueError(f"{where}: {name} has shape {tuple(full.shape)}, the model {tuple(target.shape)}")
        if is_sharded_tensor(target):
            target.to_local().copy_(_shard_like(full, target).to_local())
        else:
            target.copy_(full.to(device=target.device, dtype=target.dtype))
    return sorted(set(current) - set(weights))


def _optimizer_params(optimizer: torch.optim.Optimizer) -> list[Tensor]:
    """Parameters in the index order of `optimizer.state_dict()['state']`."""
    return [p for group in optimizer.param_groups for p in group["params"]]


def full_optimizer_state(optimizer: torch.optim.Optimizer, keep: bool = True) -> dict[str, Any]:
    """`optimizer.state_dict()` with every sharded entry gathered (collective), on CPU.

    The result has the plain, index-keyed layout of an unsharded optimiser, so a checkpoint reads
    the same under DDP, FSDP or any number of workers. `keep=False`: gather, keep nothing ({}).
    """
    state = optimizer.state_dict()
    out = {}
    for idx, entries in state["state"].items():
        full = {k: (gather(v).cpu() if isinstance(v, Tensor) and is_sharded_tensor(v) else v)
                for k, v in entries.items()}
        if keep:
            out[idx] = full
    return {"state": out, "param_groups": state["param_groups"]} if keep else {}


def shard_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> dict[str, Any]:
    """The inverse of `full_optimizer_state` for this rank: plain entries of sharded parameters are
    cut to the parameter's shard, ready for `optimizer.load_state_dict`. No communication."""
    params = _optimizer_params(optimizer)
    out = {}
    for idx, entries in state["state"].items():
        i = int(idx)
        if i >= len(params):
            raise ValueError(f"optimizer state has an entry for parameter {i}, the optimizer only {len(params)}")
        p = params[i]
        if not is_sharded_tensor(p):
            out[idx] = entries
            continue
        out[idx] = {k: (_shard_like(v, p) if isinstance(v, Tensor) and tuple(v.shape) == tuple(p.shape) else v)
                    for k, v in entries.items()}
    return {"state": out, "param_groups": state["param_groups"]}


def grad_sync(model: Any, sync: bool) -> contextlib.AbstractContextManager[None]:
    """Context for one micro-batch's backward: gradients are reduced across workers only when
    `sync` (the last micro-batch); earlier ones accumulate locally (DDP's `no_sync`)."""
    if is_sharded(model):
        model.set_requires_gradient_sync(sync)
    elif not sync and isinstance(model, nn.parallel.DistributedDataParallel):
        return model.no_sync()
    return contextlib.nullcontext()


def total_norm(norm: Any) -> float:
    """`clip_grad_norm_`'s result as a float (over sharded gradients it is a DTensor)."""
    return float(gather(norm)) if isinstance(norm, Tensor) else float(norm)
