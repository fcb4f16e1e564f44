"""Where GenAcc is lost (evidence found or not, the all-found ceiling) and what changed between two
evaluations of the same questions: the arithmetic the RL proof's report stands on."""

from __future__ import annotations

import pytest

from s3_ray.eval.episode_diff import episode_changes
from s3_ray.eval.headroom import support_breakdown
from s3_ray.types import QAItem


def bridge(qid: str, support: list[str]) -> QAItem:
    return QAItem(qid, "?", ("x",), {"type": "bridge", "support": support})


def rec(qid: str, acc: float, ctx: list[str], queries: list[str] | None = None, malformed: str | None = None) -> dict:
    trace = [{"query": q, "malformed": malformed} for q in (queries or ["q"])]
    return {"id": qid, "genacc": acc, "context_ids": ctx, "trace": trace}


def test_a_bridge_question_counts_as_found_only_with_every_supporting_passage():
    items = [bridge("a", ["p1", "p2"]), bridge("b", ["p3", "p4"]), bridge("c", ["p5", "p6"]), bridge("d", ["p7", "p8"])]
    recs = [rec("a", 1.0, ["p1", "p2"]), rec("b", 0.0, ["p3", "p4", "x"]),   # found: 1 of 2 right
            rec("c", 1.0, ["p5"]), rec("d", 0.0, ["p8"])]                      # one passage missing
    r = support_breakdown(recs, items)
    assert r["multi_hop"] == {"n": 4, "all_found": 2, "genacc_found": 0.5, "genacc_missing": 0.5}
    assert r["genacc"] == 0.5
    # all four at the found rate (0.5): the ceiling equals GenAcc here, so search alone adds nothing
    assert r["ceiling_all_found"] == 0.5


def test_the_ceiling_keeps_single_hop_questions_as_answered():
    items = [bridge("a", ["p1", "p2"]), bridge("b", ["p3", "p4"]),
             QAItem("s", "?", ("y",), {"type": "single", "support": ["p9"]})]
    recs = [rec("a", 1.0, ["p1", "p2"]), rec("b", 0.0, ["p3"]), rec("s", 0.0, ["p9"])]
    r = support_breakdown(recs, items)
    assert r["ceiling_all_found"] == round(2 / 3, 4)   # (0 single + 2 bridge x 1.0) / 3
    assert r["by_type"] == {"bridge": {"n": 2, "genacc": 0.5}, "single": {"n": 1, "genacc": 0.0}}


def test_no_found_multi_hop_question_leaves_the_ceiling_unknown_and_questions_without_support_are_single():
    items = [bridge("a", ["p1", "p2"]), QAItem("n", "?", ("y",))]
    r = support_breakdown([rec("a", 0.0, ["p1"]), rec("n", 1.0, [])], items)
    assert r["ceiling_all_found"] is None and r["multi_hop"]["genacc_found"] is None
    assert r["by_type"]["unknown"] == {"n": 1, "genacc": 1.0}


def test_records_of_other_questions_or_none_at_all_are_refused():
    with pytest.raises(ValueError, match="'zz' is not one of the given questions"):
        support_breakdown([rec("zz", 1.0, [])], [bridge("a", ["p1", "p2"])])
    with pytest.raises(ValueError, match="no evaluation records"):
        support_breakdown([], [bridge("a", ["p1", "p2"])])


def test_episode_changes_counts_gains_losses_unchanged_episodes_and_malformed_turns():
    before = [rec("a", 0.0, ["p1"], ["x"]), rec("b", 1.0, ["p2"], ["y"]), rec("c", 1.0, ["p3", "p4"], ["z"])]
    after = [rec("a", 1.0, ["p5"], ["w"]), rec("b", 0.0, ["p2"], ["y2"], malformed="bad_json"),
             rec("c", 1.0, ["p4", "p3"], ["z"])]
    assert episode_changes(before, after) == {"questions": 3, "gained": 1, "lost": 1, "same_queries": 1,
                                              "same_context": 2, "malformed_before": 0, "malformed_after": 1}


def test_episode_changes_refuses_different_question_sets():
    with pytest.raises(ValueError, match="different questions"):
        episode_changes([rec("a", 0.0, [])], [rec("b", 0.0, [])])
