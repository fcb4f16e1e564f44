"""What Ray Train ranks the checkpoints it keeps by (`CheckpointConfig.checkpoint_score_attribute`)."""

from __future__ import annotations

import math
from typing import Any

CHECKPOINT_SCORE = "checkpoint_score"
UNSCORED = -1e30  # below any reward; finite, so it survives Ray's checkpoint snapshot


def checkpoint_score(metrics: dict[str, Any]) -> float:
    """What Ray ranks a reported checkpoint by: the step's reward, or `UNSCORED` when the reward is
    unknown (the warm-up, reported as step 0 with a NaN reward) or diverged. Ray writes its list of
    checkpoints to a JSON snapshot, where NaN becomes null, and a resumed run then fails comparing
    the next checkpoint with None; a finite score ranks such a checkpoint last and resumes."""
    reward = metrics.get("reward")
    return float(reward) if isinstance(reward, (int, float)) and math.isfinite(reward) else UNSCORED
