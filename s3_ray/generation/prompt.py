"""The frozen generator's prompts: answer with context, zero-shot answer, and the yes/no judge.

The wording is s3's, so that accuracies stay comparable with the paper's setup. The context sits
in the system message between a fixed head and a fixed tail; `split_context` finds it again so a
backend can shorten the passages (never the instruction or the question) to fit its budget.
"""

from __future__ import annotations

from collections.abc import Sequence

from s3_ray.generation.base import Messages
from s3_ray.types import Passage

CONTEXT_HEAD = "Use the following contexts (some might be irrelevant) on demand:\nContexts:\n"
CONTEXT_TAIL = "\nImportant: You MUST directly answer the question without any other text and thinking."
ZERO_SHOT_SYSTEM = "Important: You MUST directly answer the question without any other text and thinking."


def format_context(passages: Sequence[Passage]) -> str:
    """`Doc {k} (Title: {title})\\n{text}\\n` per passage, numbered from 1, first occurrence of an id kept.

    >>> ps = [Passage("a", '"Rome"\\nCapital of Italy.'), Passage("b", '"Oslo"\\nIn Norway.'),
    ...       Passage("a", '"Rome"\\nCapital of Italy.')]
    >>> print(format_context(ps))
    Doc 1 (Title: Rome)
    Capital of Italy.
    Doc 2 (Title: Oslo)
    In Norway.
    <BLANKLINE>
    """
    seen: set[str] = set()
    parts: list[str] = []
    for p in passages:
        if p.id in seen:
            continue
        seen.add(p.id)
        parts.append(f"Doc {len(parts) + 1} (Title: {p.title})\n{p.text}\n")
    return "".join(parts)


def build_answer_messages(question: str, passages: Sequence[Passage]) -> Messages:
    """System message with the contexts, user message with the bare question.

    With no passages this is the zero-shot prompt (instruction only).

    >>> m = build_answer_messages("Who?", [Passage("1", '"T"\\nx')])
    >>> [x["role"] for x in m], m[1]["content"]
    (['system', 'user'], 'Who?')
    >>> build_answer_messages("Who?", [])[0]["content"] == ZERO_SHOT_SYSTEM
    True
    """
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"question must be a non-empty string, got {question!r}")
    if not passages:
        return [{"role": "system", "content": ZERO_SHOT_SYSTEM}, {"role": "user", "content": question}]
    system = CONTEXT_HEAD + format_context(passages) + CONTEXT_TAIL
    return [{"role": "system", "content": system}, {"role": "user", "content": question}]


def split_context(messages: Messages) -> tuple[int, str] | None:
    """(index of the message holding the contexts, the contexts text), or None if there are none.

    >>> split_context(build_answer_messages("Q?", [Passage("1", '"T"\\nx')]))
    (0, 'Doc 1 (Title: T)\\nx\\n')
    >>> split_context(build_answer_messages("Q?", [])) is None
    True
    """
    for i, m in enumerate(messages):
        content = m.get("content", "")
        if content.startswith(CONTEXT_HEAD) and content.endswith(CONTEXT_TAIL):
            return i, content[len(CONTEXT_HEAD) : len(content) - len(CONTEXT_TAIL)]
    return None


def replace_context(messages: Messages, index: int, docs: str) -> Messages:
    """A copy of `messages` whose contexts (in message `index`) are `docs`.

    >>> m = build_answer_messages("Q?", [Passage("1", '"T"\\nlong text')])
    >>> split_context(replace_context(m, 0, "Doc 1 (Title: T)\\nlong"))[1]
    'Doc 1 (Title: T)\\nlong'
    """
    out = [dict(m) for m in messages]
    out[index]["content"] = CONTEXT_HEAD + docs + CONTEXT_TAIL
    return out


def build_judge_messages(response: str, golden_answers: Sequence[str]) -> Messages:
    """s3's judge prompt: is any gold answer contained in the response? (one user message)

    >>> build_judge_messages("Paris.", ["Paris"])[0]["content"].endswith("answer with 'yes' or 'no'.")
    True
    """
    content = (
        f"Please check if any of the golden answers is contained in the following response: {response}\n"
        f"Golden answers: {list(golden_answers)}\n"
        "Please directly answer with 'yes' or 'no'."
    )
    return [{"role": "user", "content": content}]


def parse_judge_reply(reply: str) -> bool:
    """True when the judge's reply says yes. Unclear replies count as no (greedy decoding would
    repeat them, so s3's single retry is not worth a call).

    >>> parse_judge_reply("Yes."), parse_judge_reply("no"), parse_judge_reply("maybe")
    (True, False, False)
    """
    return "yes" in reply.lower()
