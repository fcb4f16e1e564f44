"""Corpus-wide BM25 statistics, so that a shard of the corpus scores exactly as the whole corpus does.

A BM25 score depends on the corpus through two numbers per query term: the document frequency
(in idf) and the average document length. A shard indexed on its own would use its own, and its
scores would differ from the unsharded index. `CorpusStats` holds those numbers for the whole
corpus (the sum of every shard's counts); `GlobalStatsBM25` is bm25s' BM25 with its one index-build
step (`build_index_from_ids`, which bm25s documents as the method to override) computing idf and
length normalisation from them, with bm25s' own scoring functions, so every stored score is the
float the unsharded index stores.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bm25s
import numpy as np
from bm25s.scoring import _build_idf_array, _build_scores_and_indices_for_matrix, _calculate_doc_freqs, _select_idf_scorer


@dataclass(frozen=True)
class CorpusStats:
    """Documents, total tokens and per-token document frequency of a corpus (or of one shard)."""

    n_docs: int
    total_len: int
    df: dict[str, int] = field(repr=False)

    @classmethod
    def of_tokens(cls, tokens: Any) -> CorpusStats:
        """Counts of a bm25s `Tokenized` (ids + vocab), as bm25s counts them when it indexes.

        >>> tok = bm25s.tokenize(["red apple", "red red wine", ""], stopwords=None, show_progress=False)
        >>> s = CorpusStats.of_tokens(tok)
        >>> s.n_docs, s.total_len, sorted(s.df.items())
        (3, 5, [('apple', 1), ('red', 2), ('wine', 1)])
        """
        names = {i: t for t, i in tokens.vocab.items()}
        df: Counter[str] = Counter()
        for doc in tokens.ids:
            df.update(names[i] for i in set(doc))
        return cls(len(tokens.ids), sum(len(doc) for doc in tokens.ids), dict(df))

    @classmethod
    def merged(cls, parts: list[CorpusStats]) -> CorpusStats:
        df: Counter[str] = Counter()
        for p in parts:
            df.update(p.df)
        return cls(sum(p.n_docs for p in parts), sum(p.total_len for p in parts), dict(df))

    @property
    def avg_len(self) -> float:
        # Token counts are integers, so this equals numpy's mean of the lengths bit for bit (bm25s' avgdl).
        return self.total_len / self.n_docs

    def as_dict(self) -> dict[str, Any]:
        return {"n_docs": self.n_docs, "total_len": self.total_len, "df": dict(sorted(self.df.items()))}

    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.as_dict(), separators=(",", ":")).encode()).hexdigest()

    def save(self, path: str | os.PathLike[str]) -> None:
        from s3_ray.data.jsonl import write_json

        write_json(path, self.as_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CorpusStats:
        try:
            d = json.loads(Path(path).read_text())
            return cls(int(d["n_docs"]), int(d["total_len"]), {str(k): int(v) for k, v in d["df"].items()})
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"{path}: not a BM25 statistics file ({err})") from None


class GlobalStatsBM25(bm25s.BM25):
    """bm25s BM25 whose index uses `stats` (the whole corpus's) for idf and average length.

    Call `index_with_stats(tokens)`; queries, saving and loading are bm25s' own (the stored scores
    already hold the corpus-wide statistics, so a loaded shard is a plain bm25s index).
    """

    def __init__(self, stats: CorpusStats, k1: float, b: float) -> None:
        super().__init__(k1=k1, b=b)
        if self.method in self.methods_requiring_nonoccurrence:
            raise ValueError(f"bm25s method {self.method!r} is not supported with corpus-wide statistics")
        self._stats = stats
        self._names: dict[int, str] = {}

    def index_with_stats(self, tokens: Any) -> None:
        self._names = {i: t for t, i in tokens.vocab.items()}
        self.index(tokens, show_progress=False)

    def build_index_from_ids(self, unique_token_ids: list[int], corpus_token_ids: list[list[int]],
                             show_progress: bool = True, leave_progress: bool = False) -> dict[str, Any]:
        local_df = _calculate_doc_freqs(corpus_tokens=corpus_token_ids, unique_tokens=unique_token_ids,
                                        show_progress=False)
        # numpy's float64 (not a Python float) for avgdl, as bm25s passes it: NumPy's type rules then
        # compute the length normalisation in the same precision, so the floats match.
        missing = [self._names[t] for t, n in local_df.items() if n and self._names[t] not in self._stats.df]
        if missing:
            raise ValueError(f"corpus statistics lack {len(missing)} token(s) of this shard (e.g. {missing[0]!r}): "
                             "they were counted over another corpus")
        global_df = {t: (self._stats.df[self._names[t]] if n else 0) for t, n in local_df.items()}
        idf = _build_idf_array(doc_frequencies=global_df, n_docs=self._stats.n_docs,
                               compute_idf_fn=_select_idf_scorer(self.idf_method), dtype=self.dtype)
        scores, doc_idx, vocab_idx = _build_scores_and_indices_for_matrix(
            corpus_token_ids=corpus_token_ids, idf_array=idf, avg_doc_len=np.float64(self._stats.avg_len),
            doc_frequencies=local_df, k1=self.k1, b=self.b, delta=self.delta, nonoccurrence_array=None,
            method=self.method, dtype=self.dtype, int_dtype=self.int_dtype, show_progress=False)
        data, indices, indptr = self._np_csc(data=scores, rows=doc_idx, cols=vocab_idx,
                                             shape=(len(corpus_token_ids), len(unique_token_ids)))
        self.nonoccurrence_array = None
        return {"data": data.astype(self.dtype), "indices": indices, "indptr": indptr,
                "num_docs": len(corpus_token_ids)}
