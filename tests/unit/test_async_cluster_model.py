"""The discrete-event cluster model (benchmarks/rl/async_cluster_model.py) on cases computed by hand."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks" / "rl"))

from async_cluster_model import Costs, bound_steps_per_hour, simulate  # noqa: E402

R, G, U, W = 30.0, 10.0, 20.0, 5.0  # rollout and reward per group, update per group, push per step
FIXED = Costs(rollout_group_s=R, reward_group_s=G, update_group_s=U, push_s=W, lengths=[1.0], group_size=4)


@pytest.mark.parametrize("generators", [1, 0])
def test_synchronous_step_is_the_sum_of_its_phases(generators):
    """S = 0, one group per step on one device of each kind (or the generator on the rollout device):
    nothing overlaps, a step takes rollout + reward + update + push."""
    res = simulate(FIXED, rollout=1, generators=generators, trainers=1, B=1, S=0, steps=20)
    assert res.steps_per_hour == pytest.approx(3600 / (R + G + U + W))
    assert res.staleness_mean == 0


def test_synchronous_groups_of_a_step_share_the_devices():
    """S = 0, B = 4 on 2 rollout and 2 generator devices, 2 trainers: two rollouts per device, then
    two reward calls per generator, then the update of 4 groups over 2 trainers, then the push."""
    res = simulate(FIXED, rollout=2, generators=2, trainers=2, B=4, S=0, steps=20)
    assert res.steps_per_hour == pytest.approx(3600 / (2 * R + 2 * G + 4 * U / 2 + W))


def test_overlap_is_bounded_by_the_slowest_device_and_beats_the_synchronous_loop():
    for S in (1, 2):
        for split in ((1, 1, 1), (2, 1, 2), (4, 0, 4)):
            sync = simulate(FIXED, *split, B=2, S=0, steps=60).steps_per_hour
            res = simulate(FIXED, *split, B=2, S=S, steps=60)
            assert sync < res.steps_per_hour <= bound_steps_per_hour(FIXED, *split, B=2) * (1 + 1e-9)
            assert res.staleness_mean <= S


def test_one_device_each_overlaps_update_with_the_next_rollout():
    """S = 1, B = 1, one device each: the rollout device's cycle (rollout + reward held + one push
    paid per step) is the slowest; the trainer's (update + push) hides behind it."""
    res = simulate(FIXED, rollout=1, generators=1, trainers=1, B=1, S=1, steps=40)
    assert res.steps_per_hour == pytest.approx(3600 / (R + G + W))


def test_busy_shares_are_device_time_over_wall_time():
    """S = 0, B = 1, one device each: a step of R + G + U + W keeps each kind busy for its own part."""
    res = simulate(FIXED, rollout=1, generators=1, trainers=2, B=1, S=0, steps=20)
    step = R + G + U / 2 + W
    assert res.busy["rollout"] == pytest.approx(R / step, rel=0.02)
    assert res.busy["generator"] == pytest.approx(G / step, rel=0.02)
    assert res.busy["training"] == pytest.approx((U / 2 + W) / step, rel=0.02)
