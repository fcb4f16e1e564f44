"""What the HTTP apps share: the request guard (bearer-token auth, body and text limits), routes and
the FastAPI app over one server object, request merging and its counters, the builder args' shape,
the Serve wiring (Ray is imported only when a builder runs), and what a running app serves."""

from s3_ray.serving.app_args import AppArgs
from s3_ray.serving.batching import BatchStats, merged, split_merged
from s3_ray.serving.deployment import Batching, generator_replica_gpus, replica_options, serve_deployment
from s3_ray.serving.guard import (
    OPEN_PATHS,
    AsciiJSONResponse,
    Guard,
    GuardConfigError,
    GuardMiddleware,
    read_token,
    text_errors,
)
from s3_ray.serving.http import GUARD_REJECTIONS, ApiInfo, build_api, get, post, unprocessable
from s3_ray.serving.served import ServedMismatch, check_reusable, generator_served, retriever_served

__all__ = ["GUARD_REJECTIONS", "OPEN_PATHS", "ApiInfo", "AppArgs", "AsciiJSONResponse", "BatchStats", "Batching",
           "Guard", "GuardConfigError", "GuardMiddleware", "ServedMismatch", "build_api", "check_reusable",
           "generator_replica_gpus", "generator_served", "get", "merged", "post", "read_token", "replica_options",
           "retriever_served", "serve_deployment", "split_merged", "text_errors", "unprocessable"]
