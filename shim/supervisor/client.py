"""The shim's side of the supervisor socket: starting (or adopting) the supervisor, a control
connection (requests, ordered events), and attach streams. See :mod:`shim.wire`."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import select
import subprocess
import sys
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import structlog

from protos.errors import BerthError, Unavailable, error_class
from shim import wire
from shim.api import AttachInput, Output, Stream
from shim.wire import SupervisorPaths

log = structlog.get_logger()

__all__ = ["AttachStream", "Control", "IdleConnections", "SupervisorPaths", "spawn"]

_PROJECT_ROOT = str(Path(__file__).resolve().parents[2])


def spawn(paths: SupervisorPaths, *, cgroup_parent: str, log_level: str = "info",
          stderr: int | None = None, timeout: float = 20.0) -> subprocess.Popen[bytes]:
    """Start ``python -m shim.supervisor`` in its own session and wait until it accepts
    connections. It outlives the caller (no parent-death signal); keep the ``Popen`` to reap it
    if it exits first."""
    paths.exec_root.mkdir(parents=True, exist_ok=True, mode=0o700)
    ready_r, ready_w = os.pipe()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PROJECT_ROOT, env.get("PYTHONPATH", "")) if p)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "shim.supervisor", "--root", str(paths.root), "--exec-root",
             str(paths.exec_root), "--cgroup-parent", cgroup_parent, "--log-level", log_level,
             "--ready-fd", str(ready_w)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr, pass_fds=(ready_w,),
            start_new_session=True, cwd="/", env=env)
    finally:
        os.close(ready_w)
    try:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            readable, _, _ = select.select([ready_r], [], [], max(remaining, 0))
            if readable:
                if os.read(ready_r, 64):
                    return proc
                raise Unavailable(f"supervisor exited during startup with {proc.wait()}")
            if remaining <= 0:
                proc.kill()
                raise Unavailable("supervisor did not become ready")
    finally:
        os.close(ready_r)


Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class IdleConnections:
    """Connections to the supervisor that finished an exec and take another (see
    :mod:`shim.supervisor.exec_stream`): reusing one spares a connect and an accept. At most
    ``keep`` wait; the others are closed."""

    def __init__(self, keep: int = 4) -> None:
        self._keep = keep
        self._idle: list[Connection] = []

    @property
    def waiting(self) -> bool:
        return bool(self._idle)

    def take(self) -> Connection | None:
        """An open idle connection, or None."""
        while self._idle:
            reader, writer = self._idle.pop()
            if not reader.at_eof() and not writer.is_closing():
                return reader, writer
            writer.close()  # the supervisor closed it meanwhile
        return None

    def put(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._idle) < self._keep and not reader.at_eof() and not writer.is_closing():
            self._idle.append((reader, writer))
        else:
            writer.close()

    def close(self) -> None:
        for _, writer in self._idle:
            writer.close()
        self._idle.clear()


class Control:
    """The control connection. Events (and the ``replayed`` marker) go to ``on_event`` in the
    order the supervisor sent them; ``on_lost`` runs once if the connection breaks. ``idle``
    holds exec connections to the same supervisor between execs."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 on_event: Callable[[dict[str, Any]], None], on_lost: Callable[[], None]) -> None:
        self._reader = reader
        self._writer = writer
        self._on_event = on_event
        self._on_lost = on_lost
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._task = asyncio.get_running_loop().create_task(self._read_loop())
        self.lost = False
        self.idle = IdleConnections()

    @classmethod
    async def connect(cls, socket_path: Path, on_event: Callable[[dict[str, Any]], None],
                      on_lost: Callable[[], None]) -> Control:
        try:
            reader, writer = await asyncio.open_unix_connection(str(socket_path), limit=wire.MAX_FRAME)
        except OSError as exc:
            raise Unavailable(f"supervisor unreachable at {socket_path}: {exc.strerror}") from None
        return cls(reader, writer, on_event, on_lost)

    async def _read_loop(self) -> None:
        try:
            while True:
                kind, payload = await read_frame(self._reader)
                if kind != wire.Kind.JSON:
                    continue
                message = json.loads(payload)
                rid = message.get("id")
                if rid is not None:
                    fut = self._pending.pop(rid, None)
                    if fut is not None and not fut.done():
                        fut.set_result(message)
                else:
                    self._on_event(message)
        except (asyncio.IncompleteReadError, ConnectionError, OSError, ValueError, wire.ProtocolError) as exc:
            log.warning("supervisor_connection_lost", error=str(exc) or type(exc).__name__)
        finally:
            self.lost = True
            self.idle.close()
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(Unavailable("supervisor connection lost"))
            self._pending.clear()
            self._on_lost()

    async def call(self, op: str, **fields: Any) -> tuple[Any, BerthError | None]:
        """Send a request; returns (result, None) or (extra result data, error)."""
        if self.lost:
            raise Unavailable("supervisor connection lost")
        rid = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        self._writer.write(wire.json_frame({"id": rid, "op": op, **fields}))
        reply = await fut
        if reply.get("ok"):
            return reply.get("result"), None
        return reply.get("result") or {}, reply_error(reply, "supervisor error")

    async def request(self, op: str, **fields: Any) -> Any:
        result, error = await self.call(op, **fields)
        if error is not None:
            raise error
        return result

    def send(self, op: str, **fields: Any) -> None:
        """A message that has no answer (``ack``)."""
        if not self.lost:
            self._writer.write(wire.json_frame({"op": op, **fields}))

    async def close(self) -> None:
        self._task.cancel()
        self.idle.close()
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except (ConnectionError, OSError):
            pass
        try:
            await self._task
        except asyncio.CancelledError:
            pass


class FrameStream:
    """A connection to the supervisor that carries one process's stdio: STDIN and CLOSE_STDIN
    frames up, output frames down."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def send_stdin(self, data: bytes) -> None:
        self._writer.write(wire.frame(wire.Kind.STDIN, data))
        await self._writer.drain()

    async def close_stdin(self) -> None:
        self._writer.write(wire.frame(wire.Kind.CLOSE_STDIN, b""))
        await self._writer.drain()

    async def read(self) -> tuple[int, bytes] | None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def outputs(self, stdin: AsyncIterator[AttachInput] | None,
                      ended: Callable[[], Awaitable[None]] | None = None) -> AsyncGenerator[Output, None]:
        """The output until the end, with ``stdin`` (if any) pumped up meanwhile; then ``ended``
        (if any) is awaited. The stream closes after, whatever happens."""
        pump = asyncio.get_running_loop().create_task(self.pump_stdin(stdin)) if stdin is not None else None
        try:
            while (item := await self.read()) is not None:
                yield Output(Stream(item[0]), item[1])
            if ended is not None:
                await ended()
        finally:
            if pump is not None:
                pump.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await pump
            await self.close()

    async def pump_stdin(self, stdin: AsyncIterator[AttachInput]) -> None:
        """Send ``stdin`` up until it closes (then CLOSE_STDIN) or the connection goes."""
        try:
            async for item in stdin:
                if item.data:
                    await self.send_stdin(item.data)
                if item.close:
                    await self.close_stdin()
                    return
        except (ConnectionError, OSError):
            pass

    async def _disconnect(self) -> None:
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except (ConnectionError, OSError):
            pass


class AttachStream(FrameStream):
    """One attach connection: stdin frames up, output frames down, ``END`` last."""

    @classmethod
    async def open(cls, socket_path: Path, cid: str, *, stdin: bool, stdout: bool, stderr: bool) -> AttachStream:
        try:
            reader, writer = await asyncio.open_unix_connection(str(socket_path), limit=wire.MAX_FRAME)
        except OSError as exc:
            raise Unavailable(f"supervisor unreachable at {socket_path}: {exc.strerror}") from None
        stream = cls(reader, writer)
        writer.write(wire.json_frame({"id": 1, "op": "attach", "cid": cid, "stdin": stdin,
                                      "stdout": stdout, "stderr": stderr}))
        try:
            _, payload = await read_frame(reader)
            reply = json.loads(payload)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError) as exc:
            await stream.close()
            raise Unavailable(f"attach failed: {exc}") from None
        if not reply.get("ok"):
            await stream.close()
            raise reply_error(reply, "attach failed")
        return stream

    async def read(self) -> tuple[int, bytes] | None:
        """The next output frame; ``None`` at the end (process exited, or connection gone)."""
        try:
            kind, payload = await read_frame(self._reader)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            return None
        if kind == wire.Kind.END:
            return None
        return kind, payload

    async def close(self) -> None:
        await self._disconnect()


def reply_error(reply: Mapping[str, Any], default: str) -> BerthError:
    """The classified error of a supervisor reply that is not ``ok`` (see ``wire.error_payload``)."""
    error = reply.get("error") or {}
    return error_class(str(error.get("class", "Internal")))(str(error.get("message", default)))


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    header = await reader.readexactly(wire.HEADER.size)
    kind, length = wire.HEADER.unpack(header)
    if length > wire.MAX_FRAME:
        raise wire.ProtocolError(f"frame of {length} bytes")
    return kind, await reader.readexactly(length) if length else b""
