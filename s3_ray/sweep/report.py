"""A sweep's report: results.json, results.md and a plot (pareto.png for inference, curves.png for training)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_sweep_report(rows: list[dict[str, Any]], out: Path, mode: str = "inference",
                       metric: str = "genacc") -> Path:
    """Write the report of `rows` (from `result_rows`) into `out`; returns the path of results.md."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(rows, indent=2, default=str))
    keys = sorted({k for r in rows for k in r["config"]})
    if mode == "inference":
        head = ["GenAcc", "docs / question", "context words", "searches"]
    else:
        head = [f"last {metric}", f"best {metric}", "steps", "stopped by"]
    lines = ["| " + " | ".join(keys + head) + " |", "|" + "---|" * (len(keys) + len(head))]
    for r in rows:
        cells = [str(r["config"].get(k)) for k in keys]
        if "error" in r:
            cells += [f"error: {r['error'][:60]}"] + [""] * (len(head) - 1)
        elif mode == "inference":
            cells += [f"{100 * r['genacc']:.1f}", f"{r['context_docs']:.2f}", f"{r['context_words']:.0f}",
                      f"{r['searches']:.2f}"]
        else:
            cells += [_num(r["last"]), _num(r["best"]), f"{r['steps']}/{r['planned_steps']}",
                      "ASHA" if r["stopped_early"] else ("collapse guard" if r["stop_reason"] else "no")]
        lines.append("| " + " | ".join(cells) + " |")
    title = "Budget sweep" if mode == "inference" else f"Training sweep ({metric})"
    md = out / "results.md"
    md.write_text(f"# {title}\n\n" + "\n".join(lines) + "\n")
    ok = [r for r in rows if "error" not in r]
    fig, ax = plt.subplots(figsize=(5, 4))
    for r in ok:
        label = ",".join(f"{k.split('.')[-1]}={r['config'][k]}" for k in keys)
        if mode == "inference":
            ax.scatter(r["context_words"], 100 * r["genacc"])
            ax.annotate(label, (r["context_words"], 100 * r["genacc"]), fontsize=7)
        else:
            ax.plot(range(1, len(r["history"]) + 1), r["history"], marker="o", label=label)
    if mode == "inference":
        ax.set(xlabel="context words per question", ylabel="GenAcc (%)", title="Accuracy vs context size")
    else:
        ax.set(xlabel="RL step", ylabel=metric, title="Training trials")
        if ok:
            ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / ("pareto.png" if mode == "inference" else "curves.png"), dpi=100)
    plt.close(fig)
    return md


def _num(v: float | None) -> str:
    """
    >>> _num(None), _num(0.25)
    ('-', '0.250')
    """
    return "-" if v is None else f"{v:.3f}"
