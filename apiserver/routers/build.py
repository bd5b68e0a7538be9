"""``POST /build``: the classic builder's protocol (what the docker CLI uses without BuildKit and
what docker-py uses), streaming Docker's JSON build messages."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web

from apiserver.app import add_route
from apiserver.build.context import BuildContext
from apiserver.build.engine import Builder, BuildFailed, BuildOptions
from apiserver.httputil import bool_value, start_json_stream, write_json_line
from protos.errors import BerthError, InvalidArgument
from snapshotter.api import RegistryAuth

BuilderFactory = Callable[[], Builder]
BUILDER: web.AppKey[BuilderFactory] = web.AppKey("builder", BuilderFactory)  # type: ignore[arg-type]
CONTEXT_LIMIT: web.AppKey[int] = web.AppKey("build_context_limit", int)

_UNSUPPORTED = {"squash": "--squash", "remote": "a remote build context", "outputs": "--output"}


def _json_param(request: web.Request, name: str) -> dict[str, Any]:
    raw = request.query.get(name, "")
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        raise InvalidArgument(f"invalid JSON in {name}") from None
    if not isinstance(value, dict):
        raise InvalidArgument(f"{name} must be a JSON object")
    return value


def _registry_config(header: str | None) -> dict[str, RegistryAuth]:
    """``X-Registry-Config``: base64url JSON map of registry → auth config."""
    if not header:
        return {}
    try:
        doc = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)) or b"{}")
    except (binascii.Error, ValueError):
        raise InvalidArgument("invalid X-Registry-Config header") from None
    out = {}
    for registry, cfg in (doc or {}).items():
        if isinstance(cfg, dict):
            out[registry] = RegistryAuth(username=str(cfg.get("username") or ""),
                                         password=str(cfg.get("password") or ""),
                                         identity_token=str(cfg.get("identitytoken") or ""),
                                         registry_token=str(cfg.get("registrytoken") or ""))
    return out


def build_options(request: web.Request) -> BuildOptions:
    q = request.query
    if q.get("version") == "2":
        raise InvalidArgument("BuildKit (version=2) is not supported by Berth; use the classic builder "
                              "(DOCKER_BUILDKIT=0)")
    for key, what in _UNSUPPORTED.items():
        if q.get(key) and q.get(key) not in ("0", "false", "False"):
            raise InvalidArgument(f"{what} is not supported by Berth's builder")
    build_args = _json_param(request, "buildargs")
    labels = _json_param(request, "labels")
    return BuildOptions(
        tags=tuple(q.getall("t", [])),
        dockerfile=q.get("dockerfile") or "Dockerfile",
        build_args={k: (None if v is None else str(v)) for k, v in build_args.items()},
        target=q.get("target", ""),
        labels={k: str(v) for k, v in labels.items()},
        no_cache=bool_value(request, "nocache"),
        pull=bool_value(request, "pull"),
        quiet=bool_value(request, "q"),
        platform=q.get("platform", ""),
        auth=_registry_config(request.headers.get("X-Registry-Config")),
        network=_network(q.get("networkmode", "")),
    )


def _network(mode: str) -> str:
    if mode in ("", "default", "bridge"):
        return "default"
    if mode in ("host", "none"):
        return mode
    raise InvalidArgument(f"network mode {mode!r} is not supported for builds (use default, host or none)")


async def _body(request: web.Request) -> AsyncIterator[bytes]:
    async for chunk in request.content.iter_chunked(1024 * 1024):
        yield chunk


async def post_build(request: web.Request) -> web.StreamResponse:
    options = build_options(request)
    ctx = await BuildContext.receive(_body(request), max_size=request.app[CONTEXT_LIMIT])
    try:
        builder = request.app[BUILDER]()
        messages = aiter(builder.run(ctx, options))
        first = await anext(messages, None)  # errors before any output are HTTP errors
        resp = await start_json_stream(request)
        try:
            while first is not None:
                if first.get("stream") != "":
                    await write_json_line(resp, first)
                first = await anext(messages, None)
        except BuildFailed as err:
            await write_json_line(resp, {"errorDetail": {"code": err.code, "message": err.message},
                                         "error": err.message})
        except BerthError as err:
            await write_json_line(resp, {"errorDetail": {"message": err.message}, "error": err.message})
        await resp.write_eof()
        return resp
    finally:
        ctx.close()


def register(app: web.Application) -> None:
    add_route(app, "POST", "/build", post_build)
