"""One synchronous retrieval client over three transports: in-process, Serve handle, HTTP.

The rollout code calls `client.search(queries, k)` and does not care where the index lives.
Ray Train workers receive the client by pickling, so handles and HTTP sessions are created
lazily on first use and dropped when pickled. Transient failures (connection errors, 5xx,
replica death, timeouts) are retried with exponential backoff, each retry logged as a warning and
counted in `failed_attempts`; anything else fails at once.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from s3_ray.retrieval.base import Retriever
from s3_ray.retry import Retry, Transient
from s3_ray.types import SearchHit

_log = logging.getLogger(__name__)


class RetrieverError(RuntimeError):
    """Retrieval failed for good (a rejected request, or retries exhausted)."""


class _InProcess:
    def __init__(self, retriever: Retriever) -> None:
        self.retriever = retriever

    def call(self, queries: list[str], k: int, timeout_s: float) -> list[list[SearchHit]]:
        return self.retriever.search(queries, k)

    @property
    def where(self) -> str:
        return f"in-process {type(self.retriever).__name__}"


class _Handle:
    """A Serve DeploymentHandle, given directly or looked up by app name on first use."""

    def __init__(self, handle: Any = None, app_name: str | None = None) -> None:
        self.handle = handle
        self.app_name = app_name

    def __getstate__(self) -> dict[str, Any]:
        # A looked-up handle is rebuilt in the receiving process; a given one travels as is.
        return {"handle": self.handle if self.app_name is None else None, "app_name": self.app_name}

    def call(self, queries: list[str], k: int, timeout_s: float) -> list[list[SearchHit]]:
        import ray.exceptions as rex
        from ray import serve
        from ray.serve import exceptions as sex

        transient = (rex.RayActorError, rex.ActorUnavailableError, rex.GetTimeoutError, TimeoutError,
                     sex.BackPressureError, sex.DeploymentUnavailableError, sex.ReplicaUnavailableError)
        try:
            if self.handle is None:
                self.handle = serve.get_app_handle(self.app_name)
            return self.handle.search.remote(queries, k).result(timeout_s=timeout_s)
        except transient as err:
            if self.app_name is not None:
                self.handle = None
            raise Transient(f"{type(err).__name__}: {err}") from err

    @property
    def where(self) -> str:
        return f"Serve app {self.app_name!r}" if self.app_name else "Serve handle"


class _Http:
    """A Search-R1/s3 style `POST /retrieve` endpoint, optionally behind bearer-token auth.

    Only the *name* of the token's environment variable is stored (and pickled to workers); the
    token is read when a request is sent, so it never lands in a config, a log or a pickle.
    """

    def __init__(self, url: str, token_env: str | None = None) -> None:
        self.url = url
        self.token_env = token_env
        self._client: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "token_env": self.token_env, "_client": None}

    def _headers(self) -> dict[str, str]:
        if self.token_env is None:
            return {}
        token = os.environ.get(self.token_env, "")
        if not token:
            raise RetrieverError(f"environment variable {self.token_env} (the retriever's bearer token) is not set")
        return {"Authorization": f"Bearer {token}"}

    def call(self, queries: list[str], k: int, timeout_s: float) -> list[list[SearchHit]]:
        import httpx

        from s3_ray.retrieval.schema import json_to_hits

        if self._client is None:
            self._client = httpx.Client()
        try:
            resp = self._client.post(self.url, json={"queries": queries, "topk": k, "return_scores": True},
                                     headers=self._headers(), timeout=timeout_s)
        except httpx.TransportError as err:
            raise Transient(f"{type(err).__name__}: {err}") from err
        if resp.status_code >= 500:
            raise Transient(f"HTTP {resp.status_code}: {resp.text[:200]}")
        if resp.status_code >= 400:
            raise RetrieverError(f"{self.url} rejected the request: HTTP {resp.status_code}: {resp.text[:500]}")
        try:
            return json_to_hits(resp.json(), n_queries=len(queries))
        except ValueError as err:
            raise RetrieverError(f"{self.url} sent a malformed response: {err}") from None

    @property
    def where(self) -> str:
        return self.url


class RetrieverClient:
    """`search(queries, k) -> list[list[SearchHit]]` with retries, over any transport."""

    def __init__(self, backend: _InProcess | _Handle | _Http, *, timeout_s: float = 30.0, retries: int = 3,
                 backoff_s: float = 0.5) -> None:
        if retries < 0 or timeout_s <= 0 or backoff_s < 0:
            raise ValueError("retries must be >= 0, timeout_s > 0 and backoff_s >= 0")
        self._backend = backend
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.failed_attempts = 0  # transient failures seen (each one retried while retries last)

    @classmethod
    def in_process(cls, retriever: Retriever, **kw: Any) -> RetrieverClient:
        return cls(_InProcess(retriever), **kw)

    @classmethod
    def from_handle(cls, handle: Any, **kw: Any) -> RetrieverClient:
        return cls(_Handle(handle=handle), **kw)

    @classmethod
    def from_app(cls, app_name: str = "retriever", **kw: Any) -> RetrieverClient:
        return cls(_Handle(app_name=app_name), **kw)

    @classmethod
    def from_url(cls, url: str = "http://127.0.0.1:8000/retrieve", token_env: str | None = None,
                 **kw: Any) -> RetrieverClient:
        """An HTTP endpoint; `token_env` names the environment variable holding its bearer token."""
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"retriever url must start with http:// or https://, got {url!r}")
        return cls(_Http(url, token_env), **kw)

    def search(self, queries: list[str], k: int) -> list[list[SearchHit]]:
        """Retrieve up to k hits per query, retrying transient failures."""
        if isinstance(queries, str) or not all(isinstance(q, str) for q in queries):
            raise TypeError("queries must be a list of strings")
        if not queries:
            return []
        backend, where = self._backend, f"retrieval from {self.where}"

        def count(will_retry: bool) -> None:
            self.failed_attempts += 1

        def give_up(attempts: int, err: Transient) -> RetrieverError:
            return RetrieverError(f"{where} failed after {attempts} attempts: {err.cause}")

        return Retry(self.retries, self.backoff_s).call(lambda: backend.call(list(queries), int(k), self.timeout_s),
                                                        what=where, give_up=give_up, log=_log, on_failure=count)

    @property
    def where(self) -> str:
        """What the client calls: an in-process retriever, a Serve app or handle, or a URL."""
        return self._backend.where

    def __repr__(self) -> str:
        return f"RetrieverClient({self.where})"
