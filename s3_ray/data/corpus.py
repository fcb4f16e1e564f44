"""Corpus reader: `{"id", "contents"}` rows (wiki-18) or `{"id", "title", "text"}` rows."""

from __future__ import annotations

import os

from s3_ray.data.jsonl import DataError, iter_jsonl, require_id, require_str, write_jsonl
from s3_ray.types import Passage


def make_contents(title: str, text: str) -> str:
    """The wiki-18 `contents` layout: quoted title line, then the text.

    >>> make_contents("Hamlet", "A tragedy.")
    '"Hamlet"\\nA tragedy.'
    """
    return f'"{title.strip()}"\n{text.strip()}'


def read_corpus(path: str | os.PathLike[str]) -> list[Passage]:
    """Read a corpus JSONL; ids must be unique (ints are stored as strings)."""
    passages: list[Passage] = []
    seen: dict[str, int] = {}
    for lineno, obj in iter_jsonl(path):
        pid = require_id(path, lineno, obj)
        if pid in seen:
            raise DataError(path, lineno, f"duplicate id {pid!r} (first seen on line {seen[pid]})")
        seen[pid] = lineno
        if "contents" in obj:
            contents = require_str(path, lineno, obj, "contents")
        elif "text" in obj:
            text = require_str(path, lineno, obj, "text")
            title = obj.get("title", "")
            if not isinstance(title, str):
                raise DataError(path, lineno, f"field 'title' must be a string, got {type(title).__name__}")
            contents = make_contents(title, text)
        else:
            raise DataError(path, lineno, "missing field 'contents' (or 'title' + 'text')")
        passages.append(Passage(id=pid, contents=contents))
    if not passages:
        raise DataError(path, 0, "corpus is empty")
    return passages


def write_corpus(path: str | os.PathLike[str], passages: list[Passage]) -> int:
    """Write passages as `{"id", "contents"}` JSONL (atomic)."""
    return write_jsonl(path, (p.to_dict() for p in passages))
