"""Ray Tune sweeps: search budgets of a fixed searcher, or training settings with ASHA.

    python -m jobs.sweep --config jobs/configs/demo.yaml [--resume] [--name NAME] [--dry-run] [key=value ...]

The grid is `sweep.param_space` (dotted config keys -> values), repeated `sweep.num_samples` times
(each repeat with its own seed), at most `sweep.max_concurrent` trials at once.

* `sweep.mode: inference` (default: rollout.top_k x rollout.max_turns): each trial runs the
  searcher (`searcher.model`, greedy) on the `eval.split` questions, answers with the frozen
  generator app and reports GenAcc and context size. Report: results.md + pareto.png.
* `sweep.mode: train` (e.g. train.lr, train.kl_coef, train.group_size, train.lora_rank): each
  trial runs `train.steps` RL steps in its own process and reports every step;
  `sweep.scheduler: asha` stops weak trials at the rungs (`asha_grace_period`,
  `asha_reduction_factor`). Needs the `train` baseline (`python -m jobs.precompute`) for every
  trial's retrieval settings. Report: last/best `sweep.metric` per trial, whether ASHA stopped
  it, and curves.png.

Tune state lives in <run_dir>/ray/<name>; rerunning with the same name resumes it (finished trials
are kept, errored and unfinished ones run again from the start), and so does `--resume`, which
fails when there is nothing to resume. A resumed sweep must have the same config (Tune keeps the
stored one, `sweep.max_concurrent` included); start another with `--name`. Results: <run_dir>/<name>/.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path
from typing import Any

from jobs import runtime
from s3_ray.config import ConfigError, S3Config, load_job_config

INFERENCE_KEYS = ("genacc", "em", "context_docs", "context_words", "searches")


def default_name(cfg: S3Config) -> str:
    return "sweep-train" if cfg.sweep.mode == "train" else "sweep"


def grid(cfg: S3Config) -> list[dict[str, Any]]:
    """Every point of `sweep.param_space` (one repeat), in Tune's grid order (last key fastest)."""
    keys = list(cfg.sweep.param_space)
    return [dict(zip(keys, values)) for values in itertools.product(*cfg.sweep.param_space.values())]


def check_sweep(cfg: S3Config) -> list[S3Config]:
    """Each grid point's full config; raises ConfigError naming the point or the setting at fault."""
    s = cfg.sweep
    if not s.param_space or any(not v for v in s.param_space.values()):
        raise ConfigError("sweep.param_space: every key needs at least one value")
    if s.scheduler == "asha" and s.mode != "train":
        raise ConfigError("sweep.scheduler: asha stops trials between training steps; it needs sweep.mode=train")
    configs = []
    for point in grid(cfg):
        try:
            configs.append(cfg.with_overrides(point))
        except ConfigError as err:
            raise ConfigError(f"sweep.param_space point {point}: {err}") from None
    if s.mode == "train":
        short = [c.train.steps for c in configs if c.train.steps < 1]
        if short:
            raise ConfigError("sweep.mode=train: train.steps must be >= 1 in every trial")
        if s.scheduler == "asha" and s.asha_grace_period > max(c.train.steps for c in configs):
            raise ConfigError(f"sweep.asha_grace_period ({s.asha_grace_period}) exceeds train.steps")
    return configs


def trial_resources(cfg: S3Config) -> dict[str, float]:
    """What one trial reserves: a CPU for inference; a training worker's CPUs (+ a GPU if seen) for training."""
    if cfg.sweep.mode == "inference":
        return {"cpu": 1}
    from jobs.plan import cuda_visible

    return {"cpu": cfg.train.cpus_per_worker, "gpu": 1 if cuda_visible() else 0}


def experiment_dir(cfg: S3Config, name: str) -> Path:
    return Path(cfg.run_dir, "ray", name).resolve()


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and not (prefix == "sweep." and k == "param_space"):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_resumable(cfg: S3Config, name: str) -> None:
    """A resumed sweep runs its remaining trials with the stored config, so the new one must match."""
    stored_path = experiment_dir(cfg, name).parent / f"{name}.config.json"
    if not stored_path.is_file():
        raise FileNotFoundError(f"{stored_path}: the config of sweep {name!r} is missing; start another with --name")
    stored = _flat(json.loads(stored_path.read_text()))
    now = _flat(json.loads(json.dumps(cfg.model_dump())))
    diff = sorted(k for k in stored.keys() | now.keys() if stored.get(k) != now.get(k))
    if diff:
        shown = ", ".join(f"{k}: {stored.get(k)!r} -> {now.get(k)!r}" for k in diff[:5])
        raise ConfigError(f"sweep {name!r} in {stored_path.parent} was started with another config ({shown}); "
                          "resume it unchanged or start another sweep with --name")


def run_sweep(cfg: S3Config, retriever: Any, generator: Any, name: str | None = None,
              resume: bool | None = None, scorer: Any = None) -> list[dict[str, Any]]:
    """Run (or resume) the sweep; one row per trial. `resume=None` resumes when the sweep exists."""
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from jobs.sweep_trials import inference_trial, train_trial

    cfg = cfg.absolute()  # trial processes run in other directories
    configs = check_sweep(cfg)
    name = name or default_name(cfg)
    path = experiment_dir(cfg, name)
    if resume is None:
        resume = tune.Tuner.can_restore(str(path))
    if cfg.sweep.mode == "train":
        if cfg.train.num_workers > 1 or cfg.train.parallel != "ddp":
            runtime.log(f"train.num_workers={cfg.train.num_workers}, train.parallel={cfg.train.parallel}: each "
                        "training trial is one unsharded process taking the whole batch")
        if scorer is None:  # fail before any trial starts when a baseline is missing or stale
            from jobs.sweep_trials import training_setup

            for c in {c.model_dump_json(include={"rollout", "retrieval", "generator", "reward", "data"}): c
                      for c in configs}.values():
                training_setup(c, generator)
        fn = tune.with_parameters(train_trial, base=cfg.model_dump(), retriever=retriever, generator=generator,
                                  scorer=scorer)
    else:
        fn = tune.with_parameters(inference_trial, base=cfg.model_dump(), retriever=retriever, generator=generator)
    trainable = tune.with_resources(fn, trial_resources(cfg))

    if resume:
        if not tune.Tuner.can_restore(str(path)):
            raise FileNotFoundError(f"no sweep to resume at {path}")
        check_resumable(cfg, name)
        runtime.log(f"resuming sweep {name!r} from {path}")
        tuner = tune.Tuner.restore(str(path), trainable=trainable, resume_errored=True)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.parent / f"{name}.config.json").write_text(json.dumps(cfg.model_dump(), indent=2))
        space: dict[str, Any] = {k: tune.grid_search(v) for k, v in cfg.sweep.param_space.items()}
        if cfg.sweep.num_samples > 1 and "seed" not in space:
            space["seed"] = tune.randint(0, 2**31 - 1)
        tuner = tune.Tuner(
            trainable,
            param_space=space,
            tune_config=tune.TuneConfig(
                metric=cfg.sweep.metric, mode=cfg.sweep.metric_mode, num_samples=cfg.sweep.num_samples,
                search_alg=BasicVariantGenerator(random_state=cfg.seed, max_concurrent=cfg.sweep.max_concurrent),
                scheduler=_scheduler(cfg, max(c.train.steps for c in configs))),
            run_config=tune.RunConfig(name=name, storage_path=str(path.parent)),
        )
    return result_rows(tuner.fit(), cfg)


def _scheduler(cfg: S3Config, max_t: int) -> Any:
    if cfg.sweep.scheduler == "fifo":
        return None
    from ray.tune.schedulers import ASHAScheduler

    s = cfg.sweep
    return ASHAScheduler(time_attr="training_iteration", max_t=max_t, grace_period=s.asha_grace_period,
                         reduction_factor=s.asha_reduction_factor)


def result_rows(results: Any, cfg: S3Config) -> list[dict[str, Any]]:
    """One dict per trial: its config and metrics (inference), or last/best metric, steps and
    whether the scheduler stopped it early (train)."""
    metric, best_of = cfg.sweep.metric, (max if cfg.sweep.metric_mode == "max" else min)
    rows = []
    for res in results:
        row: dict[str, Any] = {"config": res.config, "seconds": (res.metrics or {}).get("time_total_s")}
        if res.error:
            rows.append({**row, "error": str(res.error)})
            continue
        if cfg.sweep.mode == "inference":
            rows.append({**row, **{k: res.metrics.get(k) for k in INFERENCE_KEYS}})
            continue
        df = res.metrics_dataframe
        history = [float(v) for v in df[metric]] if df is not None and metric in df else []
        steps = int(res.metrics.get("training_iteration", 0))
        planned = cfg.with_overrides(res.config).train.steps
        rows.append({**row, "last": history[-1] if history else None, "best": best_of(history) if history else None,
                     "steps": steps, "planned_steps": planned,
                     "stopped_early": steps < planned and not res.metrics.get("stop_reason"),
                     "stop_reason": res.metrics.get("stop_reason"), "history": history})
    return rows


def write_sweep_report(rows: list[dict[str, Any]], out: Path, mode: str = "inference",
                       metric: str = "genacc") -> Path:
    """results.json, results.md and a plot (pareto.png for inference, curves.png for training)."""
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
    return "-" if v is None else f"{v:.3f}"


def sweep_plan(cfg: S3Config, name: str, resume: bool) -> Any:
    """The dry run's plan: trials, their resources, the services and data they use, where state goes."""
    from jobs.plan import (
        Plan,
        baseline_entry,
        budgets,
        data_entry,
        index_entry,
        model_entry,
        serve_entry,
        training_entry,
    )

    plan = Plan("sweep", cfg)
    try:
        configs = check_sweep(cfg)
    except ConfigError as err:
        plan.problems.append(str(err))
        configs = []
    s = cfg.sweep
    res = trial_resources(cfg)
    plan.add("sweep", {"mode": s.mode, "scheduler": s.scheduler, "metric": f"{s.metric_mode} {s.metric}",
                       "param_space": s.param_space, "trials": len(configs) * s.num_samples,
                       "num_samples": s.num_samples, "max_concurrent": s.max_concurrent, "trial_resources": res,
                       "peak_cpus": res["cpu"] * min(s.max_concurrent, max(len(configs) * s.num_samples, 1))})
    if s.scheduler == "asha" and configs:
        plan.sections["sweep"]["asha"] = {"time_attr": "training_iteration",
                                          "max_t": max(c.train.steps for c in configs),
                                          "grace_period": s.asha_grace_period,
                                          "reduction_factor": s.asha_reduction_factor}
    plan.add("searcher", model_entry(cfg.searcher.model, "searcher.model", plan))
    plan.add("budgets", budgets(cfg))
    plan.add("serve", serve_entry(cfg, plan))
    plan.add("index", index_entry(cfg, plan))
    if s.mode == "train":
        plan.add("training", training_entry(cfg))
        plan.add("data", data_entry(cfg, plan, ["train"]))
        plan.add("baselines", [baseline_entry(c, plan, "train", required=True) for c in
                               {c.model_dump_json(include={"rollout", "retrieval", "generator", "reward", "run_dir"}): c
                                for c in configs}.values()])
    else:
        plan.add("data", data_entry(cfg, plan, [cfg.eval.split]))
    exp = experiment_dir(cfg, name)
    restorable = any(exp.glob("experiment_state*.json"))
    if resume and not restorable:
        plan.problems.append(f"--resume: no sweep to resume at {exp}")
    plan.add("outputs", {"experiment": {**plan.output(exp), "resumes": restorable},
                         "report": plan.output(cfg.path(name))})
    return plan


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=runtime.DEFAULT_CONFIG, help="YAML config file")
    parser.add_argument("--name", default=None, help="experiment name (default: sweep, or sweep-train in train mode)")
    parser.add_argument("--resume", action="store_true",
                        help="resume the sweep of this name; fail if there is none (default: resume when it exists)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the resolved plan (JSON) and exit; loads no model, starts no Ray")
    parser.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. sweep.max_concurrent=2")
    args = parser.parse_args(argv)
    cfg = load_job_config(args.config, args.overrides)
    name = args.name or default_name(cfg)
    if args.dry_run:
        return sweep_plan(cfg, name, args.resume).emit()

    runtime.init_ray()
    runtime.deploy_services(cfg)
    retriever, generator = runtime.clients(cfg)
    rows = run_sweep(cfg, retriever, generator, name=name, resume=True if args.resume else None)
    md = write_sweep_report(rows, cfg.path(name), cfg.sweep.mode, cfg.sweep.metric)
    print(md.read_text())
    print(f"report: {md.parent}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
