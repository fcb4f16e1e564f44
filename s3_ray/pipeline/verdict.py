"""The demo's reading of its own numbers, in plain words: what the trained searcher gained over
naive RAG and over the warm-up alone (RL's own share), with paired bootstrap 95% intervals over
the test questions, and whether RL had anything to learn from (groups with a reward signal)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from s3_ray.eval.stats import bootstrap_mean, paired_differences


def signal_steps(train_metrics: Sequence[Mapping[str, Any]]) -> tuple[int, int]:
    """(RL steps whose update held at least one group with differing rewards, RL steps).

    Dynamic sampling logs `sample/signal_groups`; without it a step had signal when its
    advantages were not all zero (`adv_std > 0`).

    >>> signal_steps([{"sample/signal_groups": 2}, {"sample/signal_groups": 0}, {"adv_std": 0.3}])
    (2, 3)
    """
    def has(r: Mapping[str, Any]) -> bool:
        if "sample/signal_groups" in r:
            return float(r["sample/signal_groups"]) > 0
        return float(r.get("adv_std", 0.0)) > 0
    return sum(1 for r in train_metrics if has(r)), len(train_metrics)


def compare(a: Mapping[str, float], b: Mapping[str, float], seed: int = 0) -> dict[str, Any]:
    """a minus b in GenAcc points over the questions both answered: mean, 95% interval, n.

    >>> r = compare({"q1": 1.0, "q2": 1.0, "q3": 0.0, "q4": 0.0}, {"q1": 0.0, "q2": 1.0, "q3": 0.0, "q4": 0.0})
    >>> r["mean"], r["n"], r["ci95"][0] <= 25.0 <= r["ci95"][1]
    (25.0, 4, True)
    """
    r = bootstrap_mean(list(paired_differences(a, b).values()), seed=seed)
    low, high = r["ci95"]  # type: ignore[misc]
    return {"mean": round(100 * float(r["mean"]), 1), "ci95": [round(100 * low, 1), round(100 * high, 1)],
            "n": int(r["n"])}  # type: ignore[arg-type]


def _reading(name: str, c: Mapping[str, Any]) -> str:
    low, high = c["ci95"]
    if low > 0:
        plain = "a real gain on these questions"
    elif high < 0:
        plain = "a real loss on these questions"
    else:
        plain = "within noise: this many questions cannot tell it from zero"
    return (f"{name}: {c['mean']:+.1f} GenAcc points, 95% interval [{low:+.1f}, {high:+.1f}] over "
            f"{c['n']} questions ({plain})")


def verdict(per_question: Mapping[str, Mapping[str, float]],
            train_metrics: Sequence[Mapping[str, Any]]) -> tuple[list[str], dict[str, Any]]:
    """(report lines, figures) from each method's {question id: genacc} (`naive_rag`,
    `s3_warmup_only`, `s3_trained`, whichever were evaluated) and the RL steps' metrics.

    >>> acc = {"naive_rag": {"a": 0.0, "b": 1.0}, "s3_trained": {"a": 1.0, "b": 1.0}}
    >>> lines, figs = verdict(acc, [{"sample/signal_groups": 1}])
    >>> lines[0]
    'RL had a reward signal in 1 of 1 steps'
    >>> figs["trained_minus_naive"]["mean"]
    50.0
    """
    signal, steps = signal_steps(train_metrics)
    line = f"RL had a reward signal in {signal} of {steps} steps"
    if steps and signal == 0:
        line += (" (every group's rewards were equal), so RL did not move the searcher; differences come "
                 "from decoding, not learning")
    lines, figs = [line], {"signal_steps": signal, "rl_steps": steps}
    trained = per_question.get("s3_trained")
    if trained is None:
        return lines + ["no trained searcher was evaluated"], figs
    warm = per_question.get("s3_warmup_only")
    if warm is not None:
        common = [q for q in trained if q in warm]
        won = sum(1 for q in common if trained[q] > warm[q])
        lost = sum(1 for q in common if trained[q] < warm[q])
        figs["rl_changed"] = {"won": won, "lost": lost, "n": len(common)}
        lines.append(f"RL changed {won + lost} of {len(common)} test answers against the warm-up alone: "
                     f"{won} now right that were wrong, {lost} now wrong that were right")
    for key, other, name in (("trained_minus_warmup", "s3_warmup_only", "trained minus warm-up only (RL's own share)"),
                             ("trained_minus_naive", "naive_rag", "trained minus naive RAG")):
        if other in per_question:
            figs[key] = compare(trained, per_question[other])
            lines.append(_reading(name, figs[key]))
    return lines, figs
