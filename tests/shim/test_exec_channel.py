"""``ExecChannel``: the execs without stdin of a ``RemoteRuntime`` share one gRPC stream
(shim.exec_channel). Through a live gRPC server and the real runtime behind it."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path

import grpc
import pytest

from protos.errors import ContainerNotFound, StartFailed
from protos.rpc import SERVER_OPTIONS, insecure_channel
from protos.shim.v1 import shim_pb2 as pb
from protos.shim.v1 import shim_pb2_grpc
from shim import exec_channel
from shim.api import ExecSpec, Output, ProcessSpec, Runtime
from shim.client import RemoteRuntime
from shim.exec_channel import HOLD_S, WINDOW, ChannelRegistry
from shim.linux import LinuxRuntime
from shim.service import TasksServicer
from tests.shim.conftest import Containers, collect
from tests.shim.contract import inputs
from tests.support.busybox import PATH_ENV


def _exec(*args: str) -> ExecSpec:
    return ExecSpec(exec_id=secrets.token_hex(32), process=ProcessSpec(args=args, env=(PATH_ENV,)))


async def _running(runtime: Runtime, containers: Containers) -> str:
    spec = containers.spec("sleep", "1000")
    await runtime.create(spec)
    await runtime.start(spec.id)
    return spec.id


def _text(outputs: list[Output]) -> bytes:
    return b"".join(o.data for o in outputs)


async def test_execs_share_one_stream_and_keep_their_output_apart(remote_runtime: Runtime,
                                                                   containers: Containers) -> None:
    assert isinstance(remote_runtime, RemoteRuntime)
    cid = await _running(remote_runtime, containers)
    started = [await remote_runtime.exec(cid, _exec("sh", "-c", f"for i in 1 2 3; do echo {n}-$i; done"),
                                         inputs([])) for n in range(8)]
    channel = remote_runtime._execs
    assert channel is not None and channel.usable
    outputs = await asyncio.gather(*(collect(stream) for _, stream in started))
    for n, out in enumerate(outputs):
        assert _text(out) == f"{n}-1\n{n}-2\n{n}-3\n".encode()
    for n in range(3):
        state, stream = await remote_runtime.exec(cid, _exec("sh", "-c", f"exit {n + 3}"), inputs([]))
        assert state.pid > 0
        assert await collect(stream) == []
    assert remote_runtime._execs is channel  # one stream for all of them


async def test_start_errors_come_back_as_their_own_class(remote_runtime: Runtime, containers: Containers) -> None:
    cid = await _running(remote_runtime, containers)
    with pytest.raises(StartFailed, match="executable file not found"):
        await remote_runtime.exec(cid, _exec("no-such-binary"), inputs([]))
    with pytest.raises(ContainerNotFound):
        await remote_runtime.exec("0" * 64, _exec("true"), inputs([]))
    _, stream = await remote_runtime.exec(cid, _exec("echo", "after"), inputs([]))  # the stream goes on
    assert _text(await collect(stream)) == b"after\n"


async def test_an_unread_exec_holds_up_no_other(remote_runtime: Runtime, containers: Containers) -> None:
    """Output beyond the window waits for the client's credit: a big output nobody reads stalls
    its own exec only; read later, it arrives whole and in order."""
    cid = await _running(remote_runtime, containers)
    lines = 3 * WINDOW // 7  # "NNNNNN\n": three windows' worth
    _, big = await remote_runtime.exec(cid, _exec("seq", "100000", str(100000 + lines - 1)), inputs([]))
    for _ in range(5):
        _, small = await asyncio.wait_for(remote_runtime.exec(cid, _exec("echo", "small"), inputs([])), 10)
        assert _text(await asyncio.wait_for(collect(small), 10)) == b"small\n"
    assert isinstance(remote_runtime, RemoteRuntime) and remote_runtime._execs is not None
    await asyncio.sleep(0.3)  # time for more than the window to arrive, if the server ignored it
    [queued] = [sum(len(m.response.data) for m in q._queue)  # type: ignore[attr-defined]
                for q in remote_runtime._execs._waiting.values()]
    assert WINDOW // 2 < queued <= WINDOW + 256 * 1024
    data = _text(await asyncio.wait_for(collect(big), 60))
    assert data == b"".join(b"%d\n" % i for i in range(100000, 100000 + lines))


async def test_an_abandoned_exec_leaves_the_stream_usable(remote_runtime: Runtime, containers: Containers) -> None:
    assert isinstance(remote_runtime, RemoteRuntime)
    cid = await _running(remote_runtime, containers)
    _, stream = await remote_runtime.exec(cid, _exec("sh", "-c", "echo first; sleep 30"), inputs([]))
    iterator = aiter(stream)
    assert (await anext(iterator)).data == b"first\n"
    await iterator.aclose()  # type: ignore[attr-defined]  # the client went away (the process runs on)
    _, again = await remote_runtime.exec(cid, _exec("echo", "second"), inputs([]))
    assert _text(await collect(again)) == b"second\n"
    assert remote_runtime._execs is not None and remote_runtime._execs.usable


async def test_a_draining_server_ends_the_stream_after_its_execs(linux_runtime: LinuxRuntime, containers: Containers,
                                                                  shim_dir: Path) -> None:
    """The shim's stop ends its exec streams (an open one would hold up the server's drain for
    its whole grace period), but only once the execs in flight ended; the client's next exec
    opens a new stream."""
    servicer = TasksServicer(linux_runtime)
    server = grpc.aio.server(options=SERVER_OPTIONS)
    shim_pb2_grpc.add_TasksServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    socket_path = f"{shim_dir}/grpc-{secrets.token_hex(3)}.sock"
    server.add_insecure_port(f"unix:{socket_path}")
    await server.start()
    channel = insecure_channel(socket_path)
    remote = RemoteRuntime(channel)
    try:
        cid = await _running(remote, containers)
        _, stream = await remote.exec(cid, _exec("sh", "-c", "sleep 0.5; echo late"), inputs([]))
        first = remote._execs
        servicer.drain()
        assert _text(await collect(stream)) == b"late\n"  # the exec in flight finished
        await _eventually_unusable(first)
        began = time.monotonic()
        await server.stop(10)
        assert time.monotonic() - began < 3  # nothing held the drain up
    finally:
        await containers.cleanup(linux_runtime)
        await remote.close()
        await channel.close()
        await server.stop(None)


async def _eventually_unusable(channel: object) -> None:
    for _ in range(200):
        if not channel.usable:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the exec channel did not end")


# The server's side alone, with execs whose timing the test sets (the real ones above).


async def _fake_exec(steps: list[pb.ExecResponse | float]) -> AsyncGenerator[pb.ExecResponse, None]:
    for step in steps:
        if isinstance(step, float):
            await asyncio.sleep(step)
        else:
            yield step


async def _served(steps: list[pb.ExecResponse | float]) -> list[tuple[float, pb.ExecChannelResponse]]:
    """The messages of one exec on a channel, with the time each was sent, until its end."""
    requests: asyncio.Queue[pb.ExecChannelRequest] = asyncio.Queue()

    async def incoming() -> AsyncIterator[pb.ExecChannelRequest]:
        while True:
            yield await requests.get()

    began = time.monotonic()
    requests.put_nowait(pb.ExecChannelRequest(tag=7, start=pb.ExecRequest(id="c")))
    out = []
    stream = ChannelRegistry().serve(incoming(), lambda _: _fake_exec(steps))
    async for message in stream:
        out.append((time.monotonic() - began, message))
        if message.end:
            break
    await stream.aclose()  # type: ignore[attr-defined]
    return out


_STARTED = pb.ExecResponse(started=pb.ExecState(exec_id="e", pid=42))


async def test_a_short_exec_is_one_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(exec_channel, "HOLD_S", 0.5)  # ample for a 10 ms exec on a busy machine
    [(_, only)] = await _served([_STARTED, 0.01])
    assert only.tag == 7 and only.end and only.code == 0 and only.response.started.pid == 42
    [(_, first), (_, last)] = await _served([_STARTED, 0.01, pb.ExecResponse(stream=1, data=b"hi\n")])
    assert first.response.started.pid == 42 and first.response.data == b"hi\n" and not first.end
    assert last.end and not last.HasField("response")


async def test_a_process_that_runs_on_is_reported_started_alone() -> None:
    [(sent, first), (ended, last)] = await _served([_STARTED, 0.3])
    assert first.response.started.pid == 42 and not first.end and not first.response.data
    assert sent < HOLD_S + 0.1 < 0.3 <= ended
    assert last.end and last.code == 0


async def test_an_exec_cancelled_while_its_start_is_held_is_closed_cleanly(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The client gives up on an exec before its start went out: the exec's stream is closed (its
    process runs on, as after a cancelled ExecOutput call), no end is sent, and the channel goes on."""
    monkeypatch.setattr(exec_channel, "HOLD_S", 0.5)
    closed = asyncio.Event()

    async def slow(_: pb.ExecRequest) -> AsyncGenerator[pb.ExecResponse, None]:
        try:
            yield _STARTED
            await asyncio.sleep(30)
            yield pb.ExecResponse(stream=1, data=b"never")
        finally:
            closed.set()

    requests: asyncio.Queue[pb.ExecChannelRequest] = asyncio.Queue()

    async def incoming() -> AsyncIterator[pb.ExecChannelRequest]:
        while True:
            yield await requests.get()

    sent: asyncio.Queue[pb.ExecChannelResponse] = asyncio.Queue()

    async def serve() -> None:
        async for message in ChannelRegistry().serve(
                incoming(), lambda r: slow(r) if r.id == "slow" else _fake_exec([_STARTED])):
            sent.put_nowait(message)

    server = asyncio.get_running_loop().create_task(serve())
    try:
        requests.put_nowait(pb.ExecChannelRequest(tag=1, start=pb.ExecRequest(id="slow")))
        await asyncio.sleep(0.05)  # within the hold
        requests.put_nowait(pb.ExecChannelRequest(tag=1, cancel=True))
        await asyncio.wait_for(closed.wait(), 5)
        requests.put_nowait(pb.ExecChannelRequest(tag=2, start=pb.ExecRequest(id="quick")))
        message = await asyncio.wait_for(sent.get(), 5)
        assert message.tag == 2 and message.end and message.response.started.pid == 42  # nothing of tag 1
        assert sent.empty()
    finally:
        server.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await server
    assert "rpc_internal_error" not in caplog.text  # how an unexpected failure is logged
