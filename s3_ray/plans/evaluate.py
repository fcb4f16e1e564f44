"""The plan of `python -m jobs.evaluate`: data sets, methods, retrieval, generator and the report folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from s3_ray.config import S3Config
from s3_ray.plans.entries import budgets, generator_entry, index_entry, questions_read
from s3_ray.plans.memory import add_memory_plan
from s3_ray.plans.plan import Plan


def datasets_entry(cfg: S3Config, plan: Plan) -> list[dict[str, Any]]:
    """`eval.datasets` (format resolved, files checked), or the `eval.split` of `data` when empty."""
    from s3_ray.data.datasets import HF_REPO, dataset_path, infer_format, load_eval_dataset
    from s3_ray.data.embedded import resolve_paths
    from s3_ray.data.qa import read_qa

    if not cfg.eval.datasets:
        what, path = f"data.{cfg.eval.split}_path", resolve_paths(cfg.data).split(cfg.eval.split)
        entry = {"name": cfg.eval.split, "format": "flashrag", "limit": cfg.data.test_limit, **plan.file(path, what)}
        if entry["exists"]:
            entry["questions"] = questions_read(plan, what, lambda: read_qa(path))
        return [entry]
    datasets = []
    for spec in cfg.eval.datasets:
        fmt = spec.format
        if fmt == "auto":
            try:
                fmt = infer_format(spec.path)
            except ValueError as err:
                plan.problems.append(f"eval.datasets[{spec.name}]: {err}")
        entry: dict[str, Any] = {"name": spec.name, "format": fmt, "limit": cfg.eval.limit,
                                 "seed": cfg.eval.sample_seed}
        if fmt == "hf":
            entry.update(source=f"hub {HF_REPO}/{spec.name}", split=spec.path)
        else:
            what, path = f"eval.datasets[{spec.name}]", dataset_path(spec.path, fmt)
            entry.update(plan.file(path, what))
            if entry["exists"] and fmt in ("flashrag", "parquet", "mirage"):  # read in full: every row checked
                entry["questions"] = questions_read(
                    plan, what, lambda p=path, f=fmt, s=spec: load_eval_dataset(s.name, p, f, tasks=s.tasks))
        if spec.tasks:
            entry["tasks"] = spec.tasks
        datasets.append(entry)
    return datasets


def methods_entry(cfg: S3Config, plan: Plan, searchers: dict[str, str]) -> list[dict[str, Any]]:
    """`eval.methods` (an unknown one is a problem) and one s3 method per checkpoint (checked)."""
    from s3_ray.eval.methods import BASELINES, METHODS

    methods = []
    for kind in cfg.eval.methods:
        if kind not in METHODS:
            plan.problems.append(f"eval.methods: unknown method {kind!r}; known: {', '.join(sorted(METHODS))}")
        entry = {"name": "s3_untrained" if kind == "s3" else kind, "kind": kind}
        if kind == "s3":
            entry["model"] = cfg.searcher.model
        elif kind in BASELINES:
            entry["model"] = cfg.eval.baseline_model or cfg.searcher.model
        methods.append(entry)
    for label, path in {**cfg.eval.checkpoints, **searchers}.items():
        where = Path(path).expanduser().resolve()
        entry = plan.file(where, f"checkpoint {label}")
        if entry["exists"] and not is_model_folder(where):
            found = model_folders_near(where)
            plan.problems.append(f"checkpoint {label}: {where} is not a model folder (no config.json); "
                                 + (f"checkpoint folders there: {', '.join(found)}" if found
                                    else "pass the folder of a checkpoint (it holds config.json)"))
        methods.append({"name": label, "kind": "s3", **entry})
    return methods


def is_model_folder(path: Path) -> bool:
    """A folder a searcher loads from: a checkpoint or a Hugging Face model folder (config.json)."""
    return path.is_dir() and (path / "config.json").is_file()


def model_folders_near(path: Path, limit: int = 8) -> list[str]:
    """Model folders inside `path`, or beside it when it is a file (Ray writes
    `checkpoint_manager_snapshot.json` next to the checkpoints), newest name last."""
    base = path if path.is_dir() else path.parent
    found = sorted(str(p.parent) for p in base.glob("*/config.json"))
    return found[-limit:]


def evaluate_plan(cfg: S3Config, searchers: dict[str, str]) -> Plan:
    """Everything the evaluation would use: inputs not there yet (an index, a data file, a
    checkpoint) are `missing`, contradictions are `problems`. Loads no model, touches no network."""
    plan = Plan("evaluate", cfg)
    plan.add("run_dir", cfg.run_dir)
    plan.add("datasets", datasets_entry(cfg, plan))
    plan.add("methods", methods_entry(cfg, plan, searchers))
    plan.add("retrieval", index_entry(cfg, plan, what="retrieval.index_dir"))
    plan.add("generator", generator_entry(cfg, plan))
    plan.add("budgets", budgets(cfg))
    plan.add("context_size", f"tokens ({cfg.eval.context_tokenizer})" if cfg.eval.context_tokenizer else "words")
    plan.add("judge", cfg.reward.use_judge)
    report = cfg.path("eval", "report") if cfg.eval.datasets else cfg.path("eval", cfg.eval.split)
    plan.add("report_dir", str(report))
    add_memory_plan(plan, cfg)
    return plan
