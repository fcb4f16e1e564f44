"""Answer metrics on the cases that trip normalisation: punctuation, articles, accents, numbers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from s3_ray.reward.metrics import exact_match, f1, genacc, normalize_answer, span_match


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("The Beatles", "beatles"),
        ("  A   tale of\ttwo cities ", "tale of two cities"),
        ("theatre an anthem", "theatre anthem"),            # articles only as whole words
        ("O'Brien, Jr.", "obrien jr"),
        ("\u201cQuoted\u201d \u2013 dash", "quoted dash"),   # Unicode punctuation goes too
        ("1,000,000", "1000000"),
        ("3.14", "314"),
        ("$5 + tax", "5 tax"),
        ("", ""),
        ("The", ""),
    ],
)
def test_normalize_answer(raw: str, expected: str) -> None:
    assert normalize_answer(raw) == expected


def test_unicode_composed_and_decomposed_forms_agree() -> None:
    composed, decomposed = "Andr\u00e9 Mes\u00e9", "Andre\u0301 Mese\u0301"
    assert composed != decomposed
    assert exact_match(composed, [decomposed]) == 1.0
    assert span_match(f"It was {decomposed}.", [composed]) == 1.0
    # accents are not thrown away: a different letter stays different
    assert exact_match("Andre", [composed]) == 0.0


def test_exact_match_multiple_golds_and_articles() -> None:
    assert exact_match("the United States", ["USA", "United States"]) == 1.0
    assert exact_match("United States of America", ["USA", "United States"]) == 0.0
    assert exact_match("anything", []) == 0.0
    assert exact_match("", ["The"]) == 0.0  # an empty gold never counts


def test_f1_partial_and_max_over_golds() -> None:
    assert f1("Barack Obama", ["Obama"]) == pytest.approx(2 / 3)
    assert f1("Barack Obama", ["Michelle Obama", "Barack Hussein Obama"]) == pytest.approx(0.8)
    assert f1("obama obama", ["obama"]) == pytest.approx(2 / 3)  # repeated tokens count once against gold
    assert f1("Paris", ["London"]) == 0.0
    assert f1("The", ["The"]) == 0.0


def test_span_match_contiguity_numbers_and_empty_gold() -> None:
    assert span_match("He was born in 1,879 in Ulm.", ["1879"]) == 1.0
    assert span_match("born in 18 79", ["1879"]) == 0.0
    assert span_match("the New York Times", ["new york"]) == 1.0
    assert span_match("York, New", ["new york"]) == 0.0
    assert span_match("Newark", ["new"]) == 0.0  # tokens, not substrings
    assert span_match("whatever", ["The", "a"]) == 0.0  # unlike the original, empty golds never match
    assert span_match("whatever", ["The", "whatever"]) == 1.0


def test_genacc_consults_judge_only_after_span_failure() -> None:
    calls: list[str] = []

    def judge(pred: str, golds: object) -> bool:
        calls.append(pred)
        return pred == "JFK"

    assert genacc("John F. Kennedy", ["John F Kennedy"], judge) == 1.0
    assert calls == []
    assert genacc("JFK", ["John F Kennedy"], judge) == 1.0
    assert genacc("Nixon", ["John F Kennedy"], judge) == 0.0
    assert calls == ["JFK", "Nixon"]


words = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=30)


@given(words)
def test_normalize_is_idempotent(s: str) -> None:
    n = normalize_answer(s)
    assert normalize_answer(n) == n


@given(words, words)
def test_exact_match_implies_span_match_and_full_f1(pred: str, gold: str) -> None:
    if exact_match(pred, [gold]):
        assert span_match(pred, [gold]) == 1.0
        assert f1(pred, [gold]) == 1.0
    if normalize_answer(gold):
        assert span_match(f"x {gold} y", [gold]) == 1.0
