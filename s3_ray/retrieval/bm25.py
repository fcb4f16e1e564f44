"""BM25 over bm25s with an English Snowball stemmer and English stopwords.

Saved as bm25s' own numpy/JSON files plus the passages as JSONL next to them (no pickle), so an
index folder is portable and safe to load.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import bm25s
import numpy as np
import Stemmer

from s3_ray.data.corpus import read_corpus, write_corpus
from s3_ray.retrieval.bm25_stats import CorpusStats, GlobalStatsBM25
from s3_ray.types import Passage, SearchHit

PASSAGES_FILE = "passages.jsonl"
_STOPWORDS = "en"


def _stemmer() -> Any:
    return Stemmer.Stemmer("english")


def tokenize(passages: Sequence[Passage], progress: bool = False) -> Any:
    """The passages as bm25s token ids + vocabulary (lowercase, English stopwords, Snowball stems)."""
    return bm25s.tokenize([p.contents for p in passages], stopwords=_STOPWORDS, stemmer=_stemmer(),
                          show_progress=progress)


class BM25Retriever:
    """Sparse lexical retriever. Hits with score 0 (no query term matched) are not returned."""

    def __init__(self, model: bm25s.BM25, passages: Sequence[Passage]) -> None:
        if model.scores["num_docs"] != len(passages):
            raise ValueError(f"index holds {model.scores['num_docs']} documents but {len(passages)} passages were given")
        self._model = model
        self._passages = list(passages)
        self._stem = _stemmer()

    @classmethod
    def build(cls, passages: Sequence[Passage], k1: float = 0.9, b: float = 0.4, progress: bool = False,
              stats: CorpusStats | None = None, tokens: Any = None) -> BM25Retriever:
        """Tokenise (lowercase, stopwords, stemming) and index the passages. With `stats` (the whole
        corpus's, when these passages are one shard of it) idf and average length come from them,
        so scores equal the unsharded index's; `tokens` reuses `tokenize(passages)`."""
        if not passages:
            raise ValueError("cannot build a BM25 index over an empty corpus")
        tokens = tokens if tokens is not None else tokenize(passages, progress)
        if stats is None:
            model = bm25s.BM25(k1=k1, b=b)
            model.index(tokens, show_progress=progress)
        else:
            model = GlobalStatsBM25(stats, k1=k1, b=b)
            model.index_with_stats(tokens)
        return cls(model, passages)

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write the index arrays, vocabulary, params and passages into `directory`."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self._model.save(str(d), allow_pickle=False, show_progress=False)
        write_corpus(d / PASSAGES_FILE, self._passages)

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> BM25Retriever:
        """Load what `save` wrote."""
        d = Path(directory)
        if not (d / PASSAGES_FILE).is_file():
            raise FileNotFoundError(f"not a BM25 index folder (no {PASSAGES_FILE}): {d}")
        model = bm25s.BM25.load(str(d), load_corpus=False, allow_pickle=False)
        return cls(model, read_corpus(d / PASSAGES_FILE))

    def __len__(self) -> int:
        return len(self._passages)

    # The Snowball stemmer is a C object that cannot be pickled; rebuild it on the other side so
    # an in-process retriever can be shipped to Ray workers.
    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_stem"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._stem = _stemmer()

    @property
    def passages(self) -> list[Passage]:
        return list(self._passages)

    def passage(self, row: int) -> Passage:
        """The passage at `row` of this index."""
        return self._passages[row]

    def _query_tokens(self, queries: list[str]) -> list[list[str]]:
        """Stemmed query terms that the index knows (unknown terms cannot score)."""
        toks = bm25s.tokenize(queries, stopwords=_STOPWORDS, stemmer=self._stem, return_ids=False,
                              show_progress=False)
        vocab = self._model.vocab_dict
        return [[t for t in q if t in vocab and t != ""] for q in toks]

    def search(self, queries: list[str], k: int) -> list[list[SearchHit]]:
        """One bm25s call for the whole batch; k is clamped to the corpus size.

        A query that is empty, or has no indexed term, gets an empty hit list.
        """
        return [[SearchHit(self._passages[r], s) for r, s in q] for q in self.search_rows(queries, k)]

    def search_rows(self, queries: list[str], k: int) -> list[list[tuple[int, float]]]:
        """`search` as (row in this index, score) pairs, best first."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if isinstance(queries, str) or not all(isinstance(q, str) for q in queries):
            raise TypeError("queries must be a list of strings")
        out: list[list[tuple[int, float]]] = [[] for _ in queries]
        if not queries:
            return out
        tokens = self._query_tokens(queries)
        live = [i for i, t in enumerate(tokens) if t]
        if not live:
            return out
        kk = min(k, len(self._passages))
        docs, scores = self._model.retrieve([tokens[i] for i in live], k=kk, show_progress=False,
                                            n_threads=0, return_as="tuple")
        docs, scores = np.asarray(docs), np.asarray(scores)
        for row, i in enumerate(live):
            # ties in row order, as a sharded index merges them
            out[i] = sorted(((int(d), float(s)) for d, s in zip(docs[row], scores[row]) if s > 0),
                            key=lambda h: (-h[1], h[0]))
        return out
