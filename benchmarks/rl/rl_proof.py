"""Does RL teach the searcher? Warm-up + RL against the warm-up alone and naive RAG, with intervals.

    python benchmarks/rl/rl_proof.py [--seeds 0 1 2] [--config jobs/configs/demo.yaml] [key=value ...]

On the embedded default (fictional world, SmolLM2-135M as searcher and frozen generator, BM25),
training on at most `data.train_limit` (200) training questions and evaluating on **all 200**
embedded test questions with the frozen generator:

1. starts Ray and the retriever + generator Serve apps once, builds the index and the naive-RAG
   baselines of the train and test splits (answers are cached and shared by every seed);
2. evaluates the deterministic methods once: naive RAG, the untrained searcher (greedy) and an
   *oracle* searcher (scripted, no model: for a bridge question it searches the title of the
   question's second supporting passage), whose GenAcc is the headroom this generator allows;
3. per seed: format warm-up + RL (Ray Train, `train.*` of the config and `PROOF_DEFAULTS`), then
   the warm-up-only ("step 0") and the trained searcher on the test questions;
4. reports per-question paired bootstrap 95% intervals of (RL - warm-up) and (RL - naive RAG),
   per seed and pooled over seeds, the training reward curve (`rl_proof_curve.png`), where each
   seed's episodes and seconds went, whether the goal is met, and where GenAcc is lost on the
   bridge questions (`proof_headroom.py`: evidence found or not, what RL changed).

With `--select-initial` the same proof runs with `rollout.select_initial=true` (the initial
documents reach the generator only if the searcher keeps them; the oracle keeps their evidence, the
warm-up's demonstrations too) in its own run directory and report
(`runs/rl_proof_select_initial`, `benchmarks/results/rl_proof_select_initial.{json,md}`), and the
report sets each method's GenAcc and context documents per question beside those of the proof
without it (`--compare-with`, by default `benchmarks/results/rl_proof.json`). `--dry-run` prints
the resolved settings and paths and exits before anything starts.

Rerunning it continues where it stopped: a seed's training resumes from its last checkpoint, each
evaluation from its last answered question, and the report (`benchmarks/results/rl_proof.{json,md}`)
is rewritten after every seed. Training seconds (`train_seconds`) are the wall time of the training
runs, summed over restarts; evaluation time is reported apart.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # load_guard, shared by all groups

import load_guard  # noqa: E402  (sibling module)
import proof_headroom  # noqa: E402  (sibling module)
import proof_report  # noqa: E402  (sibling module)
from proof_recipe import PROOF_DEFAULTS, PROOF_RECIPE  # noqa: E402  (sibling module)

EVAL_BATCH = 32
"""Questions per evaluation batch: one batched rollout and one generator call each."""


def oracle_script(items: dict[str, Any], titles: dict[str, str], initial: dict[str, list[int]] | None = None) -> Any:
    """A searcher turn as a function of the decoded episode so far (for `ScriptedPolicy`).

    `initial` (question -> ids), given with `rollout.select_initial`: what the first turn keeps of
    the initial documents (else `[1, 2]`, which then keeps nothing: they reach the generator anyway).
    Later turns keep `[1, 2]` of the retrieved block either way."""
    first_blocks: dict[str, int] = {}

    def script(text: str) -> str:
        q = re.findall(r"<question>\s*(.*?)\s*</question>", text, re.DOTALL)
        item = items.get(q[-1].strip()) if q else None
        support = (item.meta.get("support") or []) if item else []
        # the prompt's instructions and initial documents hold some <information> blocks already
        blocks = text.count("<information>")
        searched = blocks > first_blocks.setdefault(q[-1] if q else "", blocks)
        keep = "[1, 2]"
        if initial is not None and not searched:
            keep = json.dumps(initial.get(q[-1].strip() if q else "", []))
        if item is None or item.meta.get("type") != "bridge" or len(support) < 2 or searched:
            return f"<important_info>{keep}</important_info>\n<search_complete>True</search_complete>"
        query = titles.get(support[1], "")
        return (f"<important_info>{keep}</important_info>\n<search_complete>False</search_complete>\n"
                f'<query>{{"query": "{query}"}}</query>')

    return script


class OracleSearcher:
    """The scripted oracle as an evaluation method (same rollout, budgets and generator). With
    `rollout.select_initial` its first turn keeps the initial documents that are evidence (the
    question's supporting passages, then passages naming a gold answer: `initial_evidence`, as the
    warm-up's demonstrations do)."""

    name = "oracle"

    def __init__(self, cfg: Any, retriever: Any, items: list[Any]) -> None:
        from s3_ray.agent.policy import ScriptedPolicy
        from s3_ray.data.corpus import read_corpus
        from s3_ray.data.embedded import resolve_paths
        from s3_ray.models import load_causal_lm

        titles = {p.id: p.title for p in read_corpus(resolve_paths(cfg.data).corpus)}
        _, self.tok = load_causal_lm(cfg.searcher.model)
        self.initial: dict[str, list[int]] | None = {} if cfg.rollout.select_initial else None
        self.policy = ScriptedPolicy(self.tok, oracle_script({it.question: it for it in items}, titles, self.initial))
        self.cfg, self.retriever = cfg, retriever

    def contexts(self, items: list[Any]) -> list[Any]:
        from s3_ray.agent.rollout import initial_passages, run_rollout
        from s3_ray.eval.base import MethodOutput
        from s3_ray.rl.loop.warmup import initial_evidence

        init = initial_passages(items, self.retriever, self.cfg.rollout.init_k)
        if self.initial is not None:
            keep = self.cfg.rollout.keep_per_turn
            self.initial.update({it.question.strip(): initial_evidence(it, docs, keep)
                                 for it, docs in zip(items, init)})
        trajs = run_rollout(items, self.policy, self.tok, self.retriever, self.cfg.rollout, self.cfg.searcher,
                            init_passages=init)
        return [MethodOutput(passages=t.context, trace=t.turns, searches=t.num_searches) for t in trajs]


def evaluate(method: Any, items: list[Any], generator: Any, out: Path, log: Any) -> tuple[dict[str, float], float]:
    """(per-question GenAcc, seconds spent on it over every run) of one method, resumed from its file.

    The seconds are kept in `<out>/seconds.json`, so a resumed evaluation reports what it cost in
    all, not the moment it took to read its finished file."""
    from s3_ray.eval.runner import evaluate_method

    ledger = out / "seconds.json"
    spent = json.loads(ledger.read_text()) if ledger.is_file() else {}
    t0 = time.perf_counter()
    records = evaluate_method(items, method, generator, out, batch_size=EVAL_BATCH,
                              progress=lambda done, total: log(f"  {method.name}: {done}/{total} questions"))
    spent[method.name] = round(spent.get(method.name, 0.0) + time.perf_counter() - t0, 1)
    ledger.parent.mkdir(parents=True, exist_ok=True)
    ledger.write_text(json.dumps(spent))
    return {r["id"]: float(r["genacc"]) for r in records}, spent[method.name]


def searcher(cfg: Any, retriever: Any, path: str, name: str) -> Any:
    from s3_ray.eval.methods import S3Searcher

    greedy = cfg.searcher.model_copy(update={"temperature": 0.0})
    return S3Searcher(path, retriever, cfg.rollout, greedy, name=name, batch_size=EVAL_BATCH)


def checkpoints(cfg: Any) -> dict[int, str]:
    """{step: folder} of this seed's finished checkpoints."""
    from s3_ray.rl.model.checkpoint import META_FILE

    out = {}
    for meta in cfg.path("ray", "proof").glob(f"*/{META_FILE}"):
        if not meta.parent.name.startswith("."):
            out[int(json.loads(meta.read_text())["step"])] = str(meta.parent)
    return out


def train_runs(cfg: Any) -> list[dict[str, Any]]:
    """The training runs of one seed (a resumed seed has several): seconds and load averages."""
    ledger = cfg.path("train_seconds.json")
    return json.loads(ledger.read_text()).get("runs", []) if ledger.is_file() else []


def train_seed(cfg: Any, baseline: Any, retriever: Any, generator: Any, log: Any) -> tuple[dict[str, str], float]:
    """({"s3_warmup_only", "s3_trained"}: checkpoint, training seconds over all runs of this seed).

    `baseline` is the shared training baseline (under the proof's root, not the seed's run_dir)."""
    from s3_ray.reward.gain import RewardScorer
    from s3_ray.rl.ray_train.launch import run_training, training_items

    ledger = cfg.path("train_seconds.json")
    spent = json.loads(ledger.read_text())["seconds"] if ledger.is_file() else 0.0
    if cfg.train.steps not in checkpoints(cfg):
        items, dropped = training_items(cfg, baseline)
        log(f"seed {cfg.seed}: training on {len(items)} questions ({dropped} dropped by the filter)")
        t0 = time.perf_counter()
        loads = [round(os.getloadavg()[0], 2)]
        try:
            result = run_training(cfg, items, retriever, RewardScorer(generator, baseline, cfg.reward), name="proof")
        finally:
            spent += time.perf_counter() - t0
            loads.append(round(os.getloadavg()[0], 2))
            runs = (json.loads(ledger.read_text()).get("runs", []) if ledger.is_file() else []) + [
                {"seconds": round(time.perf_counter() - t0, 1), "load_avg_1m_start": loads[0],
                 "load_avg_1m_end": loads[1]}]
            ledger.parent.mkdir(parents=True, exist_ok=True)
            ledger.write_text(json.dumps({"seconds": spent, "runs": runs}))
        if result.error is not None:
            raise RuntimeError(f"seed {cfg.seed}: training failed: {result.error!r}")
    ckpts = checkpoints(cfg)
    if 0 not in ckpts or cfg.train.steps not in ckpts:
        raise RuntimeError(f"seed {cfg.seed}: expected checkpoints of step 0 and {cfg.train.steps}, found {sorted(ckpts)}")
    return {"s3_warmup_only": ckpts[0], "s3_trained": ckpts[cfg.train.steps]}, spent


def world_version(cfg: Any) -> str:
    """The embedded world's generator version (its manifest), or "custom data" for other data."""
    from s3_ray.data.embedded import embedded_dir

    if cfg.data.train_path or cfg.data.test_path:
        return "custom data"
    manifest = embedded_dir() / "manifest.json"
    return json.loads(manifest.read_text()).get("generator_version", "unknown") if manifest.is_file() else "unknown"


def repo_relative(value: Any) -> Any:
    """Paths below the repository written relative to it, so a report does not name the machine.

    >>> repo_relative({"a": str(REPO / "runs" / "x"), "b": [1, "/elsewhere"]})
    {'a': 'runs/x', 'b': [1, '/elsewhere']}
    """
    if isinstance(value, dict):
        return {k: repo_relative(v) for k, v in value.items()}
    if isinstance(value, list):
        return [repo_relative(v) for v in value]
    if isinstance(value, str) and value.startswith(f"{REPO}/"):
        return value[len(str(REPO)) + 1:]
    return value


def proof_overrides(root: Path, setting: list[str], overrides: list[str]) -> list[str]:
    """The proof's overrides of its config: data and recipe, its run directory (index and generator
    cache under it), the setting under test, then the command line's.

    >>> proof_overrides(Path("/r"), ["rollout.select_initial=true"], ["seed=3"])[-3:]
    ['run_dir=/r', 'rollout.select_initial=true', 'seed=3']
    """
    shared_dirs = [f"retrieval.index_dir={root / 'index'}", f"generator.cache_path={root / 'cache' / 'generator.sqlite'}"]
    return PROOF_DEFAULTS + shared_dirs + [f"run_dir={root}", *setting, *overrides]


def dry_run(args: argparse.Namespace, setting: list[str]) -> int:
    """Print what a run would use (config sections, paths) without starting anything."""
    from s3_ray.config import load_job_config

    root = Path(args.run_dir).resolve()
    cfg = load_job_config(args.config, proof_overrides(root, setting, args.overrides))
    if (cfg.data.train_limit or 10**9) > 200:
        raise SystemExit("data.train_limit must be <= 200: the claim is about few training questions")
    print(json.dumps({"config": args.config, "seeds": args.seeds, "run_dir": str(root), "out": args.out,
                      "compare_with": args.compare_with if args.select_initial else None,
                      "compare_with_exists": Path(args.compare_with).is_file() if args.select_initial else None,
                      "rollout": cfg.rollout.model_dump(), "train": cfg.train.model_dump(),
                      "reward": cfg.reward.model_dump(), "data": cfg.data.model_dump()}, indent=2, default=str))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/rl/rl_proof.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(REPO / "jobs" / "configs" / "demo.yaml"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--run-dir", default=None,
                   help="default runs/rl_proof (runs/rl_proof_select_initial with --select-initial)")
    p.add_argument("--out", default=None, help="default benchmarks/results/rl_proof.json "
                                               "(rl_proof_select_initial.json with --select-initial)")
    p.add_argument("--select-initial", action="store_true",
                   help="run with rollout.select_initial=true: the searcher selects among the initial documents "
                        "too, and the report compares every method with the proof without it")
    p.add_argument("--compare-with", default=str(REPO / "benchmarks" / "results" / "rl_proof.json"),
                   help="with --select-initial: the report of the proof without it (default %(default)s)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved rollout and training settings and the paths, then exit")
    load_guard.add_argument(p)
    p.add_argument("overrides", nargs="*", help=f"dotted config overrides (applied after {PROOF_DEFAULTS})")
    args = p.parse_args(argv)
    variant = "rl_proof_select_initial" if args.select_initial else "rl_proof"
    args.run_dir = args.run_dir or f"runs/{variant}"
    args.out = args.out or str(REPO / "benchmarks" / "results" / f"{variant}.json")
    setting = ["rollout.select_initial=true"] if args.select_initial else []
    if args.dry_run:
        return dry_run(args, setting)

    from jobs import runtime
    from s3_ray.config import load_job_config
    from s3_ray.data.embedded import load_split, resolve_paths
    from s3_ray.eval.methods import NaiveRAG
    from s3_ray.reward.fingerprint import open_baseline
    from s3_ray.reward.precompute import precompute_split
    from s3_ray.retrieval.index import build_index
    from s3_ray.rl.loop.curves import rl_records
    from s3_ray.tracking import read_metrics

    log = runtime.log
    machine = load_guard.start(args.allow_busy)
    if args.select_initial and not Path(args.compare_with).is_file():
        log(f"{args.compare_with}: no report of the proof without rollout.select_initial; this report will "
            "not compare with it")
    root = Path(args.run_dir).resolve()
    base = load_job_config(args.config, proof_overrides(root, setting, args.overrides))
    if (base.data.train_limit or 10**9) > 200:
        raise SystemExit("data.train_limit must be <= 200: the claim is about few training questions")
    t_start = time.perf_counter()
    build_index(resolve_paths(base.data).corpus, base.retrieval)
    retriever, generator = runtime.start_services(base)
    for split in ("train", base.eval.split):
        precompute_split(base, split, retriever, generator, progress=False, log=log)
    test = load_split(base.data, base.eval.split)

    eval_seconds: dict[str, float] = {}
    shared: dict[str, dict[str, float]] = {}
    shared_out = root / "eval_shared"
    for method in (NaiveRAG(retriever, base.rollout.init_k), OracleSearcher(base, retriever, test),
                   searcher(base, retriever, base.searcher.model, "s3_untrained")):
        shared[method.name], eval_seconds[method.name] = evaluate(method, test, generator, shared_out, log)

    per_seed: list[dict[str, dict[str, float]]] = []
    report: dict[str, Any] = {}
    train_seconds, where, curves, runs = [], [], {}, {}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        cfg = base.with_overrides({"seed": seed, "run_dir": str(root / f"seed{seed}")})
        ckpts, spent = train_seed(cfg, open_baseline(base, "train"), retriever, generator, log)
        train_seconds.append(round(spent, 1))
        runs[seed] = train_runs(cfg)
        accs = {}
        for label, path in ckpts.items():
            accs[label], secs = evaluate(searcher(cfg, retriever, path, label), test, generator,
                                         cfg.path("eval", base.eval.split), log)
            eval_seconds[f"{label}_seed{seed}"] = round(secs, 1)
        per_seed.append(accs)
        # last record per RL step: a resumed run logs the steps it redid again
        rl = [m for m in rl_records(read_metrics(cfg.path("train", "metrics.jsonl"))) if m.get("phase") != "warmup"]
        where.append(proof_report.where_it_went(rl))
        curves[seed] = [(int(m["step"]), float(m.get("genacc", 0.0))) for m in rl]
        comp = proof_report.comparisons(per_seed, shared)
        genacc = {m: [sum(v.values()) / len(v)] for m, v in shared.items()}
        for label in ("s3_warmup_only", "s3_trained"):
            genacc[label] = [sum(s[label].values()) / len(s[label]) for s in per_seed]
        report = {
            "world": world_version(base), "reward_metric": base.reward.metric,
            "test_questions": len(test), "seeds": args.seeds[: len(per_seed)], "seeds_planned": args.seeds,
            "train_seconds": train_seconds, "train_runs": runs, "eval_seconds": eval_seconds,
            "eval_questions_per_s": {k: round(len(test) / v, 3) for k, v in eval_seconds.items() if v > 1.0},
            "genacc": genacc, "comparisons": comp, "pooled": comp["pooled"], "goal": proof_report.goal(comp["pooled"]),
            "where": where, "curve_png": f"{out.stem}_curve.png",
            "config": repo_relative(json.loads(json.dumps(
                {k: base.model_dump()[k] for k in ("data", "searcher", "generator", "rollout", "train", "reward")},
                default=str).replace(str(root), "<run_dir>"))),
            "machine": load_guard.finish(machine), "recipe": PROOF_RECIPE, "overrides": args.overrides,
            "total_s": round(time.perf_counter() - t_start, 1),
            "headroom": proof_headroom.analyse(root, args.seeds[: len(per_seed)], test, base.eval.split),
        }
        other = Path(args.compare_with)
        if args.select_initial and other.is_file():
            report["select_initial_versus"] = {
                "without": repo_relative(str(other.resolve())),
                "methods": proof_report.setting_versus(json.loads(other.read_text()), report)}
        proof_report.plot_reward_curves(curves, out.with_name(f"{out.stem}_curve.png"))
        out.write_text(json.dumps(report, indent=2, default=str))
        out.with_suffix(".md").write_text(f"{proof_report.title(report)}\n\n" + proof_report.render(report) + "\n")
        log(f"seed {seed}: " + json.dumps({k: round(100 * v[-1], 1) for k, v in genacc.items()}))
    print(proof_report.render(report))
    print(f"\nwritten to {out}, {out.with_suffix('.md')} and {out.with_name(f'{out.stem}_curve.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
