"""One way to call the frozen generator, whether it runs in this process or as a Serve app.

The rollout, the reward and the jobs only see `GeneratorClient`; unit tests wrap an in-process
generator, Ray code wraps a Serve handle. Remote calls get a timeout and a few retries with
exponential backoff (a replica can restart under a long training run); an error raised by the
deployment's own code is not retried. Each retry is logged as a warning and counted in
`failed_attempts`. The client pickles as its app name or handle, so it can be shipped to Ray Train
workers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from s3_ray.generation.base import Generator, Messages, validate_prompts
from s3_ray.generation.prompt import build_answer_messages
from s3_ray.retry import GiveUp, Retry, Transient
from s3_ray.types import Passage

_log = logging.getLogger(__name__)


class GeneratorCallError(RuntimeError):
    """The remote generator failed on every attempt, or its own code raised; the message names the app
    and the error."""


def _retryable() -> tuple[type[BaseException], ...]:
    import ray.exceptions

    return (ray.exceptions.RayError, TimeoutError, ConnectionError)


def _transient(err: BaseException) -> bool:
    """Whether another attempt may succeed.

    Delivery failures (a dead or restarting replica, a lost connection, a timeout) are transient.
    An exception raised by the deployment's own code reaches the caller as a `RayTaskError`; it
    would be raised again on every attempt, so it fails at once unless the cause is itself a
    timeout or connection error (e.g. a remote backend that did not answer).
    """
    import ray.exceptions

    if isinstance(err, ray.exceptions.RayTaskError):
        return isinstance(err, (TimeoutError, ConnectionError)) or isinstance(err.cause, (TimeoutError, ConnectionError))
    return True


class GeneratorClient:
    """Answers questions from contexts with a frozen generator (local object or Serve deployment)."""

    def __init__(self, *, generator: Generator | None = None, handle: Any = None, app_name: str | None = None,
                 timeout_s: float = 300.0, retries: int = 3, backoff_s: float = 0.5) -> None:
        if sum(x is not None for x in (generator, handle, app_name)) != 1:
            raise ValueError("give exactly one of generator, handle or app_name")
        if retries < 0 or timeout_s <= 0 or backoff_s < 0:
            raise ValueError("retries and backoff_s must be >= 0 and timeout_s > 0")
        self._generator = generator
        self._handle = handle
        self.app_name = app_name
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self._model_id: str | None = generator.model_id if generator is not None else None
        self.failed_attempts = 0  # transient failures seen (each one retried while retries last)

    # constructors -------------------------------------------------------------------------
    @classmethod
    def in_process(cls, generator: Generator) -> GeneratorClient:
        return cls(generator=generator)

    @classmethod
    def from_handle(cls, handle: Any, **kwargs: Any) -> GeneratorClient:
        return cls(handle=handle, **kwargs)

    @classmethod
    def from_app(cls, name: str = "generator", **kwargs: Any) -> GeneratorClient:
        """A client for a running Serve app; the handle is looked up on first use."""
        return cls(app_name=name, **kwargs)

    # pickling: a live handle is re-resolved from the app name on the other side -------------
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if self.app_name is not None:
            state["_handle"] = None
        return state

    def _get_handle(self) -> Any:
        if self._handle is None:
            from ray import serve

            self._handle = serve.get_app_handle(self.app_name)
        return self._handle

    @property
    def where(self) -> str:
        if self._generator is not None:
            return f"in-process {self._generator.model_id}"
        return f"Serve app {self.app_name!r}" if self.app_name else "Serve handle"

    # calls --------------------------------------------------------------------------------
    @property
    def model_id(self) -> str:
        """The generator's model id (asked once from the deployment when remote)."""
        if self._model_id is None:
            self._model_id = self._call_remote("model_id", ())
        return self._model_id

    def generate(self, prompts: list[Messages]) -> list[str]:
        """Completions for chat prompts, in order."""
        validate_prompts(prompts)
        if not prompts:
            return []
        if self._generator is not None:
            out = self._generator.generate(prompts)
        else:
            out = self._call_remote("generate", (prompts,))
        if len(out) != len(prompts):
            raise GeneratorCallError(f"{self.where}: {len(prompts)} prompts gave {len(out)} completions")
        return out

    def stats(self) -> dict[str, Any]:
        """The generator's counters (calls, tokens, response-cache hits and misses: whatever it keeps),
        from the in-process object or the deployment (one of its replicas); {} when it keeps none."""
        if self._generator is not None:
            fn = getattr(self._generator, "stats", None)
            return dict(fn()) if callable(fn) else {}
        return dict(self._call_remote("stats", ()))

    def answer(self, questions: Sequence[str], contexts: Sequence[Sequence[Passage]]) -> list[str]:
        """s3's answer prompt per (question, passages); an empty passage list is the zero-shot prompt."""
        if len(questions) != len(contexts):
            raise ValueError(f"{len(questions)} questions but {len(contexts)} contexts")
        return self.generate([build_answer_messages(q, list(c)) for q, c in zip(questions, contexts)])

    def answer_logprobs(self, questions: Sequence[str], contexts: Sequence[Sequence[Passage]],
                        golds: Sequence[Sequence[str]]) -> list[float]:
        """Per (question, passages), the generator's best mean token log-likelihood of a gold answer
        after s3's answer prompt (`s3_ray.generation.likelihood`)."""
        if not (len(questions) == len(contexts) == len(golds)):
            raise ValueError(f"{len(questions)} questions, {len(contexts)} contexts and {len(golds)} gold lists")
        if not questions:
            return []
        prompts = [build_answer_messages(q, list(c)) for q, c in zip(questions, contexts)]
        answers = [list(g) for g in golds]
        if self._generator is not None:
            fn = getattr(self._generator, "answer_logprobs", None)
            if not callable(fn):
                from s3_ray.generation.likelihood import AnswerLogprobUnsupported

                raise AnswerLogprobUnsupported(f"{self.where} cannot score gold answers (no answer_logprobs)")
            out = fn(prompts, answers)
        else:
            out = self._call_remote("answer_logprobs", (prompts, answers))
        if len(out) != len(prompts):
            raise GeneratorCallError(f"{self.where}: {len(prompts)} prompts gave {len(out)} log-likelihoods")
        return [float(v) for v in out]

    async def agenerate(self, prompts: list[Messages]) -> list[str]:
        """`generate` for async callers (e.g. inside another deployment): never blocks the loop."""
        validate_prompts(prompts)
        if not prompts:
            return []
        if self._generator is not None:
            return await asyncio.to_thread(self._generator.generate, prompts)
        errors = (*_retryable(), asyncio.TimeoutError)

        async def attempt() -> list[str]:
            try:
                return await asyncio.wait_for(self._get_handle().generate.remote(prompts), self.timeout_s)
            except errors as err:
                raise self._classify("generate", err) from err

        return await Retry(self.retries, self.backoff_s).acall(
            attempt, what=f"{self.where}: generate", give_up=self._give_up("generate"), log=_log,
            on_failure=self._count_failure)

    async def aanswer(self, questions: Sequence[str], contexts: Sequence[Sequence[Passage]]) -> list[str]:
        if len(questions) != len(contexts):
            raise ValueError(f"{len(questions)} questions but {len(contexts)} contexts")
        return await self.agenerate([build_answer_messages(q, list(c)) for q, c in zip(questions, contexts)])

    def _call_remote(self, method: str, args: tuple[Any, ...]) -> Any:
        errors = _retryable()

        def attempt() -> Any:
            try:
                return getattr(self._get_handle(), method).remote(*args).result(timeout_s=self.timeout_s)
            except errors as err:
                raise self._classify(method, err) from err

        return Retry(self.retries, self.backoff_s).call(
            attempt, what=f"{self.where}: {method}", give_up=self._give_up(method), log=_log,
            on_failure=self._count_failure)

    # the retry policy's parts -----------------------------------------------------------------
    def _classify(self, method: str, err: BaseException) -> Exception:
        """A transient failure to retry, or the deployment's own error, which fails at once."""
        if not _transient(err):
            return GeneratorCallError(f"{self.where}: {method} failed in the deployment: {err!r}")
        return Transient(repr(err))

    def _count_failure(self, will_retry: bool) -> None:
        self.failed_attempts += 1

    def _give_up(self, method: str) -> GiveUp:
        def error(attempts: int, err: Transient) -> GeneratorCallError:
            return GeneratorCallError(f"{self.where}: {method} failed after {attempts} attempts: {err.cause}")

        return error
