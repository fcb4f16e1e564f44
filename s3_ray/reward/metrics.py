"""Answer metrics: normalisation, exact match, token F1, span match and GenAcc.

GenAcc is s3's accuracy: a prediction is correct when a normalised gold answer occurs as a
contiguous token span in the normalised prediction, or (optionally) when an LLM judge says so.
Span match is what makes GenAcc agree with human judgement far better than exact match: a
generator that answers "It was Paris, France." is right about "Paris".

Two deliberate differences from the original code:

* punctuation is every Unicode punctuation character, not only ASCII `string.punctuation`
  (so curly quotes and dashes do not glue tokens together);
* a gold answer that normalises to nothing (e.g. "The") is ignored instead of matching every
  prediction.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence

Judge = Callable[[str, Sequence[str]], bool]
"""Decides whether a prediction contains one of the gold answers (e.g. an LLM asked yes/no)."""

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_ASCII_SYMBOLS = frozenset("$+<=>^`|~")  # in string.punctuation but Unicode category S, not P


def _strip_punctuation(text: str) -> str:
    return "".join(ch for ch in text if not (unicodedata.category(ch).startswith("P") or ch in _ASCII_SYMBOLS))


def normalize_answer(text: str) -> str:
    """Unicode NFD, lower-case, drop punctuation and the articles a/an/the, collapse spaces.

    >>> normalize_answer("  The Eiffel Tower!  ")
    'eiffel tower'
    >>> normalize_answer("An apple, a day")
    'apple day'
    >>> normalize_answer("1,000") == normalize_answer("1000")
    True
    >>> normalize_answer("U.S. \u2019s")
    'us s'
    >>> normalize_answer("Caf\\u00e9") == normalize_answer("Cafe\\u0301")
    True
    >>> normalize_answer("theatre")
    'theatre'
    """
    text = unicodedata.normalize("NFD", text).lower()
    text = _strip_punctuation(text)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _tokens(text: str) -> list[str]:
    return normalize_answer(text).split()


def exact_match(pred: str, golds: Sequence[str]) -> float:
    """1.0 when the normalised prediction equals any normalised gold answer.

    >>> exact_match("the Beatles", ["Beatles", "The Fab Four"])
    1.0
    >>> exact_match("Beatles band", ["Beatles"])
    0.0
    """
    p = normalize_answer(pred)
    return float(any(p == normalize_answer(g) for g in golds if normalize_answer(g)))


def f1(pred: str, golds: Sequence[str]) -> float:
    """Token-level F1 (SQuAD style), the maximum over the gold answers.

    >>> f1("Paris France", ["Paris"])
    0.6666666666666666
    >>> f1("London", ["Paris", "London"])
    1.0
    >>> f1("", ["Paris"])
    0.0
    """
    pred_toks = _tokens(pred)
    best = 0.0
    for gold in golds:
        gold_toks = _tokens(gold)
        if not pred_toks or not gold_toks:
            continue
        common = sum((Counter(pred_toks) & Counter(gold_toks)).values())
        if common == 0:
            continue
        precision, recall = common / len(pred_toks), common / len(gold_toks)
        best = max(best, 2 * precision * recall / (precision + recall))
    return best


def span_match(pred: str, golds: Sequence[str]) -> float:
    """1.0 when some gold answer's tokens occur contiguously in the prediction's tokens.

    >>> span_match("It was Paris, France.", ["paris"])
    1.0
    >>> span_match("New York City", ["York New"])
    0.0
    >>> span_match("Parisian", ["Paris"])
    0.0
    >>> span_match("anything", ["The"])
    0.0
    """
    pred_toks = _tokens(pred)
    for gold in golds:
        gold_toks = _tokens(gold)
        n = len(gold_toks)
        if n == 0:
            continue
        if any(pred_toks[i : i + n] == gold_toks for i in range(len(pred_toks) - n + 1)):
            return 1.0
    return 0.0


def genacc(pred: str, golds: Sequence[str], judge: Judge | None = None) -> float:
    """Generation accuracy: span match, else the judge's verdict when a judge is given.

    >>> genacc("He was born in 1879.", ["1879"])
    1.0
    >>> genacc("nineteen", ["19"])
    0.0
    >>> genacc("nineteen", ["19"], judge=lambda p, g: True)
    1.0
    """
    if span_match(pred, golds):
        return 1.0
    if judge is not None and judge(pred, golds):
        return 1.0
    return 0.0
