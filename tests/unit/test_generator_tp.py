"""`generator.tensor_parallel_size`: the vLLM engine splits the generator over that many GPUs and
the generator Serve replica reserves exactly them (vLLM is faked: the engine records its settings)."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from s3_ray.config import ConfigError, GeneratorConfig, ServeConfig, load_config
from s3_ray.plans.entries import deployments

PAPER = Path(__file__).resolve().parents[2] / "jobs" / "configs" / "s3_paper.yaml"


def test_the_generator_replica_reserves_the_engines_gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from deployments.generator import GeneratorAppArgs, build_app

    monkeypatch.chdir(tmp_path)
    gen = GeneratorConfig(backend="vllm", tensor_parallel_size=4, cache_path=None)
    app = build_app(GeneratorAppArgs(generator=gen, serve=ServeConfig(generator_resources={"serve_node": 0.01})))
    options = app._bound_deployment.ray_actor_options
    assert options["num_gpus"] == 4 and options["resources"] == {"serve_node": 0.01}
    cfg = load_config(None, ["generator.backend=vllm", "generator.tensor_parallel_size=2"])
    assert deployments(cfg)[1]["gpus_per_replica"] == 2           # what --dry-run shows


def test_the_engine_gets_the_tensor_parallel_size(monkeypatch: pytest.MonkeyPatch) -> None:
    from s3_ray.generation import build_generator

    m = types.ModuleType("vllm")
    m.platforms = types.ModuleType("vllm.platforms")
    m.platforms.current_platform = types.SimpleNamespace(is_cpu=lambda: False)
    m.LLM = lambda **kw: types.SimpleNamespace(kwargs=kw, get_tokenizer=lambda: None)
    m.SamplingParams = lambda **kw: kw
    monkeypatch.setitem(sys.modules, "vllm", m)
    monkeypatch.setitem(sys.modules, "vllm.platforms", m.platforms)
    gen = build_generator(GeneratorConfig(backend="vllm", model="tiny-random", tensor_parallel_size=2, cache_path=None))
    assert gen.llm.kwargs["tensor_parallel_size"] == 2
    assert gen.llm.kwargs["distributed_executor_backend"] == "mp"   # workers on the replica's own GPUs
    one = build_generator(GeneratorConfig(backend="vllm", model="tiny-random", cache_path=None))
    assert "tensor_parallel_size" not in one.llm.kwargs


def test_tensor_parallel_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="tensor_parallel_size=2 needs generator.backend vllm"):
        load_config(None, ["generator.tensor_parallel_size=2"])
    with pytest.raises(ConfigError, match="serve.generator_gpus=1.0 but a vllm generator replica needs"):
        load_config(None, ["generator.backend=vllm", "generator.tensor_parallel_size=2", "serve.generator_gpus=1"])
    paper = load_config(PAPER)
    assert paper.generator.backend == "vllm" and paper.generator.tensor_parallel_size == 2
