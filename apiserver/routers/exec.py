"""Exec routes (ENGINE-API.md §2.6): create, start (hijacked like attach, or detached),
resize and inspect. Parse → call the exec backend → write; errors before the hijack are HTTP
errors, errors after it are written onto the stream as dockerd does."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from apiserver.app import add_route
from apiserver.exec.backend import ExecBackend, ExecRecord
from apiserver.hijack import (
    MULTIPLEXED_STREAM,
    RAW_STREAM,
    DetachScanner,
    HijackedConnection,
    frame,
    hijack,
    parse_detach_keys,
)
from apiserver.httputil import int_value, json_response, read_json
from apiserver.streams import until
from protos.errors import BerthError, StartFailed
from shim.api import AttachInput, Stream

EXECS: web.AppKey[ExecBackend] = web.AppKey("execs", ExecBackend)


def _api_version(request: web.Request) -> tuple[int, ...]:
    raw = request.match_info.get("api_version")
    return tuple(int(p) for p in raw.split(".")) if raw else (1, 50)


async def post_container_exec(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    exec_id = await request.app[EXECS].create(request.match_info["id"], body)
    return json_response({"Id": exec_id}, status=201)


async def post_exec_start(request: web.Request) -> web.StreamResponse:
    body: dict[str, Any] = await read_json(request, required=False) or {}
    backend = request.app[EXECS]
    record = await backend.check_startable(request.match_info["id"])
    tty = bool(record.config.get("Tty"))
    console = body.get("ConsoleSize") if _api_version(request) >= (1, 42) and body.get("Tty") else None
    if body.get("Detach"):
        _, outputs = await backend.start(record, detach=True, console_size=console, stdin=_no_input())
        async for _ in outputs:
            pass
        return web.Response(status=200)
    multiplexed = not tty and _api_version(request) >= (1, 42)
    resp, conn = await hijack(request, MULTIPLEXED_STREAM if multiplexed else RAW_STREAM)
    try:
        await _session(backend, record, conn, tty=tty, console=console)
    finally:
        await conn.close()
    return resp


async def _no_input() -> AsyncIterator[AttachInput]:
    return
    yield  # an async generator with nothing in it


async def _session(backend: ExecBackend, record: ExecRecord, conn: HijackedConnection, *, tty: bool,
                   console: list[int] | None) -> None:
    open_stdin = bool(record.config.get("OpenStdin"))
    detached = asyncio.Event()
    stdin_ended = asyncio.Event()
    # moby copies stdin "escapable" (detach keys) only with a terminal.
    keys = parse_detach_keys(record.config.get("DetachKeys") or "") if tty and open_stdin else b""
    scanner = DetachScanner(keys)

    async def stdin() -> AsyncIterator[AttachInput]:
        if not open_stdin:
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
        if tty:  # moby closes a terminal's stdin never; the end of input ends this session
            stdin_ended.set()
            return
        yield AttachInput(close=True)

    async def write(stream_no: int, data: bytes) -> bool:
        return await conn.write(data if tty else frame(stream_no, data))

    try:
        _, outputs = await backend.start(record, detach=False, console_size=console, stdin=stdin())
    except BerthError as exc:
        message = exc.message
        if isinstance(exc, StartFailed):
            message = f"OCI runtime exec failed: exec failed: unable to start container process: {message}: unknown"
        await write(int(Stream.STDOUT), (message + "\r\n").encode())
        return
    stop = asyncio.ensure_future(_first(detached.wait(), conn.wait_closed(), stdin_ended.wait()))
    try:
        async for out in until(outputs, stop):
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


async def post_exec_resize(request: web.Request) -> web.StreamResponse:
    await request.app[EXECS].resize(request.match_info["id"], int_value(request, "h"), int_value(request, "w"))
    return web.Response(status=200)


async def get_exec_json(request: web.Request) -> web.StreamResponse:
    return json_response(await request.app[EXECS].inspect(request.match_info["id"]))


def register(app: web.Application) -> None:
    add_route(app, "POST", "/containers/{id}/exec", post_container_exec)
    add_route(app, "POST", "/exec/{id}/start", post_exec_start)
    add_route(app, "POST", "/exec/{id}/resize", post_exec_resize)
    add_route(app, "GET", "/exec/{id}/json", get_exec_json)
