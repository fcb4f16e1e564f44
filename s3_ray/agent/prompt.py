"""The searcher's instruction prompt and its tokenization.

The prompt is one user message: the instruction (with this run's budgets written in), the marker
line, the question and the initial naive-RAG documents. The marker line is kept verbatim so that a
trajectory can always be split into "prompt" and "searcher's work" by text alone. The instruction
is `INSTRUCTION`, or `INSTRUCTION_SELECT_INITIAL` when `rollout.select_initial` makes the initial
documents selectable (only the documents the searcher keeps then reach the answer model).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from s3_ray.agent.protocol import format_docs
from s3_ray.config import RolloutConfig
from s3_ray.types import Passage

MARKER = "Now, start the loop with the following question and initial searched results:"

INSTRUCTION = """You collect documents for a separate answer model; do not answer the question \
yourself. If the documents below are enough, write <search_complete>True</search_complete>. \
Otherwise search: <query>{{"query": "your query"}}</query>. Results arrive in <information>, \
numbered from Doc 1. Next turn, keep the useful ones of that block (at most {keep_per_turn}), e.g. \
<important_info>[1, 2]</important_info>, then either search again or write \
<search_complete>True</search_complete>. Only kept documents reach the answer model. At most \
{max_turns} searches of {top_k} new documents each."""

INSTRUCTION_SELECT_INITIAL = """You collect documents for a separate answer model; do not answer the \
question yourself. Only kept documents reach the answer model, the documents below included. First \
keep the useful ones of the documents below (at most {keep_per_turn}), e.g. \
<important_info>[1, 2]</important_info>; if they are enough, write \
<search_complete>True</search_complete>. Otherwise search: <query>{{"query": "your query"}}</query>. \
Results arrive in <information>, numbered from Doc 1. Next turn, keep the useful ones of that block \
(at most {keep_per_turn}), then either search again or write <search_complete>True</search_complete>. \
At most {max_turns} searches of {top_k} new documents each."""
"""The instruction with `rollout.select_initial`: the initial documents are selected like any block."""


def build_searcher_messages(
    question: str, init_passages: Sequence[Passage], budget: RolloutConfig
) -> list[dict[str, str]]:
    """The chat messages that open an episode (a single user message).

    >>> from s3_ray.config import RolloutConfig
    >>> msgs = build_searcher_messages(" Who? ", [Passage("a", '"A"\\nText.')], RolloutConfig())
    >>> msgs[0]["role"], msgs[0]["content"].endswith(
    ...     "<question>\\nWho?\\n</question>\\n<information>\\nDoc 1(Title: A) Text.\\n</information>")
    ('user', True)
    """
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"question must be a non-empty string, got {question!r}")
    template = INSTRUCTION_SELECT_INITIAL if budget.select_initial else INSTRUCTION
    instruction = template.format(
        keep_per_turn=budget.keep_per_turn, max_turns=budget.max_turns, top_k=budget.top_k
    )
    docs = format_docs(init_passages) if init_passages else "No initial documents.\n"
    content = (
        f"{instruction}\n\n{MARKER}\n"
        f"<question>\n{question.strip()}\n</question>\n"
        f"<information>\n{docs}</information>"
    )
    return [{"role": "user", "content": content}]


def render_plain(messages: Sequence[dict[str, str]]) -> str:
    """A template-free rendering for tokenizers without a chat template.

    >>> render_plain([{"role": "user", "content": "Hi"}])
    'User: Hi\\nAssistant:'
    """
    lines = []
    for i, msg in enumerate(messages):
        if "role" not in msg or "content" not in msg:
            raise ValueError(f"message {i} needs 'role' and 'content' keys, got {sorted(msg)}")
        lines.append(f"{msg['role'].capitalize()}: {msg['content']}\n")
    return "".join(lines) + "Assistant:"


def encode_prompt(tokenizer: Any, messages: Sequence[dict[str, str]]) -> list[int]:
    """Token ids of the prompt, ending where the searcher's first turn begins.

    With a chat template the text is rendered first and then encoded without extra special tokens
    (the template already wrote them); the plain rendering lets the tokenizer add its BOS.
    """
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
        if not isinstance(text, str):
            raise TypeError(f"apply_chat_template(tokenize=False) returned {type(text).__name__}, not str")
        return list(tokenizer.encode(text, add_special_tokens=False))
    return list(tokenizer.encode(render_plain(messages), add_special_tokens=True))
