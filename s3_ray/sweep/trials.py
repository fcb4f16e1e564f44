"""The two kinds of Ray Tune trial that a sweep (`s3_ray.sweep.run`) runs.

* `inference_trial`: the searcher (greedy) with the trial's budgets over `eval.split`, answered by
  the frozen generator; one report (GenAcc, context size, searches).
* `train_trial`: a short RL run of the searcher with the trial's training settings. The trial
  process is the training worker (no nested TorchTrainer: a Tune trial holding a Train run would
  need a second placement group per trial). It reports after every step, so an ASHA scheduler can
  stop weak trials at its rungs (`training_iteration` = RL steps done).

Training trials keep no checkpoint: a resumed sweep restarts an unfinished training trial from
step 0, while finished trials are kept as they are.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from s3_ray.config import S3Config


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


def train_trial(trial: dict[str, Any], base: dict[str, Any], retriever: Any, generator: Any,
                scorer: Any = None) -> None:
    """One Tune trial: `train.steps` RL steps with the trial's settings, reported step by step.

    The reward is Gain Beyond RAG against the `train` baseline made with the trial's settings
    (`python -m jobs.precompute`), on the questions s3's filter keeps. An explicit `scorer` (any
    object with `score(trajectories) -> rewards`) replaces it and trains on the whole split.
    The policy is set up as a Ray Train worker sets it up (LoRA, KL reference, format warm-up),
    and the collapse guard ends a trial the same way; its last report then carries `stop_reason`.
    """
    import torch
    from ray import tune

    from s3_ray.rl.loop.fit import FitHooks, fit
    from s3_ray.rl.model.policy import SearcherPolicy
    from s3_ray.rl.loop.trainer import SearcherTrainer

    cfg = S3Config.model_validate(base).with_overrides(trial)
    if cfg.train.parallel != "ddp":  # one process: nothing to shard over
        cfg = cfg.with_overrides({"train.parallel": "ddp"})
    torch.manual_seed(cfg.seed)
    items, scorer = training_setup(cfg, generator, scorer)
    policy = SearcherPolicy.load(cfg)
    trainer = SearcherTrainer(cfg, policy.model, policy.ref, policy.tokenizer, retriever, scorer, items)

    def report(metrics: dict[str, Any], _checkpoint: Any) -> None:
        out: dict[str, Any] = scalars(metrics)
        if "stop_reason" in metrics:
            out["stop_reason"] = f"collapse guard: {metrics['stop_reason']}"
        tune.report(out)

    fit(policy, trainer, FitHooks(report=report, checkpoints=False, report_warmup=False))


def training_setup(cfg: S3Config, generator: Any, scorer: Any = None) -> tuple[list[Any], Any]:
    """(training questions, reward scorer) of one trial's config."""
    from s3_ray.data.embedded import load_split

    if scorer is not None:
        return load_split(cfg.data, "train"), scorer
    from s3_ray.rl.ray_train.launch import training_items
    from s3_ray.reward.fingerprint import open_baseline
    from s3_ray.reward.gain import RewardScorer

    baseline = open_baseline(cfg, "train")
    items, _ = training_items(cfg, baseline)
    return items, RewardScorer(generator, baseline, cfg.reward)


def scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of a metrics dict (what Tune's schedulers and loggers can compare).

    >>> scalars({"reward": 0.5, "step": 2, "note": "x", "kl": float("nan"), "ok": True})
    {'reward': 0.5, 'step': 2.0}
    """
    out = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value):
            out[key] = float(value)
    return out
