"""Evaluate context methods with one frozen generator; resumable per (method, data set).

Each pair's per-question records are appended to `<out_dir>/<method>.jsonl` batch by batch, so a
crashed evaluation restarts where it stopped (finished ids are skipped). Pairs are independent
`PairJob`s; the caller's `map_fn` decides where they run (serially here, as Ray tasks with
`s3_ray.eval.ray_pairs.ray_map`), so this module stays free of Ray.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from s3_ray.eval.base import ContextMethod
from s3_ray.generation.base import Answerer
from s3_ray.generation.prompt import format_context
from s3_ray.types import QAItem


def score_answer(answer: str, golds: tuple[str, ...]) -> dict[str, float]:
    from s3_ray.reward.metrics import exact_match, f1, genacc

    return {"genacc": genacc(answer, list(golds)), "em": exact_match(answer, list(golds)), "f1": f1(answer, list(golds))}


def score_answers(answers: list[str], golds: list[tuple[str, ...]],
                  judge_with: Answerer | None = None) -> list[dict[str, Any]]:
    """GenAcc, span match, EM and F1 per answer. With `judge_with` (a generator client), GenAcc is
    span match OR the generator-as-judge, exactly as in the reward (`batch_genacc`: one batched judge
    call for the answers the span check rejects); `judged` says whether the judge was asked.

    >>> score_answers(["It was Paris."], [("Paris",)])[0]["genacc"]
    1.0
    """
    from s3_ray.reward.judge import batch_genacc
    from s3_ray.reward.metrics import exact_match, f1, span_match

    accs = batch_genacc(answers, [list(g) for g in golds], judge_with=judge_with)
    out = []
    for a, g, acc in zip(answers, golds, accs):
        span = span_match(a, list(g))
        out.append({"genacc": acc, "span_match": span, "judged": judge_with is not None and span == 0.0,
                    "em": exact_match(a, list(g)), "f1": f1(a, list(g))})
    return out


class TokenCounter:
    """Counts tokens with `model`'s tokenizer (a registered name, folder or hub id). Pickles as the
    model name, so it can travel to Ray workers; the tokenizer is reloaded there on first use."""

    def __init__(self, model: str) -> None:
        self.model = model
        self._tok: Any = self._load()

    def _load(self) -> Any:
        from transformers import AutoTokenizer

        from s3_ray.models import resolve_model

        return AutoTokenizer.from_pretrained(resolve_model(self.model))

    def __getstate__(self) -> dict[str, Any]:
        return {"model": self.model, "_tok": None}

    def __call__(self, text: str) -> int:
        if self._tok is None:
            self._tok = self._load()
        return len(self._tok(text, add_special_tokens=False)["input_ids"])


def token_counter(model: str) -> Callable[[str], int]:
    """A picklable token counter for `model` (see `TokenCounter`)."""
    return TokenCounter(model)


def record_path(out_dir: str | os.PathLike[str], method: str) -> Path:
    """The JSONL file of a method's per-question records in `out_dir` (one line per question)."""
    return Path(out_dir) / f"{method}.jsonl"


def evaluate_method(items: list[QAItem], method: ContextMethod, generator: Answerer, out_dir: str | os.PathLike[str],
                    batch_size: int = 8, progress: Callable[[int, int], None] | None = None,
                    count_tokens: Callable[[str], int] | None = None, judge: bool = False) -> list[dict[str, Any]]:
    """Run `method` then the generator over `items`; returns one record per item (file order).

    With `count_tokens`, records also carry `context_tokens`: the tokens of the context as the
    generator's prompt formats it. With `judge`, GenAcc also accepts answers the generator judges
    correct (`generator.generate` is then needed); a file scored with the other setting is refused,
    so one file never mixes both. Cost per record: `seconds` (method + answer + judge, the batch's
    wall time shared evenly), `lm_calls` (the method's own LM) and `generator_calls` (answer + judge).
    """
    path = record_path(out_dir, method.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    done = _finished(path, judge)
    todo = [q for q in items if q.id not in done]
    for i in range(0, len(todo), batch_size):
        batch = todo[i : i + batch_size]
        t0 = time.perf_counter()
        outputs = method.contexts(batch)
        if len(outputs) != len(batch):
            raise RuntimeError(f"method {method.name!r} returned {len(outputs)} contexts for {len(batch)} questions")
        t1 = time.perf_counter()
        answers = generator.answer([q.question for q in batch], [o.passages for o in outputs])
        scores = score_answers(answers, [q.golden_answers for q in batch], judge_with=generator if judge else None)
        t2 = time.perf_counter()
        with path.open("a") as f:
            for q, o, a, sc in zip(batch, outputs, answers, scores):
                rec = {
                    "id": q.id,
                    "question": q.question,
                    "golden_answers": list(q.golden_answers),
                    "type": q.meta.get("type"),
                    "answer": a,
                    **sc,
                    "judge": judge,
                    "context_ids": [p.id for p in o.passages],
                    "context_docs": len(o.passages),
                    "context_words": sum(len(p.contents.split()) for p in o.passages),
                    **({"context_tokens": count_tokens(format_context(o.passages))} if count_tokens else {}),
                    "searches": o.searches,
                    "trace": [{"query": t.query, "selected": t.selected_ids, "malformed": t.malformed,
                               "complete": t.complete} for t in o.trace],
                    "seconds_context": (t1 - t0) / len(batch),
                    "seconds_answer": (t2 - t1) / len(batch),
                    "seconds": (t2 - t0) / len(batch),
                    "lm_calls": o.lm_calls,
                    "generator_calls": 1 + int(sc["judged"]),
                }
                done[q.id] = rec
                f.write(json.dumps(rec) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if progress:
            progress(min(i + batch_size, len(todo)), len(todo))
    return [done[q.id] for q in items]


def _finished(path: Path, judge: bool) -> dict[str, dict[str, Any]]:
    """{id: record} already in `path`, refusing a file scored with the other judge setting."""
    done = {r["id"]: r for r in _read(path)}
    mixed = [rid for rid, r in done.items() if bool(r.get("judge", False)) != judge]
    if mixed:
        raise ValueError(f"{path}: record {mixed[0]!r} was scored with judge={not judge} but reward.use_judge={judge}; "
                         "remove the file (or the data set's folder) to rescore")
    return done


def summarize(records: list[dict[str, Any]]) -> dict[str, float]:
    """Means over records, overall and per question type (single / bridge: GenAcc and searches), and
    `malformed`, the share of episodes with a malformed turn, where records carry a search trace.

    >>> rows = [{"genacc": 1.0, "em": 0.0, "f1": 1.0, "context_docs": 3, "context_words": 9, "searches": 2,
    ...          "seconds_context": 0.1, "type": "bridge", "trace": [{"malformed": None}, {"malformed": "bad_json"}]},
    ...         {"genacc": 0.0, "em": 0.0, "f1": 0.0, "context_docs": 3, "context_words": 9, "searches": 0,
    ...          "seconds_context": 0.1, "type": "single", "trace": [{"malformed": None}]}]
    >>> s = summarize(rows)
    >>> s["malformed"], s["searches_bridge"], s["searches_single"], s["genacc_bridge"]
    (0.5, 2.0, 0.0, 1.0)
    """
    def mean(key: str, rows: list[dict[str, Any]]) -> float:
        return sum(float(r[key]) for r in rows) / len(rows) if rows else float("nan")

    out: dict[str, float] = {"n": float(len(records))}
    for key in ("genacc", "em", "f1", "context_docs", "context_words", "searches", "seconds_context"):
        out[key] = mean(key, records)
    # keys records written by earlier versions may lack: only when every record has them
    for key in ("context_tokens", "seconds", "lm_calls", "generator_calls"):
        if records and all(key in r for r in records):
            out[key] = mean(key, records)
    if records and any(r.get("judge") for r in records):
        out["genacc_span"] = mean("span_match", records)
    if records and all("trace" in r for r in records) and any(r["trace"] for r in records):  # searcher methods: how often a turn broke the protocol
        out["malformed"] = sum(1.0 for r in records if any(t.get("malformed") for t in r["trace"])) / len(records)
    for kind in sorted({r["type"] for r in records if r.get("type")}):
        rows = [r for r in records if r.get("type") == kind]
        out[f"genacc_{kind}"] = mean("genacc", rows)
        out[f"searches_{kind}"] = mean("searches", rows)
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


@dataclass(frozen=True)
class MethodRef:
    """A method by label and a picklable factory, built where its evaluation runs (a Ray worker
    loads its own models instead of receiving them pickled)."""

    name: str
    build: Callable[[], ContextMethod]
    loads_model: bool = True  # whether building it loads a language model (which then wants a GPU)


@dataclass(frozen=True)
class PairJob:
    """One (method, data set) evaluation, self-contained and picklable when its parts are."""

    dataset: str
    method: ContextMethod | MethodRef
    items: list[QAItem]
    out_dir: str
    generator: Answerer
    batch_size: int = 8
    judge: bool = False
    count_tokens: Callable[[str], int] | None = None
    log: Callable[[str], None] = print


PairMap = Callable[[Callable[[PairJob], dict[str, float]], list[PairJob]], list[dict[str, float]]]
"""Applies `run_pair` to every job and returns the summaries in job order (serially, Ray tasks...)."""


def serial_map(fn: Callable[[PairJob], dict[str, float]], jobs: list[PairJob]) -> list[dict[str, float]]:
    """The in-process `PairMap`: one pair after the other."""
    return [fn(job) for job in jobs]


def run_pair(job: PairJob) -> dict[str, float]:
    """Evaluate one method on one data set (resumable) and return its summary. A finished pair is
    summarised from its file without building the method (no model is loaded to resume)."""
    from s3_ray.console import active

    t0 = time.perf_counter()
    label = pair_label(job)
    done = _finished(record_path(job.out_dir, job.method.name), job.judge)
    before = sum(1 for q in job.items if q.id in done)
    if before == len(job.items):
        job.log(f"{label}: already evaluated")
        return summarize([done[q.id] for q in job.items])
    method = job.method.build() if isinstance(job.method, MethodRef) else job.method
    if method.name != job.method.name:
        raise ValueError(f"method factory for {job.method.name!r} built a method named {method.name!r}")
    with active().bar(len(job.items), label, unit="q", initial=before) as bar:
        records = evaluate_method(job.items, method, job.generator, job.out_dir, batch_size=job.batch_size,
                                  progress=lambda n, _total: bar.set(before + n), count_tokens=job.count_tokens,
                                  judge=job.judge)
    summary = summarize(records)
    job.log(f"{label}: GenAcc {100 * summary['genacc']:.1f} ({time.perf_counter() - t0:.0f} s)")
    return summary


def pair_label(job: PairJob) -> str:
    """`<data set>/<method>`, or the method alone for the single split of `data`."""
    return f"{job.dataset}/{job.method.name}" if job.dataset else job.method.name


def run_pairs(jobs: list[PairJob], map_fn: PairMap | None = None) -> dict[str, dict[str, dict[str, float]]]:
    """Run every job through `map_fn` (default: serially); returns {dataset: {method: summary}}."""
    seen: set[tuple[str, str]] = set()
    for job in jobs:
        key = (job.dataset, job.method.name)
        if key in seen:
            raise ValueError(f"method name {job.method.name!r} appears twice for data set {job.dataset!r}; "
                             "both would write the same file")
        seen.add(key)
    summaries = (map_fn or serial_map)(run_pair, jobs)
    if len(summaries) != len(jobs):
        raise RuntimeError(f"map_fn returned {len(summaries)} summaries for {len(jobs)} jobs")
    out: dict[str, dict[str, dict[str, float]]] = {}
    for job, summary in zip(jobs, summaries):
        out.setdefault(job.dataset, {})[job.method.name] = summary
    return out


def run_suite(methods: list[ContextMethod | MethodRef], items: list[QAItem], generator: Answerer,
              out_dir: str | os.PathLike[str], batch_size: int = 8, log: Callable[[str], None] = print,
              count_tokens: Callable[[str], int] | None = None, judge: bool = False,
              map_fn: PairMap | None = None) -> dict[str, dict[str, float]]:
    """Evaluate several methods on the same items (files in `out_dir`); returns {method name: summary}."""
    jobs = [PairJob("", m, items, str(out_dir), generator, batch_size, judge, count_tokens, log) for m in methods]
    return run_pairs(jobs, map_fn).get("", {})


def run_datasets(methods: list[ContextMethod | MethodRef], datasets: dict[str, list[QAItem]], generator: Answerer,
                 out_dir: str | os.PathLike[str], batch_size: int = 8, log: Callable[[str], None] = print,
                 count_tokens: Callable[[str], int] | None = None, judge: bool = False,
                 map_fn: PairMap | None = None) -> dict[str, dict[str, dict[str, float]]]:
    """Every method on every data set, each pair in `<out_dir>/<dataset>/<method>.jsonl`; returns
    {dataset: {method: summary}}. `map_fn` decides where the pairs run (e.g. as Ray tasks)."""
    for name, items in datasets.items():
        log(f"data set {name}: {len(items)} questions")
    jobs = [PairJob(name, m, items, str(Path(out_dir) / name), generator, batch_size, judge, count_tokens, log)
            for name, items in datasets.items() for m in methods]
    return run_pairs(jobs, map_fn)
