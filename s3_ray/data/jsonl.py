"""Line-validated JSONL reading and atomic JSONL writing.

Every reader in `s3_ray.data` goes through `iter_jsonl`, so a broken corpus or QA file fails
with the file and line that broke it instead of a bare `JSONDecodeError` deep in a job.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


class DataError(ValueError):
    """A data file is malformed. The message reads `"<file>:<line>: <problem>"`.

    >>> str(DataError("corpus.jsonl", 3, "missing field 'id'"))
    "corpus.jsonl:3: missing field 'id'"
    """

    def __init__(self, path: str | os.PathLike[str], line: int, problem: str) -> None:
        self.path = str(path)
        self.line = line
        self.problem = problem
        super().__init__(f"{self.path}:{line}: {problem}")


def iter_jsonl(path: str | os.PathLike[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield `(line_number, object)` for each non-blank line; every line must be a JSON object."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"data file not found: {p}")
    with p.open("r", encoding="utf-8") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as err:
                raise DataError(p, lineno, f"invalid JSON ({err.msg} at column {err.colno})") from None
            if not isinstance(obj, dict):
                raise DataError(p, lineno, f"expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_jsonl(path: str | os.PathLike[str], rows: Iterable[dict[str, Any]]) -> int:
    """Write rows atomically (temp file in the same folder, then rename); return the row count.

    A crash mid-write leaves the previous file intact rather than a truncated one.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    count = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                count += 1
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file normal permissions
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return count


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write one JSON document atomically (same temp-file-then-rename scheme as `write_jsonl`)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, indent=2, sort_keys=True)
            fh.write("\n")
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file normal permissions
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def require_id(path: str | os.PathLike[str], lineno: int, obj: dict[str, Any]) -> str:
    """The row's `id` as a string; ints are accepted (FlashRAG files use both), bools are not.

    >>> require_id("f", 1, {"id": 7})
    '7'
    >>> require_id("f", 2, {"id": True})
    Traceback (most recent call last):
    ...
    s3_ray.data.jsonl.DataError: f:2: field 'id' must be a string or an integer, got bool
    """
    if "id" not in obj:
        raise DataError(path, lineno, "missing field 'id'")
    value = obj["id"]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataError(path, lineno, f"field 'id' must be a string or an integer, got {type(value).__name__}")
    text = str(value)
    if not text.strip():
        raise DataError(path, lineno, "field 'id' is empty")
    return text


def require_str(path: str | os.PathLike[str], lineno: int, obj: dict[str, Any], key: str) -> str:
    """A required non-empty string field."""
    if key not in obj:
        raise DataError(path, lineno, f"missing field {key!r}")
    value = obj[key]
    if not isinstance(value, str):
        raise DataError(path, lineno, f"field {key!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise DataError(path, lineno, f"field {key!r} is empty")
    return value
