"""Frozen answer model on transformers: greedy, batched, context cut to a token budget.

Prompts are sorted by length before batching so that left padding wastes little compute on
CPU, then results are put back in input order. Only the first line of a completion is kept:
the prompt asks for a direct answer, and small models tend to ramble after it.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from s3_ray.generation.base import Messages, validate_prompts
from s3_ray.generation.fit import ChatTemplateCounter, PromptTooLongError, fit_prompt
from s3_ray.generation.likelihood import answer_loglik, score_with_tokenizer

__all__ = ["PromptTooLongError", "TransformersGenerator"]


class TransformersGenerator:
    """A causal LM loaded with `load_causal_lm`, answering chat prompts greedily."""

    def __init__(self, model_name: str, max_new_tokens: int = 24, batch_size: int = 8, num_threads: int = 1,
                 max_context_tokens: int = 768) -> None:
        from s3_ray.models import load_causal_lm

        if max_new_tokens < 1 or batch_size < 1 or max_context_tokens < 1:
            raise ValueError("max_new_tokens, batch_size and max_context_tokens must all be >= 1")
        self._name = model_name
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.max_context_tokens = max_context_tokens
        self.model, self.tokenizer = load_causal_lm(model_name, num_threads=num_threads)
        self._lock = threading.Lock()  # one forward pass at a time; stats stay consistent
        self._stats = {"calls": 0, "prompts": 0, "batches": 0, "max_batch": 0, "prompt_tokens": 0,
                       "completion_tokens": 0, "truncated_prompts": 0, "scored_answers": 0,
                       "seconds": 0.0}

    @property
    def model_id(self) -> str:
        return self._name

    @property
    def decoding(self) -> dict[str, Any]:
        return {"greedy": True, "max_new_tokens": self.max_new_tokens, "max_context_tokens": self.max_context_tokens,
                "first_line": True}

    def stats(self) -> dict[str, float]:
        """Counters since construction plus derived rates (tokens/s, prompts/s)."""
        s: dict[str, float] = dict(self._stats)
        secs = s["seconds"]
        s["completion_tokens_per_s"] = s["completion_tokens"] / secs if secs else 0.0
        s["prompts_per_s"] = s["prompts"] / secs if secs else 0.0
        return s

    def fit(self, messages: Messages) -> tuple[list[int], bool]:
        """Token ids of the rendered prompt, with the contexts cut from their end until it fits
        (`s3_ray.generation.fit.fit_prompt`). Returns (ids, was_cut)."""
        fitted = fit_prompt(messages, self.max_context_tokens, ChatTemplateCounter(self.tokenizer))
        return list(fitted.tokens), fitted.cut

    def generate(self, prompts: list[Messages]) -> list[str]:
        """Greedy completions (first line, stripped), in the order of `prompts`."""
        validate_prompts(prompts)
        if not prompts:
            return []
        with self._lock:
            return self._generate_locked(prompts)

    def answer_logprobs(self, prompts: list[Messages], answers: list[list[str]]) -> list[float]:
        """Per prompt, the best over its answers of their mean token log-probability as the reply
        (`s3_ray.generation.likelihood`); prompts are fitted exactly as for `generate`."""
        return score_with_tokenizer(self, prompts, answers,
                                    lambda rows: answer_loglik(self.model, rows, batch_size=self.batch_size))

    def _generate_locked(self, prompts: list[Messages]) -> list[str]:
        import torch

        start = time.perf_counter()
        encoded = [self.fit(m) for m in prompts]
        order = sorted(range(len(prompts)), key=lambda i: len(encoded[i][0]))
        pad_id = self.tokenizer.pad_token_id
        eos_id = self.tokenizer.eos_token_id
        device = self.model.device
        out: list[str] = [""] * len(prompts)
        for lo in range(0, len(order), self.batch_size):
            idx = order[lo : lo + self.batch_size]
            width = max(len(encoded[i][0]) for i in idx)
            input_ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
            attention = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):  # left padding: generation continues at the right edge
                ids = encoded[i][0]
                input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
                attention[row, width - len(ids):] = 1
            with torch.inference_mode():
                gen = self.model.generate(
                    input_ids=input_ids.to(device), attention_mask=attention.to(device), do_sample=False,
                    max_new_tokens=self.max_new_tokens, pad_token_id=pad_id, eos_token_id=eos_id,
                    temperature=None, top_p=None, top_k=None,
                )
            new = gen[:, width:].cpu()
            for row, i in enumerate(idx):
                toks = new[row].tolist()
                if eos_id in toks:
                    toks = toks[: toks.index(eos_id)]
                toks = [t for t in toks if t != pad_id]
                self._stats["completion_tokens"] += len(toks)
                text = self.tokenizer.decode(toks, skip_special_tokens=True).strip()
                out[i] = text.split("\n", 1)[0].strip()
            self._stats["batches"] += 1
            self._stats["max_batch"] = max(self._stats["max_batch"], len(idx))
        self._stats["calls"] += 1
        self._stats["prompts"] += len(prompts)
        self._stats["prompt_tokens"] += sum(len(e[0]) for e in encoded)
        self._stats["truncated_prompts"] += sum(1 for e in encoded if e[1])
        self._stats["seconds"] += time.perf_counter() - start
        return out
