"""Retriever Serve app: `POST /retrieve` (Search-R1/s3 schema), `GET /health`, and a batched
`search(queries, k)` method for handle calls.

`RetrieverServer` holds the logic and runs without Serve (tests build it directly);
`build_app(args)` makes it a deployment. Concurrent calls are merged by `serve.batch` into one
retriever call (one bm25s call, or one encoder batch + one faiss search); a request that carries
`serve.retriever_merge_below` queries or more runs at once instead of waiting for others. `GET /openapi.json` and
`/docs` describe the API. Run with
`serve run deployments.retriever:build_app index_dir=runs/index backend=bm25`, or from
`deployments/serve_config.yaml` (see docs/retrieval.md).

With `retrieval.replica_shards: N` the app is N shard deployments (`<name>Shard<i>`, each
`serve.retriever_replicas` replicas that load only their shard) behind one front deployment
(`ShardedRetrieverServer`, the ingress) with the same `/retrieve`, `/health` and `search` API. The
front encodes dense queries once, fans each batch out to every shard and merges their top-k
(`s3_ray.retrieval.shard_merge`). It refuses to start on an incomplete shard set or a shard of
another corpus, checks every shard reply's corpus hash, retries a failed shard call on another
replica of that shard, and fails a query whose shard stays down instead of answering without it.

Every HTTP request passes the shared guard (`s3_ray.serving`): the bearer token when
`serve.auth_token_env` is set, `serve.max_request_bytes`, and `serve.max_text_chars` per query
(docs/security.md).

No `from __future__ import annotations` here: FastAPI must see the real `Request` annotation
on the handlers to inject the request.
"""

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import Field, ValidationError

import numpy as np

from s3_ray.config import RetrievalConfig, ServeConfig
from s3_ray.retrieval.encoders import encoder_spec, load_encoder
from s3_ray.retrieval.index import load_retriever, read_manifest
from s3_ray.retrieval.manifest import Manifest
from s3_ray.retrieval.shard_merge import ShardFanout
from s3_ray.retrieval.shard_set import ShardReply, ShardSearcher, ShardSetError, check_shard_set, open_shard_set
from s3_ray.retry import Retry
from s3_ray.retrieval.schema import RetrieveRequest, RetrieveResponse, hits_to_json
from s3_ray.serving import (
    GUARD_REJECTIONS,
    ApiInfo,
    AppArgs,
    AsciiJSONResponse,
    Batching,
    BatchStats,
    Guard,
    build_api,
    get,
    merged,
    post,
    replica_options,
    retriever_served,
    serve_deployment,
    split_merged,
)
from s3_ray.serving.threads import available_cores, replica_threads, set_replica_threads
from s3_ray.types import SearchHit

if TYPE_CHECKING:
    from ray.serve import Application

API = ApiInfo(title="s3-ray retriever", version="1",
              description="Search-R1/s3 compatible retrieval: BM25, dense (faiss) or hybrid (RRF).")
_REQUEST_BODY = {"required": True,
                 "content": {"application/json": {"schema": RetrieveRequest.model_json_schema()}}}


class RetrieverAppArgs(AppArgs):
    """What `build_app` needs: the `retrieval` and `serve` sections of `S3Config`. Their fields may
    also be given flat (`index_dir=...`, `backend=dense`, `retriever_cpus=0.5`), as `serve run`
    passes key=value args."""

    retrieval: RetrievalConfig = RetrievalConfig()
    serve: ServeConfig = ServeConfig()
    name: str = Field("RetrieverDeployment", min_length=1, description="Deployment name inside the app.")

    def absolute(self, base: Optional[Path] = None) -> "RetrieverAppArgs":
        """A copy whose relative `index_dir` is resolved against `base` (default: the cwd)."""
        index_dir = (base or Path.cwd()) / Path(self.retrieval.index_dir).expanduser()
        return self.model_copy(update={"retrieval": self.retrieval.model_copy(update={"index_dir": str(index_dir)})})


class RetrieverServer:
    """One replica = one loaded index; queries that arrive together share one search."""

    def __init__(self, args: RetrieverAppArgs) -> None:
        self.args = args
        self.guard = Guard.from_config(args.serve)  # first: a missing token fails before the index loads
        self.threads = set_serve_threads(args.serve)
        self.max_batch = args.retrieval.max_batch
        self.merge_below = args.serve.retriever_merge_below
        self.manifest = read_manifest(args.retrieval.index_dir)
        self.retriever: Any = self._open()
        self.batches = BatchStats()
        self._closing = False

    def _open(self) -> Any:
        return load_retriever(self.args.retrieval)

    async def _search(self, queries: list[str], k: int) -> list[list[SearchHit]]:
        return await asyncio.to_thread(self.retriever.search, queries, k)

    # handle API ---------------------------------------------------------------------------
    async def search(self, queries: list[str], k: int) -> list[list[SearchHit]]:
        """Top-k hits per query; merged with concurrent calls into one retriever call, unless the
        request alone holds `serve.retriever_merge_below` queries or more."""
        if isinstance(queries, str) or not all(isinstance(q, str) for q in queries):
            raise TypeError("queries must be a list of strings")
        if not 1 <= int(k) <= 100:
            raise ValueError(f"k must be in 1..100, got {k}")
        if len(queries) > self.max_batch:
            raise ValueError(f"batch of {len(queries)} queries exceeds max_batch={self.max_batch}")
        if self._closing:
            raise RuntimeError("retriever replica is shutting down")
        if len(queries) >= self.merge_below:  # a batch on its own: waiting for others only adds latency
            self.batches.record(1)
            return await self._search(list(queries), int(k))
        return await self._search_merged(list(queries), int(k))

    @merged
    async def _search_merged(self, queries: list[list[str]], ks: list[int]) -> list[list[list[SearchHit]]]:
        self.batches.record(len(queries))
        flat = [q for qs in queries for q in qs]
        if not flat:
            return [[] for _ in queries]
        # Top-k lists are sorted, so one search at the largest k serves every smaller k.
        hits = await self._search(flat, max(ks))
        return [[h[:k] for h in group] for group, k in zip(split_merged(hits, queries), ks)]

    def stats(self) -> dict[str, Any]:
        """How many caller requests each merged search took."""
        return self.batches.as_dict()

    def describe(self) -> dict[str, Any]:
        """What this replica serves (`s3_ray.serving.served`); a job checks it before reusing the app."""
        return retriever_served(self.args.retrieval, self.manifest.corpus_sha256)

    async def check_health(self) -> None:
        """Serve's periodic probe: a replica whose index cannot answer a query gets replaced."""
        hits = await self._search(["health check"], 1)
        if len(hits) != 1:
            raise RuntimeError(f"retriever returned {len(hits)} result lists for 1 query")

    def __del__(self) -> None:
        """Serve calls this on replica shutdown (after in-flight requests drained or timed out)."""
        self._closing = True
        self.retriever = None  # release faiss/GPU memory and encoder weights now, not at process exit

    # HTTP API -----------------------------------------------------------------------------
    def asgi_app(self) -> FastAPI:
        return build_api(self, API, self.guard)

    @post("/retrieve", response_model=RetrieveResponse, openapi_extra={"requestBody": _REQUEST_BODY},
          responses={400: {"description": "body is not JSON"}, **GUARD_REJECTIONS})
    async def retrieve(self, request: Request) -> JSONResponse:
        try:
            body = await request.json()
        except (ValueError, RecursionError):  # RecursionError: JSON nested too deep to parse
            return JSONResponse({"detail": "request body is not valid JSON"}, status_code=400)
        try:
            req = RetrieveRequest.model_validate(body, context={"max_batch": self.max_batch})
        except ValidationError as err:  # ASCII-safe: the errors echo client input
            return AsciiJSONResponse({"detail": err.errors(include_url=False, include_context=False)},
                                     status_code=422)
        self.guard.require_text([(("queries", i), q) for i, q in enumerate(req.queries)])
        hits = await self.search(req.queries, req.topk)
        return JSONResponse(hits_to_json(hits, return_scores=req.return_scores))

    @get("/health")
    async def health(self) -> dict[str, Any]:
        m = self.manifest
        return {"status": "shutting down" if self._closing else "ok", "backend": m.backend,
                "passages": len(self.retriever), "index_dir": self.args.retrieval.index_dir, "dim": m.dim,
                "corpus_sha256": m.corpus_sha256, "threads": self.threads,
                "encoder_runtime": encoder_runtime(self.retriever)}


class RetrieverShardServer:
    """One replica of one shard: loads only that shard and answers the front's fan-out calls."""

    def __init__(self, args: RetrieverAppArgs, shard: int) -> None:
        self.threads = set_serve_threads(args.serve)
        self.searcher = ShardSearcher.open(args.retrieval, shard)

    async def search_parts(self, queries: list[str], vectors: Any, depth: int) -> ShardReply:
        return await asyncio.to_thread(self.searcher.search_parts, queries, vectors, depth)

    def describe_shard(self) -> Manifest:
        """This replica's shard manifest (its rows, passage and statistics hashes, corpus hash)."""
        return self.searcher.describe()

    async def check_health(self) -> None:
        dim = self.searcher.manifest.dim
        vectors = None if dim is None else np.zeros((1, dim), dtype=np.float32)
        await asyncio.to_thread(self.searcher.search_parts, ["health check"], vectors, 1)


class ShardedRetrieverServer(RetrieverServer):
    """The front of a sharded index: RetrieverServer's API over a fan-out to the shard deployments."""

    def __init__(self, args: RetrieverAppArgs, shards: list[Any]) -> None:
        self._handles = list(shards)
        self._verified = False
        super().__init__(args)

    def _open(self) -> ShardFanout:
        cfg, s = self.args.retrieval, self.args.serve
        top = open_shard_set(cfg)  # refuses a missing shard folder or one of another corpus or build
        if len(self._handles) != cfg.replica_shards:
            raise ShardSetError(f"{len(self._handles)} shard deployments for retrieval.replica_shards="
                                f"{cfg.replica_shards}")
        encoder = None
        if cfg.backend in ("dense", "hybrid"):
            encoder = load_encoder(encoder_spec(cfg), cfg.encode_batch_size, cfg.encoder_runtime)
        return ShardFanout(cfg, top, self._call_shard, encoder, transient=shard_transient_errors(),
                           timeout_s=s.shard_timeout_s, retry=Retry(s.shard_retries, 0.1, 2.0))

    async def _call_shard(self, shard: int, queries: list[str], vectors: Any, depth: int) -> ShardReply:
        return await self._handles[shard].search_parts.remote(queries, vectors, depth)

    async def verify_shards(self) -> None:
        """What the shard replicas report must be the set the folders hold (first search, health checks)."""
        found = await asyncio.gather(*(h.describe_shard.remote() for h in self._handles))
        check_shard_set(self.retriever.top, list(found), self.args.retrieval, "shard replicas")
        self._verified = True

    async def _search(self, queries: list[str], k: int) -> list[list[SearchHit]]:
        if not self._verified:
            await self.verify_shards()
        return await self.retriever.search(queries, k)

    async def check_health(self) -> None:
        await self.verify_shards()
        await super().check_health()

    def stats(self) -> dict[str, Any]:
        return {**self.batches.as_dict(), "failed_shard_calls": self.retriever.failed_calls}


def encoder_runtime(retriever: Any) -> Optional[str]:
    """`torch` or `onnx` for a dense or hybrid retriever (with the reason when auto chose torch);
    None for BM25."""
    for part in [retriever, *getattr(retriever, "retrievers", [])]:
        enc = getattr(part, "encoder", None)
        if enc is not None:
            return getattr(enc, "runtime_note", None) or getattr(enc, "runtime", "torch")
    return None


def set_serve_threads(s: ServeConfig) -> int:
    """Set this replica's torch and faiss threads from `serve.retriever_threads` or the CPUs it
    reserves (Ray leaves a fractional reservation OMP_NUM_THREADS=1); returns the count."""
    return set_replica_threads(replica_threads(s.replica_cpus("retriever"), s.retriever_threads, available_cores()))


def shard_transient_errors() -> tuple[type[BaseException], ...]:
    """The errors of a shard call that another attempt may not meet (replica death, overload)."""
    import ray.exceptions as rex
    from ray.serve import exceptions as sex

    return (rex.RayActorError, rex.ActorUnavailableError, rex.GetTimeoutError, sex.BackPressureError,
            sex.DeploymentUnavailableError, sex.ReplicaUnavailableError)


def build_app(args: RetrieverAppArgs | dict[str, Any]) -> "Application":
    """The bound app; replicas, CPUs and batching come from `args.serve`.

    A relative index folder is resolved here, against the caller's directory, because replicas
    may run elsewhere.
    """
    from ray import serve

    a = RetrieverAppArgs.coerce(args).absolute()
    s = a.serve
    batching = {"_search_merged": Batching(s.max_batch_size, s.batch_wait_timeout_s)}
    if a.retrieval.replica_shards == 1:
        return serve_deployment(RetrieverServer, batching, **replica_options(s, "retriever", a.name)).bind(a)
    if Path(a.retrieval.index_dir).is_dir():
        # checked here too, so a bad shard set fails in the caller with the shard named (a replica's
        # refusal reaches serve.run only as "failed to update the deployments"); folders only the
        # retriever nodes see are checked by the front replica
        open_shard_set(a.retrieval)
    shards = []
    for i in range(a.retrieval.replica_shards):
        options = replica_options(s, "retriever", f"{a.name}Shard{i}")
        shards.append(serve.deployment(RetrieverShardServer, **options).bind(a, i))
    return serve_deployment(ShardedRetrieverServer, batching, **replica_options(s, "retriever", a.name)).bind(a, shards)
