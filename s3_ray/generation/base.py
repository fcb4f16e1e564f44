"""The one interface every answer backend satisfies (transformers, a cache wrapper, a remote model)."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

Messages = list[dict[str, str]]


@runtime_checkable
class Generator(Protocol):
    """Batched chat completion: one completion per message list, in input order.

    `model_id` and `decoding` identify what produced a completion; the response cache keys on
    both, so a different model or a different decoding setting never reuses old answers.
    """

    @property
    def model_id(self) -> str:
        ...

    @property
    def decoding(self) -> dict[str, Any]:
        ...

    def generate(self, prompts: list[Messages]) -> list[str]:
        ...


def validate_prompts(prompts: list[Messages]) -> None:
    """Raise a ValueError naming the first malformed prompt (index and message).

    >>> validate_prompts([[{"role": "user", "content": "hi"}]])
    >>> validate_prompts([[{"role": "user"}]])
    Traceback (most recent call last):
    ...
    ValueError: prompts[0][0] must be a dict with string 'role' and 'content', got {'role': 'user'}
    """
    if not isinstance(prompts, list):
        raise ValueError(f"prompts must be a list of message lists, got {type(prompts).__name__}")
    for i, msgs in enumerate(prompts):
        if not isinstance(msgs, list) or not msgs:
            raise ValueError(f"prompts[{i}] must be a non-empty list of messages, got {msgs!r}")
        for j, m in enumerate(msgs):
            if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
                raise ValueError(f"prompts[{i}][{j}] must be a dict with string 'role' and 'content', got {m!r}")
