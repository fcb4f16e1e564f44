"""Moving the trainer's weights into a running vLLM engine: the wire format and the worker side.

The engine runs in its own process, and its RPC channel (untyped msgpack from the client to the
engine process) turns a bare tensor argument into a list, so each tensor travels as (name, dtype,
shape, raw bytes) through `LLM.collective_rpc`, in buckets, to the methods `WeightLoader`
(passed as `worker_extension_cls`) adds to every worker.

Memory on the sending side: `pack_tensor` casts one tensor to the engine's dtype (a bf16 engine
gets half the bytes of fp32 master weights) and copies it to host bytes; a bucket is built from
such tensors as they come and dropped once sent, so the sender holds one bucket, never the model.

On the worker, vLLM 0.32's in-place `reload_weights` loads through the model's own
`load_weights`, which maps Hugging Face names onto vLLM's fused layers (q/k/v -> qkv_proj,
gate/up -> gate_up_proj), and re-processes each layer (kernel formats, repacking) once all of
that layer's tensors have arrived. A reload given only part of a fused layer (q and k, not v)
would process it with the rest unset, so the worker loads whole *decoder layers* (`layer_key`):
tensors arrive in state-dict order, one layer after the other, each bucket's complete layers are
loaded at once, and only the last, possibly incomplete, layer waits for the next bucket. The
worker thus holds one bucket plus one layer, not the model. A reload of some layers puts the
others' tensors back untouched and says so in two warnings per call ("Failed to load weights",
"Following weights were not loaded"); `_quiet_partial_reload` drops just those two while a
partial reload runs. Workers without the in-place reload (older V1) load each bucket through
`load_weights`, which has no such constraint.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

Packed = tuple[str, str, list[int], bytes]
"""(name, dtype name, shape, raw bytes) of one tensor: plain msgpack types."""

STAGE_METHOD, COMMIT_METHOD = "s3_stage_weights", "s3_commit_weights"
"""Worker methods `WeightLoader` adds (prefixed so they cannot shadow vLLM's own)."""

EXTENSION = "s3_ray.agent.vllm_weights.WeightLoader"
"""Qualified name vLLM resolves inside each worker process."""

PARTIAL_RELOAD_NOISE = {
    "vllm.model_executor.model_loader.reload.layerwise": "Failed to load weights",
    "vllm.model_executor.model_loader.reload.inplace": "Following weights were not loaded",
}
"""vLLM 0.32 loggers and the message each logs for every layer a partial reload leaves alone."""


def layer_key(name: str) -> str:
    """The unit a partial reload must receive whole: the decoder layer of a tensor (its name up
    to the first numeric part), else the module holding it.

    >>> layer_key("model.layers.12.self_attn.q_proj.weight"), layer_key("model.norm.weight"), layer_key("w")
    ('model.layers.12', 'model.norm', 'w')
    """
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[: i + 1])
    return ".".join(parts[:-1]) or name


def in_layer_order(weights: Iterable[tuple[str, Any]]) -> Iterator[tuple[str, Any]]:
    """`weights` unchanged, checking that each layer's tensors come together (what per-layer
    loading relies on); a layer that reappears after another one started is an error naming it."""
    done: set[str] = set()
    current: str | None = None
    for name, tensor in weights:
        key = layer_key(name)
        if key != current:
            if key in done:
                raise ValueError(f"weights of layer {key!r} are not contiguous: {name!r} comes after "
                                 f"layer {current!r} started (send them in state-dict order)")
            if current is not None:
                done.add(current)
            current = key
        yield name, tensor


def pack_tensor(name: str, tensor: Any, dtype: Any = None) -> Packed:
    """(name, dtype, shape, raw bytes): plain msgpack types, so the engine's RPC channel carries
    them (it turns a bare tensor argument into a list) and any dtype, bf16 included, survives.
    A floating tensor is cast to `dtype` first (on its own device, before the copy to host).

    >>> import torch
    >>> n, t = unpack_tensor(pack_tensor("w", torch.arange(6, dtype=torch.bfloat16).view(2, 3)))
    >>> n, t.dtype, t.tolist()
    ('w', torch.bfloat16, [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]])
    >>> pack_tensor("w", torch.ones(2), dtype=torch.bfloat16)[1:3]
    ('bfloat16', [2])
    """
    import torch

    flat = tensor.detach()
    if dtype is not None and flat.is_floating_point() and flat.dtype != dtype:
        flat = flat.to(dtype)
    flat = flat.to("cpu").contiguous().reshape(-1)
    raw = flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""
    return name, str(flat.dtype).removeprefix("torch."), list(tensor.shape), raw


def unpack_tensor(packed: Packed | list[Any]) -> tuple[str, Any]:
    """Inverse of `pack_tensor`: (name, CPU tensor). The tensor reads the received bytes in place
    (no copy); it is only ever read, by the loader that copies it into the model."""
    import torch

    name, dtype_name, shape, raw = packed
    dtype = getattr(torch, dtype_name)
    if not raw:
        return name, torch.empty(shape, dtype=dtype)
    with warnings.catch_warnings():  # bytes are immutable: torch warns that it cannot write to them
        warnings.filterwarnings("ignore", message=".*not writable.*", category=UserWarning)
        return name, torch.frombuffer(raw, dtype=dtype).reshape(shape)


def packed_bytes(bucket: list[Packed]) -> int:
    return sum(len(p[3]) for p in bucket)


def weight_buckets(packed: Iterable[Packed], max_bytes: int) -> Iterator[list[Packed]]:
    """Group packed tensors, as they come, into lists of at most `max_bytes` (a bigger tensor
    goes alone).

    >>> ws = [("a", "float32", [4], bytes(16)), ("b", "float32", [4], bytes(16)), ("c", "float32", [10], bytes(40))]
    >>> [[p[0] for p in b] for b in weight_buckets(ws, max_bytes=32)]
    [['a', 'b'], ['c']]
    """
    bucket: list[Packed] = []
    size = 0
    for item in packed:
        nbytes = len(item[3])
        if bucket and size + nbytes > max_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append(item)
        size += nbytes
    if bucket:
        yield bucket


class _DropMessage(logging.Filter):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in str(record.msg)


@contextlib.contextmanager
def _quiet_partial_reload() -> Iterator[None]:
    """Drop the per-layer warnings a partial reload logs for the layers it was not sent."""
    added = [(logging.getLogger(name), _DropMessage(text)) for name, text in PARTIAL_RELOAD_NOISE.items()]
    for logger, flt in added:
        logger.addFilter(flt)
    try:
        yield
    finally:
        for logger, flt in added:
            logger.removeFilter(flt)


class WeightLoader:
    """Mixed into every vLLM worker (`worker_extension_cls`); `self` is the worker there.

    `s3_stage_weights` loads every layer of a bucket that is complete and keeps the last one
    until its remaining tensors arrive (with the next bucket, or `s3_commit_weights`).
    """

    def s3_stage_weights(self, packed: list[Packed]) -> int:
        """Take one bucket: load the complete layers, keep the last; returns how many tensors came."""
        staged: list[Packed] = self.__dict__.setdefault("_s3_staged", [])
        staged.extend(packed)
        if staged:
            last = layer_key(staged[-1][0])
            cut = len(staged)
            while cut and layer_key(staged[cut - 1][0]) == last:
                cut -= 1
            if cut:
                self._s3_load(staged[:cut])
                del staged[:cut]
        return len(packed)

    def s3_commit_weights(self) -> int:
        """Load what is still staged; returns how many tensors this push loaded in all."""
        staged: list[Packed] = self.__dict__.pop("_s3_staged", [])
        if staged:
            self._s3_load(staged)
        loaded = self.__dict__.pop("_s3_loaded", 0)
        if not loaded:
            raise RuntimeError("s3_commit_weights: no staged weights (call s3_stage_weights first)")
        return loaded

    def _s3_load(self, packed: list[Packed]) -> None:
        """Load `packed` (whole layers) into the running model."""
        weights = (unpack_tensor(p) for p in packed)
        reload = getattr(self, "reload_weights", None)
        # vLLM 0.32's in-place reload re-processes kernel formats and resets derived caches; older
        # workers' reload_weights() only re-reads the checkpoint from disk, so they copy parameters.
        # What the real engine does with Hugging Face names: a tied `lm_head.weight` is skipped
        # (the Llama loader ties it to embed_tokens), and a RotaryEmbedding's cos/sin cache is
        # no checkpoint tensor, so its unchanged old values are put back.
        if reload is not None and _accepts(reload, "weights_iterator"):
            with _quiet_partial_reload():
                reload(weights_iterator=weights, is_checkpoint_format=True)
        else:
            self.model_runner.get_model().load_weights(weights=weights)  # type: ignore[attr-defined]
        self.__dict__["_s3_loaded"] = self.__dict__.get("_s3_loaded", 0) + len(packed)


def _accepts(fn: Any, name: str) -> bool:
    """Whether `fn` takes a keyword argument `name` (by name, or through **kwargs)."""
    params = inspect.signature(fn).parameters.values()
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
