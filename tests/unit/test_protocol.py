"""The s3 tag protocol: parse_turn rules, rendering, and robustness on arbitrary text."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s3_ray.agent.protocol import (
    MALFORMED_REASONS,
    NUDGE,
    ParsedTurn,
    format_docs,
    parse_turn,
    render_information,
)
from s3_ray.types import Passage


def test_well_formed_turn():
    t = parse_turn(
        '<think>hmm <query>{"query": "ignored"}</query></think>'
        "<important_info>[2, 1]</important_info>"
        "<search_complete>False</search_complete>"
        '<query>{"query": "mayor of Birch Falls"}</query>',
        block_size=3,
    )
    assert t == ParsedTurn(query="mayor of Birch Falls", selected=(2, 1), complete=False, malformed=None)


def test_first_query_wins_and_text_after_it_is_ignored():
    t = parse_turn(
        '<query>{"query": "first"}</query><information>Doc 1(Title: X) y</information>'
        "<important_info>[1]</important_info><search_complete>True</search_complete>"
        '<query>{"query": "second"}</query>',
        block_size=3,
    )
    assert t.query == "first"
    assert t.selected is None and t.complete is False and t.malformed is None


@pytest.mark.parametrize(
    "body, query, reason",
    [
        ('{"query": "a b"}', "a b", None),
        ('{"query": ["first", "second"]}', "first", None),
        ("plain words", "plain words", "bad_json"),
        ('{"query": "unterminated', '{"query": "unterminated', "bad_json"),
        ('{"text": "x"}', '{"text": "x"}', "bad_json"),
        ('{"query": 7}', '{"query": 7}', "bad_json"),
        ('{"query": "  "}', None, "no_action"),
        ("   ", None, "no_action"),
    ],
)
def test_query_body(body, query, reason):
    t = parse_turn(f"<query>{body}</query>", block_size=0)
    assert t.query == query
    assert t.malformed == reason


@pytest.mark.parametrize("value", ["True", "true", "YES", "1", "y", " Y "])
def test_complete_values(value):
    t = parse_turn(f"<search_complete>{value}</search_complete>", block_size=0)
    assert t.complete and t.malformed is None and t.query is None


@pytest.mark.parametrize("value", ["False", "no", "0", "", "maybe", "truee"])
def test_not_complete_values(value):
    t = parse_turn(f"<search_complete>{value}</search_complete>", block_size=0)
    assert not t.complete and t.malformed == "no_action"


def test_complete_overrides_query():
    t = parse_turn('<search_complete>True</search_complete><query>{"query": "x"}</query>', 3)
    assert t.complete and t.query is None and t.malformed == "query_and_complete"


def test_ids_dedup_in_order_and_range():
    t = parse_turn("<important_info>[3, 1, 3, 0, 4, -2, 1]</important_info><search_complete>1</search_complete>", 3)
    assert t.selected == (3, 1)
    assert t.malformed == "ids_out_of_range"
    t = parse_turn("<important_info>none useful</important_info><search_complete>1</search_complete>", 3)
    assert t.selected == () and t.malformed is None
    t = parse_turn("<search_complete>1</search_complete>", 3)
    assert t.selected is None


def test_reason_priority():
    # a turn with no action and bad ids reports the more consequential no_action
    t = parse_turn("<important_info>[9]</important_info>", 3)
    assert t.malformed == "no_action" and t.selected == ()
    # bad json wins over out-of-range ids
    t = parse_turn("<important_info>[9]</important_info><query>free text</query>", 3)
    assert t.malformed == "bad_json" and t.query == "free text"


def test_case_insensitive_tags():
    t = parse_turn('<QUERY>{"query": "x"}</Query>', 0)
    assert t.query == "x"


def test_render_information_numbers_from_start():
    ps = [Passage("a", '"A"\nalpha'), Passage("b", '"B"\nbeta')]
    assert render_information(ps) == "\n<information>Doc 1(Title: A) alpha\nDoc 2(Title: B) beta\n</information>\n"
    assert format_docs(ps, start=4).startswith("Doc 4(Title: A)")
    # the observation itself must never look like an action
    assert parse_turn(render_information(ps), 2).malformed == "no_action"


def test_echoed_nudge_is_not_an_action():
    # small models copy the nudge verbatim; that must not count as a query or a stop tag
    assert parse_turn(NUDGE, 3).malformed == "no_action"
    assert parse_turn(NUDGE + NUDGE, 3).query is None
    assert NUDGE.rstrip().endswith(".")


def _check_consistent(t: ParsedTurn, block_size: int) -> None:
    assert isinstance(t, ParsedTurn)
    assert t.malformed is None or t.malformed in MALFORMED_REASONS
    if t.query is not None:
        assert t.query == t.query.strip() and t.query
        assert not t.complete
    if t.complete:
        assert t.query is None
    assert (t.malformed == "no_action") == (t.query is None and not t.complete)
    if t.selected is not None:
        assert len(set(t.selected)) == len(t.selected)
        assert all(1 <= i <= block_size for i in t.selected)


@settings(max_examples=300, deadline=None)
@given(st.text(), st.integers(min_value=-3, max_value=12))
def test_never_raises_on_arbitrary_text(text, block_size):
    _check_consistent(parse_turn(text, block_size), max(0, block_size))


FRAGMENTS = [
    "<query>", "</query>", "<QUERY>", '{"query": "', '"}', "[", "]", '{"query": ["a"]}',
    "<important_info>", "</important_info>", "<search_complete>", "</search_complete>",
    "True", "false", "yes", "<think>", "</think>", "<information>", "</information>",
    "1", "2", "99", "-4", ", ", " ", "\n", "river", '"', "\\", "{", "}",
]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=4)), max_size=30),
       st.integers(min_value=0, max_value=8))
def test_never_raises_on_tag_soup(parts, block_size):
    _check_consistent(parse_turn("".join(parts), block_size), block_size)


def test_non_string_input_does_not_raise():
    assert parse_turn(None, 3).malformed == "no_action"  # type: ignore[arg-type]
    assert isinstance(parse_turn(b"<query>x</query>", 3), ParsedTurn)  # type: ignore[arg-type]
