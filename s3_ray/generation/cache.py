"""Persistent response cache for the frozen generator (SQLite, safe across processes).

The generator is frozen and decodes greedily, so the same prompt always gets the same answer:
caching it removes repeated work across PPO epochs, evaluation reruns and the baseline
precompute. The key covers the model id, every decoding setting and the exact messages, so
changing any of them is a miss (old entries are simply never read again).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

from s3_ray.generation.base import Generator, Messages, validate_prompts
from s3_ray.generation.likelihood import METRIC_KEY, AnswerLogprobUnsupported, validate_answers


def cache_key(model_id: str, decoding: dict[str, Any], messages: Messages) -> str:
    """sha256 over a canonical JSON of (model id, decoding settings, messages).

    >>> m = [{"role": "user", "content": "hi"}]
    >>> cache_key("m", {"t": 0}, m) == cache_key("m", {"t": 0}, m)
    True
    >>> cache_key("m", {"t": 0}, m) == cache_key("m", {"t": 1}, m)
    False
    """
    blob = json.dumps({"model": model_id, "decoding": decoding, "messages": messages},
                      sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class ResponseCache:
    """key -> completion in one SQLite file (WAL journal, busy timeout for concurrent writers).

    A connection is opened per process (the object pickles as its path), so a cache can be
    handed to Ray workers and replicas.
    """

    def __init__(self, path: str | os.PathLike[str], timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self.timeout_s = timeout_s
        self._conn: sqlite3.Connection | None = None
        self._pid = -1
        self._lock = threading.Lock()
        self._connect()  # fail early on an unwritable path

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None or self._pid != os.getpid():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                conn = sqlite3.connect(self.path, timeout=self.timeout_s, check_same_thread=False)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, response TEXT NOT NULL)")
                conn.commit()
            except sqlite3.DatabaseError as err:
                raise RuntimeError(f"cannot open response cache {self.path}: {err}") from err
            self._conn, self._pid = conn, os.getpid()
        return self._conn

    def get_many(self, keys: list[str]) -> dict[str, str]:
        """The cached responses for whichever of `keys` are present."""
        found: dict[str, str] = {}
        with self._lock:
            conn = self._connect()
            for lo in range(0, len(keys), 500):  # stay under SQLite's bound-parameter limit
                chunk = keys[lo : lo + 500]
                marks = ",".join("?" * len(chunk))
                found.update(conn.execute(f"SELECT key, response FROM responses WHERE key IN ({marks})", chunk))
        return found

    def put_many(self, items: dict[str, str]) -> None:
        """Insert or overwrite, in one transaction."""
        with self._lock:
            conn = self._connect()
            with conn:
                conn.executemany("INSERT OR REPLACE INTO responses (key, response) VALUES (?, ?)", items.items())

    def __len__(self) -> int:
        with self._lock:
            return self._connect().execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __getstate__(self) -> dict[str, Any]:
        return {"path": str(self.path), "timeout_s": self.timeout_s}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], state["timeout_s"])  # type: ignore[misc]


class CachedGenerator:
    """A Generator that answers from the cache and sends only the misses, in one call, to `inner`."""

    def __init__(self, inner: Generator, cache: ResponseCache) -> None:
        self.inner = inner
        self.cache = cache
        self.hits = 0
        self.misses = 0

    @property
    def model_id(self) -> str:
        return self.inner.model_id

    @property
    def decoding(self) -> dict[str, Any]:
        return self.inner.decoding

    def generate(self, prompts: list[Messages]) -> list[str]:
        validate_prompts(prompts)
        keys = [cache_key(self.model_id, self.decoding, m) for m in prompts]
        found = self.cache.get_many(list(dict.fromkeys(keys)))
        todo: dict[str, Messages] = {}  # unique missing keys, first prompt for each
        for k, m in zip(keys, prompts):
            if k not in found and k not in todo:
                todo[k] = m
        if todo:
            answers = self.inner.generate(list(todo.values()))
            if len(answers) != len(todo):
                raise RuntimeError(f"{self.model_id}: {len(todo)} prompts gave {len(answers)} completions")
            fresh = dict(zip(todo, answers))
            self.cache.put_many(fresh)
            found.update(fresh)
        self.hits += len(keys) - len(todo)
        self.misses += len(todo)
        return [found[k] for k in keys]

    def answer_logprobs(self, prompts: list[Messages], answers: list[list[str]]) -> list[float]:
        """The inner backend's `answer_logprobs`, cached apart from answers: the key adds the metric
        to the decoding settings and the gold answers to the messages."""
        validate_prompts(prompts)
        validate_answers(len(prompts), answers)
        inner = getattr(self.inner, "answer_logprobs", None)
        if not callable(inner):
            raise AnswerLogprobUnsupported(f"generator {self.model_id!r} ({type(self.inner).__name__}) cannot score "
                                           "gold answers")
        decoding = {**self.decoding, "metric": METRIC_KEY}
        keys = [cache_key(self.model_id, decoding, [*m, {"role": "gold", "content": json.dumps(list(a))}])
                for m, a in zip(prompts, answers)]
        found = self.cache.get_many(list(dict.fromkeys(keys)))
        todo: dict[str, tuple[Messages, list[str]]] = {}
        for k, m, a in zip(keys, prompts, answers):
            if k not in found and k not in todo:
                todo[k] = (m, list(a))
        if todo:
            values = inner([m for m, _ in todo.values()], [a for _, a in todo.values()])
            if len(values) != len(todo):
                raise RuntimeError(f"{self.model_id}: {len(todo)} prompts gave {len(values)} log-likelihoods")
            fresh = {k: repr(float(v)) for k, v in zip(todo, values)}
            self.cache.put_many(fresh)
            found.update(fresh)
        self.hits += len(keys) - len(todo)
        self.misses += len(todo)
        return [float(found[k]) for k in keys]

    def stats(self) -> dict[str, float]:
        """Cache counters, merged with the inner generator's own stats when it has any."""
        total = self.hits + self.misses
        out: dict[str, float] = {}
        inner_stats = getattr(self.inner, "stats", None)
        if callable(inner_stats):
            out.update(inner_stats())
        out.update({"cache_hits": self.hits, "cache_misses": self.misses,
                    "cache_hit_rate": self.hits / total if total else 0.0})
        return out
