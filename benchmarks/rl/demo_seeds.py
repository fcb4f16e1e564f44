"""The demo's recipe over several seeds: does the trained searcher beat naive RAG on every one?

    python benchmarks/rl/demo_seeds.py [--seeds 0 1 2] [--run-root runs/demo_seeds] [key=value ...]

Runs `s3-ray demo` (`python -m jobs.demo`, the embedded default, `jobs/configs/demo.yaml`) once per
seed, each in its own run folder with its own index and empty generator cache, one after the
other, as a new user's first run would, and writes per seed to `benchmarks/results/demo.json`:
`seed`, `total_s`, `test_questions`, `trained_minus_naive` and `trained_minus_warmup` (each
`{"mean", "ci95"}` in GenAcc points, paired bootstrap over the test questions), `malformed_rate`
(test episodes of the trained searcher with a malformed turn), `warmup_searches_per_bridge_question`,
`steps_with_signal`, `steps` and the load average at the start. Each seed must be measured on an
idle machine (the script refuses a busy start unless `--allow-busy`).

Resumable: a seed whose report exists is read back, not rerun; a seed that stopped part way is rerun
in its folder, where the demo reuses what is done (its `total_s` then covers only the last run and
the entry says `resumed: true`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # load_guard, shared by all groups
import load_guard  # noqa: E402  (sibling module)


def seed_overrides(root: Path, seed: int) -> list[str]:
    """Everything a seed writes, below its own folder (the demo config names its index and cache)."""
    run = root / f"seed{seed}"
    return [f"seed={seed}", f"run_dir={run}", f"retrieval.index_dir={run / 'index'}",
            f"generator.cache_path={run / 'cache' / 'generator.sqlite'}"]


def seed_figures(seed: int, report: dict[str, Any]) -> dict[str, Any]:
    """The per-seed entry from the demo's `report/results.json`.

    >>> r = {"total_seconds": 800.0, "summaries": {"naive_rag": {"n": 80.0},
    ...      "s3_warmup_only": {"n": 80.0, "searches_bridge": 2.0}, "s3_trained": {"n": 80.0, "malformed": 0.025}},
    ...      "intervals": {"signal_steps": 4, "rl_steps": 4, "trained_minus_naive": {"mean": 15.0, "ci95": [5.0, 25.0]},
    ...                    "trained_minus_warmup": {"mean": 1.2, "ci95": [-5.0, 7.5]}}}
    >>> f = seed_figures(0, r)
    >>> f["test_questions"], f["malformed_rate"], f["warmup_searches_per_bridge_question"], f["steps_with_signal"]
    (80, 0.025, 2.0, 4)
    """
    summaries, figs = report["summaries"], report.get("intervals", {})
    pick = lambda key: {k: figs[key][k] for k in ("mean", "ci95")} if key in figs else None  # noqa: E731
    return {
        "seed": seed,
        "total_s": report["total_seconds"],
        "test_questions": int(summaries["s3_trained"]["n"]),
        "trained_minus_naive": pick("trained_minus_naive"),
        "trained_minus_warmup": pick("trained_minus_warmup"),
        "malformed_rate": summaries["s3_trained"].get("malformed"),
        "warmup_searches_per_bridge_question": summaries.get("s3_warmup_only", {}).get("searches_bridge"),
        "steps_with_signal": figs.get("signal_steps"),
        "steps": figs.get("rl_steps"),
        "genacc": {name: round(100 * s["genacc"], 1) for name, s in summaries.items() if "genacc" in s},
    }


def settle(max_s: float, poll_s: float = 5.0) -> None:
    """Wait until the 1-minute load average is idle again, at most `max_s` seconds."""
    waited = 0.0
    while os.getloadavg()[0] > load_guard.MAX_IDLE_LOAD and waited < max_s:
        time.sleep(poll_s)
        waited += poll_s


MAX_DEMO_S = 15 * 60
"""The demo's time budget on an idle 2-core machine."""


def goal_met(entry: dict[str, Any]) -> bool:
    """The demo's goal on one seed: done within `MAX_DEMO_S`, trained - naive RAG above 0 at the
    interval's lower bound, at most 5% malformed episodes, a warm-up that searches more than once
    per bridge question, signal in every step."""
    tn = entry.get("trained_minus_naive") or {"ci95": [0.0, 0.0]}
    return (entry["total_s"] <= MAX_DEMO_S and tn["ci95"][0] > 0 and (entry.get("malformed_rate") or 0.0) <= 0.05
            and (entry.get("warmup_searches_per_bridge_question") or 0.0) > 1.0
            and entry.get("steps_with_signal") == entry.get("steps") and bool(entry.get("steps")))


def main() -> None:
    p = argparse.ArgumentParser(prog="python benchmarks/rl/demo_seeds.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--run-root", default="runs/demo_seeds", help="one folder per seed below it")
    p.add_argument("--config", default=None, help="demo config (default: jobs/configs/demo.yaml)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "demo.json"))
    p.add_argument("--settle-s", type=float, default=240.0,
                   help="before each seed, wait up to this long for the load average to fall to idle (the "
                        "previous seed's processes take a minute or two to leave)")
    load_guard.add_argument(p)
    p.add_argument("overrides", nargs="*", help="dotted config overrides for every seed")
    args = p.parse_args()

    root = Path(args.run_root).resolve()
    out = Path(args.out)
    done = json.loads(out.read_text()) if out.is_file() else {}
    entries = {e["seed"]: e for e in done.get("seeds", []) if done.get("overrides") == args.overrides}
    for seed in args.seeds:
        report_path = root / f"seed{seed}" / "report" / "results.json"
        if seed in entries and report_path.is_file():
            print(f"seed {seed}: done, read back")
            continue
        resumed = (root / f"seed{seed}").exists()
        settle(args.settle_s)
        machine = load_guard.start(args.allow_busy)
        print(f"== seed {seed} (load {machine['load_avg_1m_start']}) ==", flush=True)
        cmd = [sys.executable, "-m", "jobs.demo", *(["--config", args.config] if args.config else []),
               *seed_overrides(root, seed), *args.overrides]
        t0 = time.perf_counter()
        rc = subprocess.call(cmd, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        if rc != 0:
            raise SystemExit(f"seed {seed}: the demo stopped with status {rc}; rerun this command to resume it")
        entry = seed_figures(seed, json.loads(report_path.read_text()))
        entry |= {"wall_s": round(time.perf_counter() - t0, 1), "resumed": resumed,
                  "machine": load_guard.finish(machine), "load_avg_1m_start": machine["load_avg_1m_start"],
                  "goal_met": None}
        entry["goal_met"] = goal_met(entry)
        entries[seed] = entry
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"overrides": args.overrides, "seeds": [entries[s] for s in sorted(entries)]},
                                  indent=2) + "\n")
    print(table([entries[s] for s in sorted(entries)]))
    print(f"-> {out}")


def table(entries: list[dict[str, Any]]) -> str:
    head = ("| seed | total | test q | trained - naive | trained - warm-up | malformed | "
            "warm-up searches / bridge q | steps with signal | load at start | goal |")
    rows = [head, "|" + "---|" * 10]
    for e in entries:
        tn, tw = e["trained_minus_naive"], e["trained_minus_warmup"]
        fmt = lambda c: f"{c['mean']:+.1f} [{c['ci95'][0]:+.1f}, {c['ci95'][1]:+.1f}]" if c else "-"  # noqa: E731
        rows.append(f"| {e['seed']} | {e['total_s'] / 60:.1f} min | {e['test_questions']} | {fmt(tn)} | {fmt(tw)} | "
                    f"{100 * (e['malformed_rate'] or 0):.1f}% | {e['warmup_searches_per_bridge_question']} | "
                    f"{e['steps_with_signal']}/{e['steps']} | {e['load_avg_1m_start']} | "
                    f"{'met' if e['goal_met'] else 'not met'} |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
