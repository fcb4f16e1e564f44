"""Searcher ("copilot") Serve app: a question in, the documents the s3 searcher selected out.

A thin class over `s3_ray.agent.copilot.SearchCopilot`. Concurrent requests are merged by
`@serve.batch` and those with equal budgets share one batched rollout (one policy call per turn
for all of them). The retriever is reached through `RetrieverClient`: by Serve app name
(default "retriever") or by the URL of any Search-R1/s3 style `/retrieve` server.

    POST /search   {"question": str, "top_k"?: int, "keep_per_turn"?: int, "max_turns"?: int}
                   -> {"documents": [{"id", "contents"}], "trace": [...], "searches": n, ...}
    GET  /health   model, budget ceilings, batching counters
    GET  /openapi.json, /docs

Every HTTP request passes the shared guard (`s3_ray.serving`): bearer token when
`serve.auth_token_env` is set, `serve.max_request_bytes`, and `serve.max_text_chars` for the
question (docs/security.md).

    app = build_app(CopilotAppArgs.from_config(cfg, model="runs/demo/ray/demo/.../searcher"))
    serve.run(app, name="copilot", route_prefix="/copilot")
"""

# No `from __future__ import annotations`: Serve's ingress wrapper needs the request models
# as real objects, or FastAPI reads them as query parameters.
import asyncio
from collections import Counter
from pathlib import Path
from typing import Any, Optional

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict, Field, field_validator
from ray import serve

from s3_ray.agent.copilot import Budget, CopilotRequestError, SearchCopilot
from s3_ray.clients.retriever import RetrieverClient
from s3_ray.config import RolloutConfig, S3Config, SearcherConfig, ServeConfig
from s3_ray.serving import Guard

api = FastAPI(title="s3-ray search copilot", version="1",
              description="An s3 searcher in front of any generator: a question in, selected documents "
                          "and the search trace out.")


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: str = Field(min_length=1, description="The question to search for.")
    top_k: Optional[int] = Field(None, description="Documents per query (at most the configured rollout.top_k).")
    keep_per_turn: Optional[int] = Field(None, description="Documents kept per search (at most rollout.keep_per_turn).")
    max_turns: Optional[int] = Field(None, description="Searches per question (at most rollout.max_turns).")

    @field_validator("question")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("question must not be blank")
        return v


class Document(BaseModel):
    id: str
    contents: str


class TraceTurn(BaseModel):
    text: str = Field(description="The searcher's raw turn.")
    query: Optional[str] = Field(None, description="The query that was run after this turn, if any.")
    retrieved_ids: list[str] = Field(description="Documents shown after this turn.")
    selected_ids: list[str] = Field(description="Documents kept from the previous block.")
    complete: bool
    malformed: Optional[str] = Field(None, description="Why the turn broke the protocol, if it did.")


class SearchResponse(BaseModel):
    question: str
    documents: list[Document] = Field(description="Initial top-k plus kept documents: what a generator should read.")
    trace: list[TraceTurn]
    searches: int
    turns: int
    malformed: int
    completed: bool = Field(description="The searcher declared the search complete (rather than running out of budget).")
    searcher_tokens: int
    budget: dict[str, int]


class CopilotAppArgs(BaseModel):
    """What `build_app` needs. `model` defaults to `searcher.model`; point it at a trained checkpoint.
    `retriever` is a Serve app name or an http(s) URL of a `/retrieve` endpoint."""

    model_config = ConfigDict(extra="forbid")
    searcher: SearcherConfig = SearcherConfig()
    rollout: RolloutConfig = RolloutConfig()
    serve: ServeConfig = ServeConfig()
    model: Optional[str] = None
    retriever: str = Field("retriever", min_length=1)
    name: str = Field("CopilotDeployment", description="Deployment name inside the app.")

    @classmethod
    def from_config(cls, cfg: S3Config, model: Optional[str] = None, retriever: str = "retriever") -> "CopilotAppArgs":
        return cls(searcher=cfg.searcher, rollout=cfg.rollout, serve=cfg.serve, model=model, retriever=retriever)

    def model_name(self) -> str:
        return self.model or self.searcher.model

    def retriever_client(self) -> RetrieverClient:
        if self.retriever.startswith(("http://", "https://")):
            # a retriever URL behind the same auth as this app is called with the same token
            return RetrieverClient.from_url(self.retriever, token_env=self.serve.auth_token_env)
        return RetrieverClient.from_app(self.retriever)


def _unprocessable(field: str, message: str) -> HTTPException:
    """A 422 shaped like FastAPI's own validation errors, so clients parse one format."""
    return HTTPException(422, detail=[{"loc": ["body", field], "msg": message, "type": "value_error"}])


@serve.deployment
@serve.ingress(api)
class CopilotDeployment:
    """One replica = one searcher model copy; requests that arrive together share rollouts."""

    def __init__(self, args: CopilotAppArgs) -> None:
        self.args = args
        s = args.serve
        self._guard = Guard.from_env(s.auth_token_env, s.max_request_bytes, s.max_text_chars)
        self._copilot = SearchCopilot(args.model_name(), args.retriever_client(), args.rollout, args.searcher,
                                      max_batch=s.copilot_max_batch_size)
        self._batched.set_max_batch_size(s.copilot_max_batch_size)
        self._batched.set_batch_wait_timeout_s(s.copilot_batch_wait_timeout_s)
        self._batch_sizes: Counter[int] = Counter()  # requests per batched call -> how often

    # handle API ---------------------------------------------------------------------------
    async def search(self, question: str, top_k: Optional[int] = None, keep_per_turn: Optional[int] = None,
                     max_turns: Optional[int] = None) -> dict[str, Any]:
        """One question's search result as a dict (`SearchResponse`'s fields).

        Budgets are validated here, before batching, so one bad request fails alone
        (CopilotRequestError, whose `field` names the offending argument)."""
        budget = Budget(top_k=top_k, keep_per_turn=keep_per_turn, max_turns=max_turns)
        budget.resolve(self._copilot.rollout)
        if not isinstance(question, str) or not question.strip():
            raise CopilotRequestError("question", "must be a non-empty string")
        return await self._batched(question, budget)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05)
    async def _batched(self, questions: list[str], budgets: list[Budget]) -> list[dict[str, Any]]:
        self._batch_sizes[len(questions)] += 1
        results = await asyncio.to_thread(self._copilot.search, questions, budgets)
        return [r.to_dict() for r in results]

    def stats(self) -> dict[str, Any]:
        """How many requests each batched call merged, and how many rollouts ran."""
        return {"requests_per_batch": dict(self._batch_sizes),
                "max_requests_per_batch": max(self._batch_sizes, default=0),
                "rollouts": self._copilot.rollouts}

    # HTTP API -----------------------------------------------------------------------------
    def __serve_build_asgi_app__(self) -> Any:
        """Serve calls this once, after `__init__`, for the replica's own copy of `api`: the
        guard middleware goes on here because its token is only known inside the replica."""
        return self._guard.install(self.app)

    @api.get("/health")
    async def health(self) -> dict[str, Any]:
        return {"status": "ok", "model": self._copilot.model_id, "limits": self._copilot.limits(),
                "init_k": self._copilot.rollout.init_k, "retriever": self.args.retriever, **self.stats()}

    @api.post("/search", response_model=SearchResponse,
              responses={401: {"description": "bearer token missing or wrong"},
                         413: {"description": "body larger than serve.max_request_bytes"},
                         422: {"description": "invalid request; `detail[].loc` names the field"}})
    async def search_endpoint(self, req: SearchRequest) -> dict[str, Any]:
        if errors := self._guard.check_text([(("body", "question"), req.question)]):
            raise HTTPException(422, errors)
        try:
            return await self.search(req.question, req.top_k, req.keep_per_turn, req.max_turns)
        except CopilotRequestError as err:
            raise _unprocessable(err.field, str(err)) from err


def build_app(args: CopilotAppArgs | dict[str, Any]) -> serve.Application:
    """Bind the copilot app from typed args (or their dict form, as a Serve config file gives).

    A relative local model folder is resolved here, against the caller's directory, because
    replicas may run elsewhere.
    """
    a = args if isinstance(args, CopilotAppArgs) else CopilotAppArgs.model_validate(args)
    model = a.model_name()
    if Path(model).expanduser().is_dir():
        a = a.model_copy(update={"model": str(Path(model).expanduser().resolve())})
    s = a.serve
    return CopilotDeployment.options(
        name=a.name,
        num_replicas=s.copilot_replicas,
        max_ongoing_requests=s.max_ongoing_requests,
        ray_actor_options={"num_cpus": s.copilot_cpus, "num_gpus": s.copilot_gpus},
    ).bind(a)
