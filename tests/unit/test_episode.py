"""The episode state machine: budgets, selection, dedup, nudges and the generation cap."""

from __future__ import annotations

import pytest

from fakes import FAKE_PASSAGES, FakeRetriever
from s3_ray.agent.episode import Episode, EpisodeError
from s3_ray.agent.protocol import NUDGE
from s3_ray.config import RolloutConfig
from s3_ray.types import Passage, QAItem, SearchHit

ITEM = QAItem("q1", "Who is the mayor of the town on the river Wend?", ("Clara Holt",))
P = {p.id: p for p in FAKE_PASSAGES}


def q(text: str, ids: str | None = None, complete: str = "False") -> str:
    sel = f"<important_info>{ids}</important_info>" if ids is not None else ""
    return f'{sel}<search_complete>{complete}</search_complete><query>{{"query": "{text}"}}</query>'


def done(ids: str | None = None) -> str:
    sel = f"<important_info>{ids}</important_info>" if ids is not None else ""
    return f"{sel}<search_complete>True</search_complete>"


def hits(*ids: str) -> list[SearchHit]:
    return [SearchHit(P[i], 1.0) for i in ids]


def budget(**kw) -> RolloutConfig:
    base = dict(init_k=2, top_k=3, keep_per_turn=2, max_turns=2, keep_unselected=True)
    base.update(kw)
    return RolloutConfig(**base)


def test_complete_on_first_turn_keeps_init_only():
    ep = Episode(ITEM, [P["p1"], P["p2"]], budget())
    assert ep.step(done("[1]")) is None
    assert ep.done and ep.end_reason == "complete"
    assert [p.id for p in ep.context()] == ["p1", "p2"]  # init block is never cut by selection
    assert ep.turns[0].selected_ids == [] and ep.turns[0].complete


def test_search_select_complete_and_dedup():
    ep = Episode(ITEM, [P["p1"], P["p2"]], budget())
    assert ep.retrieval_k == 3 + 2
    assert ep.step(q("mayor")) == "mayor"
    obs = ep.observe(hits("p2", "p3", "p1", "p4", "p5", "p6"))
    # p2 and p1 were shown in the init block: dropped; first top_k=3 new ones kept
    assert ep.turns[-1].retrieved_ids == ["p3", "p4", "p5"]
    assert obs.startswith("\n<information>Doc 1(Title: Birch Falls)") and "Doc 3(Title: Holt Company)" in obs
    assert "Doc 4" not in obs
    assert ep.retrieval_k == 3 + 5
    assert ep.step(done("[3, 1, 2]")) is None  # 3 ids, keep_per_turn=2 keeps the first two named
    assert ep.turns[-1].selected_ids == ["p5", "p3"]
    assert [p.id for p in ep.context()] == ["p1", "p2", "p5", "p3"]


def test_unselected_block_keeps_top_or_nothing():
    for keep, expected in [(True, ["p3", "p4"]), (False, [])]:
        ep = Episode(ITEM, [], budget(keep_unselected=keep, init_k=0))
        ep.step(q("a"))
        ep.observe(hits("p3", "p4", "p5"))
        ep.step(q("b"))  # no tag: closes block 1 with the default
        assert ep.turns[-1].selected_ids == expected
        ep.observe(hits("p6"))
        ep.step(done("[]"))  # a tag with no valid id selects nothing
        assert ep.turns[-1].selected_ids == []
        assert [p.id for p in ep.context()] == expected


def test_out_of_range_ids_select_nothing_and_are_flagged():
    ep = Episode(ITEM, [], budget(init_k=0))
    ep.step(q("a"))
    ep.observe(hits("p3", "p4"))
    ep.step(done("[3, 7]"))
    assert ep.turns[-1].malformed == "ids_out_of_range"
    assert ep.context() == []


def test_max_turns_then_final_turn_query_not_run():
    ep = Episode(ITEM, [P["p1"]], budget(max_turns=2))
    assert ep.step(q("one")) == "one"
    ep.observe(hits("p3"))
    assert ep.step(q("two", "[1]")) == "two"
    ep.observe(hits("p4"))
    assert ep.next_turn_is_final
    assert ep.step(q("three", "[1]")) is None  # final turn: query not run
    assert ep.done and ep.end_reason == "max_turns"
    assert ep.searches == 2 and ep.turns[-1].query is None
    assert [p.id for p in ep.context()] == ["p1", "p3", "p4"]
    with pytest.raises(EpisodeError, match="finished"):
        ep.step(done())


def test_zero_turn_budget_makes_first_turn_final():
    ep = Episode(ITEM, [P["p1"]], budget(max_turns=0))
    assert ep.step(q("x")) is None and ep.done and ep.searches == 0


def test_invalid_turn_gets_nudge_and_selection_made_there_counts():
    ep = Episode(ITEM, [], budget(init_k=0))
    ep.step(q("a"))
    ep.observe(hits("p3", "p4", "p5"))
    assert ep.step("<important_info>[3]</important_info>I am not sure.") is None
    assert not ep.done and ep.needs_nudge and ep.turns[-1].malformed == "no_action"
    assert ep.nudge() == NUDGE
    # the later tag does not override the first one for the same block
    assert ep.step(q("b", "[1]")) == "b"
    assert ep.turns[-1].selected_ids == ["p5"]
    with pytest.raises(EpisodeError, match="nudge"):
        ep.nudge()


def test_generation_cap_ends_an_episode_of_invalid_turns():
    b = budget(max_turns=2)
    ep = Episode(ITEM, [], b)
    for _ in range(ep.max_generations - 1):
        assert ep.step("no tags at all") is None and not ep.done
    ep.step("still nothing")
    assert ep.done and ep.end_reason == "max_generations"
    assert len(ep.turns) == b.max_turns + 2 == ep.max_generations


def test_call_order_is_enforced():
    ep = Episode(ITEM, [], budget())
    with pytest.raises(EpisodeError, match="without a pending query"):
        ep.observe([])
    ep.step(q("a"))
    with pytest.raises(EpisodeError, match="observe"):
        ep.step(q("b"))
    assert ep.observe([]) == "\n<information>No new documents.\n</information>\n"
    ep2 = Episode(ITEM, [], budget())
    ep2.step(q("a"))
    with pytest.raises(TypeError, match="hit 0 .* not SearchHit"):
        ep2.observe([P["p1"]])  # type: ignore[list-item]


def test_duplicates_within_one_hit_list_and_against_fake_retriever():
    ep = Episode(ITEM, [], budget(init_k=0, top_k=2))
    ep.step(q("river"))
    ep.observe(hits("p2", "p2", "p1"))
    assert ep.turns[-1].retrieved_ids == ["p2", "p1"]
    # driven by the fake retriever with retrieval_k, every block holds top_k unseen documents
    ep = Episode(ITEM, [P["p1"], P["p2"]], budget(top_k=2, max_turns=3))
    r = FakeRetriever()
    seen: list[str] = [p.id for p in ep.init_passages]
    for _ in range(3):
        ep.step(q("river Wend Alder town"))
        ep.observe(r.search(["river Wend Alder town"], ep.retrieval_k)[0])
        new = ep.turns[-1].retrieved_ids
        assert len(new) == 2 and not set(new) & set(seen)
        seen += new
    assert len(set(seen)) == len(seen) == 8


def test_bad_init_passage_type_is_named():
    with pytest.raises(TypeError, match=r"init_passages\[1\].*q1"):
        Episode(ITEM, [P["p1"], "p2"], budget())  # type: ignore[list-item]


def test_context_dedups_by_id():
    dup = Passage("p1", "same id, other text")
    ep = Episode(ITEM, [P["p1"], dup], budget())
    assert [p.contents for p in ep.context()] == [P["p1"].contents]


# ---------------------------------------------------------------- rollout.select_initial

def test_select_initial_keeps_only_the_initial_documents_the_first_turn_names():
    ep = Episode(ITEM, [P["p1"], P["p2"], P["p3"]], budget(init_k=3, select_initial=True))
    assert ep.step(q("mayor", "[3, 1, 2]")) == "mayor"  # keep_per_turn=2: the first two named
    assert ep.turns[0].selected_ids == ["p3", "p1"]
    ep.observe(hits("p4", "p5", "p6"))
    assert ep.step(done("[2]")) is None
    assert ep.turns[1].selected_ids == ["p5"]
    # p2 was shown, never kept: it does not reach the generator; kept initial documents come first
    assert [p.id for p in ep.context()] == ["p3", "p1", "p5"]


def test_select_initial_stopping_at_once_keeps_what_it_names_and_no_tag_keeps_nothing():
    ep = Episode(ITEM, [P["p1"], P["p2"]], budget(select_initial=True))
    ep.step(done("[2]"))
    assert [p.id for p in ep.context()] == ["p2"] and ep.turns[0].selected_ids == ["p2"]
    # no tag before the first search: none of the initial documents is kept, whatever keep_unselected
    ep = Episode(ITEM, [P["p1"], P["p2"]], budget(select_initial=True, keep_unselected=True))
    ep.step(q("mayor"))
    assert ep.turns[0].selected_ids == []
    ep.observe(hits("p3", "p4"))
    ep.step(q("born"))  # the retrieved block keeps its default as before
    assert ep.turns[1].selected_ids == ["p3", "p4"]
    ep.observe(hits("p5"))
    ep.step(done("[]"))
    assert [p.id for p in ep.context()] == ["p3", "p4"]


def test_select_initial_out_of_range_ids_are_malformed_as_before_and_the_rest_kept():
    ep = Episode(ITEM, [P["p1"], P["p2"]], budget(select_initial=True))
    ep.step(done("[2, 5]"))
    assert ep.turns[0].malformed == "ids_out_of_range"
    assert [p.id for p in ep.context()] == ["p2"]
    ep = Episode(ITEM, [P["p1"], P["p2"]], budget(select_initial=True))
    ep.step(done("[7]"))
    assert ep.turns[0].malformed == "ids_out_of_range" and ep.context() == []


def test_select_initial_first_tag_before_the_first_search_wins_across_a_nudge():
    ep = Episode(ITEM, [P["p1"], P["p2"]], budget(select_initial=True))
    assert ep.step("<important_info>[2]</important_info>I am not sure.") is None and ep.needs_nudge
    assert ep.step(q("mayor", "[1]")) == "mayor"
    assert ep.turns[-1].selected_ids == ["p2"]
    ep.observe(hits("p3"))
    ep.step(done("[1]"))
    assert [p.id for p in ep.context()] == ["p2", "p3"]


def test_select_initial_off_keeps_every_initial_document_whatever_the_tags_say():
    for first in (q("mayor", "[2]"), q("mayor"), q("mayor", "[9]")):
        ep = Episode(ITEM, [P["p1"], P["p2"]], budget(select_initial=False))
        ep.step(first)
        assert ep.turns[0].selected_ids == []
        ep.observe(hits("p3", "p4"))
        ep.step(done("[2]"))
        assert [p.id for p in ep.context()] == ["p1", "p2", "p4"]
