"""Fitting an answer prompt into `max_context_tokens` by cutting its passages, for every backend.

Only the contexts are cut, from their end, so later (lower-ranked) passages lose text first and
the instruction and the question always survive. One loop serves every backend; what differs is
how tokens are counted:

* `ChatTemplateCounter`: the model's own tokenizer and chat template, exactly what the model
  reads (transformers and vLLM backends; the openai backend when a tokenizer for the served
  model name is on this machine: a registered or built name, a local folder, or the HF cache,
  never downloaded).
* `CharEstimateCounter`: the openai backend without a local tokenizer. It counts one token per
  `CHARS_PER_TOKEN` (3) characters of every message plus `MESSAGE_OVERHEAD_TOKENS` (8) per
  message and once more for the reply header. English averages about 4 characters per token, so
  this over-counts and a prompt cut to the budget fits; text that tokenizes denser (code,
  non-Latin scripts) can still exceed the server's window, which its HTTP 400 then reports.

`context_fit_mode` names the counter a configuration uses, so caches and baseline files can tell
the two cuts apart.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from s3_ray.generation.base import Messages
from s3_ray.generation.prompt import replace_context, split_context

CHARS_PER_TOKEN = 3
MESSAGE_OVERHEAD_TOKENS = 8
FIT_TOKENIZER = "tokenizer"
FIT_ESTIMATE = f"chars/{CHARS_PER_TOKEN}"


class PromptTooLongError(ValueError):
    """A prompt exceeds max_context_tokens even with all of its contexts removed."""


class TokenCounter(Protocol):
    """How a backend counts: `render` a whole prompt, `encode`/`decode` the contexts text."""

    unit: str  # how `PromptTooLongError` names what was counted

    def render(self, messages: Messages) -> Sequence[Any]: ...

    def encode(self, text: str) -> Sequence[Any]: ...

    def decode(self, tokens: Sequence[Any]) -> str: ...


class ChatTemplateCounter:
    """Exact counts: the rendered chat template as token ids (a Hugging Face tokenizer)."""

    unit = "tokens"

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def render(self, messages: Messages) -> list[int]:
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def decode(self, tokens: Sequence[Any]) -> str:
        return self.tokenizer.decode(list(tokens))


class CharEstimateCounter:
    """Estimated counts without a tokenizer: `CHARS_PER_TOKEN` characters make one "token".

    >>> c = CharEstimateCounter()
    >>> len(c.render([{"role": "user", "content": "abcdefg"}]))  # 8 + ceil(7 / 3) + 8 for the reply
    19
    >>> c.encode("abcdefg"), c.decode(c.encode("abcdefg")[:2])
    (['abc', 'def', 'g'], 'abcdef')
    """

    unit = f"estimated tokens (1 per {CHARS_PER_TOKEN} characters)"

    def render(self, messages: Messages) -> range:
        n = sum(MESSAGE_OVERHEAD_TOKENS + math.ceil(len(m.get("content", "")) / CHARS_PER_TOKEN) for m in messages)
        return range(n + MESSAGE_OVERHEAD_TOKENS)

    def encode(self, text: str) -> list[str]:
        return [text[i : i + CHARS_PER_TOKEN] for i in range(0, len(text), CHARS_PER_TOKEN)]

    def decode(self, tokens: Sequence[Any]) -> str:
        return "".join(tokens)


@dataclass(frozen=True)
class FittedPrompt:
    messages: Messages       # what the model should see (the input itself when nothing was cut)
    tokens: Sequence[Any]    # `counter.render(messages)`: token ids, or estimate units
    cut: bool


def fit_prompt(messages: Messages, max_tokens: int, counter: TokenCounter) -> FittedPrompt:
    """`messages` with the contexts cut from their end until the rendered prompt fits `max_tokens`.

    Raises PromptTooLongError when even the prompt without any contexts is too long.

    >>> from s3_ray.generation.prompt import build_answer_messages
    >>> from s3_ray.types import Passage
    >>> msgs = build_answer_messages("Who?", [Passage("1", '"T"\\n' + "word " * 200)])
    >>> fitted = fit_prompt(msgs, 120, CharEstimateCounter())
    >>> fitted.cut, len(fitted.tokens) <= 120, fitted.messages[1]["content"]
    (True, True, 'Who?')
    >>> fit_prompt(msgs, 1000, CharEstimateCounter()).messages is msgs
    True
    """
    tokens = counter.render(messages)
    if len(tokens) <= max_tokens:
        return FittedPrompt(messages, tokens, False)
    found = split_context(messages)
    if found is None:
        raise PromptTooLongError(
            f"prompt of {len(tokens)} {counter.unit} exceeds max_context_tokens={max_tokens} "
            "and has no contexts to cut"
        )
    index, docs = found
    doc_tokens = counter.encode(docs)
    keep = len(doc_tokens) - (len(tokens) - max_tokens)
    while keep > 0:
        shorter = replace_context(messages, index, counter.decode(doc_tokens[:keep]))
        tokens = counter.render(shorter)
        if len(tokens) <= max_tokens:
            return FittedPrompt(shorter, tokens, True)
        keep -= max(1, len(tokens) - max_tokens)  # re-tokenising across the cut can add a token
    bare = replace_context(messages, index, "")
    tokens = counter.render(bare)
    if len(tokens) > max_tokens:
        raise PromptTooLongError(
            f"prompt of {len(tokens)} {counter.unit} without any contexts still exceeds "
            f"max_context_tokens={max_tokens}"
        )
    return FittedPrompt(bare, tokens, True)


def has_local_tokenizer(name: str) -> bool:
    """Whether a tokenizer for model `name` loads without the network: a registered name whose
    package is installed, a built name, a local folder with a tokenizer, or a hub id in the HF cache.

    >>> has_local_tokenizer("tiny-random"), has_local_tokenizer("no such model / served name")
    (True, False)
    """
    from s3_ray.models.registry import BUILDERS, MODELS, ModelError

    if name in MODELS:
        try:
            MODELS[name].locate()
        except ModelError:
            return False
        return True
    if name in BUILDERS:
        return True
    folder = Path(name).expanduser()
    if folder.is_dir():
        return (folder / "tokenizer_config.json").is_file() or (folder / "tokenizer.json").is_file()
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(name, "tokenizer_config.json")
    except Exception:  # noqa: BLE001 - not a valid hub id (e.g. a hosted API's model name)
        return False
    return isinstance(hit, str)


def load_local_tokenizer(name: str) -> Any:
    """The tokenizer `has_local_tokenizer(name)` found, loaded without the network; it must have a
    chat template, since the prompt is counted as the server will render it."""
    from transformers import AutoTokenizer

    from s3_ray.models import resolve_model

    if not has_local_tokenizer(name):
        raise FileNotFoundError(f"no local tokenizer for model {name!r}")
    tok = AutoTokenizer.from_pretrained(resolve_model(name), local_files_only=True)
    if not getattr(tok, "chat_template", None):
        raise ValueError(f"the local tokenizer of model {name!r} has no chat template, so prompts cannot be "
                         "counted as the server renders them")
    return tok


def context_fit_mode(backend: str, model: str) -> str:
    """How a backend counts tokens when it cuts contexts: "tokenizer" (exact) or "chars/3" (estimate).

    >>> context_fit_mode("transformers", "any"), context_fit_mode("openai", "gpt-no-local-tokenizer")
    ('tokenizer', 'chars/3')
    """
    if backend != "openai" or has_local_tokenizer(model):
        return FIT_TOKENIZER
    return FIT_ESTIMATE
