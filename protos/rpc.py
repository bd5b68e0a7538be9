"""gRPC plumbing shared by every servicer and client proxy: error mapping and channels.

Servers: decorate a servicer class with ``@maps_errors``; any ``BerthError`` raised by the
implementation aborts the RPC with its gRPC code, its message, and its class name in trailing
metadata. Anything else becomes INTERNAL (logged by the caller's interceptor, message kept short).

Clients: wrap calls in ``async with rpc_errors():`` (or iterate through ``stream_errors``) to turn
``grpc.aio.AioRpcError`` back into the exact domain class.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Protocol, TypeVar

import grpc
import structlog

from protos.errors import ERROR_CLASS_KEY, BerthError, Internal, Unavailable, from_grpc

log = structlog.get_logger()

T = TypeVar("T")

# Keep messages flowing for big layers and long log lines; payloads are chunked anyway.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]
# Servers must accept the clients' keepalive pings on idle streams (Wait, Logs -f, Events): at
# gRPC's default a server answers "too many pings" and drops the channel after ~90 s.
SERVER_OPTIONS: list[tuple[str, Any]] = [*CHANNEL_OPTIONS, ("grpc.http2.min_ping_interval_without_data_ms", 10_000)]


def classify(exc: BaseException) -> BerthError:
    """The domain error to send for ``exc``: itself, or Internal (logged) for anything else."""
    if isinstance(exc, BerthError):
        return exc
    log.error("rpc_internal_error", error=repr(exc), exc_info=exc)
    return Internal(f"internal error: {type(exc).__name__}: {exc}")


async def _abort(context: grpc.aio.ServicerContext, err: BerthError) -> None:
    context.set_trailing_metadata(((ERROR_CLASS_KEY, type(err).__name__),))
    await context.abort(err.grpc_code, err.message)


def _wrap_unary(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await fn(self, request, context)
        except asyncio.CancelledError:
            raise
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # mapped, not swallowed: the peer gets the class back
            await _abort(context, classify(exc))

    return wrapper


def _wrap_stream(fn: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            async for item in fn(self, request, context):
                yield item
        except asyncio.CancelledError:
            raise
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _abort(context, classify(exc))

    return wrapper


C = TypeVar("C", bound=type)


def maps_errors(cls: C) -> C:
    """Class decorator for servicers: every public RPC method maps domain errors to gRPC."""
    for name, member in list(vars(cls).items()):
        if name.startswith("_") or not callable(member):
            continue
        if inspect.isasyncgenfunction(member):
            setattr(cls, name, _wrap_stream(member))
        elif inspect.iscoroutinefunction(member):
            setattr(cls, name, _wrap_unary(member))
    return cls


def error_from_rpc(exc: grpc.aio.AioRpcError) -> BerthError:
    trailing = {k: v for k, v in (exc.trailing_metadata() or ()) if isinstance(v, str)}
    code = exc.code()
    details = exc.details() or ""
    if code == grpc.StatusCode.UNAVAILABLE and ERROR_CLASS_KEY not in trailing:
        return Unavailable(f"service unavailable: {details}")
    return from_grpc(code, details, trailing)


@asynccontextmanager
async def rpc_errors() -> AsyncIterator[None]:
    """Turn a failed RPC into the domain error the server raised."""
    try:
        yield
    except grpc.aio.AioRpcError as exc:
        raise error_from_rpc(exc) from None


async def stream_errors(stream: AsyncIterator[T]) -> AsyncIterator[T]:
    """Iterate a server stream, mapping a failed RPC to its domain error."""
    try:
        async for item in stream:
            yield item
    except grpc.aio.AioRpcError as exc:
        raise error_from_rpc(exc) from None


def channel_target(address: str) -> str:
    """gRPC target for an address: ``unix:/path`` or ``/path`` → unix socket, else host:port."""
    if address.startswith("unix:"):
        return address
    if address.startswith("/"):
        return f"unix:{address}"
    return address


def insecure_channel(address: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(channel_target(address), options=CHANNEL_OPTIONS)


def secure_channel(address: str, credentials: grpc.ChannelCredentials) -> grpc.aio.Channel:
    return grpc.aio.secure_channel(channel_target(address), credentials, options=CHANNEL_OPTIONS)


class _DataMessage(Protocol):
    data: bytes


async def request_data(first: _DataMessage | None, rest: AsyncIterator[_DataMessage]) -> AsyncIterator[bytes]:
    """The ``data`` of a client stream's messages, ``first`` (read already, for its options) and
    the rest; empty pieces are skipped."""
    if first is not None and first.data:
        yield first.data
    async for request in rest:
        if request.data:
            yield request.data
