"""Where a searcher's GenAcc is lost on multi-hop questions: finding the evidence, or the frozen
generator reading it.

For data whose questions name their supporting passages (`meta["support"]`, passage ids; the
embedded world and HotpotQA-style sets do), one method's evaluation records (`context_ids`,
`genacc`, as `s3_ray.eval.runner` writes them) split into:

* multi-hop questions (two or more supporting passages) whose context holds all of them, and
  GenAcc there: how well the generator answers once the evidence is found;
* those whose context misses one, and GenAcc there;
* `context_docs`: documents per question in the method's contexts (a shorter context has fewer
  distractors);
* `ceiling_all_found`: the method's GenAcc if every multi-hop question had all its evidence and
  was answered at the "found" rate (the method's own, or `found_rate`: e.g. one pooled over
  several evaluations, when a method found too few to have a rate of its own).
  `ceiling_all_found - genacc` is what better search alone can still add with this generator and
  this context size; beyond it only a shorter context (fewer distractors) or a stronger generator
  helps.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from s3_ray.types import QAItem


def _rate(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def support_breakdown(records: Iterable[Mapping[str, Any]], items: Iterable[QAItem],
                      found_rate: float | None = None) -> dict[str, Any]:
    """Per-type GenAcc, evidence recall on multi-hop questions and the all-found ceiling of one
    method (fractions, not points). Records of questions missing from `items` are refused.

    >>> items = [QAItem("a", "?", ("x",), {"type": "bridge", "support": ["p1", "p2"]}),
    ...          QAItem("b", "?", ("y",), {"type": "bridge", "support": ["p3", "p4"]}),
    ...          QAItem("c", "?", ("z",), {"type": "single", "support": ["p5"]})]
    >>> recs = [{"id": "a", "genacc": 1.0, "context_ids": ["p2", "p1", "p9"]},
    ...         {"id": "b", "genacc": 0.0, "context_ids": ["p3"]},
    ...         {"id": "c", "genacc": 1.0, "context_ids": ["p5"]}]
    >>> r = support_breakdown(recs, items)
    >>> r["genacc"], r["multi_hop"]["all_found"], r["multi_hop"]["genacc_found"], r["ceiling_all_found"]
    (0.6667, 1, 1.0, 1.0)
    >>> r["context_docs"]
    1.6667
    >>> r["by_type"]["bridge"]
    {'n': 2, 'genacc': 0.5}
    >>> support_breakdown(recs, items, found_rate=0.5)["ceiling_all_found"]
    0.6667
    """
    by_id = {it.id: it for it in items}
    by_type: dict[str, list[float]] = defaultdict(list)
    found: list[float] = []
    missing: list[float] = []
    single: list[float] = []
    docs: list[float] = []
    for rec in records:
        qid = str(rec["id"])
        if qid not in by_id:
            raise ValueError(f"evaluation record {qid!r} is not one of the given questions")
        meta = by_id[qid].meta
        acc = float(rec["genacc"])
        docs.append(float(len(rec.get("context_ids") or [])))
        by_type[str(meta.get("type", "unknown"))].append(acc)
        support = [str(s) for s in meta.get("support") or []]
        if len(support) < 2:
            single.append(acc)
        elif set(support) <= {str(c) for c in rec.get("context_ids") or []}:
            found.append(acc)
        else:
            missing.append(acc)
    n = len(single) + len(found) + len(missing)
    if n == 0:
        raise ValueError("no evaluation records")
    rate_found = _rate(found)
    assumed = rate_found if found_rate is None else found_rate
    ceiling = None
    if assumed is not None:
        ceiling = round((sum(single) + (len(found) + len(missing)) * assumed) / n, 4)
    return {
        "questions": n,
        "genacc": round((sum(single) + sum(found) + sum(missing)) / n, 4),
        "by_type": {t: {"n": len(v), "genacc": _rate(v)} for t, v in sorted(by_type.items())},
        "multi_hop": {"n": len(found) + len(missing), "all_found": len(found), "genacc_found": rate_found,
                      "genacc_missing": _rate(missing)},
        "ceiling_all_found": ceiling,
        "context_docs": _rate(docs),
    }
