"""Container routes: parse → call the backend → write. Errors are raised, never written here."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import structlog
from aiohttp import web

from apiserver.app import add_route
from apiserver.containers.backend import LIST_FILTERS, ContainerBackend
from apiserver.containers.logframes import LogEncoder
from apiserver.hijack import (
    MULTIPLEXED_STREAM,
    RAW_STREAM,
    DetachScanner,
    HijackedConnection,
    frame,
    hijack,
    parse_detach_keys,
)
from apiserver.httputil import (
    JSON_TYPE,
    bool_value,
    dumps,
    int_value,
    json_body_response,
    json_response,
    parse_filters,
    read_json,
)
from apiserver.streams import unix_ns, until, until_disconnected
from protos.errors import InvalidArgument
from shim.api import AttachInput, AttachOptions, LogsOptions, Stream

log = structlog.get_logger()

CONTAINERS: web.AppKey[ContainerBackend] = web.AppKey("containers", ContainerBackend)


def _backend(request: web.Request) -> ContainerBackend:
    return request.app[CONTAINERS]


def _api_version(request: web.Request) -> tuple[int, ...]:
    raw = request.match_info.get("api_version")
    if not raw:
        return (1, 50)
    return tuple(int(p) for p in raw.split("."))


async def post_containers_create(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    name = request.query.get("name") or None
    container_id, warnings = await _backend(request).create(name, body, request.query.get("platform", ""))
    return json_response({"Id": container_id, "Warnings": warnings}, status=201)


async def get_containers_json(request: web.Request) -> web.StreamResponse:
    filters = parse_filters(request.query.get("filters"), LIST_FILTERS)
    body = await _backend(request).summaries_json(
        all=bool_value(request, "all"), limit=int_value(request, "limit", -1),
        size=bool_value(request, "size"), filters=filters)
    return json_body_response(body)


async def get_container_json(request: web.Request) -> web.StreamResponse:
    return json_body_response(await _backend(request).inspect_json(request.match_info["id"],
                                                                   size=bool_value(request, "size")))


async def post_container_start(request: web.Request) -> web.StreamResponse:
    if request.query.get("checkpoint"):
        raise InvalidArgument("checkpoints are not supported by Berth")
    await _backend(request).start(request.match_info["id"])
    return web.Response(status=204)


def _timeout(request: web.Request) -> int | None:
    raw = request.query.get("t") or request.query.get("timeout")
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise InvalidArgument(f"invalid value for t: {raw!r}") from None


async def post_container_stop(request: web.Request) -> web.StreamResponse:
    await _backend(request).stop(request.match_info["id"], signal=request.query.get("signal"),
                                 timeout=_timeout(request))
    return web.Response(status=204)


async def post_container_restart(request: web.Request) -> web.StreamResponse:
    await _backend(request).restart(request.match_info["id"], signal=request.query.get("signal"),
                                    timeout=_timeout(request))
    return web.Response(status=204)


async def post_container_kill(request: web.Request) -> web.StreamResponse:
    await _backend(request).kill(request.match_info["id"], request.query.get("signal"))
    return web.Response(status=204)


async def delete_container(request: web.Request) -> web.StreamResponse:
    await _backend(request).remove(request.match_info["id"], force=bool_value(request, "force"),
                                   volumes=bool_value(request, "v"))
    return web.Response(status=204)


async def post_container_wait(request: web.Request) -> web.StreamResponse:
    waiter = await _backend(request).wait(request.match_info["id"], request.query.get("condition", ""))
    await anext(waiter)  # registered before the headers go out, so no exit can slip by
    resp = web.StreamResponse(status=200)
    resp.content_type = JSON_TYPE
    await resp.prepare(request)
    result_task = asyncio.ensure_future(anext(waiter))
    gone = asyncio.ensure_future(until_disconnected(request.transport))
    try:
        done, _ = await asyncio.wait({result_task, gone}, return_when=asyncio.FIRST_COMPLETED)
        if result_task not in done:
            return resp  # the client left (docker run -d abandons its wait)
        result = result_task.result()
        body: dict[str, Any] = {"StatusCode": result.status_code, "Error": None}
        if result.error:
            body["Error"] = {"Message": result.error}
        with contextlib.suppress(ConnectionResetError):
            await resp.write(dumps(body) + b"\n")
            await resp.write_eof()
        return resp
    finally:
        for task in (result_task, gone):
            task.cancel()
        # the generator is still running inside the cancelled step: let it unwind before closing it
        with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration, Exception):
            await result_task
        await waiter.aclose()


def _log_options(request: web.Request) -> LogsOptions:
    tail_raw = request.query.get("tail", "all")
    tail = -1 if tail_raw in ("", "all") else int_value(request, "tail", -1)
    return LogsOptions(
        stdout=bool_value(request, "stdout"), stderr=bool_value(request, "stderr"),
        follow=bool_value(request, "follow"), since_ns=unix_ns(request.query.get("since")),
        until_ns=unix_ns(request.query.get("until")), tail=tail)




async def get_container_logs(request: web.Request) -> web.StreamResponse:
    options = _log_options(request)
    if not options.stdout and not options.stderr:
        raise InvalidArgument("Bad parameters: you must choose at least one stream")
    tty, batches = await _backend(request).log_batches(request.match_info["id"], options)
    encoder = LogEncoder(tty=tty, timestamps=bool_value(request, "timestamps"))
    resp = web.StreamResponse(status=200)
    resp.content_type = RAW_STREAM if tty else MULTIPLEXED_STREAM
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    gone = asyncio.ensure_future(until_disconnected(request.transport)) if options.follow else None
    try:
        async for batch in until(batches, gone):
            await resp.write(encoder.encode(batch))
        await resp.write_eof()
    except ConnectionResetError:
        pass
    finally:
        if gone is not None:
            gone.cancel()
    return resp


async def post_container_attach(request: web.Request) -> web.StreamResponse:
    backend = _backend(request)
    record = await backend.prepare_attach(request.match_info["id"])
    want_stream = bool_value(request, "stream")
    want_logs = bool_value(request, "logs")
    options = AttachOptions(stdin=bool_value(request, "stdin"), stdout=bool_value(request, "stdout"),
                            stderr=bool_value(request, "stderr"))
    detach_keys = parse_detach_keys(request.query.get("detachKeys", ""))
    tty = bool(record.config["Config"].get("Tty"))
    multiplexed = not tty and _api_version(request) >= (1, 42)
    resp, conn = await hijack(request, MULTIPLEXED_STREAM if multiplexed else RAW_STREAM)
    try:
        await _attach_session(backend, record, conn, options, tty=tty, detach_keys=detach_keys,
                              logs=want_logs, stream=want_stream)
    finally:
        await conn.close()
    return resp


async def _attach_session(backend: ContainerBackend, record: Any, conn: HijackedConnection,
                          options: AttachOptions, *, tty: bool, detach_keys: bytes, logs: bool,
                          stream: bool) -> None:
    detached = asyncio.Event()
    stdin_ended = asyncio.Event()
    scanner = DetachScanner(detach_keys if (options.stdin and tty) or options.stdin else b"")

    async def stdin() -> AsyncIterator[AttachInput]:
        if not options.stdin:
            return
        async for chunk in conn.chunks():
            data, hit = scanner.feed(chunk)
            if data:
                yield AttachInput(data=data)
            if hit:
                detached.set()
                return
        rest = scanner.flush()
        if rest:
            yield AttachInput(data=rest)
        if tty:
            # moby: a terminal's stdin is never closed by an attach (the CLI detaches by closing its
            # connection); the end of this client's input ends its attachment instead.
            stdin_ended.set()
            return
        yield AttachInput(close=True)

    async def write(stream_no: int, data: bytes) -> bool:
        return await conn.write(data if tty else frame(stream_no, data))

    if logs:
        _, entries = await backend.logs(record.id, LogsOptions(stdout=options.stdout, stderr=options.stderr,
                                                               follow=False))
        async for entry in entries:
            if not await write(int(entry.stream), entry.data):
                return
    if not stream:
        return
    outputs = await backend.attach(record, options, stdin())
    stop = asyncio.ensure_future(_first(detached.wait(), conn.wait_closed(), stdin_ended.wait()))
    try:
        async for out in until(outputs, stop):
            if out.stream == Stream.STDOUT and not options.stdout:
                continue
            if out.stream == Stream.STDERR and not options.stderr:
                continue
            if not await write(int(out.stream), out.data):
                break
    finally:
        stop.cancel()
    if detached.is_set():
        await backend.detached(record)


async def _first(*aws: Any) -> None:
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()


async def post_container_resize(request: web.Request) -> web.StreamResponse:
    height = int_value(request, "h")
    width = int_value(request, "w")
    await _backend(request).resize(request.match_info["id"], height, width)
    return web.Response(status=200)


def register(app: web.Application) -> None:
    add_route(app, "POST", "/containers/create", post_containers_create)
    add_route(app, "GET", "/containers/json", get_containers_json)
    add_route(app, "GET", "/containers/{id}/json", get_container_json)
    add_route(app, "POST", "/containers/{id}/start", post_container_start)
    add_route(app, "POST", "/containers/{id}/stop", post_container_stop)
    add_route(app, "POST", "/containers/{id}/restart", post_container_restart)
    add_route(app, "POST", "/containers/{id}/kill", post_container_kill)
    add_route(app, "POST", "/containers/{id}/wait", post_container_wait)
    add_route(app, "POST", "/containers/{id}/attach", post_container_attach)
    add_route(app, "POST", "/containers/{id}/resize", post_container_resize)
    add_route(app, "GET", "/containers/{id}/logs", get_container_logs)
    add_route(app, "DELETE", "/containers/{id}", delete_container)
