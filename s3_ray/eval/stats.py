"""Paired bootstrap intervals for "method A minus method B" over the same questions.

Two methods answered the same questions, so their difference is measured question by question
(paired): resampling questions with replacement and recomputing the mean difference gives a
percentile interval that accounts for how much the result hangs on which questions were asked.
Over several seeds, each question's difference is first averaged over the seeds (the seeds share
the questions), then questions are resampled.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence


def paired_differences(a: Mapping[str, float], b: Mapping[str, float]) -> dict[str, float]:
    """{question id: a - b} over the ids both answered; refuses disjoint or differing sets.

    >>> paired_differences({"q1": 1.0, "q2": 0.0}, {"q1": 0.0, "q2": 0.0})
    {'q1': 1.0, 'q2': 0.0}
    """
    if set(a) != set(b):
        missing = sorted(set(a) ^ set(b))[:5]
        raise ValueError(f"the two methods answered different questions (e.g. {missing}); compare them on the same set")
    return {q: float(a[q]) - float(b[q]) for q in sorted(a)}


def bootstrap_mean(values: Sequence[float], resamples: int = 10_000, seed: int = 0,
                   level: float = 0.95) -> dict[str, object]:
    """{"mean", "ci95": [low, high], "n"} of `values` (points: multiply by 100 first if you want them).

    >>> r = bootstrap_mean([1.0] * 10 + [0.0] * 10, resamples=2000)
    >>> r["mean"], r["n"], r["ci95"][0] < 0.5 < r["ci95"][1]
    (0.5, 20, True)
    >>> bootstrap_mean([0.25, 0.25])["ci95"]
    [0.25, 0.25]
    """
    if not values:
        raise ValueError("bootstrap_mean needs at least one value")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    n = len(values)
    rng = random.Random(seed)
    means = sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    lo = means[int((1.0 - level) / 2 * (resamples - 1))]
    hi = means[int((1.0 + level) / 2 * (resamples - 1))]
    return {"mean": sum(values) / n, "ci95": [lo, hi], "n": n}


def pooled_differences(per_seed: Sequence[Mapping[str, float]]) -> list[float]:
    """Each question's difference averaged over the seeds (every seed must cover the same questions).

    >>> pooled_differences([{"q1": 1.0, "q2": 0.0}, {"q1": 0.0, "q2": 0.0}])
    [0.5, 0.0]
    """
    if not per_seed:
        raise ValueError("no seeds to pool")
    ids = sorted(per_seed[0])
    for i, d in enumerate(per_seed[1:], 1):
        if sorted(d) != ids:
            raise ValueError(f"seed {i} covers other questions than seed 0; pool seeds over the same questions")
    return [sum(d[q] for d in per_seed) / len(per_seed) for q in ids]
