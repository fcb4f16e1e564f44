"""What this process can offer Ray: the GPUs it sees."""

from __future__ import annotations


def cuda_visible() -> int:
    """GPUs this process sees (0 without CUDA). With `train.gpus_per_worker` unset, a training
    worker asks for one GPU exactly when this is > 0; a training sweep trial does the same."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0
