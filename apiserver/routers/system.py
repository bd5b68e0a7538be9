"""System routes: ping, version, info, events, metrics."""

from __future__ import annotations

import asyncio

from aiohttp import web

from apiserver.app import METRICS, add_route
from apiserver.httputil import JSON_TYPE, dumps, json_response, parse_filters
from apiserver.streams import unix_ns, until, until_disconnected
from apiserver.system import EVENT_FILTERS, SystemBackend

SYSTEM: web.AppKey[SystemBackend] = web.AppKey("system", SystemBackend)

_PING_HEADERS = {
    "Cache-Control": "no-cache, no-store, must-revalidate",
    "Pragma": "no-cache",
    # Only the legacy builder is offered: BuildKit's session protocol is not implemented.
    "Builder-Version": "1",
    "Swarm": "inactive",
}


async def ping(request: web.Request) -> web.StreamResponse:
    if request.method == "HEAD":
        resp = web.Response(status=200, headers=_PING_HEADERS)
        resp.content_type = "text/plain"
        resp.charset = "utf-8"
        return resp
    return web.Response(text="OK", headers=_PING_HEADERS)


async def get_version(request: web.Request) -> web.StreamResponse:
    return json_response(request.app[SYSTEM].version())


async def get_info(request: web.Request) -> web.StreamResponse:
    return json_response(await request.app[SYSTEM].info())


async def get_events(request: web.Request) -> web.StreamResponse:
    filters = parse_filters(request.query.get("filters"), EVENT_FILTERS)
    since_raw = request.query.get("since")
    until_raw = request.query.get("until")
    since_ns = unix_ns(since_raw) if since_raw else None
    until_ns = unix_ns(until_raw) if until_raw else None
    if since_ns is not None and until_ns is not None and since_ns > until_ns:
        from protos.errors import InvalidArgument

        raise InvalidArgument("`since` time cannot be after `until` time")
    events = await request.app[SYSTEM].events(since_ns=since_ns, until_ns=until_ns, filters=filters)
    resp = web.StreamResponse(status=200)
    resp.content_type = JSON_TYPE
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    gone = asyncio.ensure_future(until_disconnected(request.transport))  # the deadline is the backend's
    try:
        async for message in until(events, gone):
            await resp.write(dumps(message) + b"\n")
        await resp.write_eof()
    except ConnectionResetError:
        pass
    finally:
        gone.cancel()
    return resp


async def get_metrics(request: web.Request) -> web.StreamResponse:
    text = await request.app[METRICS].render()
    return web.Response(text=text, content_type="text/plain", charset="utf-8",
                        headers={"X-Content-Type-Options": "nosniff"})


def register(app: web.Application) -> None:
    add_route(app, "GET", "/_ping", ping)
    add_route(app, "HEAD", "/_ping", ping)
    add_route(app, "GET", "/version", get_version)
    add_route(app, "GET", "/info", get_info)
    add_route(app, "GET", "/events", get_events)
    app.router.add_route("GET", "/metrics", get_metrics)
