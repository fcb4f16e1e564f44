"""Evaluate context methods with one frozen generator; resumable per method.

Each method's per-question records are appended to `<out_dir>/<method>.jsonl` batch by batch, so
a crashed evaluation restarts where it stopped (finished ids are skipped).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable

from s3_ray.eval.methods import ContextMethod
from s3_ray.generation.prompt import format_context
from s3_ray.types import QAItem


def score_answer(answer: str, golds: tuple[str, ...]) -> dict[str, float]:
    from s3_ray.reward.metrics import exact_match, f1, genacc

    return {"genacc": genacc(answer, list(golds)), "em": exact_match(answer, list(golds)), "f1": f1(answer, list(golds))}


def token_counter(model: str) -> Callable[[str], int]:
    """Counts tokens with `model`'s tokenizer (a registered name, folder or hub id)."""
    from transformers import AutoTokenizer

    from s3_ray.models import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model(model))
    return lambda text: len(tok(text, add_special_tokens=False)["input_ids"])


def evaluate_method(items: list[QAItem], method: ContextMethod, generator: Any, out_dir: str | os.PathLike[str],
                    batch_size: int = 8, progress: Callable[[int, int], None] | None = None,
                    count_tokens: Callable[[str], int] | None = None) -> list[dict[str, Any]]:
    """Run `method` then the generator over `items`; returns one record per item (file order).

    With `count_tokens`, records also carry `context_tokens`: the tokens of the context as the
    generator's prompt formats it."""
    path = Path(out_dir) / f"{method.name}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    done = {r["id"]: r for r in _read(path)}
    todo = [q for q in items if q.id not in done]
    for i in range(0, len(todo), batch_size):
        batch = todo[i : i + batch_size]
        t0 = time.perf_counter()
        outputs = method.contexts(batch)
        t1 = time.perf_counter()
        answers = generator.answer([q.question for q in batch], [o.passages for o in outputs])
        t2 = time.perf_counter()
        with path.open("a") as f:
            for q, o, a in zip(batch, outputs, answers):
                rec = {
                    "id": q.id,
                    "question": q.question,
                    "golden_answers": list(q.golden_answers),
                    "type": q.meta.get("type"),
                    "answer": a,
                    **score_answer(a, q.golden_answers),
                    "context_ids": [p.id for p in o.passages],
                    "context_docs": len(o.passages),
                    "context_words": sum(len(p.contents.split()) for p in o.passages),
                    **({"context_tokens": count_tokens(format_context(o.passages))} if count_tokens else {}),
                    "searches": o.searches,
                    "trace": [{"query": t.query, "selected": t.selected_ids, "malformed": t.malformed,
                               "complete": t.complete} for t in o.trace],
                    "seconds_context": (t1 - t0) / len(batch),
                    "seconds_answer": (t2 - t1) / len(batch),
                }
                done[q.id] = rec
                f.write(json.dumps(rec) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if progress:
            progress(min(i + batch_size, len(todo)), len(todo))
    return [done[q.id] for q in items]


def summarize(records: list[dict[str, Any]]) -> dict[str, float]:
    """Means over records, overall and per question type (single / bridge)."""
    def mean(key: str, rows: list[dict[str, Any]]) -> float:
        return sum(float(r[key]) for r in rows) / len(rows) if rows else float("nan")

    out: dict[str, float] = {"n": float(len(records))}
    for key in ("genacc", "em", "f1", "context_docs", "context_words", "searches", "seconds_context"):
        out[key] = mean(key, records)
    if records and all("context_tokens" in r for r in records):
        out["context_tokens"] = mean("context_tokens", records)
    for kind in sorted({r["type"] for r in records if r.get("type")}):
        rows = [r for r in records if r.get("type") == kind]
        out[f"genacc_{kind}"] = mean("genacc", rows)
    return out


def _read(path: Path) -> list[dict[str, Any]]:
    """Finished records; a torn last line from a crash is cut off so new records start clean."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1  # 0 when the torn line is the only one
        with path.open("r+b") as f:
            f.truncate(keep)
        data = data[:keep]
    rows = []
    for n, line in enumerate(data.decode().splitlines(), 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{n}: not a JSON record ({err}); remove the line or the file to redo it") from None
    return rows


def run_suite(methods: list[ContextMethod], items: list[QAItem], generator: Any, out_dir: str | os.PathLike[str],
              batch_size: int = 8, log: Callable[[str], None] = print,
              count_tokens: Callable[[str], int] | None = None) -> dict[str, dict[str, float]]:
    """Evaluate several methods on the same items; returns {method name: summary}."""
    summaries: dict[str, dict[str, float]] = {}
    for method in methods:
        t0 = time.perf_counter()

        def progress(done: int, total: int, name: str = method.name) -> None:
            log(f"  {name}: {done}/{total} questions")

        records = evaluate_method(items, method, generator, out_dir, batch_size=batch_size, progress=progress,
                                  count_tokens=count_tokens)
        summaries[method.name] = summarize(records)
        log(f"  {method.name}: GenAcc {100 * summaries[method.name]['genacc']:.1f} "
            f"({time.perf_counter() - t0:.0f} s)")
    return summaries


def run_datasets(methods: list[ContextMethod], datasets: dict[str, list[QAItem]], generator: Any,
                 out_dir: str | os.PathLike[str], batch_size: int = 8, log: Callable[[str], None] = print,
                 count_tokens: Callable[[str], int] | None = None) -> dict[str, dict[str, dict[str, float]]]:
    """`run_suite` per data set, each in `<out_dir>/<dataset>/`; returns {dataset: {method: summary}}."""
    results: dict[str, dict[str, dict[str, float]]] = {}
    for name, items in datasets.items():
        log(f"data set {name}: {len(items)} questions")
        results[name] = run_suite(methods, items, generator, Path(out_dir) / name, batch_size=batch_size,
                                  log=log, count_tokens=count_tokens)
    return results
