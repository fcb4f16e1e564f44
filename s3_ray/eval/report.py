"""Results table (Markdown), JSON and plots for an evaluation or a demo run."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

COLUMNS = [  # (summary key, header, scale, decimals)
    ("genacc", "GenAcc", 100.0, 1),
    ("genacc_span", "GenAcc span only", 100.0, 1),
    ("em", "EM", 100.0, 1),
    ("f1", "F1", 100.0, 1),
    ("genacc_single", "GenAcc single-hop", 100.0, 1),
    ("genacc_bridge", "GenAcc bridge", 100.0, 1),
    ("context_docs", "docs / question", 1.0, 1),
    ("context_words", "context words", 1.0, 1),
    ("context_tokens", "context tokens", 1.0, 1),
    ("searches", "searches", 1.0, 1),
    ("searches_bridge", "searches / bridge q", 1.0, 1),
    ("malformed", "malformed episodes %", 100.0, 1),
    ("seconds", "s / question", 1.0, 3),
    ("lm_calls", "LM calls / question", 1.0, 2),
    ("generator_calls", "generator calls / question", 1.0, 2),
]


def markdown_table(summaries: dict[str, dict[str, float]]) -> str:
    """One row per method; accuracy columns in percent.

    >>> print(markdown_table({"naive_rag": {"n": 2, "genacc": 0.5, "em": 0.0}}))
    | method | n | GenAcc | EM |
    |---|---|---|---|
    | naive_rag | 2 | 50.0 | 0.0 |
    """
    cols = [c for c in COLUMNS if any(c[0] in s for s in summaries.values())]
    head = "| method | n | " + " | ".join(c[1] for c in cols) + " |"
    sep = "|---|---|" + "---|" * len(cols)
    rows = [head, sep]
    for name, s in summaries.items():
        cells = [_fmt(s.get(key), scale, digits) for key, _, scale, digits in cols]
        rows.append(f"| {name} | {int(s.get('n', 0))} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _fmt(v: Any, scale: float, digits: int = 1) -> str:
    """
    >>> _fmt(0.0123, 1.0, 3), _fmt(float("nan"), 100.0), _fmt(0.5, 100.0)
    ('0.012', '-', '50.0')
    """
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{float(v) * scale:.{digits}f}"


def write_report(out_dir: str | os.PathLike[str], summaries: dict[str, dict[str, float]],
                 extra: dict[str, Any] | None = None, title: str = "Evaluation",
                 notes: list[str] | None = None) -> Path:
    """Write results.json, results.md and accuracy.png; returns the Markdown path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"summaries": summaries, **(extra or {})}, indent=2, default=str))
    md = [f"# {title}", "", markdown_table(summaries), ""]
    for note in notes or []:
        md.append(f"- {note}")
    md_path = out / "results.md"
    md_path.write_text("\n".join(md) + "\n")
    plot_accuracy(summaries, out / "accuracy.png")
    return md_path


def plot_accuracy(summaries: dict[str, dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summaries)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.bar(names, [100 * summaries[n].get("genacc", 0.0) for n in names], color="tab:blue")
    ax1.set_ylabel("GenAcc (%)")
    ax1.set_title("Generation accuracy")
    ax1.tick_params(axis="x", rotation=20)
    for n in names:
        ax2.scatter(summaries[n].get("context_words", 0.0), 100 * summaries[n].get("genacc", 0.0), label=n)
    ax2.set_xlabel("context words per question")
    ax2.set_ylabel("GenAcc (%)")
    ax2.set_title("Accuracy vs context size")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_training(records: list[dict[str, Any]], path: Path,
                  keys: tuple[str, ...] = ("reward", "genacc", "kl", "malformed_rate")) -> None:
    """Curves of the training metrics JSONL (one panel per key present)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    present = [k for k in keys if any(k in r for r in records)]
    if not present:
        return
    fig, axes = plt.subplots(1, len(present), figsize=(4 * len(present), 3), squeeze=False)
    for ax, key in zip(axes[0], present):
        pts = [(r["step"], r[key]) for r in records if key in r]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o")
        ax.set_title(key)
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
