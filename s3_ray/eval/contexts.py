"""A context method's output for a QA split, one JSONL row per question, appended and resumable.

Row: id, question, golden_answers, method, searcher, context (ids + contents: what a generator
should read), searches and the search trace. Rows are appended batch by batch (flushed and
synced), so a rerun skips ids already written; a torn last line from a crash is cut off and redone.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from s3_ray.config import S3Config
from s3_ray.data.jsonl import DataError, iter_jsonl, require_id
from s3_ray.eval.methods import ContextMethod, MethodOutput
from s3_ray.types import QAItem


def read_done(path: Path, method: str, searcher: str | None) -> set[str]:
    """Ids already in `path`. A torn last line (no trailing newline) is cut off so appending can
    continue; rows written by another method or searcher fail loudly instead of mixing."""
    if not path.is_file():
        return set()
    raw = path.read_bytes()
    if raw and not raw.endswith(b"\n"):
        with path.open("r+b") as fh:
            fh.truncate(raw.rfind(b"\n") + 1)
    done: set[str] = set()
    for lineno, row in iter_jsonl(path):
        if (row.get("method"), row.get("searcher")) != (method, searcher):
            raise DataError(path, lineno, f"written by method={row.get('method')!r} searcher={row.get('searcher')!r}, "
                                          f"not method={method!r} searcher={searcher!r}; pass another --out")
        done.add(require_id(path, lineno, row))
    return done


def context_row(item: QAItem, output: MethodOutput, method: str, searcher: str | None) -> dict[str, Any]:
    """One question's row (see the module docstring)."""
    return {
        "id": item.id,
        "question": item.question,
        "golden_answers": list(item.golden_answers),
        "method": method,
        "searcher": searcher,
        "context": [p.to_dict() for p in output.passages],
        "searches": output.searches,
        "trace": [asdict(t) for t in output.trace],
    }


def write_contexts(items: list[QAItem], method: ContextMethod, out: Path, searcher: str | None = None,
                   batch_size: int = 8, log: Callable[[str], None] = print) -> int:
    """Append one context row per item not yet in `out` (a bar on the job's console counts them);
    returns how many rows were written now."""
    from s3_ray.console import active

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out.parent.mkdir(parents=True, exist_ok=True)
    done = read_done(out, method.name, searcher)
    todo = [q for q in items if q.id not in done]
    log(f"{method.name}: {len(done)} of {len(items)} questions already in {out}; {len(todo)} to go")
    with active().bar(len(items), method.name, unit="q", initial=len(items) - len(todo), enabled=bool(todo)) as bar:
        for i in range(0, len(todo), batch_size):
            batch = todo[i : i + batch_size]
            outputs = method.contexts(batch)
            if len(outputs) != len(batch):
                raise RuntimeError(f"method {method.name!r} returned {len(outputs)} contexts for {len(batch)} questions")
            with out.open("a", encoding="utf-8") as fh:
                for item, output in zip(batch, outputs):
                    fh.write(json.dumps(context_row(item, output, method.name, searcher), ensure_ascii=False) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            bar.update(len(batch))
    return len(todo)


def write_split_contexts(cfg: S3Config, split: str, method: str, searcher: str | None, out: Path,
                         connect: Callable[[], Any], batch_size: int = 8,
                         log: Callable[[str], None] = print) -> int:
    """`method` (`s3` with the `searcher` model, or `naive_rag`) over `split`, written to `out`.

    `out` is checked first, so a file of another method or searcher fails before `connect()`
    starts or reaches a retriever and before any model loads. Returns the rows written now.
    """
    from s3_ray.data.embedded import load_split
    from s3_ray.eval.methods import build_method

    items = load_split(cfg.data, split)
    read_done(out, method, searcher)
    greedy = cfg.searcher.model_copy(update={"temperature": 0.0})
    built = build_method(method, retriever=connect(), rollout=cfg.rollout, searcher=greedy, model=searcher,
                         name=method)
    return write_contexts(items, built, out, searcher=searcher, batch_size=batch_size, log=log)
