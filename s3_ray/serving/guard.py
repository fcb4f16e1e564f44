"""The request guard the HTTP apps share: optional bearer-token auth, a request-body size limit
and a per-field text-length limit.

Auth and the body limit are a small pure-ASGI middleware (`GuardMiddleware`), so they run
before FastAPI reads or parses anything: a request without the token, or with a body over the
limit, costs the replica no JSON parsing and no model call. Text limits need the parsed request,
so each app calls `text_errors` (through `Guard.check_text`) on its own fields and answers 422.

Choices:
* `/health` stays open (`OPEN_PATHS`) so load balancers and Serve operators can probe a replica
  without the secret; it reports status and sizes, never request data. Everything else, the
  OpenAPI schema and `/docs` included, needs the token when auth is on.
* The token is read from the environment variable named by `serve.auth_token_env` when the
  replica starts; it is never logged, echoed in a response, or shown by `repr`.
* Every rejection is JSON `{"detail": ...}` naming what was wrong (header, body, field), and
  is rendered ASCII-escaped (`AsciiJSONResponse`): JSON may carry unpaired surrogates
  (`"\\ud800"`), which a UTF-8 encoder rejects, so echoing one back must not become a 500.
"""

from __future__ import annotations

import hmac
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable, MutableMapping, Union

from fastapi import HTTPException as FastAPIHTTPException
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

if TYPE_CHECKING:
    from s3_ray.config import ServeConfig

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Loc = tuple[Union[str, int], ...]

OPEN_PATHS = frozenset({"/health"})
MIN_TOKEN_CHARS = 16
_WWW_AUTHENTICATE = (b"www-authenticate", b'Bearer realm="s3-ray"')
_AUTH_DETAIL = "missing or invalid bearer token: send the header 'Authorization: Bearer <token>'"


class GuardConfigError(RuntimeError):
    """The guard cannot start: its token variable is missing, empty or unusable."""


def read_token(env_name: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """The bearer token from the variable `env_name` (None: auth off). Errors name the variable,
    never the value.

    >>> read_token(None) is None
    True
    >>> read_token("S3RAY_TOKEN", {"S3RAY_TOKEN": "x" * 20}) == "x" * 20
    True
    >>> read_token("S3RAY_TOKEN", {})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    s3_ray.serving.guard.GuardConfigError: serve.auth_token_env is 'S3RAY_TOKEN' but $S3RAY_TOKEN is unset or empty...
    """
    if env_name is None:
        return None
    value = (os.environ if environ is None else environ).get(env_name, "")
    if not value:
        raise GuardConfigError(f"serve.auth_token_env is {env_name!r} but ${env_name} is unset or empty in this "
                               "process; export it where Ray starts (replicas inherit it), or leave "
                               "auth_token_env unset to turn auth off")
    if not all("!" <= c <= "~" for c in value):
        raise GuardConfigError(f"${env_name} must be printable ASCII without spaces (it travels in an HTTP header)")
    if len(value) < MIN_TOKEN_CHARS:
        raise GuardConfigError(f"${env_name} holds {len(value)} characters; use at least {MIN_TOKEN_CHARS}, e.g. "
                               "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`")
    return value


def _field_name(loc: Loc) -> str:
    """`("body", "queries", 2)` -> `queries[2]`.

    >>> _field_name(("body", "queries", 2))
    'queries[2]'
    """
    parts = [p for p in loc if p != "body"] or ["body"]
    name = str(parts[0])
    for p in parts[1:]:
        name += f"[{p}]" if isinstance(p, int) else f".{p}"
    return name


def text_errors(fields: Iterable[tuple[Loc, str]], limit: int) -> list[dict[str, Any]]:
    """FastAPI-shaped 422 entries for texts longer than `limit` characters, or holding unpaired
    UTF-16 surrogates (valid JSON escapes that no tokenizer or UTF-8 response can carry).

    >>> text_errors([(("body", "question"), "abcde")], limit=4)[0]["msg"]
    'question is 5 characters; the limit is 4 (max_text_chars)'
    >>> text_errors([(("queries", 1), "ok"), (("queries", 2), "\\ud800")], limit=4)[0]["loc"]
    ['queries', 2]
    >>> text_errors([(("body", "question"), "fine")], limit=4)
    []
    """
    errors: list[dict[str, Any]] = []
    for loc, value in fields:
        name = _field_name(loc)
        if len(value) > limit:
            errors.append({"loc": list(loc), "type": "string_too_long", "ctx": {"max_length": limit},
                           "msg": f"{name} is {len(value)} characters; the limit is {limit} (max_text_chars)"})
        elif any("\ud800" <= c <= "\udfff" for c in value):
            errors.append({"loc": list(loc), "type": "string_unicode",
                           "msg": f"{name} contains an unpaired UTF-16 surrogate; send valid Unicode"})
    return errors


class AsciiJSONResponse(JSONResponse):
    """JSON with non-ASCII escaped, so any string a client sent (even a lone surrogate) can be
    echoed in an error without failing to encode."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":"),
                          default=str).encode("ascii")


async def validation_error_response(_request: Any, exc: RequestValidationError) -> AsciiJSONResponse:
    """FastAPI's own 422 body (`detail[].loc` names the field), rendered ASCII-safe."""
    return AsciiJSONResponse({"detail": jsonable_encoder(exc.errors())}, status_code=422)


class BodyTooLarge(HTTPException):
    """Raised from `receive` once a streamed body passes the limit. Being an HTTPException,
    FastAPI's body parsing re-raises it and its exception middleware renders the JSON 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body exceeds {limit} bytes (max_request_bytes)")


@dataclass(frozen=True)
class Guard:
    """One app's guard settings; `token` None means auth is off. `repr` never shows the token."""

    token: str | None = field(default=None, repr=False)
    max_request_bytes: int = 1_000_000
    max_text_chars: int = 4096
    open_paths: frozenset[str] = OPEN_PATHS

    def __post_init__(self) -> None:
        if self.max_request_bytes < 1:
            raise ValueError(f"max_request_bytes must be >= 1, got {self.max_request_bytes}")
        if self.max_text_chars < 1:
            raise ValueError(f"max_text_chars must be >= 1, got {self.max_text_chars}")

    @classmethod
    def from_env(cls, auth_token_env: str | None, max_request_bytes: int, max_text_chars: int,
                 environ: Mapping[str, str] | None = None) -> Guard:
        """Read the token now (call it where the replica starts, so a missing one fails the start)."""
        return cls(read_token(auth_token_env, environ), max_request_bytes, max_text_chars)

    @classmethod
    def from_config(cls, serve: ServeConfig, environ: Mapping[str, str] | None = None) -> Guard:
        """The guard `serve.auth_token_env`, `serve.max_request_bytes` and `serve.max_text_chars` ask for."""
        return cls.from_env(serve.auth_token_env, serve.max_request_bytes, serve.max_text_chars, environ)

    @property
    def auth_enabled(self) -> bool:
        return self.token is not None

    def install(self, app: Any) -> Any:
        """Add the middleware and the ASCII-safe 422 handler to a FastAPI app that has not served
        yet; returns the app."""
        app.add_middleware(GuardMiddleware, guard=self)
        app.add_exception_handler(RequestValidationError, validation_error_response)
        return app

    def check_text(self, fields: Iterable[tuple[Loc, str]]) -> list[dict[str, Any]]:
        return text_errors(fields, self.max_text_chars)

    def require_text(self, fields: Iterable[tuple[Loc, str]]) -> None:
        """Raise a 422 listing every text over `max_text_chars` (or holding a lone surrogate)."""
        if errors := self.check_text(fields):
            raise FastAPIHTTPException(422, errors)


def _route_path(scope: Scope) -> str:
    """The path below the app's mount point (Serve passes its route prefix as `root_path`)."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root):len(root) + 1] in ("", "/"):
        return path[len(root):] or "/"
    return path


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value
    return None


def _authorized(scope: Scope, token: bytes) -> bool:
    value = _header(scope, b"authorization")
    if value is None:
        return False
    scheme, _, given = value.strip().partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), token)


async def _send_json(send: Send, status: int, detail: str,
                     headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


class GuardMiddleware:
    """Pure ASGI: 401 without the bearer token (except `open_paths`), 413 for a body over the
    limit by Content-Length, or by the bytes actually received for chunked bodies."""

    def __init__(self, app: ASGIApp, guard: Guard) -> None:
        self.app = app
        self.guard = guard
        self._token = guard.token.encode() if guard.token is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.guard.max_request_bytes
        if self._token is not None and _route_path(scope) not in self.guard.open_paths \
                and not _authorized(scope, self._token):
            await _send_json(send, 401, _AUTH_DETAIL, (_WWW_AUTHENTICATE,))
            return
        declared = _header(scope, b"content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                await _send_json(send, 400, "Content-Length header is not a non-negative integer")
                return
            if int(declared) > limit:
                await _send_json(send, 413, f"request body of {int(declared)} bytes exceeds {limit} bytes "
                                            "(max_request_bytes)")
                return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracked_send)
        except BodyTooLarge as err:
            if started:
                raise
            await _send_json(send, 413, str(err.detail))
