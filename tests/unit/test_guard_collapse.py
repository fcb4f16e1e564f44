"""Collapse guard: patience, KL and malformed-rate limits, NaN loss, state round trip."""

from __future__ import annotations

import pytest

from s3_ray.config import TrainConfig
from s3_ray.rl.loop.guard import CollapseGuard


def _m(malformed=0.0, kl=0.0, loss=0.1):
    return {"malformed_rate": malformed, "kl": kl, "loss": loss}


def test_malformed_rate_needs_patience_consecutive_steps():
    g = CollapseGuard(TrainConfig(guard_malformed_rate=0.5, guard_patience=3))
    assert g.update(_m(0.9)) is None
    assert g.update(_m(0.9)) is None
    assert g.update(_m(0.5)) is None  # not above the limit: the streak restarts
    assert g.update(_m(0.7)) is None and g.update(_m(0.8)) is None
    reason = g.update(_m(0.6))
    assert reason is not None and "malformed-turn rate above 0.5" in reason and "3 consecutive" in reason


def test_kl_limit_and_nan_kl():
    g = CollapseGuard(TrainConfig(guard_malformed_rate=None, guard_kl=0.2, guard_patience=2))
    assert g.update(_m(malformed=1.0, kl=0.3)) is None  # malformed check is off
    assert "KL above 0.2" in g.update(_m(kl=float("nan")))
    g2 = CollapseGuard(TrainConfig(guard_malformed_rate=None, guard_kl=0.2, guard_patience=1))
    assert g2.update(_m(kl=0.2)) is None and g2.update(_m(kl=0.21)) is not None


def test_non_finite_loss_stops_at_once():
    g = CollapseGuard(TrainConfig(guard_patience=5))
    assert "non-finite loss" in g.update(_m(loss=float("nan")))
    assert "non-finite loss" in g.update(_m(loss=float("inf")))


def test_state_round_trip_and_missing_metric():
    cfg = TrainConfig(guard_malformed_rate=0.5, guard_kl=1.0, guard_patience=2)
    g = CollapseGuard(cfg)
    g.update(_m(malformed=0.9, kl=2.0))
    resumed = CollapseGuard(cfg)
    resumed.load_state(g.state())
    reason = resumed.update(_m(malformed=0.9, kl=2.0))
    assert "malformed" in reason and "KL" in reason
    with pytest.raises(KeyError, match="malformed_rate"):
        CollapseGuard(cfg).update({"loss": 0.0, "kl": 0.0})
