"""The bounded group buffer: capacity rule, staleness bound, no question lost or doubled."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s3_ray.rl.loop.curriculum import Curriculum
from s3_ray.rl.loop.group_buffer import GroupBuffer, trajectory_from_state, trajectory_state
from s3_ray.rl.loop.trainer import QuestionStream
from s3_ray.types import Passage, QAItem, Trajectory, TurnRecord

ITEMS = [QAItem(f"q{i}", f"Q{i}?", ("a",)) for i in range(40)]


def _group(item: QAItem, flat: bool, version: int = 0) -> list[Trajectory]:
    return [Trajectory(item, [1], [2], [1], reward=0.0 if flat else float(i), turn_versions=[version])
            for i in range(2)]


def simulate(seed: int, S: int, B: int, workers: int, steps: int, p_flat: float, p_kill: float,
             dynamic: bool, curriculum: bool = False) -> dict:
    """Random completion orders: every tick one in-flight group (a random one) finishes, flat or not, or
    its worker dies; the trainer takes a step whenever the buffer lets it. Checks every invariant."""
    rng = random.Random(seed)
    stream = QuestionStream(ITEMS, seed=seed)
    cur = Curriculum(stream, window=4, patience=1, rest=1, focus=0.5) if curriculum else None
    drawn: Counter[str] = Counter()

    def draw(n, version, exclude):
        qs = cur.take(n, version, exclude) if cur else stream.take(n)
        drawn.update(q.id for q in qs)
        return qs

    buf = GroupBuffer(B, S, draw, dynamic=dynamic, flat_budget=4 * B if dynamic else 0,
                      observe=cur.observe if cur else None)
    staleness: list[int] = []
    consumed: Counter[str] = Counter()
    flat_dropped: Counter[str] = Counter()
    max_ratio = 0.0
    for _ in range(100_000):
        if buf.version >= steps:
            break
        while len(buf.in_flight) < workers and buf.admit(buf.version) is not None:
            pass
        assert buf.admitted <= buf.capacity
        max_ratio = max(max_ratio, buf.admitted / buf.capacity)
        groups = buf.take()
        if groups is not None:
            assert len(groups) == B
            staleness += buf.staleness(groups)
            consumed.update(g.ticket.item.id for g in groups)
            buf.advance()
            continue
        assert buf.in_flight, "deadlock: nothing in flight and no step can be taken"
        index = rng.choice(sorted(buf.in_flight))
        ticket = buf.in_flight[index]
        if rng.random() < p_kill:
            buf.fail(index)  # its question is queued again, not drawn again
        elif not buf.complete(index, _group(ticket.item, rng.random() < p_flat, ticket.version)):
            flat_dropped[ticket.item.id] += 1
    else:
        raise AssertionError("simulation did not finish")
    assert max(staleness) <= S and min(staleness) >= 0
    # every question drawn is exactly once consumed, dropped as flat, or still held by the buffer
    held = Counter([q.id for q in buf.queue] + [t.item.id for t in buf.in_flight.values()]
                   + [g.ticket.item.id for g in buf.ready])
    assert consumed + flat_dropped + held == drawn
    return {"staleness": Counter(staleness), "max_ratio": max_ratio}


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 10**6), S=st.integers(0, 3), B=st.integers(1, 4), workers=st.integers(1, 12),
       p_flat=st.sampled_from([0.0, 0.3, 0.8]), p_kill=st.sampled_from([0.0, 0.1]), dynamic=st.booleans(),
       curriculum=st.booleans())
def test_capacity_and_staleness_hold_over_random_completion_orders(seed, S, B, workers, p_flat, p_kill, dynamic,
                                                                   curriculum):
    simulate(seed, S, B, workers, steps=8, p_flat=p_flat, p_kill=p_kill, dynamic=dynamic, curriculum=curriculum)


def test_workers_run_ahead_by_up_to_s_steps():
    """With many workers the buffer fills to its capacity, and groups of several ages train."""
    out = simulate(0, S=2, B=2, workers=10, steps=12, p_flat=0.0, p_kill=0.0, dynamic=False)
    assert out["max_ratio"] == 1.0
    assert set(out["staleness"]) == {0, 1, 2}
    sync = simulate(0, S=0, B=2, workers=10, steps=12, p_flat=0.0, p_kill=0.0, dynamic=False)
    assert set(sync["staleness"]) == {0}


def test_a_step_waits_for_a_late_group_rather_than_let_it_go_stale():
    """B=1, S=1: g0 is slow, g1 finishes and trains at step 1; g2 (admitted at version 1) finishes
    before g0, but step 2 must take g0 (its last chance), not g2."""
    buf = GroupBuffer(1, 1, lambda n, v, ex: [q for q in ITEMS if q.id not in ex][:n])
    g0, g1 = buf.admit(0), buf.admit(0)
    assert buf.admit(0) is None  # capacity (1 + 0 + 1) x 1 = 2
    buf.complete(g1.index, _group(g1.item, False))
    assert [g.ticket.index for g in buf.take()] == [g1.index]
    buf.advance()
    g2 = buf.admit(1)
    assert buf.admit(0) is None and buf.admit(1) is None
    buf.complete(g2.index, _group(g2.item, False))
    assert buf.take() is None  # g2 is ready but g0 would then miss its deadline
    buf.complete(g0.index, _group(g0.item, False))
    taken = buf.take()
    assert [g.ticket.index for g in taken] == [g0.index] and buf.staleness(taken) == [1]


def test_flat_groups_are_dropped_and_free_their_slot():
    buf = GroupBuffer(2, 0, lambda n, v, ex: [q for q in ITEMS if q.id not in ex][:n], dynamic=True, flat_budget=8)
    a, b = buf.admit(0), buf.admit(0)
    assert buf.admit(0) is None
    assert buf.complete(a.index, _group(a.item, flat=True)) is False
    c = buf.admit(0)
    assert c is not None and c.item.id != b.item.id
    assert buf.complete(b.index, _group(b.item, False)) and buf.complete(c.index, _group(c.item, False))
    assert len(buf.take()) == 2 and buf.dropped_flat == 1


def test_a_lost_group_runs_again_first():
    buf = GroupBuffer(2, 1, lambda n, v, ex: [q for q in ITEMS if q.id not in ex][:n])
    a = buf.admit(0)
    assert buf.fail(a.index) == a.item
    assert buf.admit(0).item == a.item


def test_admission_needs_the_current_weights():
    buf = GroupBuffer(1, 2, lambda n, v, ex: ITEMS[:n])
    g = buf.admit(0)
    buf.complete(g.index, _group(g.item, False))
    buf.take()
    buf.advance()
    assert buf.admit(0) is None and buf.admit(1) is not None
    with pytest.raises(RuntimeError, match="advance"):
        buf.advance()


def test_state_round_trip_and_resume_drops_groups_the_resumed_version_may_not_use():
    buf = GroupBuffer(1, 1, lambda n, v, ex: [q for q in ITEMS if q.id not in ex][:n])
    g0, g1 = buf.admit(0), buf.admit(0)
    traj = Trajectory(g1.item, [1], [2, 3], [1, 0], turns=[TurnRecord("x", query="q", retrieved_ids=["p"])],
                      context=[Passage("p", "T\ntext")], reward=1.0, behaviour_logprobs=[-0.5, 0.0],
                      turn_versions=[0])
    buf.complete(g1.index, [traj, Trajectory(g1.item, [1], [2], [1], reward=0.0, behaviour_logprobs=[-1.0],
                                             turn_versions=[0])])
    state = buf.state()
    assert trajectory_from_state(trajectory_state(traj)) == traj
    by_id = {q.id: q for q in ITEMS}
    same = GroupBuffer(1, 1, buf.draw)
    assert same.load_state(state, by_id, version=0) == []
    assert [g.ticket.item for g in same.ready] == [g1.item] and list(same.queue) == [g0.item]  # in flight: again
    later = GroupBuffer(1, 1, buf.draw)
    assert later.load_state(state, by_id, version=2) == [g1.item.id]  # begun at 0, too old for 2 with S = 1
    assert later.ready == [] and {q.id for q in later.queue} == {g0.item.id, g1.item.id}
