"""Training curves are drawn from a small metrics JSONL."""

from __future__ import annotations

import json

import pytest

from s3_ray.rl.loop.curves import plot_curves


def test_png_is_written_from_jsonl(tmp_path):
    path = tmp_path / "train" / "metrics.jsonl"
    path.parent.mkdir()
    rows = [{"step": 0, "warmup/loss": 3.0, "phase": "warmup"}]
    for s in range(1, 5):
        rows.append({"step": s, "reward": 0.1 * s, "gbr": 0.05 * s, "genacc": 0.3, "kl": 0.01 * s,
                     "kl_coef": 0.1, "malformed_rate": 0.5 / s, "time/rollout_s": 2.0, "time/reward_s": 1.0,
                     "time/update_s": 3.0})
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n{\"step\": 5, \"rew")  # torn last line
    out = plot_curves(path)
    assert out == tmp_path / "train" / "curves.png"
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_no_rl_steps_is_an_error(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"step": 0, "warmup/loss": 1.0}) + "\n")
    with pytest.raises(ValueError, match="no RL step records"):
        plot_curves(path, tmp_path / "c.png")
