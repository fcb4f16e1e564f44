"""Compute precision of inference forwards (rollouts, generation) and TF32 on a GPU.

A searcher trained on a GPU keeps float32 master weights (`s3_ray.rl.model.precision`); sampling
from them without autocast would run every rollout matmul in float32. On CUDA, rollouts therefore
generate under bfloat16 autocast, the compute the training forwards use; on CPU nothing changes
(float32, no autocast). `enable_tf32` lets the float32 matmuls that remain on a GPU (outside
autocast) use TensorFloat-32. Kept outside `s3_ray.rl` so the agent layer can use it.
"""

from __future__ import annotations

import contextlib
from typing import Any


def _device_type(device: Any) -> str:
    if device is None:
        return "cpu"
    return str(getattr(device, "type", device)).split(":", 1)[0]


def inference_compute(device: Any) -> Any:
    """The autocast dtype of inference forwards on `device`: bfloat16 on CUDA, None (no autocast) elsewhere.

    >>> inference_compute("cuda:0"), inference_compute("cpu"), inference_compute(None)
    (torch.bfloat16, None, None)
    """
    import torch

    return torch.bfloat16 if _device_type(device) == "cuda" else None


def inference_autocast(device: Any) -> contextlib.AbstractContextManager[Any]:
    """The context a rollout / generation forward on `device` runs in (`inference_compute`)."""
    import torch

    dtype = inference_compute(device)
    return contextlib.nullcontext() if dtype is None else torch.autocast(_device_type(device), dtype=dtype)


def enable_tf32(device: Any) -> bool:
    """On CUDA, let float32 matmuls and convolutions use TF32 (returns True); elsewhere change nothing."""
    import torch

    if _device_type(device) != "cuda":
        return False
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    torch.backends.cudnn.conv.fp32_precision = "tf32"
    return True
