"""Batched greedy text completion shared by the prompting baselines (CoT, rewrite, IRCoT, Search-R1).

The baselines are text-in / text-out loops, so this works on strings: chat messages are rendered
with the tokenizer's chat template, the batch is left-padded and left-truncated to a prompt budget,
and each row stops at the first of its stop strings (kept in the output, as Search-R1 expects).
Loaded models are shared per (name, threads): several baselines on one model load it once.
"""

from __future__ import annotations

import functools
from typing import Any

from s3_ray.generation.base import Messages


def cut_at_stop(text: str, stops: tuple[str, ...]) -> tuple[str, str | None]:
    """Text up to and including the earliest stop string, and which stop it was.

    >>> cut_at_stop("a <search> x </search> tail", ("</search>", "</answer>"))
    ('a <search> x </search>', '</search>')
    >>> cut_at_stop("no stop here", ("</answer>",))
    ('no stop here', None)
    """
    best: tuple[int, str] | None = None
    for s in stops:
        i = text.find(s)
        if i >= 0 and (best is None or i < best[0]):
            best = (i, s)
    if best is None:
        return text, None
    return text[: best[0] + len(best[1])], best[1]


@functools.lru_cache(maxsize=4)
def _load(name: str, num_threads: int) -> tuple[Any, Any]:
    from s3_ray.models import load_causal_lm

    return load_causal_lm(name, num_threads=num_threads, gpu_setting="eval.task_gpus")


class GreedyLM:
    """Greedy, batched completion of chat prompts with a token budget per call."""

    def __init__(self, model: str, max_new_tokens: int = 64, max_prompt_tokens: int = 2048,
                 batch_size: int = 8, num_threads: int = 2) -> None:
        if max_new_tokens < 1 or max_prompt_tokens < 1 or batch_size < 1:
            raise ValueError("max_new_tokens, max_prompt_tokens and batch_size must all be >= 1")
        self.name = model
        self.max_new_tokens, self.max_prompt_tokens, self.batch_size = max_new_tokens, max_prompt_tokens, batch_size
        self.model, self.tokenizer = _load(model, num_threads)
        self.calls = 0

    def render(self, messages: Messages, continuation: str = "") -> list[int]:
        """Prompt ids: the chat template (when the tokenizer has one) plus an assistant prefix."""
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        else:
            text = "\n\n".join(m["content"] for m in messages) + "\n\n"
        return list(tok(text + continuation, add_special_tokens=False)["input_ids"])

    def complete(self, prompts: list[Messages], continuations: list[str] | None = None,
                 stops: tuple[str, ...] = ()) -> list[str]:
        """One greedy completion per prompt (after its continuation text), cut at the first stop."""
        conts = continuations if continuations is not None else [""] * len(prompts)
        if len(conts) != len(prompts):
            raise ValueError(f"{len(conts)} continuations for {len(prompts)} prompts")
        out: list[str] = []
        for i in range(0, len(prompts), self.batch_size):
            rows = [self.render(p, c)[-self.max_prompt_tokens:] for p, c in
                    zip(prompts[i : i + self.batch_size], conts[i : i + self.batch_size])]
            out.extend(cut_at_stop(t, stops)[0] for t in self._generate(rows, stops))
        return out

    def _generate(self, rows: list[list[int]], stops: tuple[str, ...]) -> list[str]:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        tok = self.tokenizer
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for j, r in enumerate(rows):
            ids[j, width - len(r) :] = torch.tensor(r, dtype=torch.long)
            mask[j, width - len(r) :] = 1
        device = getattr(self.model, "device", torch.device("cpu"))

        class _Stop(StoppingCriteria):
            def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kw: Any) -> torch.Tensor:
                tails = tok.batch_decode(input_ids[:, width:].tolist(), skip_special_tokens=True)
                return torch.tensor([any(s in t for s in stops) for t in tails], dtype=torch.bool,
                                    device=input_ids.device)

        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "do_sample": False,
                                  "temperature": None, "top_p": None, "top_k": None,
                                  "pad_token_id": tok.pad_token_id}
        if stops:
            kwargs["stopping_criteria"] = StoppingCriteriaList([_Stop()])
        with torch.inference_mode():
            gen = self.model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs)
        self.calls += 1
        return tok.batch_decode(gen[:, width:].tolist(), skip_special_tokens=True)
