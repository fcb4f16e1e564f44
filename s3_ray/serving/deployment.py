"""A plain server class made into a Ray Serve deployment, the way Ray's own Serve LLM builds its
apps: `serve.deployment(cls, **options)` applied inside a builder, never as a decorator, so the
class stays constructible and testable without Serve. Ray is imported only when a builder runs.

`serve_deployment` derives a class from the server class that
* wraps every `@merged` batch body (`s3_ray.serving.batching`) in `serve.batch` with the sizes
  the builder passes, so concurrent callers share one call, and
* builds the replica's HTTP app after the constructor ran (`serve.ingress()` with
  `__serve_build_asgi_app__` returning `server.asgi_app()`), so the guard holds the token read
  where the replica runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from s3_ray.serving.batching import merged_bodies

if TYPE_CHECKING:
    from ray.serve import Deployment

    from s3_ray.config import GeneratorConfig, ServeConfig

AppKind = Literal["retriever", "generator", "copilot"]
GRACEFUL_SHUTDOWN_WAIT_LOOP_S = 1.0  # how often a draining replica checks for in-flight requests


@dataclass(frozen=True)
class Batching:
    """`serve.batch` settings of one merged method."""

    max_batch_size: int
    batch_wait_timeout_s: float


def replica_options(serve: ServeConfig, app: AppKind, name: str) -> dict[str, Any]:
    """`serve.deployment` options of one app: its `serve.<app>_replicas/_cpus/_gpus` and the
    shared concurrency, health-check and shutdown settings.

    >>> from s3_ray.config import ServeConfig
    >>> opts = replica_options(ServeConfig(generator_gpus=1), "generator", "GeneratorDeployment")
    >>> opts["ray_actor_options"], opts["num_replicas"], opts["max_ongoing_requests"]
    ({'num_cpus': 0.5, 'num_gpus': 1.0}, 1, 64)
    """
    actor: dict[str, Any] = {"num_cpus": serve.replica_cpus(app), "num_gpus": getattr(serve, f"{app}_gpus")}
    if resources := getattr(serve, f"{app}_resources", None):
        actor["resources"] = dict(resources)
    return {
        "name": name,
        "num_replicas": getattr(serve, f"{app}_replicas"),
        "ray_actor_options": actor,
        "max_ongoing_requests": serve.max_ongoing_requests,
        "health_check_period_s": serve.health_check_period_s,
        "health_check_timeout_s": serve.health_check_timeout_s,
        "graceful_shutdown_wait_loop_s": GRACEFUL_SHUTDOWN_WAIT_LOOP_S,
        "graceful_shutdown_timeout_s": serve.graceful_shutdown_timeout_s,
    }


def generator_replica_gpus(generator: GeneratorConfig, serve: ServeConfig) -> float:
    """GPUs one generator replica reserves: a vLLM engine's `generator.tensor_parallel_size` (the
    engine splits the model over exactly the GPUs Ray gives the replica), else `serve.generator_gpus`.

    >>> from s3_ray.config import GeneratorConfig, ServeConfig
    >>> generator_replica_gpus(GeneratorConfig(backend="vllm", tensor_parallel_size=4), ServeConfig())
    4.0
    >>> generator_replica_gpus(GeneratorConfig(), ServeConfig(generator_gpus=0.5))
    0.5
    """
    if generator.backend == "vllm":
        return float(generator.tensor_parallel_size)
    return float(serve.generator_gpus)


def _build_asgi_app(self: Any) -> Any:
    return self.asgi_app()


def serve_deployment(server_cls: type, batching: Mapping[str, Batching], **options: Any) -> Deployment:
    """The Serve deployment of `server_cls` (which defines `asgi_app()` and its `@merged` methods);
    `batching` gives every merged method its batch settings, `options` go to `serve.deployment`."""
    from ray import serve

    bodies = merged_bodies(server_cls)
    if set(bodies) != set(batching):
        raise ValueError(f"{server_cls.__name__}: batching must name exactly its merged methods {sorted(bodies)}, "
                         f"got {sorted(batching)}")
    for name, body in bodies.items():
        if body.__name__ != name:  # serve.batch finds `self` by looking the body up under its own name
            raise TypeError(f"{server_cls.__name__}.{name}: a merged method must keep its body's name "
                            f"({body.__name__!r})")
    if not callable(getattr(server_cls, "asgi_app", None)):
        raise TypeError(f"{server_cls.__name__} has no asgi_app() to serve HTTP with")
    namespace: dict[str, Any] = {
        name: serve.batch(max_batch_size=b.max_batch_size, batch_wait_timeout_s=b.batch_wait_timeout_s)(bodies[name])
        for name, b in batching.items()
    }
    namespace["__serve_build_asgi_app__"] = _build_asgi_app
    served = type(server_cls.__name__, (server_cls,), namespace)
    return serve.deployment(serve.ingress()(served), **options)
