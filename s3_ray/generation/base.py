"""The two interfaces of the frozen generator: `Generator`, which every backend satisfies
(transformers, vLLM, an OpenAI-compatible server, the cache wrapper), and `Answerer`, the client
the reward and the evaluation call (`s3_ray.clients.GeneratorClient`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from s3_ray.types import Passage

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


@runtime_checkable
class Answerer(Protocol):
    """A generator that answers questions from passages with s3's answer prompt, and completes raw
    chat prompts too (the LLM judge). `model_id` names the generator the answers come from.
    """

    @property
    def model_id(self) -> str:
        ...

    def answer(self, questions: Sequence[str], contexts: Sequence[Sequence[Passage]]) -> list[str]:
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
