"""Multi-data-set report: per-data-set and average tables (the paper's Table 1 layout), JSON, plots.

Input is `run_datasets`' `{dataset: {method: summary}}`. The average is the macro mean over data
sets (each set weighs the same, as in the paper), not the mean over all questions.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

Results = dict[str, dict[str, dict[str, float]]]
METRICS = (("genacc", "GenAcc", 100.0), ("em", "EM", 100.0), ("f1", "F1", 100.0))
COSTS = (("seconds", "Seconds per question", 3), ("lm_calls", "Method LM calls per question", 2),
         ("generator_calls", "Generator calls per question", 2))
"""Cost tables, shown when some summary has the key (older result files may lack them)."""


def size_key(results: Results) -> str:
    """`context_tokens` when every summary has it, else `context_words`.

    >>> size_key({"nq": {"rag": {"context_words": 3.0, "context_tokens": 4.0}}})
    'context_tokens'
    >>> size_key({"nq": {"rag": {"context_words": 3.0}}})
    'context_words'
    """
    rows = [s for by_method in results.values() for s in by_method.values()]
    return "context_tokens" if rows and all("context_tokens" in s for s in rows) else "context_words"


def methods_of(results: Results) -> list[str]:
    """Method names in first-seen order across data sets."""
    seen: dict[str, None] = {}
    for by_method in results.values():
        seen.update(dict.fromkeys(by_method))
    return list(seen)


def average(results: Results) -> dict[str, dict[str, float]]:
    """Per method: the mean of each metric over the data sets that have it; `n` is the total.

    >>> r = {"a": {"m": {"n": 2, "genacc": 0.5}}, "b": {"m": {"n": 4, "genacc": 1.0}}}
    >>> average(r)
    {'m': {'n': 6.0, 'genacc': 0.75, 'datasets': 2.0}}
    """
    out: dict[str, dict[str, float]] = {}
    for method in methods_of(results):
        rows = [by_method[method] for by_method in results.values() if method in by_method]
        keys = [k for k in rows[0] if k != "n" and all(k in r for r in rows)]
        avg: dict[str, float] = {"n": float(sum(r.get("n", 0) for r in rows))}
        for k in keys:
            vals = [float(r[k]) for r in rows]
            avg[k] = sum(vals) / len(vals)
        avg["datasets"] = float(len(rows))
        out[method] = avg
    return out


def _cell(v: Any, scale: float, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{float(v) * scale:.{digits}f}"


def metric_table(results: Results, key: str, scale: float = 100.0, digits: int = 1) -> str:
    """Methods x (data sets + Avg) for one metric.

    >>> r = {"nq": {"rag": {"genacc": 0.5}}, "hotpotqa": {"rag": {"genacc": 0.25}}}
    >>> print(metric_table(r, "genacc"))
    | method | nq | hotpotqa | Avg |
    |---|---|---|---|
    | rag | 50.0 | 25.0 | 37.5 |
    """
    names = list(results)
    avg = average(results)
    lines = ["| method | " + " | ".join(names) + " | Avg |", "|---|" + "---|" * (len(names) + 1)]
    for m in methods_of(results):
        cells = [_cell(results[d].get(m, {}).get(key), scale, digits) for d in names]
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {_cell(avg[m].get(key), scale, digits)} |")
    return "\n".join(lines)


def write_dataset_report(out_dir: str | os.PathLike[str], results: Results, extra: dict[str, Any] | None = None,
                         title: str = "Evaluation") -> Path:
    """results.json, results.md (one table per metric, for context size and for cost: seconds, method
    LM calls and generator calls per question), accuracy.png; returns the .md."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    avg = average(results)
    size = size_key(results)
    (out / "results.json").write_text(json.dumps(
        {"per_dataset": results, "average": avg, "context_size": size, **(extra or {})}, indent=2, default=str))
    md = [f"# {title}", ""]
    for key, label, scale in METRICS:
        md += [f"## {label} (%)", "", metric_table(results, key, scale), ""]
    unit = "tokens" if size == "context_tokens" else "words"
    md += [f"## Context {unit} per question", "", metric_table(results, size, 1.0), ""]
    rows = [s for by_method in results.values() for s in by_method.values()]
    if any(s.get("genacc_span") is not None for s in rows):
        md += ["## GenAcc without the judge (span match only, %)", "", metric_table(results, "genacc_span"), ""]
    for key, label, digits in COSTS:
        if any(key in s for s in rows):
            md += [f"## {label}", "", metric_table(results, key, 1.0, digits), ""]
    path = out / "results.md"
    path.write_text("\n".join(md))
    plot_datasets(results, out / "accuracy.png")
    return path


def plot_datasets(results: Results, path: Path) -> None:
    """Left: GenAcc per data set per method (grouped bars, plus Avg). Right: GenAcc vs context size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    avg = average(results)
    methods, groups = methods_of(results), [*results, "Avg"]
    size = size_key(results)
    width = 0.8 / max(1, len(methods))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [2, 1]})
    for j, m in enumerate(methods):
        vals = [100 * (results[g].get(m, {}) if g != "Avg" else avg[m]).get("genacc", float("nan")) for g in groups]
        ax1.bar([i + j * width for i in range(len(groups))], vals, width, label=m)
        ax2.scatter(avg[m].get(size, 0.0), 100 * avg[m].get("genacc", 0.0), label=m)
    ax1.set_xticks([i + width * (len(methods) - 1) / 2 for i in range(len(groups))], groups, rotation=20)
    ax1.set_ylabel("GenAcc (%)")
    ax1.set_title("Generation accuracy per data set")
    ax1.legend(fontsize=8)
    ax2.set_xlabel(f"{size.replace('_', ' ')} per question (avg)")
    ax2.set_ylabel("GenAcc (%, avg)")
    ax2.set_title("Accuracy vs context size")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
