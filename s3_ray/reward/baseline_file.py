"""The naive-RAG baseline file: a header record with the settings it depends on, then one record
per question.

Gain Beyond RAG subtracts this accuracy from the searcher's, so it is computed once per split
and stored as JSONL. Appending batch by batch (flushed and fsynced) makes the precompute
resumable: a rerun after a crash skips every id already on disk. Reading a file made with other
settings, or asking for a question that is not in it, is an error; the reward never silently
falls back to another baseline.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

FORMAT_VERSION = 1


class BaselineError(ValueError):
    """A baseline file is malformed or was made with other settings."""


class BaselineMissing(KeyError):
    """A question has no baseline record."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


@dataclass(frozen=True)
class BaselineSettings:
    """Everything the baseline accuracy depends on; a mismatch invalidates the file.

    `backend` and `decoding` are required keywords: the same model name answers differently
    behind another backend, token budget or temperature, and no default could know which.
    """

    generator: str       # generator model id
    init_k: int          # documents retrieved for the bare question
    retriever: str       # retriever / corpus fingerprint
    method: str = "naive_rag"
    judge: bool = False  # whether GenAcc consulted the LLM judge
    backend: str = field(kw_only=True)   # generator.backend: transformers | vllm | openai
    decoding: str = field(kw_only=True)  # `decoding_fingerprint`: budgets, temperature, context fit


_NOT_RECORDED = "<not recorded>"  # a header key missing from a file written by an older version


@dataclass(frozen=True)
class BaselineRecord:
    id: str
    question: str
    answer: str
    genacc: float
    em: float
    context_ids: list[str]


class BaselineCache:
    """JSONL file of baseline records for one split, checked against the expected settings."""

    def __init__(self, path: str | os.PathLike[str], settings: BaselineSettings) -> None:
        self.path = Path(path)
        self.settings = settings
        self._records: dict[str, BaselineRecord] = {}
        self._valid_bytes = 0  # length of the file up to its last complete line
        if self.path.exists():
            self._read()

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> BaselineCache:
        """Open an existing file with whatever settings its header records."""
        p = Path(path)
        if not p.is_file():
            raise BaselineError(f"baseline file {p} does not exist; create it with `python -m jobs.precompute`")
        with p.open("rb") as f:
            first = f.readline()
        try:
            header = json.loads(first)
            found = header["settings"]
            missing = [f.name for f in fields(BaselineSettings) if f.name not in found]
        except (ValueError, KeyError, TypeError) as err:
            raise BaselineError(f"{p}:1: not a baseline header ({err})") from err
        if missing:
            raise BaselineError(
                f"{p} was made without recording {', '.join(missing)} (an older version); "
                "delete the file or point to another one, then rerun `python -m jobs.precompute`"
            )
        try:
            settings = BaselineSettings(**found)
        except TypeError as err:
            raise BaselineError(f"{p}:1: not a baseline header ({err})") from err
        return cls(p, settings)

    def _read(self) -> None:
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        torn = lines.pop()  # text after the last newline: empty unless a write was cut short
        if torn:
            warnings.warn(f"{self.path}: ignoring an incomplete last line ({len(torn)} bytes), "
                          "left by an interrupted write; it is recomputed", stacklevel=3)
        self._valid_bytes = len(data) - len(torn)
        if not lines:
            return
        try:
            header = json.loads(lines[0])
        except ValueError as err:
            raise BaselineError(f"{self.path}:1: invalid JSON header: {err}") from err
        self._check_header(header)
        for lineno, raw in enumerate(lines[1:], start=2):
            if not raw.strip():
                continue
            try:
                rec = BaselineRecord(**json.loads(raw))
            except (ValueError, TypeError) as err:
                raise BaselineError(f"{self.path}:{lineno}: bad baseline record: {err}") from err
            if rec.id in self._records:
                raise BaselineError(f"{self.path}:{lineno}: duplicate question id {rec.id!r}")
            self._records[rec.id] = rec

    def _check_header(self, header: Any) -> None:
        if not isinstance(header, dict) or header.get("type") != "header" or "settings" not in header:
            raise BaselineError(f"{self.path}:1: first line must be a header record with 'settings'")
        if header.get("version") != FORMAT_VERSION:
            raise BaselineError(f"{self.path}:1: format version {header.get('version')!r}, expected {FORMAT_VERSION}")
        found = header["settings"]
        if not isinstance(found, dict):
            raise BaselineError(f"{self.path}:1: header 'settings' must be an object")
        for key, expected in asdict(self.settings).items():
            if found.get(key, _NOT_RECORDED) != expected:
                was = f"{found[key]!r}" if key in found else _NOT_RECORDED
                raise BaselineError(
                    f"{self.path} was made with {key}={was} but {key}={expected!r} is expected; "
                    "delete the file or point to another one, then rerun `python -m jobs.precompute`"
                )

    def __contains__(self, qid: object) -> bool:
        return qid in self._records

    def __len__(self) -> int:
        return len(self._records)

    def ids(self) -> list[str]:
        return list(self._records)

    def get(self, qid: str) -> BaselineRecord:
        try:
            return self._records[qid]
        except KeyError:
            raise BaselineMissing(
                f"no baseline for question id {qid!r} in {self.path} ({len(self)} records); "
                "run `python -m jobs.precompute` for this split"
            ) from None

    def accuracy(self) -> float:
        """Mean GenAcc over the stored records."""
        if not self._records:
            raise BaselineError(f"{self.path} holds no records")
        return sum(r.genacc for r in self._records.values()) / len(self._records)

    def append(self, records: Iterable[BaselineRecord]) -> int:
        """Write records (header first if the file is new), flush and fsync. Returns how many."""
        recs = list(records)
        for r in recs:
            if r.id in self._records:
                raise BaselineError(f"{self.path}: question id {r.id!r} is already stored")
        lines: list[str] = []
        if self._valid_bytes == 0:
            header = {"type": "header", "version": FORMAT_VERSION, "settings": asdict(self.settings)}
            lines.append(json.dumps(header, ensure_ascii=False))
        lines.extend(json.dumps(asdict(r), ensure_ascii=False) for r in recs)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("ab") as f:
            f.truncate(self._valid_bytes)  # drop a torn line left by an interrupted write
            f.write(("\n".join(lines) + "\n").encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
            self._valid_bytes = f.tell()
        for r in recs:
            self._records[r.id] = r
        return len(recs)
