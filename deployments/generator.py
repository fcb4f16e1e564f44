"""Ray Serve app for the frozen generator: a thin server over a (cached) generator backend.

`GeneratorServer` holds the logic and runs without Serve; `build_app(args)` makes it a deployment.
Handle callers use `generate(prompts)`; concurrent calls are merged by `serve.batch` into one
batched forward pass, which is where the throughput on CPU comes from. HTTP callers get
`POST /answer`, `POST /answer/batch` and `GET /health`, behind the shared guard
(`s3_ray.serving`): bearer token when `serve.auth_token_env` is set, `serve.max_request_bytes`,
and `serve.max_text_chars` per question (docs/security.md).

    app = build_app(GeneratorAppArgs.from_config(cfg))
    serve.run(app, name="generator", route_prefix="/generator")
"""

# No `from __future__ import annotations`: FastAPI must see the request models as real objects,
# or it reads them as query parameters.
import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field

from s3_ray.config import GeneratorConfig, ServeConfig
from s3_ray.generation import Messages, build_generator, validate_prompts
from s3_ray.generation.prompt import build_answer_messages
from s3_ray.serving import (
    GUARD_REJECTIONS,
    ApiInfo,
    AppArgs,
    Batching,
    BatchStats,
    Guard,
    build_api,
    generator_replica_gpus,
    generator_served,
    get,
    merged,
    post,
    replica_options,
    serve_deployment,
    split_merged,
    unprocessable,
)
from s3_ray.types import Passage

if TYPE_CHECKING:
    from ray.serve import Application

API = ApiInfo(title="s3-ray generator")


class PassageIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    contents: str


class AnswerRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: str = Field(min_length=1)
    passages: list[PassageIn] = Field(default_factory=list)


class AnswerBatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    questions: list[str]
    passages: list[list[PassageIn]]


class AnswerResponse(BaseModel):
    answer: str


class AnswerBatchResponse(BaseModel):
    answers: list[str]


class GeneratorAppArgs(AppArgs):
    """What `build_app` needs: the `generator` and `serve` sections of `S3Config` (fields may also
    be given flat)."""

    generator: GeneratorConfig = GeneratorConfig()
    serve: ServeConfig = ServeConfig()
    name: str = Field("GeneratorDeployment", min_length=1, description="Deployment name inside the app.")

    def absolute(self, base: Optional[Path] = None) -> "GeneratorAppArgs":
        """A copy whose relative `cache_path` is resolved against `base` (default: the cwd)."""
        if self.generator.cache_path is None:
            return self
        cache = (base or Path.cwd()) / Path(self.generator.cache_path).expanduser()
        return self.model_copy(update={"generator": self.generator.model_copy(update={"cache_path": str(cache)})})


class GeneratorServer:
    """One replica = one model copy; requests that arrive together share one generate call."""

    def __init__(self, args: GeneratorAppArgs) -> None:
        import torch

        self.args = args
        self.guard = Guard.from_config(args.serve)  # first: a missing token fails before the model loads
        torch.set_num_threads(args.generator.num_threads)
        self._gen = build_generator(args.generator)
        self.batches = BatchStats()

    # handle API ---------------------------------------------------------------------------
    async def generate(self, prompts: list[Messages]) -> list[str]:
        """Completions for one caller's prompts (validated here, so one bad caller fails alone)."""
        validate_prompts(prompts)
        if not prompts:
            return []
        return await self._generate_merged(prompts)

    @merged
    async def _generate_merged(self, requests: list[list[Messages]]) -> list[list[str]]:
        self.batches.record(len(requests))
        flat = [m for prompts in requests for m in prompts]
        answers = await asyncio.to_thread(self._gen.generate, flat)
        return split_merged(answers, requests)

    async def answer_logprobs(self, prompts: list[Messages], answers: list[list[str]]) -> list[float]:
        """The gold answers' best mean token log-likelihood per prompt (the dense reward metric)."""
        validate_prompts(prompts)
        fn = getattr(self._gen, "answer_logprobs", None)
        if not callable(fn):
            from s3_ray.generation.likelihood import AnswerLogprobUnsupported

            raise AnswerLogprobUnsupported(f"generator {self._gen.model_id!r} cannot score gold answers")
        return await asyncio.to_thread(fn, prompts, answers)

    def model_id(self) -> str:
        return self._gen.model_id

    def describe(self) -> dict[str, Any]:
        """What this replica answers with (`s3_ray.serving.served`); a job checks it before reusing the app."""
        return generator_served(self.args.generator)

    def stats(self) -> dict[str, Any]:
        """Generator counters plus how many caller requests each merged call took."""
        gen_stats = getattr(self._gen, "stats", None)
        out: dict[str, Any] = dict(gen_stats()) if callable(gen_stats) else {}
        return out | self.batches.as_dict()

    # HTTP API -----------------------------------------------------------------------------
    def asgi_app(self) -> FastAPI:
        return build_api(self, API, self.guard)

    @get("/health")
    async def health(self) -> dict[str, str]:
        return {"status": "ok", "model": self._gen.model_id}

    @post("/answer", responses=GUARD_REJECTIONS)
    async def answer(self, req: AnswerRequest) -> AnswerResponse:
        self.guard.require_text([(("body", "question"), req.question)])
        try:
            prompt = build_answer_messages(req.question, [Passage(p.id, p.contents) for p in req.passages])
        except ValueError as err:
            raise unprocessable(("question",), str(err)) from err
        [answer] = await self._generate_merged([prompt])
        return AnswerResponse(answer=answer)

    @post("/answer/batch", responses=GUARD_REJECTIONS)
    async def answer_batch(self, req: AnswerBatchRequest) -> AnswerBatchResponse:
        if len(req.questions) != len(req.passages):
            raise unprocessable(("passages",), f"{len(req.questions)} questions but {len(req.passages)} "
                                               "passage lists; send one list per question")
        self.guard.require_text([(("body", "questions", i), q) for i, q in enumerate(req.questions)])
        prompts = []
        for i, (q, ps) in enumerate(zip(req.questions, req.passages)):
            try:
                prompts.append(build_answer_messages(q, [Passage(p.id, p.contents) for p in ps]))
            except ValueError as err:
                raise unprocessable(("questions", i), str(err)) from err
        if not prompts:
            return AnswerBatchResponse(answers=[])
        return AnswerBatchResponse(answers=await self._generate_merged(prompts))


def build_app(args: GeneratorAppArgs | dict[str, Any]) -> "Application":
    """The bound app; replicas, CPUs/GPUs and batching come from `args.serve` (a vLLM replica's
    GPUs from `generator.tensor_parallel_size`).

    A relative cache path is resolved here, against the caller's directory, because replicas
    may run elsewhere.
    """
    a = GeneratorAppArgs.coerce(args).absolute()
    s = a.serve
    options = replica_options(s, "generator", a.name)
    # a vLLM engine spreads over generator.tensor_parallel_size GPUs: the replica reserves them all
    options["ray_actor_options"]["num_gpus"] = generator_replica_gpus(a.generator, s)
    deployment = serve_deployment(GeneratorServer,
                                  {"_generate_merged": Batching(s.max_batch_size, s.batch_wait_timeout_s)},
                                  **options)
    return deployment.bind(a)
