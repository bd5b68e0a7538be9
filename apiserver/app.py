"""The aiohttp application: middlewares, route registration, error → HTTP mapping.

Every route exists with and without the ``/v{version}`` prefix (moby's createMux); versions
outside [MIN_API_VERSION, API_VERSION] are refused with moby's texts. Handlers return responses
or raise :class:`protos.errors.BerthError`; one middleware turns errors into HTTP
(``{"message": …}``, exact ``application/json``), and only ≥500 is logged as an error.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web

from apiserver import API_VERSION, MIN_API_VERSION, SERVER_HEADER
from apiserver.httputil import error_response
from apiserver.metrics import Metrics
from apiserver.routing import add_versioned, new_application
from protos.errors import BerthError, NotModified

log = structlog.get_logger()

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
METRICS: web.AppKey[Metrics] = web.AppKey("metrics", Metrics)


def _version_tuple(v: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in v.split("."))
    except ValueError:
        return (0,)


def add_route(app: web.Application, method: str, path: str, handler: Handler) -> None:
    """Register ``path`` and ``/v{version}path`` for ``method``."""
    add_versioned(app.router, method, path, handler)


_PREPARED: web.RequestKey[bool] = web.RequestKey("berth.prepared", bool)


@web.middleware
async def _engine(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every request's frame, in one middleware (each layer costs every request): its id in the
    log context, the API version check, Docker-style errors, the access log and metrics."""
    request_id = request.headers.get("X-Request-Id") or secrets.token_hex(6)
    structlog.contextvars.bind_contextvars(request_id=request_id)
    start = time.perf_counter()
    status = 500
    try:
        resp = _version_refused(request.match_info.get("api_version"))
        if resp is None:
            try:
                resp = await handler(request)
            except Exception as exc:
                if request.get(_PREPARED):
                    # Headers already went out: a second response would corrupt the stream. Log and
                    # let aiohttp drop the connection; streaming handlers report in-stream errors.
                    if not isinstance(exc, ConnectionResetError):
                        log.error("stream_failed", error=repr(exc), exc_info=exc)
                    raise
                resp = _error_to_response(exc)
        status = resp.status
        return resp
    finally:
        ms = round((time.perf_counter() - start) * 1000, 2)
        route = request.match_info.route.resource.canonical if request.match_info.route.resource else "-"
        request.app[METRICS].observe_request(request.method, route, status, ms / 1000)
        log.debug("api_request", method=request.method, path=request.path, status=status, ms=ms)  # dockerd: debug too
        structlog.contextvars.unbind_contextvars("request_id")


def _version_refused(version: str | None) -> web.StreamResponse | None:
    """dockerd's answer to a ``/v{version}/`` it does not serve, or None."""
    if version is None:
        return None
    requested = _version_tuple(version)
    if requested < _version_tuple(MIN_API_VERSION):
        return error_response(
            400, f"client version {version} is too old. Minimum supported API version is "
                 f"{MIN_API_VERSION}, please upgrade your client to a newer version")
    if requested > _version_tuple(API_VERSION):
        return error_response(
            400, f"client version {version} is too new. Maximum supported API version is {API_VERSION}")
    return None


def _error_to_response(exc: Exception) -> web.StreamResponse:
    if isinstance(exc, NotModified):
        return web.Response(status=304)
    if isinstance(exc, BerthError):
        if exc.http_status >= 500:
            log.error("request_failed", error=exc.message, error_class=type(exc).__name__)
        return error_response(exc.http_status, exc.message)
    if isinstance(exc, web.HTTPNotFound | web.HTTPMethodNotAllowed):
        return error_response(404, "page not found")
    if isinstance(exc, web.HTTPException):
        return error_response(exc.status, exc.reason)
    if isinstance(exc, ConnectionResetError):
        raise exc
    log.error("request_crashed", error=repr(exc), exc_info=exc)
    return error_response(500, f"internal error: {exc}")


async def _engine_headers(request: web.Request, response: web.StreamResponse) -> None:
    request[_PREPARED] = True
    response.headers["Api-Version"] = API_VERSION
    response.headers["Ostype"] = "linux"
    response.headers["Docker-Experimental"] = "false"
    response.headers["Server"] = SERVER_HEADER


async def _not_found(request: web.Request) -> web.StreamResponse:
    return error_response(404, "page not found")


def build_app(register: list[Callable[[web.Application], None]], **settings: Any) -> web.Application:
    """An application with the Engine API middlewares; ``register`` callbacks add the routers."""
    app = new_application(middlewares=[_engine], client_max_size=0, **settings)
    app[METRICS] = Metrics()
    app.on_response_prepare.append(_engine_headers)
    for reg in register:
        reg(app)
    app.router.add_route("*", "/{tail:.*}", _not_found)
    return app
