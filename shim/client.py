"""``RemoteRuntime``: the :class:`shim.api.Runtime` of a host, over its shim's gRPC socket.

Errors come back as the exact classes the shim raised (``protos.rpc``). Like the local
runtime, an ``attach()`` made before ``start()`` is in place before the process runs, and an
``events()`` stream sees every transition caused by a later call: the server confirms both
subscriptions with an empty first message, and the calls that cause transitions wait for it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any, TypeVar

import grpc

from protos.errors import Unavailable, Unimplemented
from protos.rpc import rpc_errors, stream_errors
from protos.shim.v1 import shim_pb2 as pb
from protos.shim.v1 import shim_pb2_grpc
from shim import convert
from shim.api import (
    AttachInput,
    AttachOptions,
    ContainerSpec,
    ContainerState,
    ContainerStats,
    ExecSpec,
    ExecState,
    LogBatch,
    LogEntry,
    LogsOptions,
    Output,
    Resources,
    RestartPolicy,
    TaskEvent,
    TopResult,
)
from shim.exec_channel import ExecChannelClient
from shim.supervisor.direct import DirectExecs
from shim.supervisor.exec_stream import Unreachable

T = TypeVar("T")


class RemoteRuntime:
    def __init__(self, channel: grpc.aio.Channel, *, direct: DirectExecs | None = None) -> None:
        self._channel = channel
        # The node's supervisor, when it is on this host: attached execs go straight to it.
        self._direct = direct
        self._stub = shim_pb2_grpc.TasksStub(channel)  # type: ignore[no-untyped-call]
        # The stream that carries execs without stdin (see shim.exec_channel); None until the
        # first, and for good once the shim turned out not to have it.
        self._execs: ExecChannelClient | None = None
        self._execs_unimplemented = False
        # Subscriptions not yet confirmed by the server: (container id, or "" for events; future).
        self._pending: set[tuple[str, asyncio.Future[None]]] = set()

    def _track(self, id: str, confirmed: asyncio.Future[None]) -> None:
        entry = (id, confirmed)
        self._pending.add(entry)

        def done(fut: asyncio.Future[None]) -> None:
            self._pending.discard(entry)
            if not fut.cancelled():
                fut.exception()  # retrieved here too: the caller may never iterate the stream

        confirmed.add_done_callback(done)

    async def _subscriptions_in_place(self, id: str = "") -> None:
        """Let event subscriptions and attachments (to ``id``) made before this call take effect."""
        pending = [fut for key, fut in self._pending if key in ("", id)]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    async def create(self, spec: ContainerSpec) -> ContainerState:
        await self._subscriptions_in_place()
        async with rpc_errors():
            reply = await self._stub.Create(pb.CreateRequest(spec=convert.spec_to_proto(spec)))
        return convert.state_from_proto(reply.state)

    async def start(self, id: str) -> ContainerState:
        await self._subscriptions_in_place(id)
        async with rpc_errors():
            reply = await self._stub.Start(pb.StartRequest(id=id))
        return convert.state_from_proto(reply.state)

    async def kill(self, id: str, signal: int = 15, all: bool = False, *, manual: bool = False,
                   cancel_restart: bool = False) -> None:
        await self._subscriptions_in_place()
        async with rpc_errors():
            await self._stub.Kill(pb.KillRequest(id=id, signal=signal, all=all, manual=manual,
                                                 cancel_restart=cancel_restart))

    async def stop(self, id: str, signal: int = 15, timeout: float = 10.0, *,
                   manual: bool = True) -> ContainerState:
        await self._subscriptions_in_place()
        async with rpc_errors():
            reply = await self._stub.Stop(pb.StopRequest(id=id, signal=signal, timeout=timeout,
                                                         daemon_shutdown=not manual))
        return convert.state_from_proto(reply.state)

    async def delete(self, id: str, force: bool = False) -> ContainerState:
        await self._subscriptions_in_place()
        async with rpc_errors():
            reply = await self._stub.Delete(pb.DeleteRequest(id=id, force=force))
        return convert.state_from_proto(reply.state)

    async def state(self, id: str) -> ContainerState:
        async with rpc_errors():
            reply = await self._stub.State(pb.StateRequest(id=id))
        return convert.state_from_proto(reply.state)

    async def list(self) -> list[ContainerState]:
        async with rpc_errors():
            reply = await self._stub.List(pb.ListRequest())
        return [convert.state_from_proto(s) for s in reply.states]

    async def wait(self, id: str) -> ContainerState:
        async with rpc_errors():
            reply = await self._stub.Wait(pb.WaitRequest(id=id))
        return convert.state_from_proto(reply.state)

    def attach(self, id: str, options: AttachOptions, stdin: AsyncIterator[AttachInput]) -> AsyncIterator[Output]:
        async def requests() -> AsyncIterator[pb.AttachRequest]:
            yield convert.attach_request(id, options)
            if options.stdin:
                async for item in stdin:
                    yield convert.attach_input_to_proto(item)
                    if item.close:
                        return

        call = self._stub.Attach(requests())
        attached = asyncio.ensure_future(_first_message(call))
        self._track(id, attached)
        return _messages_after(call, attached, convert.output_from_proto)

    async def logs(self, id: str, options: LogsOptions) -> AsyncIterator[LogEntry]:
        async with contextlib.aclosing(self.log_batches(id, options)) as batches:
            async for batch in batches:
                for entry in batch.entries():
                    yield entry

    async def log_batches(self, id: str, options: LogsOptions) -> AsyncGenerator[LogBatch, None]:
        call = self._stub.Logs(convert.logs_request(id, options))
        try:
            async for reply in stream_errors(call):
                batch = convert.log_batch_from_proto(reply)
                if batch:
                    yield batch
        finally:
            call.cancel()

    async def resize(self, id: str, height: int, width: int) -> None:
        async with rpc_errors():
            await self._stub.ResizePty(pb.ResizePtyRequest(id=id, height=height, width=width))

    async def close_stdin(self, id: str) -> None:
        async with rpc_errors():
            await self._stub.CloseStdin(pb.CloseStdinRequest(id=id))

    def events(self) -> AsyncIterator[TaskEvent]:
        call = self._stub.Events(pb.EventsRequest())
        subscribed = asyncio.ensure_future(_first_message(call))
        self._track("", subscribed)
        return _messages_after(call, subscribed, convert.event_from_proto)

    async def pause(self, id: str) -> ContainerState:
        await self._subscriptions_in_place()
        async with rpc_errors():
            reply = await self._stub.Pause(pb.PauseRequest(id=id))
        return convert.state_from_proto(reply.state)

    async def resume(self, id: str) -> ContainerState:
        await self._subscriptions_in_place()
        async with rpc_errors():
            reply = await self._stub.Resume(pb.ResumeRequest(id=id))
        return convert.state_from_proto(reply.state)

    async def update(self, id: str, resources: Resources, restart_policy: RestartPolicy) -> ContainerState:
        await self._subscriptions_in_place()
        async with rpc_errors():
            reply = await self._stub.Update(pb.UpdateRequest(
                id=id, resources=convert.resources_to_proto(resources),
                restart_policy=convert.restart_policy_to_proto(restart_policy)))
        return convert.state_from_proto(reply.state)

    async def stats(self, id: str) -> ContainerStats:
        async with rpc_errors():
            reply = await self._stub.Stats(pb.StatsRequest(id=id))
        return convert.stats_from_proto(reply.stats)

    async def top(self, id: str, ps_args: str) -> TopResult:
        async with rpc_errors():
            reply = await self._stub.Top(pb.TopRequest(id=id, ps_args=ps_args))
        return convert.top_from_proto(reply)

    async def exec(self, id: str, spec: ExecSpec,
                   stdin: AsyncIterator[AttachInput]) -> tuple[ExecState, AsyncIterator[Output]]:
        await self._subscriptions_in_place()
        if self._direct is not None and not spec.detach:
            with contextlib.suppress(Unreachable):  # nothing was sent: the shim's way, then
                return await self._direct.exec(id, spec, stdin)
        if not spec.process.open_stdin or spec.detach:
            # Nothing goes up: on the exec channel, else one request (a shim from before
            # ExecOutput gets the stream call).
            channel = self._exec_channel()
            if channel is not None:
                try:
                    return await channel.exec(id, spec)
                except Unimplemented:
                    self._execs_unimplemented = True  # a shim from before ExecChannel: nothing ran
            call = self._stub.ExecOutput(convert.exec_request(id, spec))
            try:
                return await self._exec_started(call)
            except Unimplemented:
                pass

        async def requests() -> AsyncIterator[pb.ExecRequest]:
            yield convert.exec_request(id, spec)
            if spec.process.open_stdin and not spec.detach:
                async for item in stdin:
                    yield convert.exec_input_to_proto(item)
                    if item.close:
                        return

        return await self._exec_started(self._stub.Exec(requests()))

    def _exec_channel(self) -> ExecChannelClient | None:
        """The exec channel, opened anew if the last one ended; a stream opened before the shim went
        away is only known to be gone at its next read, so a connection not up now gets a new one."""
        if self._execs_unimplemented:
            return None
        if self._execs is None or not self._execs.usable or \
                self._channel.get_state() != grpc.ChannelConnectivity.READY:
            if self._execs is not None:
                self._execs.abandon()
            self._execs = ExecChannelClient(self._stub)
        return self._execs

    async def close(self) -> None:
        """End the exec channel (before its gRPC channel closes)."""
        if self._direct is not None:
            self._direct.close()
        if self._execs is not None:
            await self._execs.close()
            self._execs = None

    async def _exec_started(self, call: Any) -> tuple[ExecState, AsyncIterator[Output]]:
        """The exec's state once the shim says it runs, and its output."""
        try:
            async with rpc_errors():
                first = await call.read()
        except BaseException:
            call.cancel()
            raise
        if first is grpc.aio.EOF:
            call.cancel()
            raise Unavailable("exec: the shim ended the stream before the process started")
        return convert.exec_state_from_proto(first.started), self._exec_stream(call)

    @staticmethod
    async def _exec_stream(call: Any) -> AsyncIterator[Output]:
        try:
            while True:
                async with rpc_errors():
                    message = await call.read()
                if message is grpc.aio.EOF:
                    return
                yield convert.exec_output_from_proto(message)
        finally:
            call.cancel()

    async def resize_exec(self, id: str, exec_id: str, height: int, width: int) -> None:
        async with rpc_errors():
            await self._stub.ResizeExec(pb.ResizeExecRequest(id=id, exec_id=exec_id, height=height, width=width))

    async def check_user(self, id: str, user: str) -> None:
        async with rpc_errors():
            await self._stub.CheckUser(pb.CheckUserRequest(id=id, user=user))


async def _first_message(call: Any) -> None:
    """Wait for the server's confirmation that a subscription is registered (a failed call
    raises its error here)."""
    async with rpc_errors():
        await call.read()


async def _messages_after(call: Any, first: asyncio.Future[None], decode: Callable[[Any], T]) -> AsyncIterator[T]:
    """The messages of a server stream whose first message ``first`` waited for (a subscription or
    an attachment in place), decoded; the call is cancelled when the caller stops reading."""
    try:
        await first
        while True:
            async with rpc_errors():
                message = await call.read()
            if message is grpc.aio.EOF:
                return
            yield decode(message)
    finally:
        call.cancel()
