"""vLLM 0.32's weight-transfer API, faked for the unit tests (added to `fake_vllm`'s module by
`add_native`): what the real one does that the trainer side can observe, on CPU tensors.

* `WeightTransferConfig(backend=...)`, the engine argument;
* `WeightTransferTrainerFactory.trainer_init(info, client=, source=)` returning a trainer engine
  modelled on vLLM's packed senders (`vllm/distributed/weight_transfer/ipc_engine.py`,
  `nccl_engine.py`, `packed_tensor.py`): ipc calls ``client.init_weight_transfer_engine({"packed":
  ...})`` at init, and per ``send_weights()`` start, one ``update_weights`` per chunk of at most
  `packed_buffer_size_bytes` (refusing a larger tensor), finish; nccl announces ``source.metadata()``
  in one ``update_weights`` and broadcasts the packed chunks to the worker;
* the worker side (`FakeTransferWorker`): start / update / finish as the real worker orders them,
  unpickling ``ipc_handles_pickled`` only when the engine started with
  VLLM_ALLOW_INSECURE_SERIALIZATION=1, as vLLM's `IPCWeightTransferUpdateInfo` does.

"IPC" hands the packed buffer over through `SHARED` (handle -> tensor), "NCCL" through the worker
object: there is no second process. Every update_info crosses a msgpack round trip, as the LLM's
RPC channel would carry it.
"""

from __future__ import annotations

import abc
import base64
import math
import pickle
import sys
import types
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

SHARED: dict[str, torch.Tensor] = {}
"""The fake CUDA IPC: handle -> the sender's packed buffer."""

GPU_UUID = "GPU-fake-0"


@dataclass(frozen=True)
class ParamMeta:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]


class WeightSource(abc.ABC):
    @abc.abstractmethod
    def metadata(self) -> list[ParamMeta]: ...

    @abc.abstractmethod
    def __iter__(self): ...


@dataclass
class WeightTransferConfig:
    backend: str = "nccl"


@dataclass
class IPCTrainerInitInfo:
    backend: ClassVar[str] = "ipc"
    rank: int = field(kw_only=True)
    packed: bool = False
    packed_buffer_size_bytes: int = 1 << 30


@dataclass
class NCCLTrainerInitInfo:
    backend: ClassVar[str] = "nccl"
    master_address: str
    master_port: int
    world_size: int
    rank: int = field(kw_only=True)
    packed: bool = True
    packed_buffer_size_bytes: int = 1 << 30


def _chunks(source: Any, buffer_bytes: int, refuse_larger: bool):
    """(names, dtypes, shapes, sizes, packed uint8 tensor) per chunk, cut like vLLM's packed producers."""
    names, dtypes, shapes, sizes, flats = [], [], [], [], []
    for name, tensor in source:
        flat = tensor.contiguous().view(-1).view(torch.uint8)
        if refuse_larger and flat.numel() > buffer_bytes:
            raise ValueError(f"Tensor '{name}' has size {flat.numel()} bytes, which exceeds "
                             f"buffer_size_bytes={buffer_bytes}.")
        if flats and sum(sizes) + flat.numel() > buffer_bytes:
            yield names, dtypes, shapes, sizes, torch.cat(flats)
            names, dtypes, shapes, sizes, flats = [], [], [], [], []
        names.append(name)
        dtypes.append(str(tensor.dtype).removeprefix("torch."))
        shapes.append(list(tensor.shape))
        sizes.append(flat.numel())
        flats.append(flat.clone())
    if flats:
        yield names, dtypes, shapes, sizes, torch.cat(flats)


class FakeTrainerEngine:
    def __init__(self, info: Any, client: Any, source: Any) -> None:
        self.info, self.client, self.source = info, client, source
        self.module = sys.modules["vllm"]
        self.chunk_bytes: list[int] = []
        self.shut = False

    def send_weights(self) -> None:
        if self.info.backend == "ipc":
            self.client.start_weight_update()
            for i, (names, dtypes, shapes, sizes, packed) in enumerate(
                    _chunks(self.source, self.info.packed_buffer_size_bytes, refuse_larger=True)):
                handle = f"ipc-{id(self)}-{i}"
                SHARED[handle] = packed
                self.chunk_bytes.append(int(packed.numel()))
                self.client.update_weights({"names": names, "dtype_names": dtypes, "shapes": shapes,
                                            "ipc_handles": {GPU_UUID: (handle, torch.uint8, torch.Size([packed.numel()]))},
                                            "tensor_sizes": sizes})
            self.client.finish_weight_update()
        else:
            meta = self.source.metadata()
            self.client.start_weight_update()
            self.client.update_weights({"names": [m.name for m in meta],
                                        "dtype_names": [str(m.dtype).removeprefix("torch.") for m in meta],
                                        "shapes": [list(m.shape) for m in meta]})
            worker = self.module.groups[(self.info.master_address, self.info.master_port)]  # the "NCCL group"
            for names, dtypes, shapes, sizes, packed in _chunks(self.source, self.info.packed_buffer_size_bytes,
                                                                refuse_larger=False):
                self.chunk_bytes.append(int(packed.numel()))
                worker.broadcast(packed)
            self.client.finish_weight_update()

    def shutdown(self) -> None:
        self.shut = True


class WeightTransferTrainerFactory:
    @classmethod
    def trainer_init(cls, init_info: Any, *, client: Any, source: Any = None) -> FakeTrainerEngine:
        assert isinstance(source, WeightSource), "vLLM's trainer engines take a WeightSource"
        engine = FakeTrainerEngine(init_info, client, source)
        if init_info.backend == "ipc":
            client.init_weight_transfer_engine({"packed": init_info.packed})
        else:
            client.init_weight_transfer_engine({"master_address": init_info.master_address,
                                                "master_port": init_info.master_port, "rank_offset": 1,
                                                "world_size": init_info.world_size, "packed": init_info.packed,
                                                "packed_buffer_size_bytes": init_info.packed_buffer_size_bytes})
        sys.modules["vllm"].trainers.append(engine)
        return engine


def _unpack(packed: torch.Tensor, names, dtypes, shapes, sizes) -> dict[str, torch.Tensor]:
    out = {}
    for name, dtype, shape, part in zip(names, dtypes, shapes, packed.split(list(sizes))):
        out[name] = part.clone().view(getattr(torch, dtype)).view(shape)
    return out


class FakeTransferWorker:
    """The engine worker's weight-transfer side: `loaded` has one dict per finished update."""

    def __init__(self, backend: str, insecure_env: str | None) -> None:
        self.backend = backend
        self.insecure = insecure_env == "1"  # what the engine's processes inherited at start
        self.init_info: dict[str, Any] | None = None
        self.loaded: list[dict[str, torch.Tensor]] = []
        self._open: dict[str, torch.Tensor] | None = None
        self._expect: list[tuple[str, str, list[int]]] = []

    def init(self, init_info: dict[str, Any]) -> None:
        self.init_info = init_info
        if "master_port" in init_info:  # joins the trainer's NCCL group
            sys.modules["vllm"].groups[(init_info["master_address"], init_info["master_port"])] = self

    def start(self) -> None:
        assert self.init_info is not None, "start_weight_update before init_weight_transfer_engine"
        assert self._open is None, "start_weight_update while a weight update is already active"
        self._open = {}

    def update(self, info: dict[str, Any]) -> None:
        assert self._open is not None, "update_weights before start_weight_update"
        if self.backend == "ipc":
            if "ipc_handles_pickled" in info:
                if not self.insecure:
                    raise ValueError("Refusing to deserialize `ipc_handles_pickled` without "
                                     "VLLM_ALLOW_INSECURE_SERIALIZATION=1")
                handles = pickle.loads(base64.b64decode(info["ipc_handles_pickled"]))
            else:
                handles = info["ipc_handles"]
            handle = handles[GPU_UUID][0]
            self._open.update(_unpack(SHARED[handle], info["names"], info["dtype_names"], info["shapes"],
                                      info["tensor_sizes"]))
        else:
            self._expect = list(zip(info["names"], info["dtype_names"], info["shapes"]))

    def broadcast(self, packed: torch.Tensor) -> None:
        """Receive one packed NCCL chunk: the announced tensors it holds, in order."""
        assert self._open is not None
        names, dtypes, shapes, sizes, total = [], [], [], [], 0
        while total < packed.numel():
            name, dtype, shape = self._expect.pop(0)
            size = math.prod(shape) * getattr(torch, dtype).itemsize
            names.append(name), dtypes.append(dtype), shapes.append(shape), sizes.append(size)
            total += size
        assert total == packed.numel(), "chunk boundaries disagree with the announced shapes"
        self._open.update(_unpack(packed, names, dtypes, shapes, sizes))

    def finish(self) -> None:
        assert self._open is not None, "finish_weight_update without start_weight_update"
        assert not self._expect, f"{len(self._expect)} announced tensors never arrived"
        self.loaded.append(self._open)
        self._open = None


def add_native(m: types.ModuleType, monkeypatch: Any, platform: str = "cuda") -> None:
    """Give the fake `vllm` module `m` vLLM 0.32's weight-transfer API, on `platform`."""
    m.trainers, m.groups = [], {}
    m.platforms.current_platform = types.SimpleNamespace(**{f"is_{p}": (lambda p=p: p == platform)
                                                            for p in ("cuda", "rocm", "cpu", "tpu", "xpu")})
    config = types.ModuleType("vllm.config")
    config.WeightTransferConfig = WeightTransferConfig
    dist = types.ModuleType("vllm.distributed")
    wt = types.ModuleType("vllm.distributed.weight_transfer")
    wt.WeightTransferTrainerFactory, wt.WeightSource, wt.ParamMeta = WeightTransferTrainerFactory, WeightSource, ParamMeta
    ipc = types.ModuleType("vllm.distributed.weight_transfer.ipc_engine")
    ipc.IPCTrainerInitInfo = IPCTrainerInitInfo
    nccl = types.ModuleType("vllm.distributed.weight_transfer.nccl_engine")
    nccl.NCCLTrainerInitInfo = NCCLTrainerInitInfo
    utils = types.ModuleType("vllm.utils")
    net = types.ModuleType("vllm.utils.network_utils")
    net.get_open_port = lambda: 29555
    m.__path__ = []  # a package: its submodules import
    for name, mod in {"vllm.config": config, "vllm.distributed": dist, "vllm.distributed.weight_transfer": wt,
                      "vllm.distributed.weight_transfer.ipc_engine": ipc,
                      "vllm.distributed.weight_transfer.nccl_engine": nccl, "vllm.utils": utils,
                      "vllm.utils.network_utils": net}.items():
        monkeypatch.setitem(sys.modules, name, mod)
