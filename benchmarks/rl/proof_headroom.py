"""Where the RL proof's GenAcc is lost: finding the evidence or the generator reading it, and what
RL changed in the greedy searcher's test episodes.

    python benchmarks/rl/proof_headroom.py [--run-dir runs/rl_proof] [--out benchmarks/results/rl_proof.json]

Reads the per-question evaluation files a proof run left (`<run-dir>/eval_shared/*.jsonl` and
`<run-dir>/seed<N>/eval/<split>/*.jsonl`) and the test questions' supporting passages, and per
method reports GenAcc by question type, how many bridge questions had all their supporting
passages in the context, GenAcc with and without them, and the GenAcc if every bridge question had
them (`s3_ray.eval.headroom`); per seed, the test questions RL gained and lost over the warm-up and
how many episodes it left unchanged. `rl_proof.py` adds the same `headroom` key to its report; this
script adds it to a report written before (no model runs, seconds). Prints the table and rewrites
the report's JSON and Markdown.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))

import proof_report  # noqa: E402  (sibling module)
from proof_recipe import PROOF_DATA  # noqa: E402  (sibling module; the proof's data sizes)

SHARED = ("naive_rag", "oracle", "s3_untrained")
PER_SEED = ("s3_warmup_only", "s3_trained")


def read_records(path: Path) -> list[dict[str, Any]]:
    from s3_ray.data.jsonl import iter_jsonl

    if not path.is_file():
        raise FileNotFoundError(f"{path}: no evaluation file (has this method been evaluated?)")
    return [rec for _, rec in iter_jsonl(path)]


def pooled_found_rate(breakdowns: list[dict[str, Any]]) -> float | None:
    """GenAcc on the multi-hop questions whose context held all their evidence, over several
    evaluations together (weighted by how many each found)."""
    found = sum(b["multi_hop"]["all_found"] for b in breakdowns)
    if not found:
        return None
    return round(sum(b["multi_hop"]["all_found"] * b["multi_hop"]["genacc_found"] for b in breakdowns
                     if b["multi_hop"]["all_found"]) / found, 4)


def analyse(root: Path, seeds: list[int], items: list[Any], split: str = "test") -> dict[str, Any]:
    """{"methods": {name: support breakdown}, "rl_changes": [per seed], "search_ceiling": {...},
    "oracle_genacc"} from the evaluation files under a proof's run directory.

    `search_ceiling` holds, per seed, the warm-up's and the trained searcher's GenAcc and the
    GenAcc the warm-up would reach if every bridge question had its evidence, answered at the rate
    pooled over every searcher evaluation of the run (a warm-up that rarely finds the second hop
    has no rate of its own)."""
    from s3_ray.eval.episode_diff import episode_changes
    from s3_ray.eval.headroom import support_breakdown

    methods: dict[str, Any] = {}
    for name in SHARED:
        methods[name] = support_breakdown(read_records(root / "eval_shared" / f"{name}.jsonl"), items)
    records, changes = {}, []
    for seed in seeds:
        recs = {label: read_records(root / f"seed{seed}" / "eval" / split / f"{label}.jsonl") for label in PER_SEED}
        records[seed] = recs
        for label, r in recs.items():
            methods[f"{label}_seed{seed}"] = support_breakdown(r, items)
        changes.append({"seed": seed, **episode_changes(recs["s3_warmup_only"], recs["s3_trained"])})
    rate = pooled_found_rate([methods[f"{label}_seed{s}"] for s in seeds for label in PER_SEED])
    ceiling = {"genacc_found_pooled": rate, "per_seed": []}
    for seed in seeds:
        warm = support_breakdown(records[seed]["s3_warmup_only"], items, found_rate=rate)
        ceiling["per_seed"].append({"seed": seed, "warmup": warm["genacc"],
                                    "trained": methods[f"s3_trained_seed{seed}"]["genacc"],
                                    "warmup_all_found": warm["ceiling_all_found"]})
    return {"methods": methods, "rl_changes": changes, "search_ceiling": ceiling,
            "oracle_genacc": methods["oracle"]["genacc"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/rl/proof_headroom.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(REPO / "jobs" / "configs" / "demo.yaml"))
    p.add_argument("--run-dir", default="runs/rl_proof", help="the proof's --run-dir")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "rl_proof.json"),
                   help="the proof's report, rewritten with a `headroom` key")
    args = p.parse_args(argv)

    from s3_ray.config import load_job_config
    from s3_ray.data.embedded import load_split

    out = Path(args.out)
    if not out.is_file():
        raise SystemExit(f"{out}: no proof report; run benchmarks/rl/rl_proof.py first")
    report = json.loads(out.read_text())
    cfg = load_job_config(args.config, PROOF_DATA)
    items = load_split(cfg.data, cfg.eval.split)
    report["headroom"] = analyse(Path(args.run_dir).resolve(), list(report["seeds"]), items, cfg.eval.split)
    out.write_text(json.dumps(report, indent=2, default=str))
    out.with_suffix(".md").write_text(f"{proof_report.title(report)}\n\n" + proof_report.render(report) + "\n")
    print("\n".join(proof_report.render_headroom(report["headroom"])).strip())
    print(f"\nwritten to {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
