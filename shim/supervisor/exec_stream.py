"""The shim's side of an exec connection to the supervisor (see :mod:`shim.wire`).

The first request is ``{"op": "exec_attach", "cid", "spec"}``. The supervisor answers once the
process runs (``{"state", "seq"}`` of its start event) or could not start (an error whose result
carries the ``seq`` of its recorded exit); then STDOUT/STDERR frames come down and STDIN /
CLOSE_STDIN frames go up; an ``END`` frame carries ``{"seq", "exit_code"}`` of the exit event.

An exec that reads no stdin asks to ``keep`` the connection: its ``END`` then says ``keep`` too
(a supervisor from before this simply closes), and the connection, idle again, waits in the
pool it came from (:class:`shim.supervisor.client.IdleConnections`) for the next such exec's
request. A connection whose exec was abandoned before its ``END`` is closed, never reused.

An exec that asks ``recorded`` (an API server's, :mod:`shim.supervisor.direct`) gets its ``END``,
or its start's error, only once the shim acknowledged the event of its exit: the exit code is in
the state store by then (a supervisor with no shim connected refuses it: ``Unavailable``). The
shim's own execs wait for that record themselves.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from protos.errors import BerthError, Unavailable
from shim import wire
from shim.api import ExecSpec
from shim.supervisor.client import FrameStream, IdleConnections, read_frame, reply_error


class Unreachable(Unavailable):
    """The supervisor's socket could not be connected to: nothing was sent."""


class ExecStream(FrameStream):
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 idle: IdleConnections | None = None) -> None:
        super().__init__(reader, writer)
        self._idle = idle  # where the connection goes back once the exec ended, if it may
        self._closed = False
        self.end: dict[str, Any] = {}  # the END frame's payload, once read

    @classmethod
    async def open(cls, socket_path: Path, cid: str, spec: ExecSpec, *, idle: IdleConnections | None = None,
                   recorded: bool = False) -> tuple[ExecStream | None, dict[str, Any], BerthError | None]:
        """(stream, result, None) once the process runs; (None, result, error) if it did not start.
        Without stdin, on a connection from ``idle`` if one waits there (and back there at the end).
        ``recorded``: the supervisor sends the end (or the start's error) only once the shim
        recorded it in the state store, so that whoever reads the exec's state next sees its exit.
        """
        keep = idle is not None and not spec.process.open_stdin
        connection = idle.take() if keep and idle is not None else None
        if connection is None:
            try:
                connection = await asyncio.open_unix_connection(str(socket_path), limit=wire.MAX_FRAME)
            except OSError as exc:
                raise Unreachable(f"supervisor unreachable at {socket_path}: {exc.strerror}") from None
        reader, writer = connection
        stream = cls(reader, writer, idle if keep else None)
        request: dict[str, Any] = {"id": 1, "op": "exec_attach", "cid": cid, "spec": spec}
        if keep:
            request["keep"] = True
        if recorded:
            request["recorded"] = True
        writer.write(wire.frame(wire.Kind.JSON, wire.compact_json(request)))
        try:
            _, payload = await read_frame(reader)
            reply = json.loads(payload)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError) as exc:
            stream._idle = None
            await stream.close()
            raise Unavailable(f"exec failed: {exc}") from None
        result = reply.get("result") or {}
        if not reply.get("ok"):
            stream._idle = None
            await stream.close()
            return None, result, reply_error(reply, "exec failed")
        return stream, result, None

    async def read(self) -> tuple[int, bytes] | None:
        """The next output frame; ``None`` at the end (exit reported in :attr:`end`, or connection gone)."""
        try:
            kind, payload = await read_frame(self._reader)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            self._idle = None
            return None
        if kind == wire.Kind.END:
            try:
                self.end = json.loads(payload) if payload else {}
            except ValueError:
                self.end = {}
            return None
        return kind, payload

    async def close(self) -> None:
        """Done with the exec: its connection goes back to the idle ones if the supervisor keeps
        it (the exec ended), else it is closed. Once only: later calls do nothing."""
        if self._closed:
            return
        self._closed = True
        if self._idle is not None and self.end.get("keep"):
            self._idle.put(self._reader, self._writer)
            return
        await self._disconnect()
