"""Every error class survives domain → gRPC → domain → HTTP with its class and message intact."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from apiserver.app import add_route, build_app
from protos import errors
from protos.rpc import insecure_channel, maps_errors, rpc_errors, stream_errors


def _leaf_classes() -> list[type[errors.BerthError]]:
    found: list[type[errors.BerthError]] = []
    stack: list[type[errors.BerthError]] = [errors.BerthError]
    while stack:
        cls = stack.pop()
        found.append(cls)
        stack.extend(cls.__subclasses__())
    return sorted(found, key=lambda c: c.__name__)


CLASSES = _leaf_classes()


@maps_errors
class _Raiser:
    async def Unary(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        raise errors.error_class(request.decode())(f"message for {request.decode()} with “unicode”")

    async def Stream(self, request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        yield b"first"
        raise errors.error_class(request.decode())("mid-stream failure")


@pytest.fixture
async def channel(tmp_path: Path) -> AsyncIterator[grpc.aio.Channel]:
    server = grpc.aio.server()
    servicer = _Raiser()
    handler = grpc.method_handlers_generic_handler("berth.test.Raiser", {
        "Unary": grpc.unary_unary_rpc_method_handler(servicer.Unary),
        "Stream": grpc.unary_stream_rpc_method_handler(servicer.Stream),
    })
    server.add_generic_rpc_handlers((handler,))
    sock = tmp_path / "raiser.sock"
    server.add_insecure_port(f"unix:{sock}")
    await server.start()
    ch = insecure_channel(str(sock))
    yield ch
    await ch.close()
    await server.stop(None)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
async def test_class_and_message_survive_grpc(channel: grpc.aio.Channel, cls: type[errors.BerthError]) -> None:
    call = channel.unary_unary("/berth.test.Raiser/Unary")
    with pytest.raises(cls) as info:
        async with rpc_errors():
            await call(cls.__name__.encode())
    assert type(info.value) is cls
    assert info.value.message == f"message for {cls.__name__} with “unicode”"


@pytest.mark.parametrize("cls", [errors.ContainerNotFound, errors.Conflict, errors.NotModified])
async def test_class_survives_a_failing_stream(channel: grpc.aio.Channel, cls: type[errors.BerthError]) -> None:
    call = channel.unary_stream("/berth.test.Raiser/Stream")
    got: list[bytes] = []
    with pytest.raises(cls):
        async for item in stream_errors(call(cls.__name__.encode())):
            got.append(item)
    assert got == [b"first"]


def test_unknown_class_name_falls_back_by_code() -> None:
    err = errors.from_grpc(grpc.StatusCode.NOT_FOUND, "gone", {"berth-error-class": "FromTheFuture"})
    assert type(err) is errors.BerthError and err.message == "gone"
    err = errors.from_grpc(grpc.StatusCode.NOT_FOUND, "gone", {})
    assert type(err) is errors.NotFound


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
async def test_http_mapping(channel: grpc.aio.Channel, cls: type[errors.BerthError]) -> None:
    """The class that came back over gRPC becomes its HTTP status and a Docker error body."""
    call = channel.unary_unary("/berth.test.Raiser/Unary")

    async def handler(request: web.Request) -> web.StreamResponse:
        async with rpc_errors():
            await call(cls.__name__.encode())
        return web.Response(status=200)

    def register(app: web.Application) -> None:
        add_route(app, "GET", "/fail", handler)

    async with TestClient(TestServer(build_app([register]))) as client:
        resp = await client.get("/v1.44/fail")
        assert resp.status == cls.http_status
        if cls.http_status == 304:
            assert await resp.read() == b""
        else:
            assert resp.headers["Content-Type"] == "application/json"
            assert await resp.json() == {"message": f"message for {cls.__name__} with “unicode”"}
