"""A fake `vllm` module for the unit tests: an engine that records what it is sent and replays
planned token streams, a worker running the real `WeightLoader` behind a msgpack round trip
(as vLLM 0.32's RPC channel does), and the LoRA calls of `LLM.llm_engine`."""

from __future__ import annotations

import os
import sys
import types
from typing import Any

import torch

from s3_ray.agent.vllm_weights import WeightLoader


class FakeWorker(WeightLoader):
    """A vLLM worker as the extension sees it: `reload_weights` records what it was given, and
    `loaded` holds one dict per push (every reload between two commits)."""

    def __init__(self) -> None:
        self.loaded: list[dict[str, torch.Tensor]] = []
        self.reloads: list[list[str]] = []  # the names of every reload call, in order
        self._open: dict[str, torch.Tensor] | None = None

    def reload_weights(self, weights_iterator: Any, is_checkpoint_format: bool) -> None:
        assert is_checkpoint_format
        got = {name: t.clone() for name, t in weights_iterator}
        self.reloads.append(list(got))
        if self._open is None:
            self._open = {}
            self.loaded.append(self._open)
        self._open.update(got)

    def s3_commit_weights(self) -> int:
        count = super().s3_commit_weights()
        self._open = None
        return count


class FakeEngineCore:
    """`LLM.llm_engine` as far as adapters go: what was added and removed, and the files then."""

    def __init__(self) -> None:
        self.added: list[Any] = []
        self.removed: list[int] = []
        self.adapter_weights: list[dict[str, torch.Tensor]] = []

    def add_lora(self, request: Any) -> bool:
        from safetensors.torch import load_file

        self.added.append(request)
        self.adapter_weights.append(load_file(f"{request.lora_path}/adapter_model.safetensors"))
        return True

    def remove_lora(self, lora_id: int) -> bool:
        self.removed.append(lora_id)
        return True


class FakeLLM:
    """Emits a planned token stream per original prompt and stops like vLLM: on eos, on a stop
    string found in this call's output text (the token holding it included), or at max_tokens."""

    def __init__(self, module: types.ModuleType, **kwargs: Any) -> None:
        self.m = module
        self.kwargs = kwargs
        self.env_visible_devices = os.environ.get("CUDA_VISIBLE_DEVICES")  # what the engine process inherits
        if module.dtype is not None:
            self.model_config = types.SimpleNamespace(dtype=module.dtype)
        self.calls: list[tuple[list[list[int]], list[Any]]] = []
        self.rpc: list[tuple[str, float | None, int]] = []
        self.worker = FakeWorker()
        self.llm_engine = FakeEngineCore()
        self.lora_requests: list[Any] = []
        self.prefix_resets = 0
        self.events: list[str] = []  # generate / rpc / sleep / wake / weight-transfer calls, in order
        self.sleeping = False
        self.weights_asleep = False  # slept and not yet woken with the "weights" tag
        # vLLM's weight transfer (engine argument weight_transfer_config; tests/fake_vllm_native.py)
        self.insecure_env = os.environ.get("VLLM_ALLOW_INSECURE_SERIALIZATION")
        wt = kwargs.get("weight_transfer_config")
        if wt is not None:
            from fake_vllm_native import FakeTransferWorker

            self.transfer = FakeTransferWorker(wt.backend, self.insecure_env)
        else:
            self.transfer = None
        module.engines.append(self)

    def _utility(self) -> None:
        """A utility call's result comes back. An engine started with VLLM_ALLOW_INSECURE_SERIALIZATION=1
        sends it with type information that vLLM's client reads only with the same setting (the
        real call then never returns; here it fails)."""
        if self.insecure_env == "1" and os.environ.get("VLLM_ALLOW_INSECURE_SERIALIZATION") != "1":
            raise TypeError("VLLM_ALLOW_INSECURE_SERIALIZATION must be set to use custom utility result types")

    def sleep(self, level: int = 1) -> None:
        self._utility()
        assert self.kwargs.get("enable_sleep_mode"), "vLLM refuses sleep() on an engine built without sleep mode"
        self.events.append(f"sleep:{level}")
        self.sleeping = True
        self.weights_asleep = True

    def wake_up(self, tags: list[str] | None = None) -> None:
        self._utility()
        self.events.append(f"wake:{','.join(tags) if tags else 'all'}")
        if tags is None or "weights" in tags:
            self.weights_asleep = False
        if tags is None or "kv_cache" in tags:
            self.sleeping = False

    # vLLM 0.32's RL methods of `LLM` (RLOfflineMixin): each a collective_rpc with a request dict
    def _transfer_call(self, event: str, request: Any = None) -> Any:
        if self.transfer is None:
            raise RuntimeError("Weight transfer not configured. Please set weight_transfer_config to enable "
                               "weight transfer.")
        assert not self.weights_asleep, f"{event} while the engine's weights are asleep (wake them first)"
        self._utility()
        self.events.append(event)
        import msgpack

        return msgpack.unpackb(msgpack.packb(request), raw=False) if request is not None else None

    def init_weight_transfer_engine(self, request: dict) -> None:
        self.transfer.init(self._transfer_call("init_transfer", request)["init_info"])

    def start_weight_update(self) -> None:
        self._transfer_call("start_update")
        self.transfer.start()

    def update_weights(self, request: dict) -> None:
        self.transfer.update(self._transfer_call("update_weights", request)["update_info"])

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        self._transfer_call("finish_update")
        self.transfer.finish()

    def _plan(self, prompt: list[int]) -> list[int]:
        for origin, plan in self.m.plans.items():
            if tuple(prompt[: len(origin)]) == origin:
                done = prompt[len(origin):]
                assert plan[: len(done)] == done, "a resumed prompt must continue its own plan"
                return plan[len(done):]
        return list(self.m.default_plan)

    def generate(self, prompts: list[dict], params: list[Any], use_tqdm: bool = True, lora_request: Any = None) -> list[Any]:
        assert not self.sleeping, "generate on a sleeping engine"
        self.events.append("generate")
        ids_in = [list(p["prompt_token_ids"]) for p in prompts]
        self.lora_requests.append(lora_request)
        self.calls.append((ids_in, list(params)))
        tok, eos = self.m.tokenizer, self.m.tokenizer.eos_token_id
        outs = []
        for prompt, sp in zip(ids_in, params):
            out: list[int] = []
            reason = None
            for t in self._plan(prompt)[: sp.kwargs["max_tokens"]]:
                out.append(t)
                if t == eos:
                    break
                text = tok.decode(out, skip_special_tokens=True)
                hit = [s for s in sp.kwargs["stop"] if s in text]
                if hit:
                    reason = hit[0]
                    break
            comp = types.SimpleNamespace(token_ids=tuple(out), stop_reason=reason,
                                         text=tok.decode(out, skip_special_tokens=True))
            outs.append(types.SimpleNamespace(outputs=[comp]))
        return outs

    def collective_rpc(self, method: str, timeout: float | None = None, args: tuple = (), kwargs: Any = None):
        self._utility()
        self.rpc.append((method, timeout, len(args[0]) if args else 0))
        self.events.append(f"rpc:{method}")
        # The real client sends utility-call arguments to the engine process as untyped msgpack
        # (vLLM 0.32 `MsgpackEncoder`): tuples arrive as lists, bytes as bytes, and anything that
        # is not a plain msgpack type fails. The worker sees what a round trip leaves.
        import msgpack

        sent = msgpack.unpackb(msgpack.packb(list(args)), raw=False)
        return [getattr(self.worker, method)(*sent)]

    def reset_prefix_cache(self) -> bool:
        self._utility()
        self.prefix_resets += 1
        return True


class FakeSamplingParams:
    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs


def install_fake_vllm(monkeypatch: Any, tokenizer: Any, dtype: Any = None, native: str | None = None) -> types.ModuleType:
    """Put the fake module in `sys.modules` (undone with `monkeypatch`); `dtype` is the engine's
    weights' dtype (`LLM.model_config.dtype`; None: not reported). Returns the module, whose
    `engines` lists every engine built, `plans` maps a prompt prefix to its token stream and
    `default_plan` is used for any other prompt. `native`: a platform name ("cuda", "cpu") on
    which the module also has vLLM 0.32's weight-transfer API (`fake_vllm_native`); None: an older
    vLLM without it."""
    m = types.ModuleType("vllm")
    m.engines, m.plans, m.default_plan, m.tokenizer, m.dtype = [], {}, [], tokenizer, dtype
    m.LLM = lambda **kw: FakeLLM(m, **kw)
    m.SamplingParams = FakeSamplingParams
    # A GPU platform: the engine gets exactly the settings VLLMPolicy makes (the CPU platform's
    # defaults are tested in test_vllm_engine.py).
    m.platforms = types.ModuleType("vllm.platforms")
    m.platforms.current_platform = types.SimpleNamespace(is_cpu=lambda: False)
    m.lora = types.ModuleType("vllm.lora")
    m.lora.request = types.ModuleType("vllm.lora.request")
    m.lora.request.LoRARequest = lambda **kw: types.SimpleNamespace(**kw)
    monkeypatch.setitem(sys.modules, "vllm", m)
    monkeypatch.setitem(sys.modules, "vllm.platforms", m.platforms)
    monkeypatch.setitem(sys.modules, "vllm.lora", m.lora)
    monkeypatch.setitem(sys.modules, "vllm.lora.request", m.lora.request)
    if native is not None:
        from fake_vllm_native import add_native

        add_native(m, monkeypatch, platform=native)
    return m


def phases(events: list[str]) -> list[str]:
    """A fake engine's calls with runs of the same call folded into one."""
    out: list[str] = []
    for e in events:
        if not out or out[-1] != e:
            out.append(e)
    return out
