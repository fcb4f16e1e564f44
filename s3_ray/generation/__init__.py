"""Frozen answer generation: the Generator protocol, s3's prompts, the transformers backend, a cache.

Importing this package loads no model and no torch; `build_generator` does.
"""

from __future__ import annotations

from pathlib import Path

from s3_ray.config import GeneratorConfig

from s3_ray.generation.base import Generator, Messages, validate_prompts
from s3_ray.generation.cache import CachedGenerator, ResponseCache, cache_key
from s3_ray.generation.hf import PromptTooLongError, TransformersGenerator
from s3_ray.generation.prompt import (
    build_answer_messages,
    build_judge_messages,
    format_context,
    parse_judge_reply,
)

__all__ = [
    "CachedGenerator",
    "PromptTooLongError",
    "TransformersGenerator",
    "build_generator",
    "Generator",
    "Messages",
    "ResponseCache",
    "build_answer_messages",
    "build_judge_messages",
    "cache_key",
    "format_context",
    "parse_judge_reply",
    "validate_prompts",
]


def build_generator(cfg: GeneratorConfig, base_dir: str | Path | None = None) -> Generator:
    """The generator a config describes, wrapped in the response cache when `cache_path` is set.

    A relative `cache_path` is resolved against `base_dir` (default: the current directory).
    """
    if cfg.backend != "transformers":
        raise ValueError(f"generator.backend {cfg.backend!r} is not supported; expected 'transformers'")
    gen: Generator = TransformersGenerator(cfg.model, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
                                           num_threads=cfg.num_threads, max_context_tokens=cfg.max_context_tokens)
    if cfg.cache_path is None:
        return gen
    path = Path(cfg.cache_path)
    if not path.is_absolute():
        path = Path(base_dir or Path.cwd()) / path
    return CachedGenerator(gen, ResponseCache(path))
