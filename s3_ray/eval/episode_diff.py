"""How one method's evaluation episodes differ from another's on the same questions (a searcher's
checkpoint before and after RL): questions gained and lost, episodes whose queries or context did
not change, and episodes with a malformed turn. Records are `s3_ray.eval.runner`'s (`genacc`,
`context_ids`, `trace`)."""

from __future__ import annotations

from typing import Any


def episode_changes(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> dict[str, int]:
    """How the greedy searcher's test episodes differ between two checkpoints (warm-up only, then
    trained): questions gained and lost, episodes with the same queries and the same context, and
    episodes with a malformed turn before and after.

    >>> a = [{"id": "q1", "genacc": 0.0, "context_ids": ["p1"], "trace": [{"query": "x", "malformed": None}]},
    ...      {"id": "q2", "genacc": 1.0, "context_ids": ["p2"], "trace": [{"query": "y", "malformed": None}]}]
    >>> b = [{"id": "q1", "genacc": 1.0, "context_ids": ["p3"], "trace": [{"query": "z", "malformed": "bad_json"}]},
    ...      {"id": "q2", "genacc": 1.0, "context_ids": ["p2"], "trace": [{"query": "y", "malformed": None}]}]
    >>> episode_changes(a, b)
    {'questions': 2, 'gained': 1, 'lost': 0, 'same_queries': 1, 'same_context': 1, 'malformed_before': 0, 'malformed_after': 1}
    """
    old = {r["id"]: r for r in before}
    new = {r["id"]: r for r in after}
    if set(old) != set(new):
        raise ValueError("the two evaluations answered different questions")

    def queries(r: dict[str, Any]) -> list[Any]:
        return [t.get("query") for t in r.get("trace") or []]

    def malformed(rs: dict[str, dict[str, Any]]) -> int:
        return sum(1 for r in rs.values() if any(t.get("malformed") for t in r.get("trace") or []))

    return {"questions": len(old),
            "gained": sum(1 for q in old if new[q]["genacc"] > old[q]["genacc"]),
            "lost": sum(1 for q in old if new[q]["genacc"] < old[q]["genacc"]),
            "same_queries": sum(1 for q in old if queries(new[q]) == queries(old[q])),
            "same_context": sum(1 for q in old if set(new[q]["context_ids"]) == set(old[q]["context_ids"])),
            "malformed_before": malformed(old), "malformed_after": malformed(new)}
