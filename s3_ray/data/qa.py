"""QA reader for FlashRAG-style JSONL: `{"id", "question", "golden_answers": [...], "meta"?}`.

Strict on purpose: aliases such as `answer`/`answers` are rejected so that a file from another
format fails loudly instead of being half-read.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from s3_ray.data.jsonl import DataError, iter_jsonl, require_id, require_str, write_jsonl
from s3_ray.types import QAItem

_ALLOWED = {"id", "question", "golden_answers", "meta"}


def iter_qa_rows(path: str | os.PathLike[str],
                 allowed: set[str] | None = None) -> Iterator[tuple[int, str, str, dict[str, Any]]]:
    """(line, id, question, row) of a QA JSONL file, with the checks every QA format shares:
    unique ids, a non-empty question and a `golden_answers` field; `allowed` (if given) also
    rejects unknown fields. Answers are left to the caller, whose formats differ."""
    seen: dict[str, int] = {}
    for lineno, obj in iter_jsonl(path):
        if allowed is not None:
            extra = sorted(set(obj) - allowed)
            if extra:
                raise DataError(path, lineno, f"unknown field(s) {extra}; expected {sorted(allowed)}")
        qid = require_id(path, lineno, obj)
        if qid in seen:
            raise DataError(path, lineno, f"duplicate id {qid!r} (first seen on line {seen[qid]})")
        seen[qid] = lineno
        question = require_str(path, lineno, obj, "question")
        if "golden_answers" not in obj:
            raise DataError(path, lineno, "missing field 'golden_answers'")
        yield lineno, qid, question, obj


def read_qa(path: str | os.PathLike[str]) -> list[QAItem]:
    """Read QA items; ids must be unique, every item needs at least one non-empty answer."""
    items: list[QAItem] = []
    for lineno, qid, question, obj in iter_qa_rows(path, _ALLOWED):
        answers = obj["golden_answers"]
        if not isinstance(answers, list) or not answers:
            raise DataError(path, lineno, "field 'golden_answers' must be a non-empty list of strings")
        for i, ans in enumerate(answers):
            if not isinstance(ans, str) or not ans.strip():
                raise DataError(path, lineno, f"golden_answers[{i}] must be a non-empty string")
        meta = obj.get("meta", {})
        if not isinstance(meta, dict):
            raise DataError(path, lineno, f"field 'meta' must be an object, got {type(meta).__name__}")
        items.append(QAItem(id=qid, question=question, golden_answers=tuple(answers), meta=meta))
    return items


def write_qa(path: str | os.PathLike[str], items: list[QAItem]) -> int:
    """Write QA items as JSONL (atomic)."""
    return write_jsonl(path, (item.to_dict() for item in items))
