"""Ray Serve app for the frozen generator: a thin class over a (cached) TransformersGenerator.

Handle callers use `generate(prompts)`; concurrent calls are merged by `@serve.batch` into one
batched forward pass, which is where the throughput on CPU comes from. HTTP callers get
`POST /answer`, `POST /answer/batch` and `GET /health`, behind the shared guard
(`s3_ray.serving`): bearer token when `serve.auth_token_env` is set, `serve.max_request_bytes`,
and `serve.max_text_chars` per question (docs/security.md).

    app = build_app(GeneratorAppArgs.from_config(cfg))
    serve.run(app, name="generator", route_prefix="/generator")
"""

# No `from __future__ import annotations`: Serve's ingress wrapper needs the request models
# as real objects, or FastAPI reads them as query parameters.
import asyncio
import os
from collections import Counter
from typing import Any, Union

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from s3_ray.config import GeneratorConfig, S3Config, ServeConfig
from s3_ray.generation import Messages, build_generator, validate_prompts
from s3_ray.generation.prompt import build_answer_messages
from s3_ray.serving import Guard
from s3_ray.types import Passage

api = FastAPI(title="s3-ray generator")


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


_REJECTIONS: dict[Union[int, str], dict[str, Any]] = {
    401: {"description": "bearer token missing or wrong"},
    413: {"description": "body larger than serve.max_request_bytes"},
    422: {"description": "invalid request; `detail[].loc` names the field"}}


def _unprocessable(loc: tuple[Union[str, int], ...], message: str) -> HTTPException:
    """A 422 shaped like FastAPI's own validation errors, so clients parse one format."""
    return HTTPException(422, detail=[{"loc": ["body", *loc], "msg": message, "type": "value_error"}])


class GeneratorAppArgs(BaseModel):
    """What `build_app` needs: the generator section and the Serve section of `S3Config`."""

    model_config = ConfigDict(extra="forbid")
    generator: GeneratorConfig = GeneratorConfig()
    serve: ServeConfig = ServeConfig()
    name: str = Field("GeneratorDeployment", description="Deployment name inside the app.")

    @classmethod
    def from_config(cls, cfg: S3Config) -> "GeneratorAppArgs":
        return cls(generator=cfg.generator, serve=cfg.serve)


@serve.deployment
@serve.ingress(api)
class GeneratorDeployment:
    """One replica = one model copy; requests that arrive together share one generate call."""

    def __init__(self, generator: dict[str, Any], max_batch_size: int, batch_wait_timeout_s: float,
                 base_dir: str, guard: dict[str, Any]) -> None:
        import torch

        self._guard = Guard.from_env(**guard)  # first: a missing token fails before the model loads
        cfg = GeneratorConfig.model_validate(generator)
        torch.set_num_threads(cfg.num_threads)
        self._gen = build_generator(cfg, base_dir=base_dir)
        self._batched.set_max_batch_size(max_batch_size)
        self._batched.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self._batch_sizes: Counter[int] = Counter()  # requests per batched call -> how often

    # handle API ---------------------------------------------------------------------------
    async def generate(self, prompts: list[Messages]) -> list[str]:
        """Completions for one caller's prompts (validated here, so one bad caller fails alone)."""
        validate_prompts(prompts)
        if not prompts:
            return []
        return await self._batched(prompts)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def _batched(self, requests: list[list[Messages]]) -> list[list[str]]:
        self._batch_sizes[len(requests)] += 1
        flat = [m for prompts in requests for m in prompts]
        answers = await asyncio.to_thread(self._gen.generate, flat)
        out: list[list[str]] = []
        pos = 0
        for prompts in requests:
            out.append(answers[pos : pos + len(prompts)])
            pos += len(prompts)
        return out

    def model_id(self) -> str:
        return self._gen.model_id

    def stats(self) -> dict[str, Any]:
        """Generator counters plus how many caller requests each batched call merged."""
        gen_stats = getattr(self._gen, "stats", None)
        out: dict[str, Any] = dict(gen_stats()) if callable(gen_stats) else {}
        out["requests_per_batch"] = dict(self._batch_sizes)
        out["max_requests_per_batch"] = max(self._batch_sizes, default=0)
        return out

    # HTTP API -----------------------------------------------------------------------------
    def __serve_build_asgi_app__(self) -> Any:
        """Serve calls this once, after `__init__`, for the replica's own copy of `api`: the
        guard middleware goes on here because its token is only known inside the replica."""
        return self._guard.install(self.app)

    @api.get("/health")
    async def health(self) -> dict[str, str]:
        return {"status": "ok", "model": self._gen.model_id}

    @api.post("/answer", responses=_REJECTIONS)
    async def answer(self, req: AnswerRequest) -> AnswerResponse:
        if errors := self._guard.check_text([(("body", "question"), req.question)]):
            raise HTTPException(422, errors)
        try:
            prompt = build_answer_messages(req.question, [Passage(p.id, p.contents) for p in req.passages])
        except ValueError as err:
            raise _unprocessable(("question",), str(err)) from err
        answers = await self._batched([prompt])
        return AnswerResponse(answer=answers[0])

    @api.post("/answer/batch", responses=_REJECTIONS)
    async def answer_batch(self, req: AnswerBatchRequest) -> AnswerBatchResponse:
        if len(req.questions) != len(req.passages):
            raise _unprocessable(("passages",), f"{len(req.questions)} questions but {len(req.passages)} "
                                                "passage lists; send one list per question")
        if errors := self._guard.check_text([(("body", "questions", i), q) for i, q in enumerate(req.questions)]):
            raise HTTPException(422, errors)
        prompts = []
        for i, (q, ps) in enumerate(zip(req.questions, req.passages)):
            try:
                prompts.append(build_answer_messages(q, [Passage(p.id, p.contents) for p in ps]))
            except ValueError as err:
                raise _unprocessable(("questions", i), str(err)) from err
        if not prompts:
            return AnswerBatchResponse(answers=[])
        return AnswerBatchResponse(answers=await self._batched(prompts))


def build_app(args: GeneratorAppArgs | dict[str, Any]) -> serve.Application:
    """Bind the generator app from typed args (or their dict form, as a Serve config file gives).

    A relative cache path is resolved here, against the caller's directory, because replicas
    may run elsewhere.
    """
    a = args if isinstance(args, GeneratorAppArgs) else GeneratorAppArgs.model_validate(args)
    s = a.serve
    return GeneratorDeployment.options(
        name=a.name,
        num_replicas=s.generator_replicas,
        max_ongoing_requests=s.max_ongoing_requests,
        ray_actor_options={"num_cpus": s.generator_cpus, "num_gpus": s.generator_gpus},
    ).bind(a.generator.model_dump(), s.max_batch_size, s.batch_wait_timeout_s, os.getcwd(),
           {"auth_token_env": s.auth_token_env, "max_request_bytes": s.max_request_bytes,
            "max_text_chars": s.max_text_chars})
