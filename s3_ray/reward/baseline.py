"""The naive-RAG baseline: top-k retrieval for the bare question, answered by the frozen generator.

Gain Beyond RAG subtracts this accuracy from the searcher's, so it is computed once per split
and stored as JSONL: a header record with the settings it depends on, then one record per
question. Appending batch by batch (flushed and fsynced) makes the precompute resumable: a rerun
after a crash skips every id already on disk. Reading a file made with other settings, or asking
for a question that is not in it, is an error; the reward never silently falls back to another
baseline.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

from s3_ray.config import GeneratorConfig, S3Config
from s3_ray.reward.metrics import exact_match, genacc
from s3_ray.types import Passage, QAItem, SearchHit

FORMAT_VERSION = 1
_YES_NO = frozenset({"yes", "no", "true", "false"})


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


class _Retriever(Protocol):
    def search(self, queries: list[str], k: int) -> list[list[SearchHit]]: ...


class _Answerer(Protocol):
    @property
    def model_id(self) -> str: ...

    def answer(self, questions: Sequence[str], contexts: Sequence[Sequence[Passage]]) -> list[str]: ...

    def generate(self, prompts: list[list[dict[str, str]]]) -> list[str]: ...


def batch_genacc(preds: Sequence[str], golds: Sequence[Sequence[str]],
                 judge_with: _Answerer | None = None) -> list[float]:
    """GenAcc for many answers: span match, then one batched judge call for the rejected ones.

    >>> batch_genacc(["Paris, France", "Rome"], [["paris"], ["Oslo"]])
    [1.0, 0.0]
    """
    from s3_ray.generation.prompt import build_judge_messages, parse_judge_reply

    if len(preds) != len(golds):
        raise ValueError(f"{len(preds)} predictions but {len(golds)} gold lists")
    accs = [genacc(p, g) for p, g in zip(preds, golds)]
    rejected = [i for i, a in enumerate(accs) if a == 0.0]
    if judge_with is not None and rejected:
        replies = judge_with.generate([build_judge_messages(preds[i], golds[i]) for i in rejected])
        for i, reply in zip(rejected, replies):
            accs[i] = 1.0 if parse_judge_reply(reply) else 0.0
    return accs


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


def precompute_baseline(items: Sequence[QAItem], retriever: _Retriever, generator: _Answerer, k: int,
                        cache: BaselineCache, batch_size: int = 16, progress: bool = True) -> dict[str, int]:
    """Answer every item not yet in `cache` from its top-k passages and append the records.

    Each batch is one retrieval call and one generator call (plus one judge call when the
    cache's settings say `judge`), written to disk before the next
    starts, so an interrupted run loses at most one batch. Returns counts
    `{"total", "skipped", "computed"}`.
    """
    from tqdm import tqdm

    if k != cache.settings.init_k:
        raise BaselineError(f"k={k} but {cache.path} is for init_k={cache.settings.init_k}")
    if generator.model_id != cache.settings.generator:
        raise BaselineError(f"generator {generator.model_id!r} but {cache.path} is for {cache.settings.generator!r}")
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    ids = [it.id for it in items]
    if len(set(ids)) != len(ids):
        raise ValueError("items contain duplicate question ids")
    todo = [it for it in items if it.id not in cache]
    bar = tqdm(total=len(todo), desc="naive-RAG baseline", unit="q", disable=not progress)
    for lo in range(0, len(todo), batch_size):
        batch = todo[lo : lo + batch_size]
        hits = retriever.search([it.search_text for it in batch], k) if k > 0 else [[] for _ in batch]
        if len(hits) != len(batch):
            raise RuntimeError(f"retriever returned {len(hits)} hit lists for {len(batch)} queries")
        contexts = [[h.passage for h in row] for row in hits]
        answers = generator.answer([it.question for it in batch], contexts)
        accs = batch_genacc(answers, [it.golden_answers for it in batch],
                            judge_with=generator if cache.settings.judge else None)
        cache.append(
            BaselineRecord(id=it.id, question=it.question, answer=ans, genacc=acc,
                           em=exact_match(ans, it.golden_answers), context_ids=[p.id for p in ctx])
            for it, ans, acc, ctx in zip(batch, answers, accs, contexts)
        )
        bar.update(len(batch))
    bar.close()
    return {"total": len(items), "skipped": len(items) - len(todo), "computed": len(todo)}


def is_yes_no(item: QAItem) -> bool:
    """s3 drops questions with a yes/no/true/false gold answer from training.

    >>> is_yes_no(QAItem("1", "Is it?", ("Yes",))), is_yes_no(QAItem("2", "Who?", ("Yesenia",)))
    (True, False)
    """
    return any(a.strip().lower() in _YES_NO for a in item.golden_answers)


def filter_unanswered(items: Sequence[QAItem], cache: BaselineCache) -> tuple[list[QAItem], int]:
    """s3's training filter: keep questions the naive RAG gets wrong, drop yes/no questions.

    Every item must have a baseline record (else BaselineMissing). Returns (kept, dropped_count).
    """
    kept = [it for it in items if not is_yes_no(it) and cache.get(it.id).genacc < 1.0]
    return kept, len(items) - len(kept)


def retriever_fingerprint(cfg: S3Config) -> str:
    """Backend, build parameters and corpus hash of the index in `cfg.retrieval.index_dir`.

    Read from the index manifest (the index must exist), so a rebuilt index or another
    corpus invalidates the baseline without rehashing a large corpus here.
    """
    from s3_ray.retrieval.index import read_manifest

    m = read_manifest(cfg.retrieval.index_dir)
    return f"{m.backend} {json.dumps(m.params, sort_keys=True)} corpus-sha256:{m.corpus_sha256[:16]}"


def decoding_fingerprint(gen: GeneratorConfig) -> str:
    """The generator settings besides model and backend that change its answers, as one string.

    `fit` is how contexts are counted when cut to `max_context_tokens`: "tokenizer" (exact), or
    "chars/3" for an openai backend without a local tokenizer for the served model.

    >>> decoding_fingerprint(GeneratorConfig(max_new_tokens=16))
    'max_new_tokens=16 max_context_tokens=768 temperature=0.0 fit=tokenizer'
    """
    from s3_ray.generation.fit import context_fit_mode

    return (f"max_new_tokens={gen.max_new_tokens} max_context_tokens={gen.max_context_tokens} "
            f"temperature={gen.temperature} fit={context_fit_mode(gen.backend, gen.model)}")


def baseline_settings(cfg: S3Config) -> BaselineSettings:
    """The settings a run with `cfg` expects its baseline file to have been made with."""
    return BaselineSettings(generator=cfg.generator.model, init_k=cfg.rollout.init_k,
                            retriever=retriever_fingerprint(cfg), method=cfg.reward.baseline,
                            judge=cfg.reward.use_judge, backend=cfg.generator.backend,
                            decoding=decoding_fingerprint(cfg.generator))


def baseline_path(cfg: S3Config, split: str) -> Path:
    """Where the baseline of one split lives: `<run_dir>/baseline/<split>.jsonl`."""
    return cfg.path("baseline", f"{split}.jsonl")


def open_baseline(cfg: S3Config, split: str) -> BaselineCache:
    """The split's baseline file, checked against the settings of `cfg` (it may not exist yet)."""
    return BaselineCache(baseline_path(cfg, split), baseline_settings(cfg))


def precompute_split(cfg: S3Config, split: str, retriever: _Retriever, generator: _Answerer,
                     batch_size: int = 16, progress: bool = True,
                     log: Callable[[str], None] = print) -> dict[str, Any]:
    """Precompute (or resume) the baseline of one split of `cfg` and log a summary.

    Returns `{"split", "path", "total", "computed", "skipped", "genacc", "em", "kept", "dropped"}`;
    kept/dropped are s3's training filter (naive RAG already right, or a yes/no question).
    """
    from s3_ray.data.embedded import load_split

    items = load_split(cfg.data, split)
    cache = open_baseline(cfg, split)  # checks the settings before any work
    counts = precompute_baseline(items, retriever, generator, cfg.rollout.init_k, cache,
                                 batch_size=batch_size, progress=progress)
    log(f"baseline {split} ({cache.path}): {counts['total']} questions, {counts['computed']} computed, "
        f"{counts['skipped']} already stored")
    return {"split": split, "path": str(cache.path), **counts, **summarize_split(cfg, split, log)}


def summarize_split(cfg: S3Config, split: str, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Naive-RAG accuracy of a finished split and what s3's training filter keeps; logged and returned.

    Every question of the split must have a record (else BaselineMissing naming it).
    Returns `{"genacc", "em", "kept", "dropped"}`.
    """
    from s3_ray.data.embedded import load_split

    items = load_split(cfg.data, split)
    cache = open_baseline(cfg, split)
    records = [cache.get(it.id) for it in items]
    n = max(len(records), 1)
    kept, dropped = filter_unanswered(items, cache)
    out = {"genacc": sum(r.genacc for r in records) / n, "em": sum(r.em for r in records) / n,
           "kept": len(kept), "dropped": dropped}
    log(f"naive RAG (init_k={cfg.rollout.init_k}, {cfg.generator.model}): genacc={out['genacc']:.3f} "
        f"em={out['em']:.3f}")
    log(f"s3 training filter keeps {len(kept)} of {len(items)} ({dropped} answered by naive RAG or yes/no)")
    return out
