"""Frozen answer generation: the Generator and Answerer protocols, s3's prompts, the backends
(transformers, vLLM, an OpenAI-compatible server), a response cache.

Importing this package loads no model and no torch; `build_generator` does.
"""

from __future__ import annotations

from pathlib import Path

from s3_ray.config import GeneratorConfig

from s3_ray.generation.base import Answerer, Generator, Messages, validate_prompts
from s3_ray.generation.cache import CachedGenerator, ResponseCache, cache_key
from s3_ray.generation.fit import PromptTooLongError, context_fit_mode
from s3_ray.generation.hf import TransformersGenerator
from s3_ray.generation.openai_compat import OpenAICompatError, OpenAICompatGenerator
from s3_ray.generation.prompt import (
    build_answer_messages,
    build_judge_messages,
    format_context,
    parse_judge_reply,
)

__all__ = [
    "Answerer",
    "CachedGenerator",
    "OpenAICompatError",
    "OpenAICompatGenerator",
    "PromptTooLongError",
    "TransformersGenerator",
    "build_generator",
    "context_fit_mode",
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
    gen: Generator
    if cfg.backend == "openai":
        if cfg.base_url is None:
            raise ValueError("generator.base_url must be set for generator.backend='openai' "
                             "(e.g. http://127.0.0.1:8000/v1)")
        gen = OpenAICompatGenerator(cfg.model, cfg.base_url, api_key_env=cfg.api_key_env,
                                    max_new_tokens=cfg.max_new_tokens, max_context_tokens=cfg.max_context_tokens,
                                    temperature=cfg.temperature,
                                    request_timeout_s=cfg.request_timeout_s, max_retries=cfg.max_retries,
                                    max_concurrency=cfg.max_concurrency)
    elif cfg.temperature != 0.0:
        raise ValueError(f"generator.temperature={cfg.temperature} is only supported by the openai backend; "
                         f"the {cfg.backend} backend decodes greedily")
    elif cfg.backend == "vllm":
        from s3_ray.generation.vllm_backend import VLLMGenerator

        gen = VLLMGenerator(cfg.model, max_new_tokens=cfg.max_new_tokens, max_context_tokens=cfg.max_context_tokens,
                            gpu_memory_utilization=cfg.gpu_memory_utilization,
                            tensor_parallel_size=cfg.tensor_parallel_size)
    elif cfg.backend == "transformers":
        gen = TransformersGenerator(cfg.model, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
                                    num_threads=cfg.num_threads, max_context_tokens=cfg.max_context_tokens)
    else:
        raise ValueError(f"generator.backend {cfg.backend!r} is not supported; expected transformers, vllm or openai")
    if cfg.cache_path is None:
        return gen
    path = Path(cfg.cache_path)
    if not path.is_absolute():
        path = Path(base_dir or Path.cwd()) / path
    return CachedGenerator(gen, ResponseCache(path))
