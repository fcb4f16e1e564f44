"""Sweep search budgets with Ray Tune over the searcher's inference run.

    python -m jobs.sweep --config jobs/configs/demo.yaml [key=value ...]

The grid is `sweep.param_space` (dotted config keys -> values; default rollout.top_k x
rollout.max_turns, 2 x 2). Each trial runs the searcher (`searcher.model`, greedy) on the
`eval.split` questions, answers with the frozen generator app and reports GenAcc and context size.
Results: <run_dir>/sweep/{results.json, results.md, pareto.png}; Tune state under <run_dir>/ray.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from jobs import runtime
from s3_ray.config import S3Config, load_job_config


def inference_trial(trial: dict[str, Any], base: dict[str, Any], retriever: Any, generator: Any) -> None:
    """One Tune trial: the searcher with the trial's budgets, scored by the frozen generator."""
    from ray import tune

    from s3_ray.data.embedded import load_split
    from s3_ray.eval.methods import S3Searcher
    from s3_ray.eval.runner import evaluate_method, summarize

    cfg = S3Config.model_validate(base).with_overrides(trial)
    items = load_split(cfg.data, cfg.eval.split)
    greedy = cfg.searcher.model_copy(update={"temperature": 0.0})
    method = S3Searcher(cfg.searcher.model, retriever, cfg.rollout, greedy, name="s3")
    out = Path(tune.get_context().get_trial_dir())
    records = evaluate_method(items, method, generator, out, batch_size=cfg.generator.batch_size)
    tune.report(summarize(records))


def run_sweep(cfg: S3Config, retriever: Any, generator: Any, name: str = "sweep") -> list[dict[str, Any]]:
    from ray import tune

    space = {key: tune.grid_search(values) for key, values in cfg.sweep.param_space.items()}
    cfg.with_overrides({k: v[0] for k, v in cfg.sweep.param_space.items()})  # fail fast on bad keys
    trainable = tune.with_resources(
        tune.with_parameters(inference_trial, base=cfg.model_dump(), retriever=retriever, generator=generator),
        {"cpu": 1},
    )
    tuner = tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(metric=cfg.sweep.metric, mode="max",
                                    max_concurrent_trials=cfg.sweep.max_concurrent),
        run_config=tune.RunConfig(name=name, storage_path=str(Path(cfg.run_dir, "ray").resolve())),
    )
    grid = tuner.fit()
    rows = []
    for res in grid:
        if res.error:
            rows.append({"config": res.config, "error": str(res.error)})
            continue
        rows.append({"config": res.config, **{k: res.metrics.get(k) for k in
                                              ("genacc", "em", "context_docs", "context_words", "searches")}})
    return rows


def write_sweep_report(rows: list[dict[str, Any]], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(rows, indent=2, default=str))
    keys = sorted({k for r in rows for k in r["config"]})
    lines = ["| " + " | ".join(keys) + " | GenAcc | docs / question | context words | searches |",
             "|" + "---|" * (len(keys) + 4)]
    for r in rows:
        cells = [str(r["config"].get(k)) for k in keys]
        if "error" in r:
            lines.append("| " + " | ".join(cells) + f" | error: {r['error'][:60]} | | | |")
            continue
        lines.append("| " + " | ".join(cells) + f" | {100 * r['genacc']:.1f} | {r['context_docs']:.2f} | "
                     f"{r['context_words']:.0f} | {r['searches']:.2f} |")
    md = out / "results.md"
    md.write_text("# Budget sweep\n\n" + "\n".join(lines) + "\n")
    ok = [r for r in rows if "error" not in r]
    fig, ax = plt.subplots(figsize=(5, 4))
    for r in ok:
        ax.scatter(r["context_words"], 100 * r["genacc"])
        ax.annotate(",".join(f"{k.split('.')[-1]}={r['config'][k]}" for k in keys),
                    (r["context_words"], 100 * r["genacc"]), fontsize=7)
    ax.set_xlabel("context words per question")
    ax.set_ylabel("GenAcc (%)")
    ax.set_title("Accuracy vs context size")
    fig.tight_layout()
    fig.savefig(out / "pareto.png", dpi=100)
    plt.close(fig)
    return md


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=runtime.DEFAULT_CONFIG, help="YAML config file")
    parser.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. sweep.max_concurrent=2")
    args = parser.parse_args(argv)
    cfg = load_job_config(args.config, args.overrides)
    runtime.init_ray()
    runtime.deploy_services(cfg)
    retriever, generator = runtime.clients(cfg)
    md = write_sweep_report(run_sweep(cfg, retriever, generator), cfg.path("sweep"))
    print(md.read_text())
    print(f"report: {md.parent}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
