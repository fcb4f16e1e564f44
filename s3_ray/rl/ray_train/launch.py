"""The Ray Train driver: a `TorchTrainer` over `train_loop_per_worker`, and what a finished run made.

`run_training` is what `jobs.train`, the demo and the RL proof call; Ray is imported inside it,
so this module imports without Ray.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from s3_ray.config import ConfigError, S3Config
from s3_ray.resources import gpus_or_auto
from s3_ray.rl.model.checkpoint_score import CHECKPOINT_SCORE, UNSCORED, checkpoint_score
from s3_ray.types import QAItem


def run_training(cfg: S3Config, items: list[QAItem], retriever: Any, scorer: Any,
                 name: str = "train", fail_at_step: int | None = None, max_failures: int = 2,
                 log: Callable[[str], None] = print) -> Any:
    """Fit a TorchTrainer; returns the Ray Train Result (its checkpoint is the trained searcher)."""
    cfg = cfg.absolute()  # workers run in other directories
    check = getattr(scorer, "check_metric", None)
    if callable(check):  # a reward the generator cannot compute stops here, before any worker starts
        check()
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from s3_ray.rl.ray_train.worker import train_loop_per_worker

    loop_config = {
        "cfg": cfg.model_dump(),
        "items": [q.to_dict() for q in items],
        "retriever": retriever,
        "scorer": scorer,
        "run_name": name,
        "fail_at_step": fail_at_step,
        # the warmed-up policy, kept beside the run's checkpoints so a resumed run finds its KL reference
        "reference_dir": str(Path(cfg.run_dir, "ray", name, "warmup_reference").resolve()),
    }
    gpus = gpus_or_auto(cfg.train.gpus_per_worker)  # unset: what the submitting process sees
    use_gpu = gpus > 0
    storage = storage_path(cfg, _alive_nodes(), log=log)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=cfg.train.num_workers,
            use_gpu=use_gpu,
            # custom resources (train.worker_resources, e.g. cluster.yaml's train_node) keep the
            # workers on the training nodes
            resources_per_worker={**cfg.train.worker_resources, "CPU": cfg.train.cpus_per_worker,
                                  **({"GPU": gpus} if use_gpu else {})},
        ),
        run_config=RunConfig(
            name=name,
            storage_path=storage,
            failure_config=FailureConfig(max_failures=max_failures),
            # ranked by reward (checkpoint_score): Result.best_checkpoints is meaningful, and keep_checkpoints drops the
            # lowest-reward ones (Ray always keeps the latest, so a restart resumes where it stopped)
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints,
                                               checkpoint_score_attribute=CHECKPOINT_SCORE,
                                               checkpoint_score_order="max"),
        ),
    )
    return trainer.fit()


def is_uri(path: str) -> bool:
    """Whether `path` names remote storage (s3://, gs://, ...) rather than a folder.

    >>> is_uri("s3://bucket/runs"), is_uri("/mnt/nfs/runs")
    (True, False)
    """
    return "://" in path


def storage_path(cfg: S3Config, nodes: int, log: Callable[[str], None] = print) -> str:
    """Where Ray Train keeps the run (`RunConfig.storage_path`): `train.storage_path`, else
    `<run_dir>/ray`. Every node writes its workers' checkpoints there, so on a cluster of more than
    one node the default is refused and a local folder is accepted with a warning (it must be a
    shared mount, e.g. NFS, at the same path on every node)."""
    path = cfg.train.storage_path
    if path is None:
        if nodes > 1:
            raise ConfigError(f"train.storage_path is not set and the cluster has {nodes} nodes: Ray Train writes "
                              "checkpoints from every worker's node, so <run_dir>/ray on one disk cannot hold them; "
                              "set train.storage_path to s3://..., gs://... or a folder every node mounts (NFS)")
        return str(Path(cfg.run_dir, "ray").resolve())
    if is_uri(path):
        return path
    if nodes > 1:
        log(f"warning: train.storage_path={path} is a local folder on a cluster of {nodes} nodes: it must be a "
            "shared mount (NFS) at that path on every node, or checkpoints are lost; s3://... or gs://... need none")
    return str(Path(path).expanduser().resolve())


def _alive_nodes() -> int:
    """Nodes of the Ray cluster this process is connected to."""
    import ray

    return sum(1 for n in ray.nodes() if n.get("Alive"))


def best_checkpoint(result: Any) -> tuple[str | None, float | None]:
    """(path, reward) of the checkpoint with the highest finite training reward (None, None if none).

    The reward of a step is measured on the rollouts *before* that step's update, so this picks
    the policy right after its best-scoring batch: a cheap proxy; evaluate on dev to be sure.
    """
    best: tuple[str | None, float | None] = (None, None)
    for ckpt, metrics in getattr(result, "best_checkpoints", None) or []:
        score = checkpoint_score(metrics)
        if score != UNSCORED and (best[1] is None or score > best[1]):
            best = (ckpt.path, score)
    return best


def summarize(cfg: S3Config, result: Any) -> dict[str, Any]:
    """What a finished run produced: checkpoints, stop reason, curves; draws the curves."""
    from s3_ray.rl.loop.curves import plot_curves

    metrics = result.metrics or {}
    best_path, best_reward = best_checkpoint(result)
    summary: dict[str, Any] = {
        "checkpoint": result.checkpoint.path if result.checkpoint else None,
        "best_checkpoint": best_path,
        "best_reward": best_reward,
        "stop_reason": metrics.get("stop_reason") or ("error" if result.error else
                                                      "wall-time budget reached (train.max_wall_s)"
                                                      if metrics.get("wall_budget_reached") else "completed all steps"),
        "metrics": metrics,
    }
    metrics_path = Path(cfg.run_dir) / "train" / "metrics.jsonl"
    if metrics_path.is_file():
        try:
            summary["curves"] = str(plot_curves(metrics_path))
        except ValueError as err:  # e.g. a run stopped before its first RL step
            summary["curves"] = f"not drawn: {err}"
    return summary


def training_items(cfg: S3Config, baseline: Any) -> tuple[list[QAItem], int]:
    """The training split after s3's filter (drop what naive RAG already answers, but the share
    `train.keep_rag_solved_fraction` of it); returns (questions, dropped count)."""
    from s3_ray.data.embedded import load_split
    from s3_ray.reward.training_filter import filter_unanswered

    return filter_unanswered(load_split(cfg.data, "train"), baseline,
                             keep_solved_fraction=cfg.train.keep_rag_solved_fraction, seed=cfg.seed)
