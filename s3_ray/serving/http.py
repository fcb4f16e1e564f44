"""The HTTP surface the apps share: routes declared on a server class, one FastAPI app built over
one server object, and FastAPI-shaped 422 errors.

A server class marks its handlers with `@get(path)` / `@post(path)`; `build_api(server, info,
guard)` registers the *bound* handlers on a fresh FastAPI app and installs the request guard. The
same function builds the app a Serve replica answers with (see `s3_ray.serving.deployment`) and
the app a test drives in-process (`TestClient(server.asgi_app())`), so both run the same code.

No `from __future__ import annotations` in modules whose handlers FastAPI inspects: it must see
the real request-model and `Request` annotations.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, Union

from fastapi import FastAPI, HTTPException

from s3_ray.serving.guard import Guard, Loc

F = TypeVar("F", bound=Callable[..., Any])
_ROUTE_ATTR = "__s3ray_route__"

# The guard's rejections, for each route's OpenAPI `responses`.
GUARD_REJECTIONS: dict[Union[int, str], dict[str, Any]] = {
    401: {"description": "bearer token missing or wrong"},
    413: {"description": "body larger than serve.max_request_bytes"},
    422: {"description": "invalid request; `detail[].loc` names the field"},
}


@dataclass(frozen=True)
class Route:
    """Where a handler answers; `options` go to `FastAPI.add_api_route` (response_model, responses, ...)."""

    verb: Literal["GET", "POST"]
    path: str
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ApiInfo:
    """The app's OpenAPI title block."""

    title: str
    description: str = ""
    version: str = "0.1.0"


def _route(verb: Literal["GET", "POST"], path: str, options: dict[str, Any]) -> Callable[[F], F]:
    if not path.startswith("/"):
        raise ValueError(f"route path {path!r} must start with '/'")

    def mark(handler: F) -> F:
        setattr(handler, _ROUTE_ATTR, Route(verb, path, options))
        return handler

    return mark


def get(path: str, **options: Any) -> Callable[[F], F]:
    """Mark a server method as the `GET path` handler."""
    return _route("GET", path, options)


def post(path: str, **options: Any) -> Callable[[F], F]:
    """Mark a server method as the `POST path` handler."""
    return _route("POST", path, options)


def routes_of(cls: type) -> dict[str, Route]:
    """Method name -> route of every marked handler of `cls` (a subclass's override wins).

    >>> class Server:
    ...     @get("/health")
    ...     async def health(self) -> dict: ...
    >>> routes_of(Server)
    {'health': Route(verb='GET', path='/health', options={})}
    """
    found: dict[str, Route] = {}
    for klass in reversed(cls.__mro__):
        for name, attr in vars(klass).items():
            route = getattr(attr, _ROUTE_ATTR, None)
            if isinstance(route, Route):
                found[name] = route
    return found


def build_api(server: object, info: ApiInfo, guard: Guard) -> FastAPI:
    """A new FastAPI app answering with `server`'s marked handlers, behind `guard`."""
    routes = routes_of(type(server))
    if not routes:
        raise TypeError(f"{type(server).__name__} marks no HTTP handler (@get / @post)")
    app = FastAPI(title=info.title, description=info.description, version=info.version)
    for name, route in routes.items():
        app.add_api_route(route.path, getattr(server, name), methods=[route.verb], **route.options)
    return guard.install(app)


def unprocessable(loc: Loc, message: str) -> HTTPException:
    """A 422 shaped like FastAPI's own validation errors (`loc` below "body"), so clients parse one
    format.

    >>> unprocessable(("questions", 2), "too long").detail
    [{'loc': ['body', 'questions', 2], 'msg': 'too long', 'type': 'value_error'}]
    """
    return HTTPException(422, detail=[{"loc": ["body", *loc], "msg": message, "type": "value_error"}])
