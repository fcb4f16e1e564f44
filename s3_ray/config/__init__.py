"""Typed configuration for every s3-ray job.

One tree (`S3Config`), loaded from YAML and then patched with dotted overrides::

    cfg = load_config("jobs/configs/demo.yaml", ["rollout.max_turns=3", "train.lr=1e-5"])

Every model forbids unknown keys, so a typo fails loudly with the key's full path.
Each component receives its own sub-config, never the root.

The sections live in their own modules (`pipeline`, `train`, `evaluation`, `runtime`); every
name is importable from `s3_ray.config`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, model_validator

from s3_ray.config.base import ConfigError, FaissGpu, StrictModel
from s3_ray.config.evaluation import EvalConfig, EvalDatasetConfig, SweepConfig
from s3_ray.config.pipeline import (DataConfig, GeneratorConfig, RetrievalConfig, RewardConfig, RolloutConfig,
                                    SearcherConfig)
from s3_ray.config.runtime import ResourcesConfig, ServeConfig, WandbConfig
from s3_ray.config.train import TrainConfig

__all__ = ["ConfigError", "DataConfig", "EvalConfig", "EvalDatasetConfig", "FaissGpu", "GeneratorConfig",
           "ResourcesConfig",
           "RetrievalConfig", "RewardConfig", "RolloutConfig", "S3Config", "SearcherConfig", "ServeConfig",
           "SweepConfig", "TrainConfig", "WandbConfig", "load_config", "load_job_config"]


class S3Config(StrictModel):
    run_dir: str = Field("runs/demo", description="Every artifact of a run lands below this folder.")
    seed: int = 0
    data: DataConfig = DataConfig()
    retrieval: RetrievalConfig = RetrievalConfig()
    generator: GeneratorConfig = GeneratorConfig()
    searcher: SearcherConfig = SearcherConfig()
    rollout: RolloutConfig = RolloutConfig()
    reward: RewardConfig = RewardConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    sweep: SweepConfig = SweepConfig()
    serve: ServeConfig = ServeConfig()
    wandb: WandbConfig = WandbConfig()
    resources: ResourcesConfig = ResourcesConfig()

    @model_validator(mode="after")
    def _budgets_fit(self) -> "S3Config":
        if self.rollout.keep_per_turn > self.rollout.top_k:
            raise ValueError("rollout.keep_per_turn must not exceed rollout.top_k")
        return self

    @model_validator(mode="after")
    def _async_engine(self) -> "S3Config":
        if self.train.async_.enabled and self.searcher.backend != "transformers":
            raise ValueError(f"train.async.max_staleness={self.train.async_.max_staleness} runs rollout workers with a "
                             f"transformers engine (HFPolicy); searcher.backend={self.searcher.backend!r} is not "
                             "supported there yet")
        return self

    @model_validator(mode="after")
    def _gpus_fit(self) -> "S3Config":
        s, r, g = self.serve, self.retrieval, self.generator
        if r.backend != "bm25" and r.faiss_gpu is True and 0 < s.retriever_gpus < 1:
            raise ValueError(
                f"serve.retriever_gpus={s.retriever_gpus} packs retriever replicas onto a shared GPU, and each holds "
                "its own copy of the GPU index (retrieval.faiss_gpu: true): give every replica whole GPUs "
                "(serve.retriever_gpus: 1 or more; its index is split over them), or keep the index in host "
                "memory (retrieval.faiss_gpu: false)")
        if g.backend == "vllm" and s.generator_gpus not in (0, g.tensor_parallel_size):
            raise ValueError(f"serve.generator_gpus={s.generator_gpus} but a vllm generator replica needs "
                             f"generator.tensor_parallel_size={g.tensor_parallel_size} GPUs: set serve.generator_gpus "
                             "to 0 (follow it) or to that number")
        return self

    def with_overrides(self, overrides: dict[str, Any] | list[str]) -> "S3Config":
        """A copy with dotted keys replaced (`{"rollout.top_k": 5}` or `["rollout.top_k=5"]`)."""
        data = self.model_dump()
        pairs = _parse_overrides(overrides) if isinstance(overrides, list) else overrides
        for key, value in pairs.items():
            _set_dotted(data, key, value)
        return _validate(data, source="overrides")

    def absolute(self, base: str | os.PathLike[str] | None = None) -> "S3Config":
        """A copy whose relative file paths are resolved against `base` (default: the cwd).

        Ray workers and Serve replicas run in other working directories, so a job resolves its
        paths once, in the driver, before handing the config on.
        """
        root = Path(base or os.getcwd())

        def fix(p: str | None) -> str | None:
            if p is None:
                return None
            q = Path(p).expanduser()
            return str(q if q.is_absolute() else root / q)

        return self.with_overrides({
            "run_dir": fix(self.run_dir),
            "retrieval.index_dir": fix(self.retrieval.index_dir),
            "generator.cache_path": fix(self.generator.cache_path),
            **{f"data.{k}": fix(getattr(self.data, k)) for k in ("corpus_path", "train_path", "dev_path", "test_path")},
        })

    def path(self, *parts: str) -> Path:
        """A path below run_dir."""
        return Path(self.run_dir).joinpath(*parts)


def _parse_overrides(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
    return out


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        if not isinstance(node, dict) or part not in node or not isinstance(node[part], dict):
            raise ConfigError(f"unknown config key {'.'.join(parts[: i + 1])!r} (in override {key!r})")
        node = node[part]
    if not isinstance(node, dict) or parts[-1] not in node:
        raise ConfigError(f"unknown config key {key!r}")
    node[parts[-1]] = value


def _validate(data: dict[str, Any], source: str) -> S3Config:
    try:
        return S3Config.model_validate(data)
    except ValidationError as err:
        lines = []
        for e in err.errors():
            loc = ".".join(str(p) for p in e["loc"]) or "<root>"
            msg = "unknown config key" if e["type"] == "extra_forbidden" else e["msg"]
            lines.append(f"{loc}: {msg}")
        raise ConfigError(f"invalid config ({source}):\n  " + "\n  ".join(lines)) from None


def load_config(path: str | os.PathLike[str] | None = None, overrides: list[str] | None = None) -> S3Config:
    """Read a YAML config (or the defaults when `path` is None) and apply dotted overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        loaded = yaml.safe_load(p.read_text())
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{p}: top level must be a mapping")
        data = loaded or {}
    cfg = _validate(data, source=str(path) if path else "defaults")
    return cfg.with_overrides(overrides) if overrides else cfg


def load_job_config(path: str | os.PathLike[str] | None, overrides: list[str] | None = None) -> S3Config:
    """`load_config` with every relative path resolved against the current directory (for jobs)."""
    return load_config(path, overrides).absolute()
