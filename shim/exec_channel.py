"""The ``ExecChannel`` RPC: many execs without stdin over one long-lived gRPC stream.

A call of its own costs an exec about half of its gRPC time, on both sides (~0.3 ms of CPU
each, measured): an open stream spares that. The client tags each exec; the server runs each
as ``ExecOutput`` would, in a task of its own, and sends its responses with its tag, then one
``end`` message (with the error ``ExecOutput``'s call would have failed with). Output flows per
exec within :data:`WINDOW` bytes that the client's ``credit`` widens as it consumes, so a slow
reader of one exec holds up neither the others nor the stream.

The server ends its streams when the shim stops (:meth:`ChannelRegistry.drain`), once their
execs in flight ended: an open stream would otherwise hold up the shim's drain for its whole
grace period. A client whose stream ended opens a new one for its next exec.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncGenerator, AsyncIterator, Callable

import grpc

from protos.errors import ERROR_CLASS_KEY, BerthError, Internal, Unavailable, from_grpc
from protos.rpc import classify, rpc_errors
from protos.shim.v1 import shim_pb2 as pb
from shim import convert
from shim.api import ExecSpec, ExecState, Output

# Output bytes of one exec in flight before the client's credit: what the shim's ExecOutput
# buffers per call at most, too (gRPC's per-stream window is 64 KiB to a few MiB).
WINDOW = 1 << 20
_CODES = {code.value[0]: code for code in grpc.StatusCode}
# How long an exec's ``started`` waits to go in one message with what follows it (its first
# output, or its end): a message less on each side for the short execs, which end well within
# this (docker exec <c> true: ~1 ms); a process that runs on is reported this much later.
HOLD_S = 0.005

RunExec = Callable[[pb.ExecRequest], AsyncGenerator[pb.ExecResponse, None]]


def _end(tag: int, error: BerthError | None = None) -> pb.ExecChannelResponse:
    if error is None:
        return pb.ExecChannelResponse(tag=tag, end=True)
    return pb.ExecChannelResponse(tag=tag, end=True, code=error.grpc_code.value[0], message=error.message,
                                  error_class=type(error).__name__)


def _error(message: pb.ExecChannelResponse) -> BerthError:
    """The error an ``end`` message carries, as ``protos.rpc`` maps a failed call's."""
    code = _CODES.get(message.code, grpc.StatusCode.UNKNOWN)
    return from_grpc(code, message.message, {ERROR_CLASS_KEY: message.error_class} if message.error_class else {})


# Server ---------------------------------------------------------------------------------------


class _Window:
    """Output bytes an exec may still send before the client's next credit."""

    def __init__(self, size: int) -> None:
        self._left = size
        self._more = asyncio.Event()

    async def take(self, size: int) -> None:
        while self._left <= 0:
            self._more.clear()
            await self._more.wait()
        self._left -= size

    def give(self, size: int) -> None:
        self._left += size
        self._more.set()


class ChannelRegistry:
    """A servicer's open channels, to end them when the shim stops."""

    def __init__(self) -> None:
        self.draining = False
        self._channels: set[_ServerChannel] = set()

    async def serve(self, requests: AsyncIterator[pb.ExecChannelRequest],
                    run_exec: RunExec) -> AsyncIterator[pb.ExecChannelResponse]:
        """The responses of one ``ExecChannel`` call."""
        if self.draining:
            return
        channel = _ServerChannel(run_exec, self)
        self._channels.add(channel)
        try:
            async for response in channel.serve(requests):
                yield response
        finally:
            self._channels.discard(channel)

    def drain(self) -> None:
        """Refuse new execs; end each stream once its execs in flight ended."""
        self.draining = True
        for channel in list(self._channels):
            channel.end_when_idle()


class _ServerChannel:
    def __init__(self, run_exec: RunExec, registry: ChannelRegistry) -> None:
        self._run_exec = run_exec
        self._registry = registry
        self._out: asyncio.Queue[pb.ExecChannelResponse | None] = asyncio.Queue()
        self._execs: dict[int, tuple[asyncio.Task[None], _Window]] = {}
        self._ending = False

    async def serve(self, requests: AsyncIterator[pb.ExecChannelRequest]) -> AsyncIterator[pb.ExecChannelResponse]:
        reader = asyncio.get_running_loop().create_task(self._read(requests))
        try:
            while (response := await self._out.get()) is not None:
                yield response
        finally:
            tasks = [reader, *(task for task, _ in self._execs.values())]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def end_when_idle(self) -> None:
        self._ending = True
        if not self._execs:
            self._out.put_nowait(None)

    async def _read(self, requests: AsyncIterator[pb.ExecChannelRequest]) -> None:
        try:
            async for request in requests:
                if request.HasField("start"):
                    self._start(request.tag, request.start)
                elif request.tag in self._execs:
                    task, window = self._execs[request.tag]
                    if request.cancel:
                        task.cancel()
                    elif request.credit:
                        window.give(request.credit)
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.aio.UsageError):
            pass  # the call is gone: serve() ends with it
        self._out.put_nowait(None)  # the client closed its side: it reads no more

    def _start(self, tag: int, request: pb.ExecRequest) -> None:
        if self._registry.draining or tag in self._execs:
            error = Unavailable("the shim is stopping") if self._registry.draining else \
                Internal(f"exec channel: tag {tag} is in use")
            self._out.put_nowait(_end(tag, error))
            return
        window = _Window(WINDOW)
        task = asyncio.get_running_loop().create_task(self._relay(tag, request, window))
        self._execs[tag] = (task, window)

    async def _relay(self, tag: int, request: pb.ExecRequest, window: _Window) -> None:
        end: pb.ExecChannelResponse | None = None
        held: pb.ExecResponse | None = None  # ``started``, to go with the exec's next message
        try:
            async with contextlib.aclosing(self._run_exec(request)) as responses:
                held = await anext(responses)
                following: asyncio.Future[pb.ExecResponse] = asyncio.ensure_future(anext(responses))
                response: pb.ExecResponse | None
                try:
                    if not (await asyncio.wait((following,), timeout=HOLD_S))[0]:
                        self._send(tag, held)  # a process that runs on: its start goes alone
                        held = None
                    response = await following
                except StopAsyncIteration:
                    response = None
                except BaseException:
                    # cancelled meanwhile: the generator is closed only once nothing runs it
                    following.cancel()
                    with contextlib.suppress(BaseException):
                        await following
                    raise
                while response is not None:
                    if held is not None:
                        response.started.CopyFrom(held.started)
                        held = None
                    if response.data:
                        await window.take(len(response.data))
                    self._send(tag, response)
                    response = await anext(responses, None)
            end = _end(tag)
        except asyncio.CancelledError:
            pass  # the client cancelled it, or the stream is ending: nobody reads an end
        except Exception as exc:  # the error ExecOutput's call would have failed with
            end = _end(tag, classify(exc))
        finally:
            self._execs.pop(tag, None)
            if end is not None:
                if held is not None:
                    end.response.CopyFrom(held)  # started and ended: one message
                self._out.put_nowait(end)
            if self._ending and not self._execs:
                self._out.put_nowait(None)

    def _send(self, tag: int, response: pb.ExecResponse) -> None:
        self._out.put_nowait(pb.ExecChannelResponse(tag=tag, response=response))


# Client ---------------------------------------------------------------------------------------

_Item = pb.ExecChannelResponse | BerthError


class ExecChannelClient:
    """One ``ExecChannel`` stream to a shim, shared by a runtime proxy's execs without stdin.
    Once :attr:`usable` is false (the stream ended or failed), open another."""

    def __init__(self, stub: object) -> None:
        self._sends: asyncio.Queue[pb.ExecChannelRequest | None] = asyncio.Queue()
        self._call = stub.ExecChannel(self._requests())  # type: ignore[attr-defined]
        self._waiting: dict[int, asyncio.Queue[_Item]] = {}
        self._tags = itertools.count(1)
        self._failed: BerthError | None = None
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @property
    def usable(self) -> bool:
        return self._failed is None and not self._reader.done()

    async def exec(self, id: str, spec: ExecSpec) -> tuple[ExecState, AsyncIterator[Output]]:
        """As ``ExecOutput``: the state once the process runs (or its start error), then its output.
        An error of the stream itself is :class:`Unavailable`, or ``Unimplemented`` from a shim
        without ``ExecChannel`` (which never started anything)."""
        if self._failed is not None:
            raise self._failed
        tag = next(self._tags)
        queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._waiting[tag] = queue
        self._sends.put_nowait(pb.ExecChannelRequest(tag=tag, start=convert.exec_request(id, spec)))
        try:
            first = await queue.get()
        except BaseException:
            self._forget(tag, cancel=True)
            raise
        if isinstance(first, BerthError) or not first.HasField("response"):
            self._forget(tag, cancel=False)
            if isinstance(first, BerthError):
                raise first
            raise _error(first) if first.code else Unavailable("exec: the shim ended it before the process started")
        return convert.exec_state_from_proto(first.response.started), self._outputs(tag, queue, first)

    async def _outputs(self, tag: int, queue: asyncio.Queue[_Item], first: pb.ExecChannelResponse,
                       ) -> AsyncIterator[Output]:
        """The output from ``first`` (the start's message, which may carry output and the end
        too) on, until the end."""
        item: _Item = first
        ended = False
        consumed = 0
        try:
            while True:
                if isinstance(item, BerthError):
                    ended = True
                    raise item
                if item.response.data:
                    yield convert.exec_output_from_proto(item.response)
                    consumed += len(item.response.data)
                    if consumed >= WINDOW // 4:
                        self._send(pb.ExecChannelRequest(tag=tag, credit=consumed))
                        consumed = 0
                if item.end:
                    ended = True
                    if item.code:
                        raise _error(item)
                    return
                item = await queue.get()
        finally:
            self._forget(tag, cancel=not ended)

    def _forget(self, tag: int, *, cancel: bool) -> None:
        self._waiting.pop(tag, None)
        if cancel:
            self._send(pb.ExecChannelRequest(tag=tag, cancel=True))

    def _send(self, request: pb.ExecChannelRequest) -> None:
        if self.usable:
            self._sends.put_nowait(request)

    async def _requests(self) -> AsyncIterator[pb.ExecChannelRequest]:
        while (request := await self._sends.get()) is not None:
            yield request

    async def _read(self) -> None:
        error: BerthError = Unavailable("exec channel closed")
        try:
            async with rpc_errors():
                while (message := await self._call.read()) is not grpc.aio.EOF:
                    queue = self._waiting.get(message.tag)
                    if queue is not None:
                        queue.put_nowait(message)
            error = Unavailable("exec: the shim ended its exec channel")
        except BerthError as exc:
            error = exc
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            error = Unavailable(f"exec channel: {exc}")
        finally:
            self._failed = error
            for queue in self._waiting.values():
                queue.put_nowait(error)
            self._waiting.clear()

    def abandon(self) -> None:
        """End the stream; execs still on it end with :class:`Unavailable`."""
        self._sends.put_nowait(None)
        self._call.cancel()
        self._reader.cancel()

    async def close(self) -> None:
        self.abandon()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader
