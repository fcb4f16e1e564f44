"""The sweep itself: a Ray Tune Tuner over the trial functions, started fresh or resumed.

The trials are `inference_trial` and `train_trial` of `s3_ray.sweep.trials` (each runs in its own
Tune process); the console shows them through `s3_ray.sweep.progress`. `ray` is imported only
when a sweep runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from s3_ray.config import S3Config
from s3_ray.sweep.grid import check_sweep, default_name, experiment_dir, trial_resources
from s3_ray.sweep.results import result_rows
from s3_ray.sweep.resume import check_resumable, store_config


def run_sweep(cfg: S3Config, retriever: Any, generator: Any, name: str | None = None,
              resume: bool | None = None, scorer: Any = None,
              log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Run (or resume) the sweep; one row per trial. `resume=None` resumes when the sweep exists.

    Training trials score with Gain Beyond RAG against the `train` baseline of their settings,
    checked for every distinct setting before any trial starts; an explicit `scorer` replaces it.
    """
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from s3_ray.sweep.progress import trial_progress
    from s3_ray.sweep.trials import inference_trial, train_trial

    cfg = cfg.absolute()  # trial processes run in other directories
    configs = check_sweep(cfg)
    name = name or default_name(cfg)
    path = experiment_dir(cfg, name)
    if resume is None:
        resume = tune.Tuner.can_restore(str(path))
    if cfg.sweep.mode == "train":
        if cfg.train.num_workers > 1 or cfg.train.parallel != "ddp":
            log(f"train.num_workers={cfg.train.num_workers}, train.parallel={cfg.train.parallel}: each "
                "training trial is one unsharded process taking the whole batch")
        if scorer is None:  # fail before any trial starts when a baseline is missing or stale
            from s3_ray.sweep.trials import training_setup

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
        log(f"resuming sweep {name!r} from {path}")
        tuner = tune.Tuner.restore(str(path), trainable=trainable, resume_errored=True)
    else:
        store_config(cfg, name)
        progress = trial_progress(len(configs) * cfg.sweep.num_samples, cfg.sweep.metric)
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
            run_config=tune.RunConfig(name=name, storage_path=str(path.parent), callbacks=[progress]),
        )
    return result_rows(tuner.fit(), cfg)


def _scheduler(cfg: S3Config, max_t: int) -> Any:
    """None (FIFO: every trial runs to the end) or ASHA over `training_iteration` = RL steps done."""
    if cfg.sweep.scheduler == "fifo":
        return None
    from ray.tune.schedulers import ASHAScheduler

    s = cfg.sweep
    return ASHAScheduler(time_attr="training_iteration", max_t=max_t, grace_period=s.asha_grace_period,
                         reduction_factor=s.asha_reduction_factor)
