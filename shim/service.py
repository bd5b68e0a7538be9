"""``TasksServicer``: the gRPC face of any :class:`shim.api.Runtime` (convert → call → convert)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import grpc

from protos.errors import InvalidArgument
from protos.rpc import maps_errors
from protos.shim.v1 import shim_pb2 as pb
from protos.shim.v1 import shim_pb2_grpc
from shim import convert
from shim.api import AttachInput, Runtime
from shim.exec_channel import ChannelRegistry


@maps_errors
class TasksServicer(shim_pb2_grpc.TasksServicer):
    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._channels = ChannelRegistry()

    def drain(self) -> None:
        """Before the server's own drain: end the exec channels once their execs ended (an open
        stream would hold the server's stop for its whole grace period)."""
        self._channels.drain()

    async def Create(self, request: pb.CreateRequest, context: grpc.aio.ServicerContext) -> pb.CreateResponse:
        state = await self._runtime.create(convert.spec_from_proto(request.spec))
        return pb.CreateResponse(state=convert.state_to_proto(state))

    async def Start(self, request: pb.StartRequest, context: grpc.aio.ServicerContext) -> pb.StartResponse:
        return pb.StartResponse(state=convert.state_to_proto(await self._runtime.start(request.id)))

    async def Kill(self, request: pb.KillRequest, context: grpc.aio.ServicerContext) -> pb.KillResponse:
        await self._runtime.kill(request.id, request.signal or 15, request.all, manual=request.manual,
                                 cancel_restart=request.cancel_restart)
        return pb.KillResponse()

    async def Stop(self, request: pb.StopRequest, context: grpc.aio.ServicerContext) -> pb.StopResponse:
        state = await self._runtime.stop(request.id, request.signal or 15, request.timeout,
                                         manual=not request.daemon_shutdown)
        return pb.StopResponse(state=convert.state_to_proto(state))

    async def Delete(self, request: pb.DeleteRequest, context: grpc.aio.ServicerContext) -> pb.DeleteResponse:
        state = await self._runtime.delete(request.id, request.force)
        return pb.DeleteResponse(state=convert.state_to_proto(state))

    async def State(self, request: pb.StateRequest, context: grpc.aio.ServicerContext) -> pb.StateResponse:
        return pb.StateResponse(state=convert.state_to_proto(await self._runtime.state(request.id)))

    async def List(self, request: pb.ListRequest, context: grpc.aio.ServicerContext) -> pb.ListResponse:
        return pb.ListResponse(states=[convert.state_to_proto(s) for s in await self._runtime.list()])

    async def Wait(self, request: pb.WaitRequest, context: grpc.aio.ServicerContext) -> pb.WaitResponse:
        return pb.WaitResponse(state=convert.state_to_proto(await self._runtime.wait(request.id)))

    async def Attach(self, request_iterator: AsyncIterator[pb.AttachRequest],
                     context: grpc.aio.ServicerContext) -> AsyncIterator[pb.AttachResponse]:
        first = await anext(aiter(request_iterator), None)
        if first is None:
            raise InvalidArgument("attach: the first message must name the container")
        outputs = self._runtime.attach(first.id, convert.attach_options_from_request(first),
                                       _stdin(request_iterator))
        try:
            yield pb.AttachResponse(attached=True)
            async for output in outputs:
                yield convert.output_to_proto(output)
        finally:
            await _aclose(outputs)

    async def Logs(self, request: pb.LogsRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[pb.LogsResponse]:
        batches = self._runtime.log_batches(request.id, convert.logs_options_from_request(request))
        try:
            async for batch in batches:
                yield convert.log_batch_to_proto(batch)
        finally:
            await _aclose(batches)

    async def ResizePty(self, request: pb.ResizePtyRequest, context: grpc.aio.ServicerContext) -> pb.ResizePtyResponse:
        await self._runtime.resize(request.id, request.height, request.width)
        return pb.ResizePtyResponse()

    async def CloseStdin(self, request: pb.CloseStdinRequest,
                         context: grpc.aio.ServicerContext) -> pb.CloseStdinResponse:
        await self._runtime.close_stdin(request.id)
        return pb.CloseStdinResponse()

    async def Events(self, request: pb.EventsRequest,
                     context: grpc.aio.ServicerContext) -> AsyncIterator[pb.EventsResponse]:
        events = self._runtime.events()
        try:
            yield pb.EventsResponse()  # subscribed: an empty first message, as Attach's
            async for event in events:
                yield convert.event_to_proto(event)
        finally:
            await _aclose(events)


    async def Pause(self, request: pb.PauseRequest, context: grpc.aio.ServicerContext) -> pb.PauseResponse:
        return pb.PauseResponse(state=convert.state_to_proto(await self._runtime.pause(request.id)))

    async def Resume(self, request: pb.ResumeRequest, context: grpc.aio.ServicerContext) -> pb.ResumeResponse:
        return pb.ResumeResponse(state=convert.state_to_proto(await self._runtime.resume(request.id)))

    async def Update(self, request: pb.UpdateRequest, context: grpc.aio.ServicerContext) -> pb.UpdateResponse:
        state = await self._runtime.update(request.id, convert.resources_from_proto(request.resources),
                                           convert.restart_policy_from_proto(request.restart_policy))
        return pb.UpdateResponse(state=convert.state_to_proto(state))

    async def Stats(self, request: pb.StatsRequest, context: grpc.aio.ServicerContext) -> pb.StatsResponse:
        return pb.StatsResponse(stats=convert.stats_to_proto(await self._runtime.stats(request.id)))

    async def Top(self, request: pb.TopRequest, context: grpc.aio.ServicerContext) -> pb.TopResponse:
        return convert.top_to_proto(await self._runtime.top(request.id, request.ps_args))

    async def Exec(self, request_iterator: AsyncIterator[pb.ExecRequest],
                   context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ExecResponse]:
        first = await anext(aiter(request_iterator), None)
        async with contextlib.aclosing(self._exec(first, _exec_stdin(request_iterator))) as responses:
            async for response in responses:
                yield response

    async def ExecOutput(self, request: pb.ExecRequest,
                         context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ExecResponse]:
        async with contextlib.aclosing(self._exec(request, _no_stdin())) as responses:
            async for response in responses:
                yield response

    async def ExecChannel(self, request_iterator: AsyncIterator[pb.ExecChannelRequest],
                          context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ExecChannelResponse]:
        async for response in self._channels.serve(request_iterator, lambda r: self._exec(r, _no_stdin())):
            yield response

    async def _exec(self, first: pb.ExecRequest | None,
                    stdin: AsyncIterator[AttachInput]) -> AsyncGenerator[pb.ExecResponse, None]:
        if first is None or not first.HasField("spec"):
            raise InvalidArgument("exec: the first message must name the container and the process")
        state, outputs = await self._runtime.exec(first.id, convert.exec_spec_from_proto(first.spec), stdin)
        try:
            yield pb.ExecResponse(started=convert.exec_state_to_proto(state))
            async for output in outputs:
                yield convert.exec_output_to_proto(output)
        finally:
            await _aclose(outputs)

    async def ResizeExec(self, request: pb.ResizeExecRequest,
                         context: grpc.aio.ServicerContext) -> pb.ResizeExecResponse:
        await self._runtime.resize_exec(request.id, request.exec_id, request.height, request.width)
        return pb.ResizeExecResponse()

    async def CheckUser(self, request: pb.CheckUserRequest,
                        context: grpc.aio.ServicerContext) -> pb.CheckUserResponse:
        await self._runtime.check_user(request.id, request.user)
        return pb.CheckUserResponse()


async def _exec_stdin(requests: AsyncIterator[pb.ExecRequest]) -> AsyncIterator[AttachInput]:
    async for request in requests:
        yield convert.exec_input_from_proto(request)


async def _no_stdin() -> AsyncIterator[AttachInput]:
    return
    yield  # an async generator with nothing in it


async def _stdin(requests: AsyncIterator[pb.AttachRequest]) -> AsyncIterator[AttachInput]:
    async for request in requests:
        yield convert.attach_input_from_proto(request)


async def _aclose(iterator: AsyncIterator[Any]) -> None:
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        with contextlib.suppress(Exception):
            await aclose()
