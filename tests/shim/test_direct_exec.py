"""Attached execs straight to the supervisor (shim.supervisor.direct), as an API server on the node
runs them: the end (or the start's error) comes only once the shim recorded it; a socket that is
not the node's any more sends the exec through the shim. Against the real supervisor."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from common.nodes import NodeRecord, file_identity
from protos.errors import StartFailed
from shim.api import EventType, ExecSpec, ProcessSpec, Runtime, TaskEvent
from shim.client import RemoteRuntime
from shim.linux import LinuxRuntime
from shim.supervisor.client import SupervisorPaths
from shim.supervisor.direct import DirectExecs
from shim.supervisor.exec_stream import Unreachable
from tests.shim.conftest import Containers, Recorder, collect
from tests.shim.contract import inputs
from tests.support.busybox import PATH_ENV


@dataclass
class GatedRecorder(Recorder):
    """Records an exec's exit only once ``gate`` is set (a slow state store)."""

    gate: asyncio.Event = field(default_factory=asyncio.Event)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def record(self, event: TaskEvent) -> None:
        if event.type is EventType.EXEC_EXIT:
            self.arrived.set()
            await self.gate.wait()
        await super().record(event)


def _exec(*args: str) -> ExecSpec:
    return ExecSpec(exec_id=secrets.token_hex(32), process=ProcessSpec(args=args, env=(PATH_ENV,)))


def _direct(paths: SupervisorPaths) -> DirectExecs:
    return DirectExecs(paths.socket, file_identity(paths.socket))


async def _running(runtime: Runtime, containers: Containers) -> str:
    spec = containers.spec("sleep", "1000")
    await runtime.create(spec)
    await runtime.start(spec.id)
    return spec.id


def _exits(recorder: Recorder, cid: str) -> list[int]:
    return [e.exec.exit_code for e in recorder.of(cid) if e.type is EventType.EXEC_EXIT and e.exec is not None]


@contextlib.asynccontextmanager
async def _gated(supervisor: SupervisorPaths, containers: Containers,
                 ) -> AsyncIterator[tuple[GatedRecorder, DirectExecs, str]]:
    """A shim whose exec exits wait to be recorded, a running container and a direct path."""
    recorder = GatedRecorder()
    runtime = await LinuxRuntime.connect(supervisor.socket, recorder)
    direct = _direct(supervisor)
    try:
        yield recorder, direct, await _running(runtime, containers)
    finally:
        recorder.gate.set()
        direct.close()
        await containers.cleanup(runtime)
        await runtime.close()


async def test_the_end_comes_once_the_exit_is_recorded(supervisor: SupervisorPaths, containers: Containers) -> None:
    async with _gated(supervisor, containers) as (recorder, direct, cid):
        _, stream = await direct.exec(cid, _exec("sh", "-c", "echo out; exit 3"), inputs([]))
        assert (await anext(stream)).data == b"out\n"
        ended = asyncio.ensure_future(anext(stream, None))
        await asyncio.wait_for(recorder.arrived.wait(), 10)  # it exited; the shim is recording
        await asyncio.sleep(0.2)
        assert not ended.done()
        recorder.gate.set()
        assert await asyncio.wait_for(ended, 10) is None
        assert _exits(recorder, cid) == [3]  # recorded before the end came


async def test_a_start_error_comes_once_recorded(supervisor: SupervisorPaths, containers: Containers) -> None:
    async with _gated(supervisor, containers) as (recorder, direct, cid):
        started = asyncio.ensure_future(direct.exec(cid, _exec("no-such-binary"), inputs([])))
        await asyncio.wait_for(recorder.arrived.wait(), 10)
        await asyncio.sleep(0.2)
        assert not started.done()
        recorder.gate.set()
        with pytest.raises(StartFailed, match="executable file not found"):
            await asyncio.wait_for(started, 10)
        assert _exits(recorder, cid) == [127]


async def test_a_shim_that_goes_away_is_waited_for(supervisor: SupervisorPaths, containers: Containers,
                                                  recorder: Recorder) -> None:
    """A shim that goes away while an exec's end waits for its record: the end comes once the
    next shim recorded the exit from the supervisor's replay."""
    gated = GatedRecorder()
    runtime = await LinuxRuntime.connect(supervisor.socket, gated)
    direct = _direct(supervisor)
    closed = False
    again: LinuxRuntime | None = None
    try:
        cid = await _running(runtime, containers)
        _, stream = await direct.exec(cid, _exec("sh", "-c", "exit 5"), inputs([]))
        ended = asyncio.ensure_future(collect(stream))
        await asyncio.wait_for(gated.arrived.wait(), 10)
        closed = True
        await runtime.close()
        await asyncio.sleep(0.3)
        assert not ended.done()  # nobody recorded it yet
        again = await LinuxRuntime.connect(supervisor.socket, recorder)
        assert await asyncio.wait_for(ended, 10) == []
        assert _exits(recorder, cid) == [5]  # recorded before the end came
    finally:
        gated.gate.set()
        direct.close()
        if not closed:
            await runtime.close()
        if again is None:
            again = await LinuxRuntime.connect(supervisor.socket, recorder)
        await containers.cleanup(again)
        await again.close()


async def test_with_no_shim_to_record_it_the_exec_goes_through_the_shim(supervisor: SupervisorPaths,
                                                                         containers: Containers,
                                                                         recorder: Recorder) -> None:
    """Nothing starts: the caller's fallback (the shim's gRPC) then answers, as without this path."""
    first = await LinuxRuntime.connect(supervisor.socket, recorder)
    direct = _direct(supervisor)
    try:
        cid = await _running(first, containers)
    finally:
        await first.close()
    try:
        with pytest.raises(Unreachable, match="no shim"):
            await direct.exec(cid, _exec("sh", "-c", "exit 6"), inputs([]))
    finally:
        direct.close()
        runtime = await LinuxRuntime.connect(supervisor.socket, recorder)
        await containers.cleanup(runtime)
        await runtime.close()
    assert _exits(recorder, cid) == []  # it never ran


def test_only_the_nodes_own_socket_is_used(supervisor: SupervisorPaths, shim_dir: Path) -> None:
    identity = file_identity(supervisor.socket)
    assert identity
    found = DirectExecs.for_node(NodeRecord(id="n", hostname="h", exec_socket=str(supervisor.socket),
                                            exec_socket_id=identity))
    assert found is not None
    found.close()
    other = shim_dir / f"other-{secrets.token_hex(3)}"
    other.write_text("")
    try:
        # Another file at the path, a record from another host (or boot), no socket named.
        for path, ident in ((str(supervisor.socket), file_identity(other)),
                            (str(supervisor.socket), "another-boot" + identity[identity.index(":"):]),
                            ("", "")):
            assert DirectExecs.for_node(NodeRecord(id="n", hostname="h", exec_socket=path,
                                                   exec_socket_id=ident)) is None
    finally:
        other.unlink()


async def test_a_socket_that_is_gone_sends_the_exec_through_the_shim(remote_runtime: Runtime, containers: Containers,
                                                                     supervisor: SupervisorPaths,
                                                                     shim_dir: Path) -> None:
    assert isinstance(remote_runtime, RemoteRuntime)
    gone = shim_dir / f"gone-{secrets.token_hex(3)}.sock"
    remote_runtime._direct = DirectExecs(gone, file_identity(supervisor.socket))
    cid = await _running(remote_runtime, containers)
    _, stream = await remote_runtime.exec(cid, _exec("echo", "via the shim"), inputs([]))
    assert b"".join(o.data for o in await collect(stream)) == b"via the shim\n"
    assert remote_runtime._execs is not None  # it went over the shim's exec channel
