"""Which path carries the trainer's weights into a vLLM rollout engine (`searcher.vllm_weight_transfer`).

Two paths exist:

* ``stream``: the project's own push (`s3_ray.agent.vllm_weights`): each tensor cast to the
  engine's dtype, copied to host bytes, sent in buckets through ``LLM.collective_rpc`` and loaded
  layer by layer. Works on every platform, CPU included.
* native: vLLM 0.32's weight transfer (``WeightTransferConfig`` on the engine,
  ``WeightTransferTrainerFactory.trainer_init`` / ``send_weights`` on the trainer,
  ``vllm/distributed/weight_transfer/``), with two backends on CUDA: ``ipc`` (CUDA IPC handles
  to one packed buffer on the trainer's GPU; the engine reads it in place) when the engine runs on
  the trainer's GPU, which is how `VLLMPolicy` places it beside a trainer, and ``nccl`` (a
  broadcast over a trainer + engine NCCL group) when it runs on another GPU of the node. No
  byte goes through host memory.

`choose_transfer` decides from plain facts, so it is the same in the driver's plan, in a worker
and in tests; `resolve_transfer` gathers those facts from the installed vLLM and the trainer's
model. ``auto`` takes native where it can work and the streamed push elsewhere; ``native``
where it cannot work is an error naming the field and the reason, raised before the engine
starts.
"""

from __future__ import annotations

from typing import Any

from s3_ray.models.vllm_placement import model_device

TRANSFER_CHOICES = ("auto", "native", "stream")
"""Values of `searcher.vllm_weight_transfer`."""

NATIVE_API = (
    ("vllm.config", "WeightTransferConfig"),
    ("vllm.distributed.weight_transfer", "WeightTransferTrainerFactory"),
    ("vllm.distributed.weight_transfer", "WeightSource"),
    ("vllm.distributed.weight_transfer", "ParamMeta"),
    ("vllm.distributed.weight_transfer.ipc_engine", "IPCTrainerInitInfo"),
    ("vllm.distributed.weight_transfer.nccl_engine", "NCCLTrainerInitInfo"),
)
"""What the native path uses of vLLM (all in 0.32.0): the engine argument, the trainer-side
factory and its weight source, and the two backends' trainer init infos."""

FIELD = "searcher.vllm_weight_transfer"


def native_api_missing() -> str | None:
    """None when the installed vLLM has every name of `NATIVE_API`, else why not (the first
    missing name, or vLLM's import error)."""
    import importlib

    for module, name in NATIVE_API:
        try:
            found = getattr(importlib.import_module(module), name, None)
        except ImportError as err:
            return f"the installed vLLM has no {module} ({err})"
        if found is None:
            return f"the installed vLLM has no {module}.{name} (vLLM 0.32's weight transfer)"
    return None


def choose_transfer(requested: str, api_missing: str | None, platform: str, trainer_gpu: int | None,
                    engine_gpu: int | None) -> str:
    """The path a push takes: ``"ipc"``, ``"nccl"`` or ``"stream"``.

    `requested`: `searcher.vllm_weight_transfer`; `api_missing`: `native_api_missing()`;
    `platform`: the platform vLLM runs on ("cuda", "cpu", "rocm", ...); `trainer_gpu`: the CUDA
    ordinal of the trainer's weights (None: not on a GPU); `engine_gpu`: the ordinal the engine
    runs on (None: vLLM's default, the first visible GPU).

    >>> choose_transfer("auto", None, "cuda", 1, 1), choose_transfer("auto", None, "cuda", 0, 1)
    ('ipc', 'nccl')
    >>> choose_transfer("auto", None, "cpu", None, None), choose_transfer("stream", None, "cuda", 0, 0)
    ('stream', 'stream')
    >>> choose_transfer("native", None, "cpu", None, None)
    Traceback (most recent call last):
    ...
    ValueError: searcher.vllm_weight_transfer='native' cannot work here: vLLM runs on the cpu platform, and its ipc and nccl weight transfer needs CUDA (use 'auto' or 'stream')
    """
    if requested not in TRANSFER_CHOICES:
        raise ValueError(f"{FIELD} must be one of {', '.join(TRANSFER_CHOICES)}, got {requested!r}")
    if requested == "stream":
        return "stream"
    why = None
    if api_missing is not None:
        why = api_missing
    elif platform != "cuda":
        why = f"vLLM runs on the {platform} platform, and its ipc and nccl weight transfer needs CUDA"
    elif trainer_gpu is None:
        why = "the trainer's weights are not on a CUDA GPU, where vLLM's ipc and nccl transfer send from"
    if why is not None:
        if requested == "native":
            raise ValueError(f"{FIELD}='native' cannot work here: {why} (use 'auto' or 'stream')")
        return "stream"
    return "ipc" if (0 if engine_gpu is None else engine_gpu) == trainer_gpu else "nccl"


def vllm_platform() -> str:
    """The platform vLLM runs on here: "cuda", "rocm", "cpu", ... (vLLM's own detection)."""
    from vllm.platforms import current_platform

    for name in ("cuda", "rocm", "cpu", "tpu", "xpu"):
        check = getattr(current_platform, f"is_{name}", None)
        if callable(check) and check():
            return name
    return str(getattr(current_platform, "device_type", "") or "unknown")


def trainer_gpu(model: Any) -> int | None:
    """The CUDA ordinal `model`'s weights are on (the current device for a bare "cuda"), or None."""
    if model is None:
        return None
    device = model_device(model)
    if getattr(device, "type", None) != "cuda":
        return None
    if device.index is not None:
        return int(device.index)
    import torch

    return int(torch.cuda.current_device())


def resolve_transfer(requested: str, colocate_with: Any, engine_kwargs: dict[str, Any]) -> str:
    """`choose_transfer` for an engine about to start with `engine_kwargs` (its ``device_ids``)
    beside the trainer's model `colocate_with`; reads the installed vLLM. Raises before any
    engine starts when `requested` is "native" and it cannot work."""
    if requested == "stream":
        return "stream"
    missing = native_api_missing()
    if missing is not None:
        return choose_transfer(requested, missing, "unknown", None, None)
    ids = engine_kwargs.get("device_ids")
    engine_gpu = int(ids[0]) if ids else None
    return choose_transfer(requested, None, vllm_platform(), trainer_gpu(colocate_with), engine_gpu)


def plan_problem(requested: str, backend: str, train_gpus: float) -> str | None:
    """What the driver can tell before any model loads: native asked for where the train workers
    (which hold the weights) get no GPU.

    >>> plan_problem("native", "vllm", 0)
    "searcher.vllm_weight_transfer='native' cannot work here: the train workers get no GPU (train.gpus_per_worker=0), and vLLM's ipc and nccl weight transfer sends from the trainer's GPU (use 'auto' or 'stream')"
    >>> plan_problem("auto", "vllm", 0) is None and plan_problem("native", "vllm", 1) is None
    True
    """
    if requested != "native" or backend != "vllm" or train_gpus > 0:
        return None
    return (f"{FIELD}='native' cannot work here: the train workers get no GPU (train.gpus_per_worker={train_gpus:g}), "
            "and vLLM's ipc and nccl weight transfer sends from the trainer's GPU (use 'auto' or 'stream')")


def describe(requested: str, backend: str, train_gpus: float) -> str:
    """The plan's line for the path pushes will take on the train workers."""
    if backend != "vllm":
        return "none (searcher.backend is not vllm)"
    if requested == "stream" or train_gpus <= 0:
        return "stream (the project's bucketed push through LLM.collective_rpc)"
    return ("vLLM native where the worker's vLLM has it: ipc (the engine shares the train worker's GPU)"
            + (", else the streamed push" if requested == "auto" else ""))
