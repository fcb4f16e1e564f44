"""The trainer side of vLLM 0.32's own weight transfer into a `VLLMPolicy` engine
(`searcher.vllm_weight_transfer`, chosen by `s3_ray.models.vllm_transfer`).

vLLM splits a transfer between two engines: a `WeightTransferEngine` in the engine's worker
(built by vLLM from the ``weight_transfer_config`` engine argument) and a trainer-side
`TrainerWeightTransferEngine`, built here with ``WeightTransferTrainerFactory.trainer_init`` from
a backend's init info and two things of ours:

* `EngineClient`: vLLM's `VLLMWeightSyncClient` protocol (init, start, update, finish) over the
  in-process `vllm.LLM`, whose own methods of those names take a request dict;
* a `WeightSource` (`source_class`) fed with each push's (name, tensor) pairs as the policy
  yields them (gathered per tensor from FSDP shards, or merged with a LoRA adapter), each cast
  to the engine's dtype on the trainer's GPU as it is reached, and checked against the names,
  dtypes and shapes announced beforehand (`weight_meta`): NCCL sizes the worker's receive
  buffers from them.

Every push is one ``send_weights()``: ``start_weight_update`` (the worker opens a layerwise
reload), the chunks, ``finish_weight_update`` (each layer re-processed once complete). Both
backends run *packed*: tensors are copied into buffers of `buffer_bytes` (the push's bucket
size, raised to the largest tensor), so the sender holds one buffer (ipc: one reused CUDA IPC
buffer the worker reads in place; nccl: two in flight) and one tensor, never the model.

IPC handles are not msgpack types: the client sends them pickled (``ipc_handles_pickled``, as
vLLM's HTTP client does), which the worker accepts only with VLLM_ALLOW_INSECURE_SERIALIZATION=1.
`allow_ipc_serialization` sets that variable before an ipc engine starts, in the trainer's
process too, and leaves it set: an engine started with it sends every utility result (of
``collective_rpc``, ``sleep``, ``reset_prefix_cache``...) with type information that vLLM's client
refuses to read without it (the call then never returns). Only the trainer and its own engine
processes speak on that channel. With several Train workers, vLLM's IPC sender gathers the
handles of every rank over the default process group (each engine picks its GPU's), so all
workers push together, as they already do after every update.
"""

from __future__ import annotations

import base64
import os
import pickle
from collections.abc import Iterable, Iterator
from functools import lru_cache
from typing import Any

WeightMeta = tuple[str, Any, tuple[int, ...]]
"""(name, dtype, shape) of one tensor a push will send, in the order it will come."""

INSECURE_ENV = "VLLM_ALLOW_INSECURE_SERIALIZATION"


def weight_meta(weights: Iterable[tuple[str, Any]]) -> list[WeightMeta]:
    """(name, dtype, shape) of every tensor in `weights`, read without materializing any (a
    sharded tensor reports its global shape).

    >>> import torch
    >>> weight_meta({"w": torch.zeros(2, 3, dtype=torch.bfloat16)}.items())
    [('w', torch.bfloat16, (2, 3))]
    """
    return [(name, t.dtype, tuple(t.shape)) for name, t in weights]


def wire_dtype(dtype: Any, engine_dtype: Any) -> Any:
    """The dtype a tensor travels in: the engine's for floating-point tensors, else its own."""
    return engine_dtype if engine_dtype is not None and dtype.is_floating_point else dtype


def buffer_bytes(meta: list[WeightMeta], engine_dtype: Any, bucket_bytes: int) -> int:
    """The packed buffer of a push: `bucket_bytes`, or the largest tensor where it is bigger
    (vLLM's IPC producer refuses a tensor larger than its buffer).

    >>> import torch
    >>> buffer_bytes([("a", torch.float32, (4, 4)), ("b", torch.float32, (2,))], torch.bfloat16, 16)
    32
    """
    import math

    largest = max((math.prod(shape) * wire_dtype(d, engine_dtype).itemsize for _, d, shape in meta), default=0)
    return max(int(bucket_bytes), int(largest))


def native_engine_kwargs(backend: str) -> dict[str, Any]:
    """The `vllm.LLM` argument that builds the worker side of `backend` ("ipc" or "nccl")."""
    from vllm.config import WeightTransferConfig

    return {"weight_transfer_config": WeightTransferConfig(backend=backend)}


def allow_ipc_serialization(backend: str) -> None:
    """Before an engine for `backend` starts: VLLM_ALLOW_INSECURE_SERIALIZATION=1 for ipc (its
    worker unpickles the handles), in this process and so in the engine's, which inherit it."""
    if backend == "ipc":
        os.environ[INSECURE_ENV] = "1"


def pickled_handles(update_info: Any) -> Any:
    """`update_info` with raw ``ipc_handles`` replaced by ``ipc_handles_pickled`` (base64 of their
    pickle): plain strings cross the engine's msgpack channel. Other payloads pass unchanged."""
    if isinstance(update_info, list):
        return [pickled_handles(u) for u in update_info]
    if not isinstance(update_info, dict) or update_info.get("ipc_handles") is None:
        return update_info
    out = {k: v for k, v in update_info.items() if k != "ipc_handles"}
    out["ipc_handles_pickled"] = base64.b64encode(pickle.dumps(update_info["ipc_handles"])).decode("ascii")
    return out


class EngineClient:
    """vLLM's `VLLMWeightSyncClient` over an in-process `vllm.LLM`: the LLM's own RL methods take
    request dicts ({"init_info": ...}, {"update_info": ...}) where the protocol passes the info."""

    def __init__(self, llm: Any) -> None:
        self.llm = llm

    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        self.llm.init_weight_transfer_engine({"init_info": init_info})

    def start_weight_update(self) -> None:
        self.llm.start_weight_update()

    def update_weights(self, update_info: Any) -> None:
        self.llm.update_weights({"update_info": pickled_handles(update_info)})

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        self.llm.finish_weight_update(weight_version)


@lru_cache(maxsize=1)
def source_class() -> type:
    """`PushSource`, a subclass of vLLM's `WeightSource` (built on first use: vLLM is imported lazily)."""
    from vllm.distributed.weight_transfer import ParamMeta, WeightSource

    class PushSource(WeightSource):
        """One push's weights for vLLM's trainer engine: `metadata()` announces them, one pass
        over the source yields them cast to the wire dtype on `device`. `feed` loads the next
        push; each push is iterated once."""

        def __init__(self, engine_dtype: Any, device: Any) -> None:
            self.engine_dtype = engine_dtype
            self.device = device
            self.meta: list[WeightMeta] = []
            self._pairs: Iterator[tuple[str, Any]] | None = None
            self.sent = 0
            self.nbytes = 0

        def feed(self, weights: Iterable[tuple[str, Any]], meta: list[WeightMeta]) -> None:
            self.meta = list(meta)
            self._pairs = iter(weights)
            self.sent = self.nbytes = 0

        def metadata(self) -> list[Any]:
            return [ParamMeta(name, wire_dtype(d, self.engine_dtype), tuple(shape)) for name, d, shape in self.meta]

        def __iter__(self) -> Iterator[tuple[str, Any]]:
            pairs, self._pairs = self._pairs, None
            if pairs is None:
                raise RuntimeError("the weight source was iterated twice for one push (feed it first)")
            for name, tensor in pairs:
                if self.sent >= len(self.meta):
                    raise ValueError(f"weights: {name!r} comes after the {len(self.meta)} tensors announced")
                want, dtype, shape = self.meta[self.sent]
                if name != want or tuple(tensor.shape) != tuple(shape):
                    raise ValueError(f"weights: tensor {self.sent} is {name!r} {tuple(tensor.shape)}, but "
                                     f"{want!r} {tuple(shape)} was announced (send them in the announced order)")
                out = tensor.detach()
                target = wire_dtype(out.dtype, self.engine_dtype)
                if out.dtype != target or not _on(out, self.device):
                    out = out.to(device=self.device, dtype=target)
                self.sent += 1
                self.nbytes += out.numel() * out.element_size()
                yield name, out
            if self.sent != len(self.meta):
                raise ValueError(f"weights: {self.sent} tensors came of the {len(self.meta)} announced")

    return PushSource


def _on(tensor: Any, device: Any) -> bool:
    """Whether `tensor` is on `device` (a bare "cuda" matches any GPU: the current one is meant)."""
    return tensor.device.type == device.type and (device.index is None or tensor.device.index == device.index)


class NativeSender:
    """Pushes into one engine over vLLM's `backend` ("ipc" or "nccl"). The trainer engine is
    built (and, for nccl, the group rendezvoused) with the first push, whose largest tensor
    sizes the packed buffer; later pushes reuse it."""

    def __init__(self, llm: Any, backend: str, engine_dtype: Any, bucket_bytes: int, device: Any) -> None:
        if backend not in ("ipc", "nccl"):
            raise ValueError(f"native weight transfer backend must be 'ipc' or 'nccl', got {backend!r}")
        self.llm = llm
        self.backend = backend
        self.bucket_bytes = bucket_bytes
        self.client = EngineClient(llm)
        self.source = source_class()(engine_dtype, device)
        self.buffer_bytes = 0
        self.trainer: Any = None

    def send(self, weights: Iterable[tuple[str, Any]], meta: list[WeightMeta]) -> tuple[int, int]:
        """One push: (tensors sent, bytes sent in the wire dtype)."""
        if not meta:
            raise ValueError("load_weights got no weights (an empty state dict)")
        if self.trainer is None:
            self.buffer_bytes = buffer_bytes(meta, self.source.engine_dtype, self.bucket_bytes)
            self.trainer = self._connect()
        self.source.feed(weights, meta)
        self.trainer.send_weights()
        return self.source.sent, self.source.nbytes

    def _connect(self) -> Any:
        from vllm.distributed.weight_transfer import WeightTransferTrainerFactory

        # This process is the only trainer of its engine: rank 0, the sender.
        if self.backend == "ipc":
            from vllm.distributed.weight_transfer.ipc_engine import IPCTrainerInitInfo

            info: Any = IPCTrainerInitInfo(rank=0, packed=True, packed_buffer_size_bytes=self.buffer_bytes)
        else:
            from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo
            from vllm.utils.network_utils import get_open_port

            info = NCCLTrainerInitInfo(rank=0, master_address="127.0.0.1", master_port=get_open_port(),
                                       world_size=1 + self._engine_workers(), packed=True,
                                       packed_buffer_size_bytes=self.buffer_bytes)
        return WeightTransferTrainerFactory.trainer_init(info, client=self.client, source=self.source)

    def _engine_workers(self) -> int:
        """The engine's worker processes (its tensor x pipeline parallel size): each joins the group."""
        config = getattr(getattr(self.llm, "llm_engine", None), "vllm_config", None)
        return int(getattr(getattr(config, "parallel_config", None), "world_size", 1) or 1)

    def close(self) -> None:
        """Tear the trainer side down (the nccl group); the engine keeps running."""
        if self.trainer is not None:
            self.trainer.shutdown()
            self.trainer = None
