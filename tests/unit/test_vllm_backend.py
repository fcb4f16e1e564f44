"""The vLLM backend's import guard (the engine itself needs a GPU and the `gpu` extra)."""

from __future__ import annotations

import sys

import pytest

from s3_ray.config import GeneratorConfig
from s3_ray.generation import build_generator


def test_missing_vllm_names_the_gpu_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` raise ImportError
    from s3_ray.generation.vllm_backend import VLLMGenerator

    with pytest.raises(ImportError, match=r"s3-ray\[gpu\]"):
        VLLMGenerator("tiny-random")
    with pytest.raises(ImportError, match="generator.backend='vllm'"):
        build_generator(GeneratorConfig(backend="vllm", cache_path=None))


def test_vllm_module_imports_without_vllm(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)
    monkeypatch.delitem(sys.modules, "s3_ray.generation.vllm_backend", raising=False)
    import s3_ray.generation.vllm_backend as mod

    assert mod.VLLMGenerator.fit is not None  # the import is lazy: only the constructor needs vllm


def test_vllm_backend_is_greedy_only() -> None:
    with pytest.raises(ValueError, match="decodes greedily"):
        build_generator(GeneratorConfig(backend="vllm", temperature=0.7, cache_path=None))


def test_engine_settings_and_overrides(monkeypatch) -> None:
    """What VLLMGenerator asks the engine for (a fake `vllm` on a GPU platform); explicit engine
    kwargs win; `close` shuts the engine core down."""
    import types

    from s3_ray.generation.vllm_backend import VLLMGenerator
    from s3_ray.models import resolve_model

    shut: list[bool] = []
    m = types.ModuleType("vllm")
    m.platforms = types.ModuleType("vllm.platforms")
    m.platforms.current_platform = types.SimpleNamespace(is_cpu=lambda: False)

    def llm(**kwargs):
        core = types.SimpleNamespace(shutdown=lambda: shut.append(True))
        return types.SimpleNamespace(kwargs=kwargs, get_tokenizer=lambda: None,
                                     llm_engine=types.SimpleNamespace(engine_core=core))

    m.LLM = llm
    m.SamplingParams = lambda **kw: kw
    monkeypatch.setitem(sys.modules, "vllm", m)
    monkeypatch.setitem(sys.modules, "vllm.platforms", m.platforms)
    gen = VLLMGenerator("tiny-random", max_new_tokens=8, max_context_tokens=100, seed=4, enforce_eager=True,
                        gpu_memory_utilization=0.5)
    assert gen.llm.kwargs == {"model": resolve_model("tiny-random"), "max_model_len": 108,
                              "gpu_memory_utilization": 0.5, "seed": 4, "enforce_eager": True}
    assert gen.params == {"temperature": 0.0, "max_tokens": 8}
    gen.close()
    assert shut == [True]
