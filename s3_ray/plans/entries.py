"""The pieces every job's plan is made of: models, index, data, baselines, Serve apps, training."""

from __future__ import annotations

from collections.abc import Callable, Sized
from pathlib import Path
from typing import Any

from s3_ray.config import S3Config
from s3_ray.plans.plan import Plan


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


def index_entry(cfg: S3Config, plan: Plan, required: bool = True, what: str = "retrieval index") -> dict[str, Any]:
    """The retrieval index: read by most jobs (`required`: missing when absent, listed as `what`),
    written by build_index and the demo."""
    r = cfg.retrieval
    manifest = Path(r.index_dir) / "manifest.json"
    found = (plan.file(manifest, what, made_by="python -m jobs.build_index") if required
             else plan.output(manifest))
    entry: dict[str, Any] = {"backend": r.backend, "index_dir": r.index_dir, "built": found["exists"]}
    if r.backend != "bm25":
        entry.update(encoder=r.encoder, index_type=r.index_type, num_shards=r.num_shards)
    return entry


def questions_read(plan: Plan, what: str, read: Callable[[], Sized]) -> int | None:
    """How many questions `read()` finds in a data file; a file that does not parse (a malformed
    line, a repeated id) is a problem quoting the reader's `DataError` (file and line)."""
    from s3_ray.data.jsonl import DataError

    try:
        return len(read())
    except (DataError, ValueError) as err:  # DataError: file:line: what; ValueError: an unreadable format
        plan.problems.append(f"{what}: {err}")
        return None


def data_entry(cfg: S3Config, plan: Plan, splits: list[str], corpus: bool = False) -> dict[str, Any]:
    """Split files (checked and parsed) and the corpus (checked); `None` paths are the embedded set."""
    from s3_ray.data.embedded import resolve_paths
    from s3_ray.data.qa import read_qa

    paths = resolve_paths(cfg.data)
    out: dict[str, Any] = {"source": "embedded" if cfg.data.corpus_path is None else "files"}
    if corpus:
        out["corpus"] = plan.file(paths.corpus, "data.corpus_path")
    for split in splits:
        limit = cfg.data.train_limit if split == "train" else cfg.data.test_limit
        path = paths.split(split)
        entry = {**plan.file(path, f"data.{split}_path"), "limit": limit}
        if entry["exists"]:
            entry["questions"] = questions_read(plan, f"data.{split}_path", lambda p=path: read_qa(p))
        out[split] = entry
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
    from s3_ray.serving.threads import replica_threads

    s = cfg.serve
    cpus = s.replica_cpus("retriever")
    out = [{"app": "retriever", "route": "/retrieve", "replicas": s.retriever_replicas,
            "cpus_per_replica": cpus, "gpus_per_replica": s.retriever_gpus,
            # what each replica sets torch and faiss to (capped there at the cores it may run on)
            "threads_per_replica": replica_threads(cpus, s.retriever_threads),
            "max_ongoing_requests": s.max_ongoing_requests}]
    if cfg.retrieval.backend in ("dense", "hybrid"):
        from s3_ray.retrieval.onnx_encoder import planned_runtime

        out[0]["encoder_runtime"] = planned_runtime(cfg.retrieval.encoder_runtime, s.retriever_gpus)
    if generator:
        from s3_ray.serving.deployment import generator_replica_gpus

        out.append({"app": "generator", "route": "/generator/answer", "replicas": s.generator_replicas,
                    "cpus_per_replica": s.generator_cpus, "gpus_per_replica": generator_replica_gpus(cfg.generator, s),
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


def train_workers(cfg: S3Config) -> dict[str, Any]:
    """The Ray Train worker group: its size, what each worker reserves and how the policy is split."""
    from s3_ray.resources import cuda_visible

    t = cfg.train
    gpus = t.gpus_per_worker if t.gpus_per_worker is not None else (1 if cuda_visible() else 0)
    return {"num_workers": t.num_workers, "cpus_per_worker": t.cpus_per_worker, "gpus_per_worker": gpus,
            "total_cpus": t.num_workers * t.cpus_per_worker, "total_gpus": t.num_workers * gpus,
            # what s3_ray/rl/ray_train/worker.py does: ddp = a full copy of the policy per worker, fsdp = shards
            "strategy": f"{t.parallel} ({'nccl' if gpus else 'gloo'})" if t.num_workers > 1 else "single process"}


def training_entry(cfg: S3Config) -> dict[str, Any]:
    """The RL settings of a training run, with the batch sizes they imply."""
    t = cfg.train
    return {"algorithm": t.algorithm, "steps": t.steps, "questions_per_step": t.questions_per_step,
            "group_size": t.group_size, "trajectories_per_step": t.questions_per_step * t.group_size,
            "questions_per_worker": t.questions_per_step // t.num_workers,
            "lr": t.lr, "kl_coef": t.kl_coef, "kl_target": t.kl_target, "lora_rank": t.lora_rank,
            "warmup_steps": t.warmup_steps, "checkpoint_every": t.checkpoint_every,
            "keep_checkpoints": t.keep_checkpoints, "cpu_compute": t.cpu_compute,
            "reward_metric": cfg.reward.metric,
            **({"logprob_weight": cfg.reward.logprob_weight} if cfg.reward.metric == "mixed" else {})}


def budgets(cfg: S3Config) -> dict[str, int]:
    """The searcher's budgets.

    >>> from s3_ray.config import load_config
    >>> budgets(load_config(None, ["rollout.max_turns=2"]))["max_turns"]
    2
    """
    r = cfg.rollout
    return {"init_k": r.init_k, "top_k": r.top_k, "keep_per_turn": r.keep_per_turn, "max_turns": r.max_turns}
