"""Routes for what a running container does: pause/unpause, top, stats, rename, update, and
container prune. Parse → call the container backend → write."""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web

from apiserver.app import add_route
from apiserver.containers import stats as stats_mod
from apiserver.containers.prune import ACCEPTED as PRUNE_FILTERS
from apiserver.httputil import JSON_TYPE, bool_value, dumps, json_response, parse_filters, read_json
from apiserver.routers.containers import CONTAINERS
from apiserver.streams import until, until_disconnected


def _api_version(request: web.Request) -> tuple[int, ...]:
    raw = request.match_info.get("api_version")
    return tuple(int(p) for p in raw.split(".")) if raw else (1, 50)


async def post_container_pause(request: web.Request) -> web.StreamResponse:
    await request.app[CONTAINERS].pause(request.match_info["id"])
    return web.Response(status=204)


async def post_container_unpause(request: web.Request) -> web.StreamResponse:
    await request.app[CONTAINERS].unpause(request.match_info["id"])
    return web.Response(status=204)


async def get_container_top(request: web.Request) -> web.StreamResponse:
    return json_response(await request.app[CONTAINERS].top(request.match_info["id"],
                                                           request.query.get("ps_args", "")))


async def get_container_stats(request: web.Request) -> web.StreamResponse:
    follow = bool_value(request, "stream", default=True)
    one_shot = bool_value(request, "one-shot") if _api_version(request) >= (1, 41) else False
    record, runtime = await request.app[CONTAINERS].stats_source(request.match_info["id"])
    samples = stats_mod.stream(runtime, record, follow=follow, one_shot=one_shot)
    if not follow:
        item = await anext(samples)
        await samples.aclose()
        return json_response(item)
    resp = web.StreamResponse(status=200)
    resp.content_type = JSON_TYPE
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    gone = asyncio.ensure_future(until_disconnected(request.transport))
    try:
        async for item in until(samples, gone):
            await resp.write(dumps(item) + b"\n")
    except ConnectionResetError:
        pass
    finally:
        gone.cancel()
    with contextlib.suppress(ConnectionResetError):
        await resp.write_eof()
    return resp


async def post_container_rename(request: web.Request) -> web.StreamResponse:
    await request.app[CONTAINERS].rename(request.match_info["id"], request.query.get("name", ""))
    return web.Response(status=204)


async def post_container_update(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    warnings = await request.app[CONTAINERS].update(request.match_info["id"], body)
    return json_response({"Warnings": warnings})


async def post_containers_prune(request: web.Request) -> web.StreamResponse:
    filters = parse_filters(request.query.get("filters"), PRUNE_FILTERS)
    return json_response(await request.app[CONTAINERS].prune(filters))


def register(app: web.Application) -> None:
    add_route(app, "POST", "/containers/prune", post_containers_prune)
    add_route(app, "POST", "/containers/{id}/pause", post_container_pause)
    add_route(app, "POST", "/containers/{id}/unpause", post_container_unpause)
    add_route(app, "GET", "/containers/{id}/top", get_container_top)
    add_route(app, "GET", "/containers/{id}/stats", get_container_stats)
    add_route(app, "POST", "/containers/{id}/rename", post_container_rename)
    add_route(app, "POST", "/containers/{id}/update", post_container_update)
