"""Each Train worker's vLLM engine on that worker's own GPU, sharing it with the trainer through a
checked memory split; the GPUs (device list, memory) and vLLM are faked."""

from __future__ import annotations

import types
from typing import Any

import pytest
import torch

from fake_vllm import install_fake_vllm
from s3_ray.agent.policy import make_policy
from s3_ray.agent.vllm_policy import VLLMPolicy
from s3_ray.config import SearcherConfig
from s3_ray.models import load_causal_lm, vllm_placement
from s3_ray.models.vllm_placement import CUDA_CONTEXT_BYTES, place_engine

GIB = 1 << 30
CFG = SearcherConfig(model="tiny-random", max_new_tokens=24, max_prompt_tokens=64, backend="vllm",
                     gpu_memory_utilization=0.4)


class FakeParam:
    """A parameter as placement sees it: on some device, with a size, trainable or frozen."""

    def __init__(self, device: str, nbytes: int, requires_grad: bool = True) -> None:
        self.device = torch.device(device)
        self.requires_grad = requires_grad
        self.grad = None
        self._numel = nbytes // 4

    def numel(self) -> int:
        return self._numel

    def element_size(self) -> int:
        return 4


class TrainerModel:
    """The trainer's (bare) model on one GPU: fp32 weights, some of them trainable."""

    def __init__(self, device: str, trainable_bytes: int = GIB, frozen_bytes: int = 0) -> None:
        self.params = [FakeParam(device, trainable_bytes), FakeParam(device, frozen_bytes, requires_grad=False)]

    def parameters(self):
        return iter(self.params)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"model.embed_tokens.weight": torch.zeros(2, 2)}


@pytest.fixture(scope="module")
def tiny():
    return load_causal_lm("tiny-random")


@pytest.fixture
def gpus(monkeypatch) -> dict[str, Any]:
    """Four 80 GiB GPUs, all visible to every worker of the node (as Ray Train sets it); each
    device's free memory and this process's allocations can be set per test."""
    state: dict[str, Any] = {"total": 80 * GIB, "free": {}, "allocated": {}, "current": 0}
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: state["current"])
    monkeypatch.setattr(torch.cuda, "mem_get_info",
                        lambda device: (state["free"].get(device.index, state["total"]), state["total"]))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: state["allocated"].get(device.index, 0))
    return state


def test_each_workers_engine_is_asked_for_its_own_gpu(monkeypatch, tiny, gpus) -> None:
    vllm = install_fake_vllm(monkeypatch, tiny[1])
    for rank in range(4):  # one engine per Train worker, each built beside its trainer's model
        VLLMPolicy("tiny-random", tiny[1], CFG, colocate_with=TrainerModel(f"cuda:{rank}"))
    assert [e.kwargs["device_ids"] for e in vllm.engines] == [[0], [1], [2], [3]]
    # vLLM maps device_ids through CUDA_VISIBLE_DEVICES itself: the environment stays as Ray set it
    assert [e.env_visible_devices for e in vllm.engines] == ["0,1,2,3"] * 4
    assert all(e.kwargs["gpu_memory_utilization"] == 0.4 for e in vllm.engines)

    # a bare "cuda" is the current device (the Train worker sets it); make_policy colocates too
    gpus["current"] = 2
    VLLMPolicy("tiny-random", tiny[1], CFG, colocate_with=TrainerModel("cuda"))
    make_policy(TrainerModel("cuda:1"), tiny[1], CFG)
    assert [e.kwargs["device_ids"] for e in vllm.engines[4:]] == [[2], [1]]


def test_no_gpu_no_device_ids(monkeypatch, tiny) -> None:
    vllm = install_fake_vllm(monkeypatch, tiny[1])
    model, tok = tiny
    VLLMPolicy("tiny-random", tok, CFG, colocate_with=model)  # a CPU model: vLLM's platform decides
    VLLMPolicy("tiny-random", tok, CFG)
    assert all("device_ids" not in e.kwargs for e in vllm.engines)
    assert place_engine(None, 0.4) == {}


def test_memory_split_is_checked_before_the_engine_starts(monkeypatch, tiny, gpus) -> None:
    vllm = install_fake_vllm(monkeypatch, tiny[1])
    # 7B in fp32 with full fine-tuning: 28 GiB weights allocated, then 28 GiB grads + 56 GiB AdamW
    gpus["allocated"][1] = 28 * GIB
    full = TrainerModel("cuda:1", trainable_bytes=28 * GIB)
    with pytest.raises(ValueError, match=r"searcher.gpu_memory_utilization=0.4 gives the vLLM engine 32.0 GiB of "
                                         r"cuda:1's 80.0 GiB; the trainer there needs ~113.0 GiB"):
        VLLMPolicy("tiny-random", tiny[1], CFG, colocate_with=full)
    assert vllm.engines == []  # refused before vLLM was asked

    # LoRA: the base is frozen, only a small adapter gets gradients and AdamW moments
    lora = TrainerModel("cuda:1", trainable_bytes=GIB // 4, frozen_bytes=28 * GIB)
    need = 28 * GIB + 3 * (GIB // 4) + CUDA_CONTEXT_BYTES
    assert vllm_placement.trainer_bytes(lora, torch.device("cuda:1")) + CUDA_CONTEXT_BYTES == need
    VLLMPolicy("tiny-random", tiny[1], CFG, colocate_with=lora)  # 29.75 GiB of the 48 left: fits
    with pytest.raises(ValueError, match=r"at most 0\.62"):  # 0.7 would leave 24 GiB for ~29.75
        VLLMPolicy("tiny-random", tiny[1], CFG.model_copy(update={"gpu_memory_utilization": 0.7}), colocate_with=lora)

    # the engine's own share must be free now (another process may hold the GPU)
    gpus["free"][1] = 20 * GIB
    with pytest.raises(ValueError, match=r"only 20.0 GiB is free there now"):
        VLLMPolicy("tiny-random", tiny[1], CFG, colocate_with=lora)
    assert len(vllm.engines) == 1


def test_trainer_bytes_counts_gradients_not_yet_allocated(gpus) -> None:
    model = TrainerModel("cuda:0", trainable_bytes=4 * GIB)
    gpus["allocated"][0] = 6 * GIB
    device = torch.device("cuda:0")
    assert vllm_placement.trainer_bytes(model, device) == 6 * GIB + 3 * 4 * GIB
    model.params[0].grad = types.SimpleNamespace()  # gradients exist (allocated, so counted already)
    assert vllm_placement.trainer_bytes(model, device) == 6 * GIB + 2 * 4 * GIB
