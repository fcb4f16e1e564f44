"""The RL proof's figures: per-question GenAcc in, intervals, curves and the report out.

Used by `rl_proof.py`; kept apart so the arithmetic reads on its own (and is testable by doctest).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from s3_ray.eval.stats import bootstrap_mean, paired_differences, pooled_differences

GOAL_RL_MINUS_WARMUP = 5.0
GOAL_RL_MINUS_NAIVE = 12.5


def points(result: dict[str, Any]) -> dict[str, Any]:
    """A bootstrap result in GenAcc points (x100), rounded for the report.

    >>> points({"mean": 0.05, "ci95": [0.01, 0.1], "n": 200})
    {'mean': 5.0, 'ci95': [1.0, 10.0], 'n': 200}
    """
    return {"mean": round(100 * result["mean"], 2), "ci95": [round(100 * x, 2) for x in result["ci95"]],
            "n": result["n"]}


def comparisons(per_seed: list[dict[str, dict[str, float]]], shared: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Per seed and pooled: RL minus warm-up-only and RL minus naive RAG, with paired bootstrap 95%
    intervals over questions. `per_seed[i]` holds that seed's {"s3_trained", "s3_warmup_only"}
    per-question GenAcc; `shared` the deterministic methods' (naive_rag, ...)."""
    out: dict[str, Any] = {"per_seed": [], "pooled": {}}
    diffs: dict[str, list[dict[str, float]]] = {"rl_minus_warmup": [], "rl_minus_naive": []}
    for seed_acc in per_seed:
        d = {"rl_minus_warmup": paired_differences(seed_acc["s3_trained"], seed_acc["s3_warmup_only"]),
             "rl_minus_naive": paired_differences(seed_acc["s3_trained"], shared["naive_rag"])}
        out["per_seed"].append({k: points(bootstrap_mean(list(v.values()))) for k, v in d.items()})
        for k, v in d.items():
            diffs[k].append(v)
    if per_seed:
        out["pooled"] = {k: points(bootstrap_mean(pooled_differences(v))) for k, v in diffs.items()}
    return out


def goal(pooled: dict[str, Any]) -> dict[str, Any]:
    """Whether the pooled figures meet the proof's goal (RL - warm-up >= +5 with a lower bound above
    0, RL - naive RAG >= +12.5)."""
    if not pooled:
        return {"met": False, "why": "no seed finished"}
    w, n = pooled["rl_minus_warmup"], pooled["rl_minus_naive"]
    checks = {"rl_minus_warmup_mean": w["mean"] >= GOAL_RL_MINUS_WARMUP, "rl_minus_warmup_low_above_0": w["ci95"][0] > 0,
              "rl_minus_naive_mean": n["mean"] >= GOAL_RL_MINUS_NAIVE}
    return {"met": all(checks.values()), **checks}


def moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean over the last `window` values.

    >>> moving_average([0, 1, 2, 3], 2)
    [0.0, 0.5, 1.5, 2.5]
    """
    out = []
    for i in range(len(values)):
        part = values[max(0, i - window + 1): i + 1]
        out.append(sum(part) / len(part))
    return out


def plot_reward_curves(curves: dict[int, list[tuple[int, float]]], path: Path, window: int = 5) -> Path:
    """Training success rate (GenAcc of the sampled rollouts) by RL step, moving average, one line per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for seed, points_ in sorted(curves.items()):
        if points_:
            steps, vals = zip(*points_)
            ax.plot(steps, moving_average(list(vals), window), label=f"seed {seed}")
    ax.set_xlabel("RL step")
    ax.set_ylabel(f"training GenAcc (moving average of {window})")
    ax.set_title("Success rate on training questions during RL")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def where_it_went(metrics: list[dict[str, Any]]) -> dict[str, float]:
    """Totals of one seed's RL steps: episodes and groups sampled, groups with a signal, seconds."""
    keys = {"episodes": "sample/episodes", "groups": "sample/groups", "signal_groups": "sample/signal_groups",
            "rollout_s": "time/rollout_s", "reward_s": "time/reward_s", "update_s": "time/update_s",
            "prefill_s": "rollout/prefill_seconds", "decode_s": "rollout/decode_seconds",
            "ref_forward_s": "time/ref_forward_s", "policy_fwd_bwd_s": "time/policy_fwd_bwd_s",
            "step_s": "time/step_s"}
    out = {name: round(sum(float(m.get(key, 0.0)) for m in metrics), 1) for name, key in keys.items()}
    out["steps"] = len(metrics)
    out["steps_with_signal"] = sum(1 for m in metrics if m.get("sample/signal_groups", m.get("adv_std", 0.0)) > 0)
    return out


def render_headroom(headroom: dict[str, Any]) -> list[str]:
    """The report's lines on where GenAcc is lost (`proof_headroom.analyse`)."""
    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.1f}"

    lines = ["", "Where GenAcc is lost on the multi-hop (bridge) questions: context with all supporting passages, "
                 "GenAcc with and without them, and the GenAcc if every one had them (at the 'with' rate):", "",
             "| method | GenAcc | single | bridge | bridge with all support | GenAcc with / without | "
             "all found -> GenAcc | docs / q |", "|---|---|---|---|---|---|---|---|"]
    for name, b in headroom["methods"].items():
        mh, types = b["multi_hop"], b["by_type"]
        docs = "-" if b.get("context_docs") is None else f"{b['context_docs']:.2f}"
        lines.append(f"| {name} | {pct(b['genacc'])} | {pct(types.get('single', {}).get('genacc'))} | "
                     f"{pct(types.get('bridge', {}).get('genacc'))} | {mh['all_found']} of {mh['n']} | "
                     f"{pct(mh['genacc_found'])} / {pct(mh['genacc_missing'])} | {pct(b['ceiling_all_found'])} | "
                     f"{docs} |")
    lines += ["", "| seed | test questions gained by RL | lost | same queries | same context | malformed episodes "
                  "before -> after |", "|---|---|---|---|---|---|"]
    for c in headroom["rl_changes"]:
        lines.append(f"| {c['seed']} | {c['gained']} | {c['lost']} | {c['same_queries']} of {c['questions']} | "
                     f"{c['same_context']} | {c['malformed_before']} -> {c['malformed_after']} |")
    sc = headroom.get("search_ceiling") or {}
    if sc.get("genacc_found_pooled") is not None:
        lines += ["", f"Once a bridge question's evidence is in the context, the generator answers "
                      f"{pct(sc['genacc_found_pooled'])}% of them (every searcher evaluation of this run pooled; "
                      f"the oracle's shorter context: {pct(headroom['methods']['oracle']['multi_hop']['genacc_found'])}%). "
                      "At that rate, the most better search can give each warm-up:", "",
                  "| seed | warm-up | evidence for every bridge question | headroom | trained | RL's share |",
                  "|---|---|---|---|---|---|"]
        for r in sc["per_seed"]:
            room = r["warmup_all_found"] - r["warmup"]
            share = f"{(r['trained'] - r['warmup']) / room:.0%}" if room > 0 else "-"
            lines.append(f"| {r['seed']} | {pct(r['warmup'])} | {pct(r['warmup_all_found'])} | {100 * room:+.1f} | "
                         f"{pct(r['trained'])} | {share} |")
    return lines


def _mean_over_seeds(report: dict[str, Any], method: str, key: str) -> float | None:
    """`key` of `method`'s headroom breakdown (its per-seed ones averaged), or None where absent."""
    methods = (report.get("headroom") or {}).get("methods") or {}
    vals = [b[key] for name, b in methods.items()
            if (name == method or name.startswith(f"{method}_seed")) and b.get(key) is not None]
    return round(statistics.mean(vals), 4) if vals else None


def setting_versus(without: dict[str, Any], with_: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """Per method of `with_`: GenAcc (mean over seeds) and context documents per question in both
    reports (the proof without and with a setting; a report that lacks a figure gives None).

    >>> off = {"genacc": {"oracle": [0.6]}, "headroom": {"methods": {"oracle": {"context_docs": 5.0}}}}
    >>> on = {"genacc": {"oracle": [0.7], "s3_trained": [0.5, 0.6]}, "headroom": {"methods": {
    ...     "oracle": {"context_docs": 2.5}, "s3_trained_seed0": {"context_docs": 2.0},
    ...     "s3_trained_seed1": {"context_docs": 3.0}}}}
    >>> v = setting_versus(off, on)
    >>> v["oracle"]
    {'genacc_without': 0.6, 'genacc_with': 0.7, 'docs_without': 5.0, 'docs_with': 2.5}
    >>> v["s3_trained"]
    {'genacc_without': None, 'genacc_with': 0.55, 'docs_without': None, 'docs_with': 2.5}
    """
    def genacc(report: dict[str, Any], method: str) -> float | None:
        vals = report.get("genacc", {}).get(method)
        return round(statistics.mean(vals), 4) if vals else None

    return {m: {"genacc_without": genacc(without, m), "genacc_with": genacc(with_, m),
                "docs_without": _mean_over_seeds(without, m, "context_docs"),
                "docs_with": _mean_over_seeds(with_, m, "context_docs")} for m in with_.get("genacc", {})}


def render_versus(versus: dict[str, Any]) -> list[str]:
    """The report's lines comparing the proof with `rollout.select_initial` to the one without."""
    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.1f}"

    def num(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    lines = ["", f"With `rollout.select_initial` (this report) and without (`{versus['without']}`), GenAcc "
                 "(mean over seeds) and context documents per question:", "",
             "| method | GenAcc without | with | change | docs / q without | with |", "|---|---|---|---|---|---|"]
    for name, v in versus["methods"].items():
        a, b = v["genacc_without"], v["genacc_with"]
        change = "-" if a is None or b is None else f"{100 * (b - a):+.1f}"
        lines.append(f"| {name} | {pct(a)} | {pct(b)} | {change} | {num(v['docs_without'])} | {num(v['docs_with'])} |")
    return lines


def title(report: dict[str, Any]) -> str:
    """The Markdown report's heading (naming the setting under test, if any).

    >>> title({"config": {"rollout": {"select_initial": True}}})
    '# RL proof on the embedded default with rollout.select_initial'
    >>> title({})
    '# RL proof on the embedded default'
    """
    selecting = ((report.get("config") or {}).get("rollout") or {}).get("select_initial")
    return "# RL proof on the embedded default" + (" with rollout.select_initial" if selecting else "")


def render(report: dict[str, Any]) -> str:
    lines = [f"Test questions: {report['test_questions']} (one question = {100 / report['test_questions']:.1f} points); "
             f"seeds {report['seeds']}", "",
             "| method | GenAcc per seed | mean |", "|---|---|---|"]
    for method, vals in report["genacc"].items():
        shown = " / ".join(f"{100 * v:.1f}" for v in vals)
        lines.append(f"| {method} | {shown} | {100 * statistics.mean(vals):.1f} |")
    lines += ["", "| comparison | per seed (mean [95% CI]) | pooled |", "|---|---|---|"]
    for key, label in (("rl_minus_warmup", "RL - warm-up only"), ("rl_minus_naive", "RL - naive RAG")):
        per = "; ".join(f"{s[key]['mean']:+.1f} [{s[key]['ci95'][0]:+.1f}, {s[key]['ci95'][1]:+.1f}]"
                        for s in report["comparisons"]["per_seed"])
        pooled = report["pooled"].get(key)
        shown = f"{pooled['mean']:+.1f} [{pooled['ci95'][0]:+.1f}, {pooled['ci95'][1]:+.1f}]" if pooled else "-"
        lines.append(f"| {label} | {per} | {shown} |")
    g = report["goal"]
    lines += ["", f"Goal (RL - warm-up >= +{GOAL_RL_MINUS_WARMUP:g} with its lower bound above 0, RL - naive RAG >= "
                  f"+{GOAL_RL_MINUS_NAIVE:g}): {'met' if g['met'] else 'not met'} {json.dumps(g)}", "",
              "| seed | training s | RL steps with signal | episodes | groups | with signal | rollout s | reward s | "
              "update s |", "|---|---|---|---|---|---|---|---|---|"]
    for seed, secs, w in zip(report["seeds"], report["train_seconds"], report["where"]):
        lines.append(f"| {seed} | {secs:.0f} | {w['steps_with_signal']} of {w['steps']} | {w['episodes']:.0f} | "
                     f"{w['groups']:.0f} | {w['signal_groups']:.0f} | {w['rollout_s']:.0f} | {w['reward_s']:.0f} | "
                     f"{w['update_s']:.0f} |")
    lines.append(f"\nEvaluation seconds: {json.dumps(report['eval_seconds'])}; total wall time "
                 f"{report['total_s'] / 60:.1f} min")
    if report.get("headroom"):
        lines += render_headroom(report["headroom"])
    if report.get("select_initial_versus"):
        lines += render_versus(report["select_initial_versus"])
    return "\n".join(lines)
