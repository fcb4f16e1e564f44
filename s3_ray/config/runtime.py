"""Config sections of the running services: the Serve apps (HTTP, replicas, resources, health)
and experiment tracking."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from s3_ray.config.base import StrictModel

DEFAULT_RETRIEVER_CPUS = 0.25
"""A retriever replica's CPUs when `serve.retriever_cpus` is unset and no whole machine is its own."""


class ServeConfig(StrictModel):
    host: str = Field("127.0.0.1", description="HTTP bind address; 0.0.0.0 exposes the apps to the network.")
    port: int = Field(8000, ge=1, le=65535)
    auth_token_env: str | None = Field(
        None, description="Environment variable holding a bearer token; when set, HTTP calls must send it.")
    max_request_bytes: int = Field(1_000_000, ge=1024, description="Larger HTTP bodies are refused with 413.")
    max_text_chars: int = Field(4096, ge=16, description="Longest query or question accepted over HTTP.")
    retriever_replicas: int = Field(1, ge=1)
    retriever_cpus: float | None = Field(
        None, gt=0, description="CPUs reserved per retriever replica (and per shard replica). Unset (null): "
        f"{DEFAULT_RETRIEVER_CPUS}, so the retriever fits beside training on 2 cores, except under `s3-ray serve` "
        "starting its own Ray, which gives the retriever the cores the other apps it starts do not reserve.")
    retriever_threads: int | None = Field(
        None, ge=1, description="torch and faiss threads in one retriever replica; default: retriever_cpus rounded "
        "up, at most the cores the replica may run on.")
    retriever_gpus: float = Field(0.0, ge=0, description="GPUs per retriever replica (dense encoder, faiss GPU).")
    retriever_resources: dict[str, float] = Field(
        default_factory=dict, description="Custom Ray resources per retriever replica (and per shard replica), e.g. "
        "{retriever_node: 0.01} to place them on cluster.yaml's cpu_retriever nodes.")
    generator_replicas: int = Field(1, ge=1)
    generator_cpus: float = Field(0.5, gt=0)
    generator_gpus: float = Field(
        0.0, ge=0, description="GPUs per generator replica (transformers on GPU). With generator.backend vllm the "
        "replica reserves generator.tensor_parallel_size GPUs; leave this 0 or set it to that number.")
    generator_resources: dict[str, float] = Field(
        default_factory=dict, description="Custom Ray resources per generator replica, e.g. {serve_node: 0.01} to "
        "place them on cluster.yaml's gpu_serve nodes.")
    max_ongoing_requests: int = Field(64, ge=1)
    max_batch_size: int = Field(16, ge=1, description="Most concurrent retriever or generator calls merged into one.")
    shard_timeout_s: float = Field(30.0, gt=0, description="Sharded retriever: one shard call's time limit.")
    shard_retries: int = Field(
        2, ge=0, description="Sharded retriever: retries of a failed shard call (Serve routes each to a healthy "
                             "replica of that shard); then the query fails, never returning a partial top-k.")
    batch_wait_timeout_s: float = Field(0.01, ge=0)
    retriever_merge_below: int = Field(
        16, ge=1, description="A retriever request with fewer queries waits up to batch_wait_timeout_s to share an "
        "encoder batch with concurrent ones; a request with at least this many fills a batch alone and runs at once.")
    health_check_period_s: float = Field(10.0, gt=0, description="How often Serve probes each replica.")
    health_check_timeout_s: float = Field(30.0, gt=0)
    graceful_shutdown_timeout_s: float = Field(
        20.0, ge=0, description="On shutdown or redeploy, in-flight requests get this long to finish.")
    copilot_replicas: int = Field(1, ge=1, description="Replicas of the searcher (copilot) app.")
    copilot_cpus: float = Field(0.5, gt=0, description="CPUs reserved per copilot replica.")
    copilot_gpus: float = Field(0.0, ge=0, description="GPUs reserved per copilot (searcher) replica.")
    copilot_resources: dict[str, float] = Field(
        default_factory=dict, description="Custom Ray resources per copilot replica, e.g. {serve_node: 0.01}.")
    copilot_max_batch_size: int = Field(8, ge=1, description="Most concurrent searches merged into one rollout.")
    copilot_batch_wait_timeout_s: float = Field(
        0.05, ge=0, description="How long a copilot replica waits for more requests to join a rollout."
    )


    def replica_cpus(self, app: str) -> float:
        """CPUs one replica of `app` ("retriever", "generator", "copilot") reserves.

        >>> ServeConfig().replica_cpus("retriever"), ServeConfig(retriever_cpus=2).replica_cpus("retriever")
        (0.25, 2.0)
        """
        cpus = getattr(self, f"{app}_cpus")
        return DEFAULT_RETRIEVER_CPUS if cpus is None else float(cpus)


class WandbConfig(StrictModel):
    enabled: bool = True
    mode: Literal["offline", "online", "disabled"] = "offline"
    project: str = "s3-ray"


class ResourcesConfig(StrictModel):
    """What the memory plan checks against (`s3_ray.plans.memory`): the GPUs actors land on."""

    gpu_memory_gb: float | None = Field(
        None, gt=0, description="Memory of every GPU, in GiB (2^30 bytes; an A100 40GB is 40). None: from the node "
        "types of `cluster` (train_node / serve_node) by instance type.")
    cluster: str | None = Field(
        None, description="The Ray cluster launcher file whose node types give the GPUs; None: ./cluster.yaml, else "
        "the project's cluster.yaml.")
    corpus_passages: int | None = Field(
        None, ge=1, description="Passages in the index, for the plan before the index exists (None: the index "
        "manifest, a known corpus by file name, or the corpus file's lines).")
    passage_tokens: int = Field(
        160, ge=1, description="Searcher tokens one retrieved passage takes (wiki-18: 100 words plus title), for the "
        "planned trajectory length.")
    prompt_tokens: int = Field(400, ge=1, description="Tokens of the searcher's instructions and question, for the "
                               "planned trajectory length.")
