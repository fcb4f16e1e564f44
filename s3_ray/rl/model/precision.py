"""The dtypes the searcher trains and samples in, decided once from the device it trains on.

On a GPU the trained policy keeps float32 master weights (DDP and FSDP alike) and every training
forward computes in bfloat16 under `torch.autocast` (`training_autocast`, entered by
`s3_ray.rl.algo.batch.grid_logprobs`, which the format warm-up uses too). AdamW moves a weight by about `lr` per
step, and the paper's lr 1e-6 is far below bfloat16's resolution (8 mantissa bits: a weight of
0.02 moves in steps of 1.2e-4), so bf16 weights would round such updates away; float32 (24 bits:
steps of 1.9e-9 at 0.02) keeps them. The frozen models, the KL reference and the rollout copy,
never take an update, so they are held in bfloat16: autocast rounds the policy's weights to
bfloat16 in every matmul anyway, and half the bytes is half the memory.

A LoRA run's frozen base is held in bfloat16 on a GPU too (`Precision.frozen`, applied by
`s3_ray.rl.model.lora.apply_lora`): half the bytes of a 7B base; the adapter keeps float32 master
weights. Rollouts sampled from the policy on a GPU generate under bf16 autocast
(`s3_ray.models.autocast.inference_autocast`, entered by the transformers rollout policy), and
`configure_device` lets the float32 matmuls left on a GPU use TF32.

On CPU the weights are always float32 (gloo reduces fp32), and `train.cpu_compute` decides the
training forwards' compute: `fp32` (the default: exact, what the tests compare), `bf16` (autocast,
as on a GPU) or `auto` (bf16 only where the CPU has native bf16 matmuls, avx512_bf16 or AMX; on
a CPU without them bf16 is emulated and slower than fp32). The log-softmax of every training
forward stays fp32 either way (`s3_ray.rl.algo.batch.grid_logprobs` upcasts each logits chunk). The choice is
made once per process (`configure_cpu_compute`, called where the policy is built), since the
forwards that read it (`grid_logprobs`) only see a model and its device.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CPU_COMPUTE_CHOICES = ("fp32", "bf16", "auto")
_cpu_compute = "fp32"  # this process's train.cpu_compute (`configure_cpu_compute`)


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (avx512_bf16 or AMX flags in /proc/cpuinfo, or
    oneDNN's own check); False where neither can tell."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
        if "avx512_bf16" in flags or "amx_bf16" in flags:
            return True
    except OSError:
        pass
    try:
        import torch

        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def configure_cpu_compute(choice: str) -> str:
    """Set this process's CPU compute for training forwards; returns what it resolves to
    ("fp32" or "bf16": `auto` asks `cpu_has_native_bf16`).

    >>> configure_cpu_compute("fp32")
    'fp32'
    >>> configure_cpu_compute("fp16")
    Traceback (most recent call last):
    ...
    ValueError: train.cpu_compute must be one of ('fp32', 'bf16', 'auto'), got 'fp16'
    """
    global _cpu_compute
    if choice not in CPU_COMPUTE_CHOICES:
        raise ValueError(f"train.cpu_compute must be one of {CPU_COMPUTE_CHOICES}, got {choice!r}")
    _cpu_compute = ("bf16" if cpu_has_native_bf16() else "fp32") if choice == "auto" else choice
    return _cpu_compute


@dataclass(frozen=True)
class Precision:
    """`master`: the trained weights; `frozen`: KL reference, rollout copy and a LoRA run's base;
    `compute`: the autocast dtype of training forwards (None: no autocast)."""

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
    return Precision(master=torch.float32, frozen=torch.float32,
                     compute=torch.bfloat16 if _cpu_compute == "bf16" else None)


def configure_device(device: Any) -> bool:
    """Process-wide settings for training on `device`: TF32 matmuls on CUDA (returns True);
    nothing on CPU."""
    from s3_ray.models.autocast import enable_tf32

    return enable_tf32(device)


def training_autocast(device: Any) -> contextlib.AbstractContextManager[Any]:
    """The context every training forward of a model on `device` runs in: bf16 autocast on a GPU
    (over fp32 master weights); on CPU bf16 autocast when `train.cpu_compute` resolved to bf16,
    else nothing."""
    import torch

    compute = precision_for(device).compute
    if compute is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type(device), dtype=compute)
