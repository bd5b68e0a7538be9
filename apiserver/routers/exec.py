"""Exec routes (ENGINE-API.md §2.6): create, start (hijacked like attach, or detached),
resize and inspect. Parse → call the exec backend → write; errors before the hijack are HTTP
errors, errors after it are written onto the stream as dockerd does."""

from __future__ import annotations

import asyncio
import contextlib
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
from protos.errors import BerthError, StartFailed
from shim.api import AttachInput, ExecState, Output, Stream

# What starting an exec gives: its state once it runs, and its output.
Started = tuple[ExecState, AsyncIterator[Output]]

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
    early: asyncio.Future[Started] | None = None
    if not record.config.get("OpenStdin") and record.conflict is None:
        # It reads nothing from the client: it starts while the connection is taken over.
        early = asyncio.ensure_future(backend.start(record, detach=False, console_size=console, stdin=_no_input()))
    try:
        if early is not None:
            await asyncio.sleep(0)  # its request is on its way before the 101 is
        resp, conn = await hijack(request, MULTIPLEXED_STREAM if multiplexed else RAW_STREAM)
    except BaseException:
        if early is None:
            await backend.unclaim(record)  # never started: startable again, as moby leaves it
        else:
            _abandon(early)  # it runs on without its client, as if that had left
        raise
    try:
        await _session(backend, record, conn, tty=tty, console=console, started=early)
    finally:
        await conn.close()
    return resp


def _abandon(started: asyncio.Future[Started]) -> None:
    """An exec started for a client that is gone: its output is closed unread."""
    async def close() -> None:
        try:
            _, outputs = await started
        except BaseException:
            return
        await _close_outputs(outputs)

    task = asyncio.ensure_future(close())
    _abandoned.add(task)
    task.add_done_callback(_abandoned.discard)


_abandoned: set[asyncio.Future[None]] = set()  # _abandon's, referenced until done


async def _no_input() -> AsyncIterator[AttachInput]:
    return
    yield  # an async generator with nothing in it


async def _session(backend: ExecBackend, record: ExecRecord, conn: HijackedConnection, *, tty: bool,
                   console: list[int] | None, started: asyncio.Future[Started] | None) -> None:
    open_stdin = bool(record.config.get("OpenStdin"))
    # Set when the copy of output ends early: detach keys, the client gone, or (terminal) its input
    # ended; the value says whether it was a detach.
    stop: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    def stop_with(detached: bool) -> None:
        if not stop.done():
            stop.set_result(detached)

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
                stop_with(True)
                return
        rest = scanner.flush()
        if rest:
            yield AttachInput(data=rest)
        if tty:  # moby closes a terminal's stdin never; the end of input ends this session
            stop_with(False)
            return
        yield AttachInput(close=True)

    try:
        _, outputs = await (started if started is not None else
                            backend.start(record, detach=False, console_size=console, stdin=stdin()))
    except BerthError as exc:
        message = exc.message
        if isinstance(exc, StartFailed):
            message = f"OCI runtime exec failed: exec failed: unable to start container process: {message}: unknown"
        data = (message + "\r\n").encode()
        await conn.write(data if tty else frame(int(Stream.STDOUT), data))
        return
    conn.on_close(lambda: stop_with(False))
    copy = asyncio.ensure_future(_copy(outputs, conn, tty=tty))
    try:
        await asyncio.wait((copy, stop), return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not copy.done():
            copy.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await copy
    if stop.done() and stop.result():
        await backend.detached(record)


async def _copy(outputs: AsyncIterator[Output], conn: HijackedConnection, *, tty: bool) -> None:
    """The exec's output onto the connection (framed unless a terminal's) until it ends or the
    client is gone; closes ``outputs`` either way."""
    try:
        async for out in outputs:
            if not await conn.write(out.data if tty else frame(int(out.stream), out.data)):
                break
    finally:
        await _close_outputs(outputs)


async def _close_outputs(outputs: AsyncIterator[Output]) -> None:
    """Done with an exec's output: its stream to the runtime is closed (unread output dropped)."""
    aclose = getattr(outputs, "aclose", None)
    if aclose is not None:
        with contextlib.suppress(Exception):
            await aclose()


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
