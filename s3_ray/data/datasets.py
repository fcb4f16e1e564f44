"""Readers for the s3 evaluation sets, one per on-disk format, plus seeded sampling.

Formats (`FORMATS`):

* ``flashrag``: FlashRAG JSONL (NQ, TriviaQA, PopQA, HotpotQA, 2Wiki, MuSiQue, Bamboogle):
  ``{"id", "question", "golden_answers", ...}``; extra FlashRAG fields (``metadata``) are ignored.
* ``parquet``: the s3 / Search-R1 parquet files; answers come from ``golden_answers`` or
  ``reward_model.ground_truth.target``; ``data_source`` becomes ``meta["source"]``.
* ``mirage``: MIRAGE ``benchmark.json`` (``{task: {qid: {question, options, answer}}}``). The model
  sees the question with lettered options; retrieval uses the bare question (``meta["query"]``).
* ``hf``: a config of ``RUC-NLPIR/FlashRAG_datasets`` loaded through the optional ``datasets``
  package (the path is the split, e.g. ``test``).

Every item gets ``meta["dataset"]`` so results can be grouped per data set. Malformed rows raise
`DataError` naming the file and the row (line for JSONL, 1-based row for parquet, ``task/qid``
for MIRAGE).
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

from s3_ray.data.jsonl import DataError, require_id, require_str
from s3_ray.data.qa import iter_qa_rows
from s3_ray.types import QAItem

FORMATS = ("flashrag", "parquet", "mirage", "hf")
HF_REPO = "RUC-NLPIR/FlashRAG_datasets"
PAPER_LIMIT = 3000
"""The paper samples at most this many questions per general-QA data set."""


class DatasetUnavailable(RuntimeError):
    """A data set cannot be loaded by name (missing package or no network); says what to do."""


def _answers(path: str | os.PathLike[str], row: int, value: Any, field: str) -> tuple[str, ...]:
    """Validate a list of gold answers (numbers are accepted and stringified, as in PopQA).

    >>> _answers("f", 1, ["Paris", 1889], "golden_answers")
    ('Paris', '1889')
    >>> _answers("f", 2, [], "golden_answers")
    Traceback (most recent call last):
    ...
    s3_ray.data.jsonl.DataError: f:2: field 'golden_answers' must be a non-empty list of strings
    """
    if hasattr(value, "tolist"):  # numpy arrays from pyarrow
        value = value.tolist()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        raise DataError(path, row, f"field {field!r} must be a non-empty list of strings")
    out = []
    for i, ans in enumerate(value):
        if isinstance(ans, bool) or not isinstance(ans, (str, int, float)) or not str(ans).strip():
            raise DataError(path, row, f"{field}[{i}] must be a non-empty string")
        out.append(str(ans))
    return tuple(out)


def read_flashrag(path: str | os.PathLike[str], name: str | None = None) -> list[QAItem]:
    """FlashRAG JSONL; ids must be unique within the file."""
    name = name or Path(path).stem
    items: list[QAItem] = []
    for lineno, qid, question, obj in iter_qa_rows(path):  # extra FlashRAG fields are ignored
        golds = _answers(path, lineno, obj["golden_answers"], "golden_answers")
        items.append(QAItem(id=qid, question=question, golden_answers=golds, meta={"dataset": name}))
    return items


def _parquet_answers(path: Path, row: int, rec: dict[str, Any]) -> tuple[str, ...]:
    if rec.get("golden_answers") is not None:
        return _answers(path, row, rec["golden_answers"], "golden_answers")
    target = ((rec.get("reward_model") or {}).get("ground_truth") or {}).get("target")
    if target is None:
        raise DataError(path, row, "needs 'golden_answers' or 'reward_model.ground_truth.target'")
    return _answers(path, row, target, "reward_model.ground_truth.target")


def read_parquet(path: str | os.PathLike[str], name: str | None = None) -> list[QAItem]:
    """s3 / Search-R1 parquet. Ids: ``id`` column, else ``extra_info.index``, else the row number."""
    import pyarrow.parquet as pq

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"data file not found: {p}")
    name = name or p.stem
    items: list[QAItem] = []
    seen: dict[str, int] = {}
    for row, rec in enumerate(pq.read_table(p).to_pylist(), start=1):
        question = rec.get("question")
        if not isinstance(question, str) or not question.strip():
            raise DataError(p, row, "column 'question' must be a non-empty string")
        golds = _parquet_answers(p, row, rec)
        raw_id = rec.get("id")
        if raw_id is None:
            raw_id = (rec.get("extra_info") or {}).get("index", row - 1)
        qid = require_id(p, row, {"id": raw_id})
        if qid in seen:
            raise DataError(p, row, f"duplicate id {qid!r} (first seen on row {seen[qid]})")
        seen[qid] = row
        meta: dict[str, Any] = {"dataset": name}
        if rec.get("data_source"):
            meta["source"] = str(rec["data_source"])
        items.append(QAItem(id=qid, question=question, golden_answers=golds, meta=meta))
    return items


def format_options(question: str, options: dict[str, str]) -> str:
    """The MIRAGE model input: the question followed by its lettered options.

    >>> print(format_options("Which organ?", {"A": "Liver", "B": "Lung"}))
    Which organ?
    Options:
    A. Liver
    B. Lung
    """
    lines = [question.rstrip(), "Options:"] + [f"{k}. {v}" for k, v in sorted(options.items())]
    return "\n".join(lines)


def read_mirage(path: str | os.PathLike[str], tasks: list[str] | None = None) -> list[QAItem]:
    """MIRAGE multiple choice. `tasks` keeps only those tasks (e.g. ``["medqa", "bioasq"]``).

    Each item: id ``task/qid``, golden answers ``[letter, "letter: option text"]``, meta
    ``{"dataset": task, "query": bare question, "options": {...}}``.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"data file not found: {p}")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(p, err.lineno, f"invalid JSON ({err.msg})") from None
    if not isinstance(data, dict):
        raise DataError(p, 1, "expected an object {task: {qid: question}}")
    if data and all(isinstance(v, dict) and "question" in v for v in data.values()):
        data = {p.stem: data}  # a single task's file
    unknown = sorted(set(tasks or []) - set(data))
    if unknown:
        raise DataError(p, 1, f"unknown MIRAGE task(s) {unknown}; file has {sorted(data)}")
    items: list[QAItem] = []
    for task, rows in data.items():
        if tasks and task not in tasks:
            continue
        if not isinstance(rows, dict):
            raise DataError(p, 1, f"task {task!r} must map question ids to questions")
        for qid, rec in rows.items():
            items.append(_mirage_item(p, task, str(qid), rec))
    return items


def _mirage_item(p: Path, task: str, qid: str, rec: Any) -> QAItem:
    where = f"{task}/{qid}"
    if not isinstance(rec, dict):
        raise DataError(p, 1, f"{where}: expected an object")
    question, options, answer = rec.get("question"), rec.get("options"), rec.get("answer")
    if not isinstance(question, str) or not question.strip():
        raise DataError(p, 1, f"{where}: field 'question' must be a non-empty string")
    if not isinstance(options, dict) or not options or not all(isinstance(v, str) for v in options.values()):
        raise DataError(p, 1, f"{where}: field 'options' must be a non-empty object of strings")
    if not isinstance(answer, str) or answer not in options:
        raise DataError(p, 1, f"{where}: answer {answer!r} is not one of the options {sorted(options)}")
    return QAItem(id=where, question=format_options(question, options),
                  golden_answers=(answer, f"{answer}: {options[answer]}"),
                  meta={"dataset": task, "query": question, "options": dict(options)})


def load_hf(name: str, split: str) -> list[QAItem]:
    """A FlashRAG config (``nq``, ``hotpotqa``, ...) through the ``datasets`` package.

    Needs `pip install datasets` and network access (or a filled HF cache).
    """
    try:
        import datasets  # optional; only this loader needs it
    except ImportError as err:
        raise DatasetUnavailable(
            f"loading {name!r} from {HF_REPO} needs the 'datasets' package: pip install datasets "
            "(or download the JSONL and use format 'flashrag')") from err
    try:
        rows = datasets.load_dataset(HF_REPO, name, split=split)
    except Exception as err:  # network, unknown config or split: the library's message is kept
        raise DatasetUnavailable(f"cannot load {HF_REPO} config {name!r} split {split!r} "
                                 f"(no network or unknown name?): {err}") from err
    where = f"{HF_REPO}/{name}/{split}"
    items = []
    for row, rec in enumerate(rows, start=1):
        qid = require_id(where, row, rec)
        question = require_str(where, row, rec, "question")
        golds = _answers(where, row, rec.get("golden_answers"), "golden_answers")
        items.append(QAItem(id=qid, question=question, golden_answers=golds, meta={"dataset": name}))
    return items


def sample(items: list[QAItem], limit: int | None, seed: int) -> list[QAItem]:
    """At most `limit` items drawn with `seed`, kept in file order (same seed, same subset).

    >>> xs = [QAItem(str(i), "q", ("a",)) for i in range(10)]
    >>> [x.id for x in sample(xs, 3, seed=0)] == [x.id for x in sample(xs, 3, seed=0)]
    True
    >>> len(sample(xs, None, 0)), len(sample(xs, 50, 0))
    (10, 10)
    """
    if limit is None or limit >= len(items):
        return list(items)
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    keep = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in keep]


def infer_format(path: str) -> str:
    """Format from the file name.

    >>> infer_format("nq/test.jsonl"), infer_format("s3/test_e5_ug.parquet"), infer_format("benchmark.json")
    ('flashrag', 'parquet', 'mirage')
    """
    suffix = Path(path).suffix.lower()
    table = {".jsonl": "flashrag", ".parquet": "parquet", ".json": "mirage"}
    if suffix not in table:
        raise ValueError(f"cannot infer the format of {path!r}; set format to one of {FORMATS}")
    return table[suffix]


def dataset_path(path: str, fmt: str) -> str:
    """A data set file resolved against the current directory (the driver's: Ray workers running
    elsewhere read the same file); an ``hf`` split name stays as it is.

    >>> dataset_path("test", "hf"), Path(dataset_path("nq.jsonl", "flashrag")).is_absolute()
    ('test', True)
    """
    return path if fmt == "hf" else str(Path(path).expanduser().resolve())


def load_eval_dataset(name: str, path: str, fmt: str = "auto", limit: int | None = None, seed: int = 0,
                      tasks: list[str] | None = None) -> list[QAItem]:
    """Read one evaluation set and sample it; every item's ``meta["dataset"]`` is `name`
    (MIRAGE keeps the task name so its five tasks stay apart)."""
    fmt = infer_format(path) if fmt == "auto" else fmt
    if fmt == "flashrag":
        items = read_flashrag(path, name)
    elif fmt == "parquet":
        items = read_parquet(path, name)
    elif fmt == "mirage":
        items = read_mirage(path, tasks)
    elif fmt == "hf":
        items = load_hf(name, path)
    else:
        raise ValueError(f"unknown data set format {fmt!r}; expected one of {FORMATS}")
    if fmt == "mirage":  # sample per task so every task keeps its own cap
        by_task: dict[str, list[QAItem]] = {}
        for it in items:
            by_task.setdefault(it.meta["dataset"], []).append(it)
        return [x for group in by_task.values() for x in sample(group, limit, seed)]
    return sample(items, limit, seed)
