"""Searcher ("copilot") Serve app: a question in, the documents the s3 searcher selected out.

`CopilotServer` is a thin class over `s3_ray.agent.copilot.SearchCopilot` and runs without Serve;
`build_app(args)` makes it a deployment. Concurrent requests are merged by `serve.batch` and those
with equal budgets share one batched rollout (one policy call per turn for all of them). The
retriever is reached through `RetrieverClient`: by Serve app name (default "retriever") or by
the URL of any Search-R1/s3 style `/retrieve` server.

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

# No `from __future__ import annotations`: FastAPI must see the request models as real objects,
# or it reads them as query parameters.
import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field, field_validator

from s3_ray.agent.copilot import Budget, CopilotRequestError, SearchCopilot
from s3_ray.clients.retriever import RetrieverClient
from s3_ray.config import RolloutConfig, SearcherConfig, ServeConfig
from s3_ray.serving import (
    GUARD_REJECTIONS,
    ApiInfo,
    AppArgs,
    Batching,
    BatchStats,
    Guard,
    build_api,
    get,
    merged,
    post,
    replica_options,
    serve_deployment,
    unprocessable,
)

if TYPE_CHECKING:
    from ray.serve import Application

API = ApiInfo(title="s3-ray search copilot", version="1",
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


class CopilotAppArgs(AppArgs):
    """What `build_app` needs: the `searcher`, `rollout` and `serve` sections of `S3Config` (fields
    may also be given flat). `model` defaults to `searcher.model`; point it at a trained checkpoint.
    `retriever` is a Serve app name or an http(s) URL of a `/retrieve` endpoint."""

    searcher: SearcherConfig = SearcherConfig()
    rollout: RolloutConfig = RolloutConfig()
    serve: ServeConfig = ServeConfig()
    model: Optional[str] = None
    retriever: str = Field("retriever", min_length=1)
    name: str = Field("CopilotDeployment", min_length=1, description="Deployment name inside the app.")

    def model_name(self) -> str:
        return self.model or self.searcher.model

    def absolute(self, base: Optional[Path] = None) -> "CopilotAppArgs":
        """A copy whose model, when it names a local folder, is an absolute path (relative to `base`,
        default: the cwd); registered names and hub ids stay as they are."""
        folder = (base or Path.cwd()) / Path(self.model_name()).expanduser()
        return self.model_copy(update={"model": str(folder.resolve())}) if folder.is_dir() else self

    def retriever_client(self) -> RetrieverClient:
        if self.retriever.startswith(("http://", "https://")):
            # a retriever URL behind the same auth as this app is called with the same token
            return RetrieverClient.from_url(self.retriever, token_env=self.serve.auth_token_env)
        return RetrieverClient.from_app(self.retriever)


class CopilotServer:
    """One replica = one searcher model copy; requests that arrive together share rollouts."""

    def __init__(self, args: CopilotAppArgs) -> None:
        self.args = args
        s = args.serve
        self.guard = Guard.from_config(s)  # first: a missing token fails before the model loads
        self._copilot = SearchCopilot(args.model_name(), args.retriever_client(), args.rollout, args.searcher,
                                      max_batch=s.copilot_max_batch_size)
        self.batches = BatchStats()

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
        return await self._search_merged(question, budget)

    @merged
    async def _search_merged(self, questions: list[str], budgets: list[Budget]) -> list[dict[str, Any]]:
        self.batches.record(len(questions))
        results = await asyncio.to_thread(self._copilot.search, questions, budgets)
        return [r.to_dict() for r in results]

    def stats(self) -> dict[str, Any]:
        """How many requests each merged call took, and how many rollouts ran."""
        return self.batches.as_dict() | {"rollouts": self._copilot.rollouts}

    # HTTP API -----------------------------------------------------------------------------
    def asgi_app(self) -> FastAPI:
        return build_api(self, API, self.guard)

    @get("/health")
    async def health(self) -> dict[str, Any]:
        return {"status": "ok", "model": self._copilot.model_id, "limits": self._copilot.limits(),
                "init_k": self._copilot.rollout.init_k, "retriever": self.args.retriever, **self.stats()}

    @post("/search", response_model=SearchResponse, responses=GUARD_REJECTIONS)
    async def search_endpoint(self, req: SearchRequest) -> dict[str, Any]:
        self.guard.require_text([(("body", "question"), req.question)])
        try:
            return await self.search(req.question, req.top_k, req.keep_per_turn, req.max_turns)
        except CopilotRequestError as err:
            raise unprocessable((err.field,), str(err)) from err


def build_app(args: CopilotAppArgs | dict[str, Any]) -> "Application":
    """The bound app; replicas, CPUs/GPUs and batching come from `args.serve` (`copilot_*`).

    A relative local model folder is resolved here, against the caller's directory, because
    replicas may run elsewhere.
    """
    a = CopilotAppArgs.coerce(args).absolute()
    s = a.serve
    deployment = serve_deployment(
        CopilotServer, {"_search_merged": Batching(s.copilot_max_batch_size, s.copilot_batch_wait_timeout_s)},
        **replica_options(s, "copilot", a.name))
    return deployment.bind(a)
