"""Execs of this host's containers straight over the supervisor's socket, for an API server that
runs on the node (what dockerd does with a shim's stdio FIFOs: the bytes skip containerd).

The shim stays the one that records: the supervisor sends such an exec's end (or its start's
error) only once the shim acknowledged the exit's event, so whoever reads the exec next, through
any API server, sees its exit code. What the shim adds on its way, a gRPC message each way and
its relay, is off the path of every ``docker exec``. Detached execs, resizes and everything else
still go through the shim.

The node record names the socket and which file it is (:func:`common.nodes.file_identity`): only
the same file, seen from the same boot, is used, and checked again for every new connection. A
socket that is not there (or another file now) falls back to the shim before anything is sent;
so does a supervisor with no shim connected (nothing would record the exec; the shim's own path
then says it is unavailable, as before). A shim that goes away while an exec's end waits for its
record is waited for: its successor records what it missed, and the end follows.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

from common.nodes import NodeRecord, file_identity
from protos.errors import Unavailable
from shim import wire
from shim.api import AttachInput, ExecSpec, ExecState, Output
from shim.supervisor.client import IdleConnections
from shim.supervisor.exec_stream import ExecStream, Unreachable


class DirectExecs:
    def __init__(self, socket: Path, identity: str) -> None:
        self._socket = socket
        self._identity = identity
        self._idle = IdleConnections()

    @classmethod
    def for_node(cls, record: NodeRecord) -> DirectExecs | None:
        """The node's supervisor if its socket is on this host (the same file), else None."""
        if not record.exec_socket or not record.exec_socket_id:
            return None
        socket = Path(record.exec_socket)
        if file_identity(socket) != record.exec_socket_id:
            return None
        return cls(socket, record.exec_socket_id)

    async def exec(self, id: str, spec: ExecSpec,
                   stdin: AsyncIterator[AttachInput]) -> tuple[ExecState, AsyncIterator[Output]]:
        """As :meth:`shim.api.Runtime.exec`, for an attached exec (``spec.detach`` false); raises
        :class:`Unreachable` (nothing sent) if the socket is gone or another file now."""
        if not self._idle.waiting and file_identity(self._socket) != self._identity:
            raise Unreachable(f"supervisor socket {self._socket} is not the node's any more")
        stream, result, error = await ExecStream.open(self._socket, id, spec, idle=self._idle, recorded=True)
        if isinstance(error, Unavailable):  # no shim to record it: nothing started, go through the shim
            raise Unreachable(error.message)
        if error is not None:
            raise error
        assert stream is not None
        return wire.decode(ExecState, result["state"]), stream.outputs(stdin if spec.process.open_stdin else None)

    def close(self) -> None:
        self._idle.close()
