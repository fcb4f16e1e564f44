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
