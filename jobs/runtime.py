"""Bring up what a job needs: a Ray connection and the retriever/generator Serve apps.

A job submitted with `ray job submit` joins the running cluster; run directly, it starts a local
one. Apps already running under the expected names are reused, so the demo, the trainer and the
evaluator can share one deployment, but only when they serve what this job's config says (the
generator's model, backend and decoding; the retriever's index and search settings): a reward
must never subtract a baseline made with other settings. Otherwise the job stops with an error
naming each differing key.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from s3_ray.config import S3Config

DEFAULT_CONFIG = str(Path(__file__).parent / "configs" / "demo.yaml")
RETRIEVER_APP = "retriever"
GENERATOR_APP = "generator"


def init_ray(num_cpus: int | None = None) -> None:
    """Join RAY_ADDRESS (set by `ray job submit`) or start a local CPU cluster tuned for small boxes."""
    import ray

    # Defaults that matter on small machines (see docs/operations.md): fast Train reports,
    # no usage stats, wandb offline unless the user says otherwise.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=True)
        return
    ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 2, include_dashboard=False,
             object_store_memory=512 * 1024**2, log_to_driver=True)


def deploy_services(cfg: S3Config, with_generator: bool = True) -> None:
    """Start the retriever (and generator) apps, or reuse running ones that serve this config.

    Raises `ServedMismatch` naming each key where a running app differs from `cfg`.
    """
    from ray import serve

    from deployments.generator import GeneratorAppArgs
    from deployments.generator import build_app as build_generator
    from deployments.retriever import RetrieverAppArgs
    from deployments.retriever import build_app as build_retriever
    from s3_ray.retrieval.index import read_manifest
    from s3_ray.serving.served import check_reusable, generator_served, retriever_served

    serve.start(http_options={"host": cfg.serve.host, "port": cfg.serve.port})
    running = set(serve.status().applications)
    if RETRIEVER_APP in running:
        expected = retriever_served(cfg.retrieval, read_manifest(cfg.retrieval.index_dir).corpus_sha256)
        check_reusable(RETRIEVER_APP, served_by(RETRIEVER_APP), expected)
        log(f"reusing the running {RETRIEVER_APP} app (same index and search settings)")
    else:
        log(f"deploying {RETRIEVER_APP} app (index {cfg.retrieval.index_dir})")
        serve.run(build_retriever(RetrieverAppArgs.from_config(cfg)), name=RETRIEVER_APP, route_prefix="/")
    if not with_generator:
        return
    if GENERATOR_APP in running:
        check_reusable(GENERATOR_APP, served_by(GENERATOR_APP), generator_served(cfg.generator))
        log(f"reusing the running {GENERATOR_APP} app (model {cfg.generator.model}, same decoding)")
    else:
        log(f"deploying {GENERATOR_APP} app (model {cfg.generator.model})")
        serve.run(build_generator(GeneratorAppArgs.from_config(cfg)), name=GENERATOR_APP,
                  route_prefix="/generator")


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
    print(f"[s3-ray] {msg}", file=sys.stderr, flush=True)
