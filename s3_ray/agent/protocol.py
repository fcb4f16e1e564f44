"""The s3 action protocol as pure string functions: parse one searcher turn, render observations.

A searcher turn may contain (in any order, reasoning inside ``<think>...</think>`` is ignored)::

    <important_info>[1, 3]</important_info>          ids of useful docs in the last block
    <search_complete>False</search_complete>         True / yes / 1 / y (any case) = stop
    <query>{"query": "who founded X"}</query>        the next search

The environment answers a query with ``<information>Doc 1(Title: T) text ...</information>``.

Parsing rules (`parse_turn` never raises, whatever the string):

* ``<think>`` blocks are removed first; then everything after the first ``</query>`` is dropped,
  so a model that goes on to write its own ``<information>`` cannot act on invented documents.
* The first ``<query>`` block wins. Its body is JSON ``{"query": str}`` (a list value uses its first
  element). Invalid JSON or a missing key: the raw body is the query (reason ``bad_json``), still
  searched. A blank query counts as no query.
* ``<search_complete>`` (first tag) with true/yes/1/y ends the episode and overrides a query in the
  same turn: the query is dropped (reason ``query_and_complete``).
* ``<important_info>`` (first tag): every integer in it, de-duplicated in order; ids outside
  1..block_size are dropped (reason ``ids_out_of_range``). ``selected is None`` means no tag at all,
  which is different from a tag that names no valid id (an empty tuple).
* Neither a query nor complete: reason ``no_action`` (the environment answers with `NUDGE`).

One turn has at most one reason; the most consequential wins, in `MALFORMED_REASONS` order.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from s3_ray.types import Passage

MALFORMED_REASONS: tuple[str, ...] = ("no_action", "query_and_complete", "bad_json", "ids_out_of_range")
"""Reason codes of a turn that broke the protocol, most consequential first."""

NUDGE = (
    "\nThe information is not enough to answer the question. Write a brand new search query "
    "in JSON format inside the query tags, or mark the search as complete.\n"
)
"""What the environment appends after a turn that neither searched nor completed. It names no
literal tag, so a model that echoes it does not thereby issue an action."""

TRUE_VALUES = frozenset({"true", "yes", "1", "y"})

_THINK_RE = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_QUERY_RE = re.compile(r"<query>(.*?)</query>", re.DOTALL | re.IGNORECASE)
_COMPLETE_RE = re.compile(r"<search_complete>(.*?)</search_complete>", re.DOTALL | re.IGNORECASE)
_INFO_RE = re.compile(r"<important_info>(.*?)</important_info>", re.DOTALL | re.IGNORECASE)
_INT_RE = re.compile(r"-?\d+")
_QUERY_CLOSE_RE = re.compile(r"</query>", re.IGNORECASE)


@dataclass(frozen=True)
class ParsedTurn:
    """What one searcher turn asks for. `selected` holds 1-based ids within the last block."""

    query: str | None
    selected: tuple[int, ...] | None
    complete: bool
    malformed: str | None

    @property
    def valid(self) -> bool:
        """A turn is actionable when it searches or completes.

        >>> parse_turn("hello", 3).valid
        False
        """
        return self.query is not None or self.complete


def _parse_query_body(body: str) -> tuple[str | None, bool]:
    """(query, bad_json) from the inside of a ``<query>`` tag.

    >>> _parse_query_body('{"query": " rivers "}')
    ('rivers', False)
    >>> _parse_query_body('{"query": ["a", "b"]}')
    ('a', False)
    >>> _parse_query_body('rivers of France')
    ('rivers of France', True)
    >>> _parse_query_body('{"q": "x"}')
    ('{"q": "x"}', True)
    >>> _parse_query_body('  ')
    (None, False)
    """
    raw = body.strip()
    value: object = None
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        data = None
    if isinstance(data, dict) and "query" in data:
        value = data["query"]
        if isinstance(value, list):
            value = value[0] if value else None
    if isinstance(value, str):
        return (value.strip() or None), False
    return (raw or None), bool(raw)


def _parse_ids(body: str, block_size: int) -> tuple[tuple[int, ...], bool]:
    """(ids in 1..block_size, de-duplicated in order; whether any id was dropped).

    >>> _parse_ids("[3, 1, 3, 9, -1]", 4)
    ((3, 1), True)
    >>> _parse_ids("none", 4)
    ((), False)
    """
    kept: list[int] = []
    dropped = False
    for token in _INT_RE.findall(body):
        value = int(token)
        if 1 <= value <= block_size:
            if value not in kept:
                kept.append(value)
        else:
            dropped = True
    return tuple(kept), dropped


def parse_turn(text: str, block_size: int) -> ParsedTurn:
    """Parse one searcher turn against an information block of `block_size` documents.

    >>> parse_turn('<important_info>[2]</important_info><query>{"query": "x"}</query>', 3)
    ParsedTurn(query='x', selected=(2,), complete=False, malformed=None)
    >>> parse_turn('<search_complete>YES</search_complete><query>{"query": "x"}</query>', 3)
    ParsedTurn(query=None, selected=None, complete=True, malformed='query_and_complete')
    >>> parse_turn('<query>{"query": "x"}</query><information>Doc 1</information>'
    ...            '<search_complete>True</search_complete>', 3).complete
    False
    >>> parse_turn('<search_complete>False</search_complete>', 3).malformed
    'no_action'
    >>> parse_turn('<important_info>[1, 5]</important_info><search_complete>1</search_complete>', 3)
    ParsedTurn(query=None, selected=(1,), complete=True, malformed='ids_out_of_range')
    """
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    text = _THINK_RE.sub(" ", text)
    close = _QUERY_CLOSE_RE.search(text)
    if close:
        text = text[: close.end()]

    query: str | None = None
    bad_json = False
    match = _QUERY_RE.search(text)
    if match:
        query, bad_json = _parse_query_body(match.group(1))

    complete = False
    match = _COMPLETE_RE.search(text)
    if match:
        complete = match.group(1).strip().lower() in TRUE_VALUES

    selected: tuple[int, ...] | None = None
    dropped = False
    match = _INFO_RE.search(text)
    if match:
        selected, dropped = _parse_ids(match.group(1), max(0, int(block_size)))

    reasons: list[str] = []
    if complete and query is not None:
        reasons.append("query_and_complete")
        query = None
    if query is None and not complete:
        reasons.append("no_action")
    if bad_json and query is not None:
        reasons.append("bad_json")
    if dropped:
        reasons.append("ids_out_of_range")
    malformed = min(reasons, key=MALFORMED_REASONS.index) if reasons else None
    return ParsedTurn(query=query, selected=selected, complete=complete, malformed=malformed)


def format_docs(passages: Sequence[Passage], start: int = 1) -> str:
    """Number passages as s3 does, one line each (``Doc i(Title: T) text``), newline-terminated.

    >>> format_docs([Passage("a", '"Paris"\\nCapital of France.')])
    'Doc 1(Title: Paris) Capital of France.\\n'
    """
    return "".join(f"Doc {i}(Title: {p.title}) {p.text}\n" for i, p in enumerate(passages, start=start))


def render_information(passages: Sequence[Passage], start: int = 1) -> str:
    """The observation the environment appends after a search (an empty result says so).

    >>> render_information([Passage("a", '"Paris"\\nCapital of France.')])
    '\\n<information>Doc 1(Title: Paris) Capital of France.\\n</information>\\n'
    >>> render_information([])
    '\\n<information>No new documents.\\n</information>\\n'
    """
    body = format_docs(passages, start) if passages else "No new documents.\n"
    return f"\n<information>{body}</information>\n"
