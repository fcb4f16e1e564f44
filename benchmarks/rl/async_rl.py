"""Asynchronous against synchronous RL over the same wall time: groups learned per hour, the reward
of each group learned, and test GenAcc after training.

    python benchmarks/rl/async_rl.py [--minutes 20] [--latency 1.0] [--generators remote in_cluster]
                                     [--settings sync s1 s2] [--run-dir runs/async_rl]
                                     [--async-overrides key=value ...] [key=value ...]

On the embedded default (`jobs/configs/demo.yaml` with the RL proof's recipe, `proof_recipe.py`),
per generator and per setting (`sync`: train.async.max_staleness 0; `s1`, `s2`: 1 and 2, with
`train.async.rollout_workers` Ray actors and truncated importance sampling; `s1_decoupled`, asked
for by name: S = 1 with decoupled PPO instead):

* generators: `remote`, the `openai` backend against a local OpenAI-compatible server answering
  with the same model after `--latency` seconds per request (`local_openai_server.py`; a hosted or
  remote generator's round trip); `in_cluster`, the transformers generator Serve app (no latency);
* every setting starts from the same format warm-up (run once, `<run-dir>/warmup`) and trains
  through `run_training` (Ray Train) until `train.max_wall_s` = `--minutes` is spent, then its last
  checkpoint answers the test questions (greedy searcher, the same generator);
* reported per setting: `groups_per_hour` (groups whose rewards differ, i.e. that carry a gradient,
  learned per hour of RL wall time), `reward_per_group` (`mean` of those groups' mean reward, and
  `ci95`, a bootstrap over steps), `test_genacc`, `wall_s` (the RL steps' wall time; the start-up
  of the Train worker and of the rollout actors, before the first step, not included), the load average at its start and end, and
  where the time went; per generator the ratio of each setting's groups per hour to sync's.

The response cache is off (`generator.cache_path=null`), so every reward is asked of the generator
and no setting reuses answers an earlier one paid for. Rerunning the command skips every setting
already in the results file and restarts an unfinished one from its beginning (a finished
training whose evaluation stopped is kept and only evaluated); the results file is written after
every setting. It refuses a busy machine (1-minute load average above 1.0) unless `--allow-busy`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # load_guard, shared by all groups

import load_guard  # noqa: E402  (sibling module)
from proof_recipe import PROOF_DEFAULTS  # noqa: E402  (sibling module)

SETTINGS = {"sync": 0, "s1": 1, "s2": 2, "s1_decoupled": 1}
"""Setting name -> train.async.max_staleness. The plain settings correct with `tis` (the default);
`s1_decoupled` is S = 1 with decoupled PPO (`train.async.correction=decoupled`), the comparison of
the two corrections. Run by default: sync, s1, s2."""

DEFAULT_SETTINGS = ["sync", "s1", "s2"]


def setting_overrides(name: str) -> dict[str, object]:
    """The config keys a setting sets.

    >>> setting_overrides("sync")
    {'train.async.max_staleness': 0}
    >>> setting_overrides("s1_decoupled")
    {'train.async.max_staleness': 1, 'train.async.correction': 'decoupled'}
    """
    out: dict[str, object] = {"train.async.max_staleness": SETTINGS[name]}
    if name.endswith("_decoupled"):
        out["train.async.correction"] = "decoupled"
    return out

GENERATORS = ("remote", "in_cluster")

BENCH_DEFAULTS = [
    "data.test_limit=80",                 # the demo's test set (the proof's 200 take ~11 min per evaluation)
    "train.steps=100000", "train.checkpoint_every=100000",  # the wall budget ends training, checkpointed
    "generator.cache_path=null",          # every reward asks the generator
    # 2 cores: the Train worker, two rollout actors and the Serve apps must all be placed
    "train.cpus_per_worker=0.5", "train.async.rollout_workers=2", "train.async.worker_cpus=0.25",
]
"""On top of the RL proof's recipe (`PROOF_DEFAULTS`); the command line's overrides come last."""


def bootstrap_ratio_ci(sums: list[float], counts: list[float], draws: int = 2000, seed: int = 0) -> list[float]:
    """95% bootstrap interval of sum(sums) / sum(counts), resampling the (sum, count) pairs (steps).

    >>> bootstrap_ratio_ci([1.0, 1.0, 1.0], [2.0, 2.0, 2.0])
    [0.5, 0.5]
    """
    rng = random.Random(seed)
    n = len(sums)
    values = []
    for _ in range(draws):
        pick = [rng.randrange(n) for _ in range(n)]
        c = sum(counts[i] for i in pick)
        if c > 0:
            values.append(sum(sums[i] for i in pick) / c)
    values.sort()
    if not values:
        return [float("nan"), float("nan")]
    return [round(values[int(0.025 * (len(values) - 1))], 4), round(values[int(0.975 * (len(values) - 1))], 4)]


def summarize_steps(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The figures of one training run from its metrics records (the RL steps; the last record of
    each step when a step was logged twice).

    >>> rows = [{"step": 1, "sample/signal_groups": 2.0, "sample/groups": 2.0, "reward_learned": 0.5,
    ...          "time/elapsed_s": 1800.0, "time/step_s": 1800.0},
    ...         {"step": 2, "sample/signal_groups": 2.0, "sample/groups": 3.0, "reward_learned": 0.7,
    ...          "time/elapsed_s": 3600.0, "time/step_s": 1800.0}]
    >>> s = summarize_steps(rows)
    >>> s["groups_learned"], s["groups_per_hour"], s["reward_per_group"]["mean"], s["wall_s"]
    (4, 4.0, 0.6, 3600.0)
    """
    by_step = {int(r["step"]): r for r in rows if r.get("phase") != "warmup" and int(r.get("step", 0)) > 0}
    steps = [by_step[k] for k in sorted(by_step)]
    if not steps:
        raise ValueError("no RL step in the metrics")
    counts = [float(r.get("sample/signal_groups", 0.0)) for r in steps]
    sums = [float(r.get("reward_learned", 0.0)) * c for r, c in zip(steps, counts)]
    learned = sum(counts)
    wall = float(steps[-1]["time/elapsed_s"])

    def total(key: str) -> float:
        return round(sum(float(r.get(key, 0.0)) for r in steps), 1)

    out: dict[str, Any] = {
        "steps": len(steps), "groups_learned": int(learned),
        "groups_sampled": int(sum(float(r.get("sample/groups", 0.0)) for r in steps)),
        "groups_per_hour": round(3600.0 * learned / wall, 2) if wall > 0 else None,
        "reward_per_group": {"mean": round(sum(sums) / learned, 4) if learned else None,
                             "ci95": bootstrap_ratio_ci(sums, counts) if learned else None},
        "wall_s": round(wall, 1),
        "time": {k: total(f"time/{k}_s") for k in ("rollout", "reward", "update", "weight_sync", "step")},
        "stop": "wall budget" if steps[-1].get("wall_budget_reached") else steps[-1].get("stop_reason", "steps"),
    }
    if any("async/staleness_mean" in r for r in steps):
        ks = sorted({int(k.rsplit("_", 1)[1]) for r in steps for k in r if k.startswith("async/staleness_")
                     and k.rsplit("_", 1)[1].isdigit()})
        out["staleness_histogram"] = {str(k): int(total(f"async/staleness_{k}")) for k in ks}
        out["lost_groups"] = int(total("async/lost_groups"))
        out["flat_dropped"] = int(total("async/flat_dropped"))
        weights = [float(r["is/weight_mean"]) for r in steps if "is/weight_mean" in r]
        out["is_weight_mean"] = round(sum(weights) / len(weights), 4) if weights else None
        out["is_weight_max"] = max((float(r["is/weight_max"]) for r in steps if "is/weight_max" in r), default=None)
        out["time"]["trainer_wait"] = total("async/wait_s")
    return out


class LocalServer:
    """`local_openai_server.py` in its own process: the model answers after `latency` seconds."""

    def __init__(self, cfg: Any, latency: float, log: Any) -> None:
        import httpx

        g = cfg.generator
        cmd = [sys.executable, str(Path(__file__).with_name("local_openai_server.py")), "--model", g.model,
               "--latency", str(latency), "--max-new-tokens", str(g.max_new_tokens),
               "--max-context-tokens", str(g.max_context_tokens), "--batch-size", str(g.batch_size),
               "--num-threads", str(g.num_threads)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=REPO)
        line = self.proc.stdout.readline().strip() if self.proc.stdout else ""
        if not line.startswith("listening on "):
            self.close()
            raise RuntimeError(f"the local OpenAI-compatible server did not start: {line!r}")
        self.url = line.removeprefix("listening on ")
        deadline = time.time() + 300
        while True:  # ready once the model is loaded
            try:
                if httpx.get(f"{self.url}/models", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                self.close()
                raise RuntimeError("the local OpenAI-compatible server exited or did not load its model in 300 s")
            time.sleep(1)
        log(f"local OpenAI-compatible server at {self.url} ({g.model}, {latency:g} s per request)")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def warm_up(base: Any, retriever: Any, generator: Any, root: Path, log: Any) -> str:
    """The format warm-up every setting starts from (run once; its step-0 checkpoint)."""
    from s3_ray.reward.fingerprint import open_baseline
    from s3_ray.reward.gain import RewardScorer
    from s3_ray.rl.ray_train.launch import run_training, training_items

    done = root / "warmup" / "checkpoint.json"
    if done.is_file():
        return json.loads(done.read_text())["path"]
    cfg = base.with_overrides({"run_dir": str(root / "warmup"), "train.steps": 0, "train.async.max_staleness": 0,
                               "train.max_wall_s": None})
    shutil.rmtree(cfg.run_dir, ignore_errors=True)
    items, dropped = training_items(cfg, open_baseline(base, "train"))
    log(f"format warm-up ({cfg.train.warmup_steps} steps) on {len(items)} questions ({dropped} dropped by the filter)")
    t0 = time.perf_counter()
    result = run_training(cfg, items, retriever, RewardScorer(generator, open_baseline(base, "train"), cfg.reward),
                          name="warmup")
    if result.error is not None or result.checkpoint is None:
        raise RuntimeError(f"the warm-up failed: {result.error!r}")
    done.write_text(json.dumps({"path": result.checkpoint.path, "seconds": round(time.perf_counter() - t0, 1)}))
    return result.checkpoint.path


def run_setting(cfg: Any, retriever: Any, generator: Any, base: Any, log: Any) -> dict[str, Any]:
    """Train one setting to its wall budget (or take its finished training), then evaluate it."""
    import rl_proof  # sibling module: the proof's evaluation helpers

    from s3_ray.data.embedded import load_split
    from s3_ray.reward.fingerprint import open_baseline
    from s3_ray.reward.gain import RewardScorer
    from s3_ray.rl.ray_train.launch import run_training, training_items
    from s3_ray.tracking import read_metrics

    ledger = cfg.path("trained.json")
    if ledger.is_file():
        trained = json.loads(ledger.read_text())
    else:
        shutil.rmtree(cfg.run_dir, ignore_errors=True)  # an unfinished run starts over: its budget is one run's
        items, _ = training_items(cfg, open_baseline(base, "train"))
        load_start = round(os.getloadavg()[0], 2)
        t0 = time.perf_counter()
        result = run_training(cfg, items, retriever, RewardScorer(generator, open_baseline(base, "train"), cfg.reward),
                              name="train", max_failures=0)
        if result.error is not None or result.checkpoint is None:
            raise RuntimeError(f"training failed: {result.error!r}")
        trained = {**summarize_steps(read_metrics(cfg.path("train", "metrics.jsonl"))),
                   "checkpoint": result.checkpoint.path, "run_s": round(time.perf_counter() - t0, 1),
                   "load_avg_1m_start": load_start, "load_avg_1m_end": round(os.getloadavg()[0], 2)}
        ledger.write_text(json.dumps(trained, indent=2))
    test = load_split(base.data, base.eval.split)
    accs, secs = rl_proof.evaluate(rl_proof.searcher(cfg, retriever, trained["checkpoint"], "trained"), test,
                                   generator, cfg.path("eval"), log)
    return {**trained, "checkpoint": rl_proof.repo_relative(trained["checkpoint"]),
            "test_genacc": round(sum(accs.values()) / len(accs), 4), "test_questions": len(accs),
            "eval_s": secs}


def render(report: dict[str, Any]) -> str:
    head = (f"{'generator':<11} {'setting':<12} {'groups/h':>9} {'x sync':>7} {'reward/group [95% CI]':>28} "
            f"{'test GenAcc':>11} {'wall s':>8} {'load':>5}")
    lines = [head, "-" * len(head)]
    for gen, runs in report["runs"].items():
        for name, r in runs.items():
            rpg = r["reward_per_group"]
            ci = rpg["ci95"] or [float("nan")] * 2
            mean = float("nan") if rpg["mean"] is None else rpg["mean"]
            speed = report["speedup"].get(gen, {}).get(name)
            lines.append(f"{gen:<11} {name:<12} {r['groups_per_hour'] or 0.0:>9.1f} "
                         f"{(f'{speed:.2f}' if speed else '-'):>7} "
                         f"{mean:>+9.4f} [{ci[0]:+.4f}, {ci[1]:+.4f}] {100 * r['test_genacc']:>11.1f} "
                         f"{r['wall_s']:>8.0f} {r['load_avg_1m_start']:>5.2f}")
    return "\n".join(lines)


def speedups(runs: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per generator, each setting's groups per hour over sync's.

    >>> speedups({"remote": {"sync": {"groups_per_hour": 10.0}, "s1": {"groups_per_hour": 16.0}}})
    {'remote': {'sync': 1.0, 's1': 1.6}}
    """
    out: dict[str, dict[str, float]] = {}
    for gen, settings in runs.items():
        sync = (settings.get("sync") or {}).get("groups_per_hour")
        if sync:
            out[gen] = {name: round(r["groups_per_hour"] / sync, 3) for name, r in settings.items()
                        if r.get("groups_per_hour") is not None}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/rl/async_rl.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(REPO / "jobs" / "configs" / "demo.yaml"))
    p.add_argument("--minutes", type=float, default=20.0, help="RL wall time of every setting (train.max_wall_s)")
    p.add_argument("--latency", type=float, default=1.0, help="seconds per request of the remote generator")
    p.add_argument("--generators", nargs="+", choices=GENERATORS, default=list(GENERATORS))
    p.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=DEFAULT_SETTINGS,
                   help="sync, s1 and s2 by default; s1_decoupled compares decoupled PPO with tis at S = 1")
    p.add_argument("--async-overrides", nargs="*", default=[], metavar="KEY=VALUE",
                   help="overrides for the asynchronous settings only (all but sync), e.g. a thread layout in which the "
                        "trainer and the rollout workers do not oversubscribe the cores: searcher.num_threads=1 "
                        "train.async.rollout_workers=1")
    p.add_argument("--run-dir", default="runs/async_rl")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "async.json"))
    load_guard.add_argument(p)
    p.add_argument("overrides", nargs="*",
                   help="dotted config overrides (after the RL proof's recipe and this benchmark's defaults)")
    args = p.parse_args(argv)
    if args.minutes <= 0 or args.latency < 0:
        p.error("--minutes must be > 0 and --latency >= 0")

    from ray import serve

    from jobs import runtime
    from s3_ray.config import load_job_config
    from s3_ray.data.embedded import resolve_paths
    from s3_ray.reward.precompute import precompute_split
    from s3_ray.retrieval.index import build_index

    log = runtime.log
    machine = load_guard.start(args.allow_busy)
    root = Path(args.run_dir).resolve()
    out = Path(args.out)
    report: dict[str, Any] = json.loads(out.read_text()) if out.is_file() else {}
    runs: dict[str, dict[str, Any]] = report.get("runs", {})
    shared = [f"retrieval.index_dir={root / 'index'}", f"run_dir={root}", f"train.max_wall_s={60 * args.minutes}"]
    base = load_job_config(args.config, PROOF_DEFAULTS + BENCH_DEFAULTS + shared + list(args.overrides))
    build_index(resolve_paths(base.data).corpus, base.retrieval)
    warm: str | None = None
    served = False  # whether this process deployed a generator app (the next generator replaces it)
    for gen in args.generators:
        todo = [s for s in args.settings if s not in runs.get(gen, {})]
        if not todo:
            log(f"{gen}: every setting already measured in {out}")
            continue
        server = LocalServer(base, args.latency, log) if gen == "remote" else None
        try:
            # each generator its own folder: the baseline files (<run_dir>/baseline) name the backend
            gcfg = base.with_overrides({"run_dir": str(root / gen), **({} if server is None else {
                "generator.backend": "openai", "generator.base_url": server.url})})
            if served:
                serve.delete(runtime.GENERATOR_APP)  # the other generator's app
            served = True
            retriever, generator = runtime.start_services(gcfg)
            for split in ("train", gcfg.eval.split):
                precompute_split(gcfg, split, retriever, generator, progress=False, log=log)
            warm = warm or warm_up(gcfg, retriever, generator, root, log)
            for name in todo:
                cfg = gcfg.with_overrides({"run_dir": str(root / gen / name), "searcher.model": warm,
                                           "train.warmup_steps": 0, **setting_overrides(name)})
                if SETTINGS[name] > 0 and args.async_overrides:
                    cfg = cfg.with_overrides(list(args.async_overrides))
                log(f"{gen} / {name}: training for {args.minutes:g} min (max_staleness {SETTINGS[name]})")
                runs.setdefault(gen, {})[name] = run_setting(cfg, retriever, generator, gcfg, log)
                report = {
                    "what": "groups learned per hour and reward per group learned over the same RL wall time; "
                            "sync = train.async.max_staleness 0, s1/s2 = 1/2",
                    "runs": runs, "speedup": speedups(runs), "minutes": args.minutes,
                    "remote_latency_s": args.latency, "machine": load_guard.finish(machine),
                    "config": comparison_config(base), "overrides": args.overrides,
                    "async_overrides": args.async_overrides,
                }
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps(report, indent=2, default=str))
                log(f"{gen} / {name}: " + json.dumps({k: runs[gen][name][k] for k in
                                                      ("groups_per_hour", "reward_per_group", "test_genacc")}))
        finally:
            if server is not None:
                server.close()
    if report.get("runs"):
        print(render(report))
        print(f"\nwritten to {out}")
    return 0


def comparison_config(base: Any) -> dict[str, Any]:
    """The settings that decide the comparison, with the run folder's path left out."""
    dump = base.model_dump()
    keep = {k: dump[k] for k in ("searcher", "generator", "rollout", "reward")}
    keep["train"] = {k: dump["train"][k] for k in ("algorithm", "questions_per_step", "group_size", "lr", "kl_coef",
                                                  "min_signal_groups", "warmup_steps", "max_wall_s",
                                                  "cpus_per_worker", "async")}
    keep["data"] = {k: dump["data"][k] for k in ("train_limit", "test_limit")}
    return json.loads(json.dumps(keep, default=str).replace(str(Path(base.run_dir)), "<run_dir>"))


if __name__ == "__main__":
    raise SystemExit(main())
