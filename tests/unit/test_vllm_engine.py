"""Engine start per platform (`s3_ray.models.vllm_engine`), against a fake `vllm` module: the
import guard, CPU defaults, explicit settings winning over them, start failures naming the model,
shutdown."""

from __future__ import annotations

import sys
import types
from typing import Any

import pytest

from s3_ray.models.vllm_engine import CPU_KV_CACHE_BYTES, import_vllm, platform_defaults, start_engine, stop_engine


def fake_vllm(monkeypatch: pytest.MonkeyPatch, cpu: bool, fail: Exception | None = None) -> types.ModuleType:
    """`vllm` whose `LLM(**kw)` records kw (or raises `fail`), on a CPU or a GPU platform."""
    m = types.ModuleType("vllm")
    platforms = types.ModuleType("vllm.platforms")
    platforms.current_platform = types.SimpleNamespace(is_cpu=lambda: cpu)

    def llm(**kwargs: Any) -> Any:
        if fail is not None:
            raise fail
        return types.SimpleNamespace(kwargs=kwargs)

    m.LLM = llm
    m.platforms = platforms
    monkeypatch.setitem(sys.modules, "vllm", m)
    monkeypatch.setitem(sys.modules, "vllm.platforms", platforms)
    return m


def test_import_guard_names_the_extra_and_rejects_a_folder_named_vllm(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # not installed: `import vllm` raises
    with pytest.raises(ImportError, match=r"^searcher.backend='vllm' needs the vllm package.*s3-ray\[gpu\].*"
                                          r"setup_vllm_cpu.sh.*or use searcher.backend='transformers'"):
        import_vllm("searcher.backend='vllm'", "searcher.backend='transformers'")
    # what `import vllm` gives where a folder named vllm (no __init__.py) is on sys.path
    folder = types.ModuleType("vllm")
    folder.__path__ = ["/somewhere/tests/vllm"]
    monkeypatch.setitem(sys.modules, "vllm", folder)
    with pytest.raises(ImportError, match=r"/somewhere/tests/vllm'\] is not the vLLM package"):
        import_vllm("generator.backend='vllm'", "generator.backend='transformers'")
    m = fake_vllm(monkeypatch, cpu=False)
    assert import_vllm("x", "y") is m


def test_gpu_platform_gets_the_settings_unchanged(monkeypatch) -> None:
    m = fake_vllm(monkeypatch, cpu=False)
    assert platform_defaults() == {}
    assert start_engine(m, {"model": "x", "seed": 1}).kwargs == {"model": "x", "seed": 1}


def test_cpu_platform_defaults_and_explicit_settings_win(monkeypatch) -> None:
    m = fake_vllm(monkeypatch, cpu=True)
    cpu = {"enforce_eager": True, "dtype": "float32", "kv_cache_memory_bytes": CPU_KV_CACHE_BYTES}
    assert platform_defaults() == cpu
    kw = start_engine(m, {"model": "x", "dtype": "bfloat16"}).kwargs
    assert kw == {**cpu, "model": "x", "dtype": "bfloat16"}


def test_failed_start_names_the_model_and_settings(monkeypatch) -> None:
    m = fake_vllm(monkeypatch, cpu=True, fail=RuntimeError("Engine core initialization failed. See root cause above."))
    with pytest.raises(RuntimeError, match=r"model '/m/smol' failed to start: Engine core.*enforce_eager=True") as info:
        start_engine(m, {"model": "/m/smol", "seed": 0})
    assert isinstance(info.value.__cause__, RuntimeError)


def test_stop_engine_shuts_the_engine_core_down() -> None:
    calls: list[str] = []
    core = types.SimpleNamespace(shutdown=lambda: calls.append("shutdown"))
    stop_engine(types.SimpleNamespace(llm_engine=types.SimpleNamespace(engine_core=core)))
    assert calls == ["shutdown"]
    stop_engine(types.SimpleNamespace())  # an engine without a core (a fake, an older vLLM): nothing to do
