"""Retriever Serve app: `POST /retrieve` (Search-R1/s3 schema), `GET /health`, and a batched
`search(queries, k)` method for handle calls.

Concurrent calls are merged by `@serve.batch` into one bm25s call. Run with
`serve run deployments.retriever:build_app index_dir=runs/index`.

No `from __future__ import annotations` here: FastAPI must see the real `Request` annotation
on the ingress methods to inject the request.
"""

import asyncio
import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ray import serve
from ray.serve import Application

from s3_ray.config import RetrievalConfig
from s3_ray.retrieval.index import load_retriever
from s3_ray.retrieval.schema import RetrieveRequest, hits_to_json
from s3_ray.types import SearchHit

app = FastAPI(title="s3-ray retriever")


class RetrieverAppArgs(BaseModel):
    """Everything `build_app` needs; field names follow RetrievalConfig / ServeConfig."""

    model_config = ConfigDict(extra="forbid")

    index_dir: str = "runs/index"
    backend: str = "bm25"
    k1: float = Field(0.9, gt=0)
    b: float = Field(0.4, ge=0, le=1)
    max_batch: int = Field(256, ge=1, description="Most queries one request may carry.")
    retriever_replicas: int = Field(1, ge=1)
    retriever_cpus: float = Field(0.25, gt=0)
    max_ongoing_requests: int = Field(64, ge=1)
    max_batch_size: int = Field(16, ge=1, description="Most concurrent calls merged into one search.")
    batch_wait_timeout_s: float = Field(0.01, ge=0)

    @classmethod
    def from_config(cls, cfg: Any) -> "RetrieverAppArgs":
        """From an S3Config (its `retrieval` and `serve` sections)."""
        r, s = cfg.retrieval, cfg.serve
        return cls(index_dir=r.index_dir, backend=r.backend, k1=r.k1, b=r.b, max_batch=r.max_batch,
                   retriever_replicas=s.retriever_replicas, retriever_cpus=s.retriever_cpus,
                   max_ongoing_requests=s.max_ongoing_requests, max_batch_size=s.max_batch_size,
                   batch_wait_timeout_s=s.batch_wait_timeout_s)

    def retrieval_config(self) -> RetrievalConfig:
        return RetrievalConfig(backend=self.backend, index_dir=self.index_dir, k1=self.k1, b=self.b,
                               max_batch=self.max_batch)


@serve.deployment
@serve.ingress(app)
class RetrieverDeployment:
    def __init__(self, args: RetrieverAppArgs) -> None:
        self.args = args
        self.retriever = load_retriever(args.retrieval_config())
        self._batched_search.set_max_batch_size(args.max_batch_size)
        self._batched_search.set_batch_wait_timeout_s(args.batch_wait_timeout_s)

    async def search(self, queries: list[str], k: int) -> list[list[SearchHit]]:
        """Handle entry point; merged with concurrent calls into one retriever call."""
        if isinstance(queries, str) or not all(isinstance(q, str) for q in queries):
            raise TypeError("queries must be a list of strings")
        if not 1 <= int(k) <= 100:
            raise ValueError(f"k must be in 1..100, got {k}")
        if len(queries) > self.args.max_batch:
            raise ValueError(f"batch of {len(queries)} queries exceeds max_batch={self.args.max_batch}")
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

    @app.post("/retrieve")
    async def retrieve(self, request: Request) -> JSONResponse:
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"detail": "request body is not valid JSON"}, status_code=400)
        try:
            req = RetrieveRequest.model_validate(body, context={"max_batch": self.args.max_batch})
        except ValidationError as err:
            return JSONResponse({"detail": json.loads(err.json(include_url=False))}, status_code=422)
        hits = await self.search(req.queries, req.topk)
        return JSONResponse(hits_to_json(hits, return_scores=req.return_scores))

    @app.get("/health")
    async def health(self) -> dict[str, Any]:
        return {"status": "ok", "passages": len(self.retriever), "index_dir": self.args.index_dir}


def build_app(args: RetrieverAppArgs | dict[str, Any]) -> Application:
    """The bound app; replicas, CPUs and concurrency come from the args."""
    a = args if isinstance(args, RetrieverAppArgs) else RetrieverAppArgs.model_validate(args)
    return RetrieverDeployment.options(
        num_replicas=a.retriever_replicas,
        ray_actor_options={"num_cpus": a.retriever_cpus},
        max_ongoing_requests=a.max_ongoing_requests,
    ).bind(a)
