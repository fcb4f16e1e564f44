"""What this process can offer Ray (the GPUs it sees), what Ray gave it, and the GPU requests the
config implies where a setting is left to `None`."""

from __future__ import annotations

import sys


def cuda_visible() -> int:
    """GPUs this process sees (0 without CUDA). With `train.gpus_per_worker` unset, a training
    worker asks for one GPU exactly when this is > 0; a training sweep trial does the same."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def gpus_or_auto(setting: float | None) -> float:
    """A GPU request as configured, or for `None` 1 when the submitting process sees CUDA, else 0
    (a driver on a CPU-only head node sees none: such a cluster sets the value)."""
    if setting is not None:
        return float(setting)
    return 1.0 if cuda_visible() else 0.0


def ray_assigned_gpus() -> list[str] | None:
    """The GPU ids Ray assigned to this Ray worker (task, actor, Serve replica, Train worker); None
    outside a Ray worker (no Ray imported, not initialised, or the driver). Ray 2.60 leaves
    CUDA_VISIBLE_DEVICES alone for work that requested no GPU, so such a worker still sees every
    GPU of its node: this list, not CUDA, says what it may use. Never imports Ray itself."""
    ray = sys.modules.get("ray")
    if ray is None or not getattr(ray, "is_initialized", lambda: False)():
        return None
    ctx = ray.get_runtime_context()
    if getattr(ctx.worker, "mode", None) != ray.WORKER_MODE:
        return None
    return [str(i) for i in ctx.get_accelerator_ids().get("GPU", [])]


def require_assigned_gpu(device: object, setting: str | None = None) -> None:
    """Refuse to put a model on CUDA `device` inside a Ray worker that Ray gave no GPU: it would
    land on GPU 0 beside whatever Ray placed there. `setting` names the config key that requests
    the GPU for this kind of worker."""
    if not str(device).startswith("cuda"):
        return
    assigned = ray_assigned_gpus()
    if assigned is None or assigned:
        return
    where = setting or ("the setting that asks for its GPUs (serve.generator_gpus, serve.copilot_gpus, "
                        "eval.task_gpus, train.gpus_per_worker)")
    raise RuntimeError(f"this Ray worker would load its model on {device}, but Ray assigned it no GPU (every GPU "
                       f"of the node is visible, so it would share GPU 0 with others): request one with {where}, "
                       f"or load on CPU")
