"""`--dry-run` for every job: resolve the config and print what the job would use, touching nothing.

A dry run starts no Ray, loads no model and writes no file. It prints one JSON object:

* `plan`: the resolved pieces (deployments with replicas / CPUs / GPUs, train workers x resources,
  models, data files with existence checks, output folders);
* `missing`: inputs that are not there yet (an index, a baseline, a data file). They are reported,
  not fatal, because an earlier job (`build_index`, `precompute`) or another machine provides them;
* `problems`: contradictions that make the run fail whatever exists (exit status 2).

A bad config key never gets this far: `load_job_config` raises `ConfigError` naming the key.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from s3_ray.config import S3Config


class Plan:
    """Collects a job's plan, its missing inputs and its problems, then prints them as JSON."""

    def __init__(self, job: str, cfg: S3Config) -> None:
        self.job = job
        self.cfg = cfg
        self.sections: dict[str, Any] = {"config": cfg.model_dump()}
        self.missing: list[str] = []
        self.problems: list[str] = []

    def add(self, key: str, value: Any) -> Any:
        self.sections[key] = value
        return value

    def file(self, path: str | Path, what: str, made_by: str | None = None, is_dir: bool = False) -> dict[str, Any]:
        """A path the job reads; a missing one is listed in `missing` with the job that makes it."""
        p = Path(path).expanduser()
        exists = p.is_dir() if is_dir else p.exists()
        if not exists:
            self.missing.append(f"{what}: {p} does not exist" + (f" (made by `{made_by}`)" if made_by else ""))
        return {"path": str(p), "exists": exists}

    def output(self, path: str | Path) -> dict[str, Any]:
        """A path the job writes; an existing one means the job resumes or overwrites."""
        p = Path(path).expanduser()
        return {"path": str(p), "exists": p.exists()}

    def emit(self) -> int:
        """Print the plan; exit status 2 when there are problems, else 0."""
        out = {"job": self.job, "plan": self.sections, "missing": self.missing, "problems": self.problems}
        print(json.dumps(out, indent=2, default=str))
        if self.problems:
            print(f"[s3-ray] dry run of {self.job}: {len(self.problems)} problem(s)", file=sys.stderr)
        return 2 if self.problems else 0


def model_entry(name: str, what: str, plan: Plan) -> dict[str, Any]:
    """How a model name resolves (registered package, built on first use, local folder, hub id)."""
    from s3_ray.models.registry import BUILDERS, MODELS, ModelError, cache_root

    if name in MODELS:
        try:
            source = str(MODELS[name].locate())
        except ModelError as err:
            plan.missing.append(f"{what}: {err}")
            source = None
        return {"name": name, "kind": "registered", "package_file": source,
                "converted": (cache_root() / name / "config.json").is_file()}
    if name in BUILDERS:
        return {"name": name, "kind": "built on first use", "built": (cache_root() / name / "config.json").is_file()}
    p = Path(name).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            plan.problems.append(f"{what}: {p} is a folder without config.json, not a model")
        return {"name": name, "kind": "local folder", "path": str(p.resolve())}
    if name.startswith((".", "/", "~", "runs/")):
        plan.missing.append(f"{what}: model folder {p} does not exist")
        return {"name": name, "kind": "local folder", "exists": False}
    return {"name": name, "kind": "hub id (needs network or a filled Hugging Face cache)"}


def index_entry(cfg: S3Config, plan: Plan, required: bool = True) -> dict[str, Any]:
    """The retrieval index: read by most jobs (`required`), written by build_index and the demo."""
    r = cfg.retrieval
    manifest = Path(r.index_dir) / "manifest.json"
    found = (plan.file(manifest, "retrieval index", made_by="python -m jobs.build_index") if required
             else plan.output(manifest))
    entry: dict[str, Any] = {"backend": r.backend, "index_dir": r.index_dir, "built": found["exists"]}
    if r.backend != "bm25":
        entry.update(encoder=r.encoder, index_type=r.index_type, num_shards=r.num_shards)
    return entry


def data_entry(cfg: S3Config, plan: Plan, splits: list[str], corpus: bool = False) -> dict[str, Any]:
    """Split files (and the corpus) with existence checks; `None` paths are the embedded set."""
    from s3_ray.data.embedded import resolve_paths

    paths = resolve_paths(cfg.data)
    out: dict[str, Any] = {"source": "embedded" if cfg.data.corpus_path is None else "files"}
    if corpus:
        out["corpus"] = plan.file(paths.corpus, "data.corpus_path")
    for split in splits:
        limit = cfg.data.train_limit if split == "train" else cfg.data.test_limit
        out[split] = {**plan.file(paths.split(split), f"data.{split}_path"), "limit": limit}
    return out


def baseline_entry(cfg: S3Config, plan: Plan, split: str, required: bool) -> dict[str, Any]:
    """The naive-RAG baseline file of a split, checked against the config's settings when readable."""
    from s3_ray.retrieval.index import IndexMismatchError
    from s3_ray.reward.baseline_file import BaselineError
    from s3_ray.reward.fingerprint import baseline_path, open_baseline

    path = baseline_path(cfg, split)
    entry: dict[str, Any] = {"split": split, **(plan.file(path, f"baseline {split}",
                                                         made_by=f"python -m jobs.precompute --split {split}")
                                                if required else plan.output(path))}
    if path.is_file():
        try:
            entry["records"] = len(open_baseline(cfg, split))
        except IndexMismatchError as err:
            entry["records"] = None
            entry["unchecked"] = str(err)
        except BaselineError as err:
            plan.problems.append(f"baseline {split}: {err}")
    return entry


def deployments(cfg: S3Config, generator: bool = True, copilot: str | None = None) -> list[dict[str, Any]]:
    """The Serve apps a job starts, with the resources `deployments/*.build_app` asks for.

    Replicas reserve `serve.*_cpus` and `serve.*_gpus` (`ray_actor_options`); an openai-backend
    generator calls a server outside Ray.
    """
    s = cfg.serve
    out = [{"app": "retriever", "route": "/retrieve", "replicas": s.retriever_replicas,
            "cpus_per_replica": s.retriever_cpus, "gpus_per_replica": s.retriever_gpus,
            "max_ongoing_requests": s.max_ongoing_requests}]
    if generator:
        out.append({"app": "generator", "route": "/generator/answer", "replicas": s.generator_replicas,
                    "cpus_per_replica": s.generator_cpus, "gpus_per_replica": s.generator_gpus,
                    "max_ongoing_requests": s.max_ongoing_requests})
    if copilot is not None:
        out.append({"app": "copilot", "route": "/copilot/search", "replicas": s.copilot_replicas,
                    "cpus_per_replica": s.copilot_cpus, "gpus_per_replica": s.copilot_gpus,
                    "model": copilot or cfg.searcher.model, "max_ongoing_requests": s.max_ongoing_requests})
    return out


def generator_entry(cfg: S3Config, plan: Plan) -> dict[str, Any]:
    """The frozen generator: where its model comes from, or which server answers for it."""
    g = cfg.generator
    entry: dict[str, Any] = {"backend": g.backend, "model": g.model, "max_context_tokens": g.max_context_tokens,
                             "cache": g.cache_path}
    if g.backend == "openai":
        entry["base_url"] = g.base_url
        if not g.base_url:
            plan.problems.append("generator.base_url must be set for the openai backend")
    else:
        entry["model_source"] = model_entry(g.model, "generator.model", plan)
    return entry


def serve_entry(cfg: S3Config, plan: Plan, generator: bool = True, copilot: str | None = None) -> dict[str, Any]:
    """The Serve apps with their resources, plus what the generator and copilot replicas load."""
    apps = deployments(cfg, generator, copilot)
    if generator:
        apps[1]["generator"] = generator_entry(cfg, plan)
    if copilot is not None:
        apps[-1]["model_source"] = model_entry(copilot or cfg.searcher.model, "copilot model", plan)
    return {"http": f"http://{cfg.serve.host}:{cfg.serve.port}", "apps": apps,
            "total_cpus": round(sum(a["replicas"] * a["cpus_per_replica"] for a in apps), 3),
            "total_gpus": round(sum(a["replicas"] * a["gpus_per_replica"] for a in apps), 3)}


def cuda_visible() -> int:
    """GPUs this process sees; with `train.gpus_per_worker` unset, jobs/train.py asks one GPU per
    worker exactly when this is > 0."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def train_workers(cfg: S3Config) -> dict[str, Any]:
    t = cfg.train
    gpus = t.gpus_per_worker if t.gpus_per_worker is not None else (1 if cuda_visible() else 0)
    return {"num_workers": t.num_workers, "cpus_per_worker": t.cpus_per_worker, "gpus_per_worker": gpus,
            "total_cpus": t.num_workers * t.cpus_per_worker, "total_gpus": t.num_workers * gpus,
            # what s3_ray/rl/worker.py does: ddp = a full copy of the policy per worker, fsdp = shards
            "strategy": f"{t.parallel} ({'nccl' if gpus else 'gloo'})" if t.num_workers > 1 else "single process"}


def training_entry(cfg: S3Config) -> dict[str, Any]:
    t = cfg.train
    return {"algorithm": t.algorithm, "steps": t.steps, "questions_per_step": t.questions_per_step,
            "group_size": t.group_size, "trajectories_per_step": t.questions_per_step * t.group_size,
            "questions_per_worker": t.questions_per_step // t.num_workers,
            "lr": t.lr, "kl_coef": t.kl_coef, "kl_target": t.kl_target, "lora_rank": t.lora_rank,
            "warmup_steps": t.warmup_steps, "checkpoint_every": t.checkpoint_every,
            "keep_checkpoints": t.keep_checkpoints}


def budgets(cfg: S3Config) -> dict[str, int]:
    r = cfg.rollout
    return {"init_k": r.init_k, "top_k": r.top_k, "keep_per_turn": r.keep_per_turn, "max_turns": r.max_turns}


def train_plan(cfg: S3Config, name: str = "train", job: str = "train", made_here: bool = False) -> Plan:
    """What `python -m jobs.train` would do with `cfg` (`made_here`: the index and baseline are
    produced by the same job, as in the demo, so their absence is not missing input)."""
    plan = Plan(job, cfg)
    plan.add("searcher", model_entry(cfg.searcher.model, "searcher.model", plan))
    plan.add("training", training_entry(cfg))
    plan.add("budgets", budgets(cfg))
    plan.add("train_workers", train_workers(cfg))
    plan.add("serve", serve_entry(cfg, plan))
    plan.add("index", index_entry(cfg, plan, required=not made_here))
    plan.add("data", data_entry(cfg, plan, ["train"], corpus=made_here))
    plan.add("baseline", baseline_entry(cfg, plan, "train", required=not made_here))
    plan.add("outputs", {"ray_run": plan.output(cfg.path("ray", name)),
                         "metrics": plan.output(cfg.path("train", "metrics.jsonl")),
                         "curves": plan.output(cfg.path("train", "curves.png")),
                         "warmup_reference": plan.output(cfg.path("ray", name, "warmup_reference"))})
    return plan


def train_dry_run(cfg: S3Config) -> int:
    """`python -m jobs.train --dry-run`: print the plan, exit 2 on problems."""
    return train_plan(cfg).emit()


def demo_plan(cfg: S3Config) -> Plan:
    """What `python -m jobs.demo` would do: index -> serve -> precompute -> train -> evaluate."""
    from jobs.evaluate import plan as eval_plan

    plan = train_plan(cfg, name="demo", job="demo", made_here=True)
    plan.add("data", data_entry(cfg, plan, ["train", cfg.eval.split], corpus=True))
    plan.add("baseline", [baseline_entry(cfg, plan, s, required=False) for s in ("train", cfg.eval.split)])
    evaluation, eval_missing, eval_problems = eval_plan(cfg, {})
    # index, data and generator are checked above (the demo builds the index)
    plan.problems.extend(p for p in eval_problems if p.startswith("eval.methods"))
    plan.missing.extend(m for m in eval_missing if m.startswith("checkpoint"))
    trained = [{"name": "s3_trained", "kind": "s3", "model": "the run's last checkpoint"}]
    if cfg.train.warmup_steps > 0:
        trained.insert(0, {"name": "s3_warmup_only", "kind": "s3", "model": "the step-0 checkpoint"})
    plan.add("evaluate", {"methods": [*evaluation["methods"], *trained], "report_dir": evaluation["report_dir"]})
    plan.add("stages", ["1/5 build the index (reused when present)", "2/5 start Ray and the Serve apps",
                        f"3/5 precompute baselines (train, {cfg.eval.split})", "4/5 train the searcher",
                        "5/5 evaluate"])
    plan.sections["outputs"]["report"] = plan.output(cfg.path("report"))
    return plan
