"""Bring up what a job needs: a Ray connection and the retriever/generator Serve apps.

A job submitted with `ray job submit` joins the running cluster; run directly, it starts a local
one (with its dashboard: Ray Train's controller watches its own state through it). Apps already
running under the expected names are reused, so the demo, the trainer and the evaluator can
share one deployment, but only when they serve what this job's config says (the generator's
model, backend and decoding; the retriever's index and search settings): a reward must never
subtract a baseline made with other settings. Otherwise the job stops with an error naming each
differing key.

Ray's, Serve's and the workers' own output goes to the job's log (`s3_ray.console`): workers
stream to the driver (`log_to_driver=True`), whose output the job console routes to
`<run_dir>/logs/<job>.log`; Serve components write their own files in `<run_dir>/logs/serve/`.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from s3_ray.config import S3Config
from s3_ray.console import current_job, info, logs_dir, shown_path

DEFAULT_CONFIG = str(Path(__file__).parent / "configs" / "demo.yaml")
RETRIEVER_APP = "retriever"
GENERATOR_APP = "generator"


def add_verbose_flag(parser: argparse.ArgumentParser) -> None:
    """`--verbose`, shared by every job."""
    parser.add_argument("--verbose", action="store_true",
                        help="also print Ray's, Serve's, Train's and the models' own output on the console "
                             "(it always goes to <run_dir>/logs/); S3RAY_VERBOSE=1 does the same")


def init_ray(num_cpus: int | None = None, dashboard: bool = True) -> None:
    """Join RAY_ADDRESS (set by `ray job submit`) or start a local CPU cluster tuned for small boxes.

    The local cluster runs the dashboard unless `dashboard` is False: Ray Train's placement-group
    cleaner asks the State API (served by the dashboard) whether the Train controller still lives,
    and without it the cleaner logs a failure every second and never cleans up. `s3-ray serve`
    runs no Train and starts its local cluster without it (the job API and `serve status` need a
    cluster started with `ray start --head`, see docs/operations.md).
    """
    import ray

    # Defaults that matter on small machines (see docs/operations.md): fast Train reports,
    # no usage stats, wandb offline unless the user says otherwise.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if ray.is_initialized():
        return
    job = current_job()
    joining = bool(os.environ.get("RAY_ADDRESS"))
    if joining:
        # a running cluster's workers do not inherit this process's environment: hand it over
        env = job.worker_env if job else {}
        context = ray.init(log_to_driver=True, runtime_env={"env_vars": env} if env else None)
    else:
        context = ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 2, include_dashboard=dashboard,
                           object_store_memory=512 * 1024**2, log_to_driver=True)
    if job is not None:
        job.ray_started(context, local=not joining)


def serve_logging(cfg: S3Config) -> dict[str, Any]:
    """Serve's logging config for the apps a job starts: their files in `<run_dir>/logs/serve/`."""
    return {"logs_dir": str((logs_dir(cfg.run_dir) / "serve").resolve())}


def deploy_services(cfg: S3Config, with_generator: bool = True) -> list[str]:
    """Start the retriever (and generator) apps, or reuse running ones that serve this config;
    returns the names of the apps it started (not the reused ones).

    Raises `ServedMismatch` naming each key where a running app differs from `cfg`.
    """
    from ray import serve

    from deployments.generator import GeneratorAppArgs
    from deployments.generator import build_app as build_generator
    from deployments.retriever import RetrieverAppArgs
    from deployments.retriever import build_app as build_retriever
    from s3_ray.retrieval.index import read_manifest
    from s3_ray.serving.served import check_reusable, generator_served, retriever_served

    serve.start(http_options={"host": cfg.serve.host, "port": cfg.serve.port}, logging_config=serve_logging(cfg))
    running = set(serve.status().applications)
    started = []
    if RETRIEVER_APP in running:
        expected = retriever_served(cfg.retrieval, read_manifest(cfg.retrieval.index_dir).corpus_sha256)
        check_reusable(RETRIEVER_APP, served_by(RETRIEVER_APP), expected)
        log(f"reusing the running {RETRIEVER_APP} app (same index and search settings)")
    else:
        log(f"deploying the {RETRIEVER_APP} app (index {shown_path(cfg.retrieval.index_dir, folder=True)})")
        serve.run(build_retriever(RetrieverAppArgs.from_config(cfg)), name=RETRIEVER_APP, route_prefix="/",
                  logging_config=serve_logging(cfg))
        started.append(RETRIEVER_APP)
    if not with_generator:
        return started
    if GENERATOR_APP in running:
        check_reusable(GENERATOR_APP, served_by(GENERATOR_APP), generator_served(cfg.generator))
        log(f"reusing the running {GENERATOR_APP} app (model {cfg.generator.model}, same decoding)")
    else:
        log(f"deploying the {GENERATOR_APP} app (model {cfg.generator.model})")
        serve.run(build_generator(GeneratorAppArgs.from_config(cfg)), name=GENERATOR_APP,
                  route_prefix="/generator", logging_config=serve_logging(cfg))
        started.append(GENERATOR_APP)
    return started


def served_by(app: str, timeout_s: float = 60.0) -> dict[str, Any]:
    """What the running Serve app `app` serves (its `describe()` handle method)."""
    from ray import serve

    from s3_ray.serving.served import ServedMismatch

    try:
        return dict(serve.get_app_handle(app).describe.remote().result(timeout_s=timeout_s))
    except Exception as err:  # an app of another version, a failed or stuck deployment: say which
        raise ServedMismatch(f"cannot ask the running {app} app what it serves ({type(err).__name__}: {err}); "
                             "stop it (serve shutdown) or redeploy it with this version") from err


def clients(cfg: S3Config) -> tuple[Any, Any]:
    """(RetrieverClient, GeneratorClient) bound to the Serve apps; picklable for Ray workers."""
    from s3_ray.clients.generator import GeneratorClient
    from s3_ray.clients.retriever import RetrieverClient

    return RetrieverClient.from_app(RETRIEVER_APP), GeneratorClient.from_app(GENERATOR_APP)


def start_services(cfg: S3Config) -> tuple[Any, Any]:
    """Ray, then the retriever and generator apps (a running app is reused only when it serves
    this config); returns their clients (retriever, generator)."""
    init_ray()
    deploy_services(cfg)
    return clients(cfg)


def log(msg: str) -> None:
    """A line on the job's console (`s3_ray.console.info`); picklable into Ray tasks."""
    info(msg)
