"""Retriever Serve app: `POST /retrieve` (Search-R1/s3 schema), `GET /health`, and a batched
`search(queries, k)` method for handle calls.

Concurrent calls are merged by `@serve.batch` into one retriever call (one bm25s call, or one
encoder batch + one faiss search). `GET /openapi.json` and `/docs` describe the API. Run with
`serve run deployments.retriever:build_app index_dir=runs/index backend=bm25`, or from
`deployments/serve_config.yaml` (see docs/retrieval.md).

Every HTTP request passes the shared guard (`s3_ray.serving`): the bearer token when
`auth_token_env` is set, the body-size limit, and `max_text_chars` per query (docs/security.md).

No `from __future__ import annotations` here: FastAPI must see the real `Request` annotation
on the ingress methods to inject the request.
"""

import asyncio
from typing import Any, Optional

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from ray import serve
from ray.serve import Application

from s3_ray.config import RetrievalConfig, ServeConfig
from s3_ray.retrieval.index import load_retriever, read_manifest
from s3_ray.retrieval.schema import RetrieveRequest, RetrieveResponse, hits_to_json
from s3_ray.serving import AsciiJSONResponse, Guard
from s3_ray.types import SearchHit

app = FastAPI(title="s3-ray retriever", version="1",
              description="Search-R1/s3 compatible retrieval: BM25, dense (faiss) or hybrid (RRF).")

_SERVE_FIELDS = {"retriever_replicas", "retriever_cpus", "retriever_gpus", "max_ongoing_requests", "max_batch_size",
                 "batch_wait_timeout_s", "health_check_period_s", "health_check_timeout_s",
                 "graceful_shutdown_timeout_s", "auth_token_env", "max_request_bytes", "max_text_chars",
                 "retrieval"}
_SERVE_DEFAULTS = ServeConfig()


class RetrieverAppArgs(BaseModel):
    """Everything `build_app` needs. Any RetrievalConfig field may be given at the top level
    (`index_dir=...`, `backend=dense`, `index_type=hnsw`), as `serve run` passes flat key=value
    args; they are gathered into `retrieval`."""

    model_config = ConfigDict(extra="forbid")

    retrieval: RetrievalConfig = RetrievalConfig()
    retriever_replicas: int = Field(1, ge=1)
    retriever_cpus: float = Field(0.25, gt=0)
    retriever_gpus: float = Field(0.0, ge=0, description="GPUs per replica (dense encoder, faiss GPU).")
    max_ongoing_requests: int = Field(64, ge=1)
    max_batch_size: int = Field(16, ge=1, description="Most concurrent calls merged into one search.")
    batch_wait_timeout_s: float = Field(0.01, ge=0)
    health_check_period_s: float = Field(10.0, gt=0)
    health_check_timeout_s: float = Field(30.0, gt=0)
    graceful_shutdown_timeout_s: float = Field(20.0, ge=0, description="In-flight requests get this long to finish.")
    auth_token_env: Optional[str] = Field(None, description="Environment variable holding the bearer token; "
                                                            "unset: no auth.")
    max_request_bytes: int = Field(_SERVE_DEFAULTS.max_request_bytes, ge=1024)
    max_text_chars: int = Field(_SERVE_DEFAULTS.max_text_chars, ge=16, description="Longest query accepted.")

    @model_validator(mode="before")
    @classmethod
    def _gather_retrieval_fields(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        flat = {k: v for k, v in data.items() if k not in _SERVE_FIELDS}
        if not flat:
            return data
        nested = data.get("retrieval", {})
        nested = nested.model_dump() if isinstance(nested, RetrievalConfig) else dict(nested)
        return {k: v for k, v in data.items() if k in _SERVE_FIELDS} | {"retrieval": nested | flat}

    @classmethod
    def from_config(cls, cfg: Any) -> "RetrieverAppArgs":
        """From an S3Config (its `retrieval` and `serve` sections)."""
        s = cfg.serve
        return cls(retrieval=cfg.retrieval, retriever_replicas=s.retriever_replicas,
                   retriever_cpus=s.retriever_cpus, retriever_gpus=s.retriever_gpus,
                   max_ongoing_requests=s.max_ongoing_requests,
                   max_batch_size=s.max_batch_size, batch_wait_timeout_s=s.batch_wait_timeout_s,
                   auth_token_env=s.auth_token_env, max_request_bytes=s.max_request_bytes,
                   max_text_chars=s.max_text_chars)

    def retrieval_config(self) -> RetrievalConfig:
        return self.retrieval


_REQUEST_BODY = {"required": True,
                 "content": {"application/json": {"schema": RetrieveRequest.model_json_schema()}}}
_REJECTIONS = {400: {"description": "body is not JSON"}, 401: {"description": "bearer token missing or wrong"},
               413: {"description": "body larger than max_request_bytes"},
               422: {"description": "invalid request; `detail[].loc` names the field"}}


@serve.deployment
@serve.ingress(app)
class RetrieverDeployment:
    def __init__(self, args: RetrieverAppArgs) -> None:
        self.args = args
        self._guard = Guard.from_env(args.auth_token_env, args.max_request_bytes, args.max_text_chars)
        self.max_batch = args.retrieval.max_batch
        self.manifest = read_manifest(args.retrieval.index_dir)
        self.retriever = load_retriever(args.retrieval)
        self._closing = False
        self._batched_search.set_max_batch_size(args.max_batch_size)
        self._batched_search.set_batch_wait_timeout_s(args.batch_wait_timeout_s)

    async def search(self, queries: list[str], k: int) -> list[list[SearchHit]]:
        """Handle entry point; merged with concurrent calls into one retriever call."""
        if isinstance(queries, str) or not all(isinstance(q, str) for q in queries):
            raise TypeError("queries must be a list of strings")
        if not 1 <= int(k) <= 100:
            raise ValueError(f"k must be in 1..100, got {k}")
        if len(queries) > self.max_batch:
            raise ValueError(f"batch of {len(queries)} queries exceeds max_batch={self.max_batch}")
        if self._closing:
            raise RuntimeError("retriever replica is shutting down")
        return await self._batched_search(list(queries), int(k))

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def _batched_search(self, queries: list[list[str]], ks: list[int]) -> list[list[list[SearchHit]]]:
        flat = [q for qs in queries for q in qs]
        if not flat:
            return [[] for _ in queries]
        # Top-k lists are sorted, so one search at the largest k serves every smaller k.
        hits = await asyncio.to_thread(self.retriever.search, flat, max(ks))
        out, pos = [], 0
        for qs, k in zip(queries, ks):
            out.append([h[:k] for h in hits[pos:pos + len(qs)]])
            pos += len(qs)
        return out

    def __serve_build_asgi_app__(self) -> Any:
        """Serve calls this once, after `__init__`, for the replica's own copy of `app`: the
        guard middleware goes on here because its token is only known inside the replica."""
        return self._guard.install(self.app)

    @app.post("/retrieve", response_model=RetrieveResponse, openapi_extra={"requestBody": _REQUEST_BODY},
              responses=_REJECTIONS)
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
        if errors := self._guard.check_text([(("queries", i), q) for i, q in enumerate(req.queries)]):
            return JSONResponse({"detail": errors}, status_code=422)
        hits = await self.search(req.queries, req.topk)
        return JSONResponse(hits_to_json(hits, return_scores=req.return_scores))

    @app.get("/health")
    async def health(self) -> dict[str, Any]:
        m = self.manifest
        return {"status": "shutting down" if self._closing else "ok", "backend": m.backend,
                "passages": len(self.retriever), "index_dir": self.args.retrieval.index_dir, "dim": m.dim,
                "corpus_sha256": m.corpus_sha256}

    async def check_health(self) -> None:
        """Serve's periodic probe: a replica whose index cannot answer a query gets replaced."""
        hits = await asyncio.to_thread(self.retriever.search, ["health check"], 1)
        if len(hits) != 1:
            raise RuntimeError(f"retriever returned {len(hits)} result lists for 1 query")

    def __del__(self) -> None:
        """Serve calls this on replica shutdown (after in-flight requests drained or timed out)."""
        self._closing = True
        self.retriever = None  # release faiss/GPU memory and encoder weights now, not at process exit


def build_app(args: RetrieverAppArgs | dict[str, Any]) -> Application:
    """The bound app; replicas, CPUs and concurrency come from the args."""
    a = args if isinstance(args, RetrieverAppArgs) else RetrieverAppArgs.model_validate(args)
    return RetrieverDeployment.options(
        num_replicas=a.retriever_replicas,
        ray_actor_options={"num_cpus": a.retriever_cpus, "num_gpus": a.retriever_gpus},
        max_ongoing_requests=a.max_ongoing_requests,
        health_check_period_s=a.health_check_period_s,
        health_check_timeout_s=a.health_check_timeout_s,
        graceful_shutdown_wait_loop_s=1.0,
        graceful_shutdown_timeout_s=a.graceful_shutdown_timeout_s,
    ).bind(a)
