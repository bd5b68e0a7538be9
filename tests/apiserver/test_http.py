"""Engine API conventions of the aiohttp app: hijack with half-close, bool/filter parsing,
headers on every response, unknown routes."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request

from apiserver.app import add_route, build_app
from apiserver.hijack import RAW_STREAM, DetachScanner, EngineRunner, frame, hijack, parse_detach_keys
from apiserver.httputil import bool_value, parse_filters
from protos.errors import InvalidArgument


async def _echo(request: web.Request) -> web.StreamResponse:
    """Echo everything the client sends until it half-closes, then say goodbye and close."""
    resp, conn = await hijack(request, RAW_STREAM)
    received = b""
    async for chunk in conn.chunks():
        received += chunk
    await asyncio.sleep(0.05)  # output after the client's half-close must still arrive
    await conn.write(b"echo:" + received + b"|bye")
    await conn.close()
    return resp


@pytest.fixture
async def echo_socket(tmp_path: Path) -> AsyncIterator[str]:
    def register(app: web.Application) -> None:
        add_route(app, "POST", "/echo", _echo)

    runner = EngineRunner(build_app([register]))
    await runner.setup()
    path = str(tmp_path / "api.sock")
    site = web.UnixSite(runner, path)
    await site.start()
    yield path
    await runner.cleanup()


def _exchange(path: str, headers: str, payload: bytes) -> bytes:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(path)
    # stdin sent in the same packet as the request, then half-close: like `echo hi | docker run -i`
    s.sendall(f"POST /v1.50/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n{headers}\r\n".encode() + payload)
    s.shutdown(socket.SHUT_WR)
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    s.close()
    return data


async def test_upgrade_keeps_early_stdin_and_survives_half_close(echo_socket: str) -> None:
    data = await asyncio.to_thread(_exchange, echo_socket, "Connection: Upgrade\r\nUpgrade: tcp\r\n", b"early")
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 UPGRADED")
    assert b"Content-Type: application/vnd.docker.raw-stream" in head
    assert b"Transfer-Encoding" not in head
    assert body == b"echo:early|bye"


async def test_plain_hijack_without_upgrade_is_200_raw(echo_socket: str) -> None:
    data = await asyncio.to_thread(_exchange, echo_socket, "", b"")
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert b"Transfer-Encoding" not in head
    assert body == b"echo:|bye"


def test_stdcopy_frame() -> None:
    assert frame(2, b"abc") == b"\x02\x00\x00\x00\x00\x00\x00\x03abc"


def test_detach_keys_across_chunks() -> None:
    keys = parse_detach_keys("")
    assert keys == b"\x10\x11"
    scanner = DetachScanner(keys)
    assert scanner.feed(b"hello\x10") == (b"hello", False)
    assert scanner.feed(b"\x11ignored") == (b"", True)
    scanner = DetachScanner(keys)
    assert scanner.feed(b"a\x10") == (b"a", False)
    assert scanner.feed(b"b") == (b"\x10b", False)
    assert parse_detach_keys("ctrl-a,x") == b"\x01x"
    with pytest.raises(InvalidArgument):
        parse_detach_keys("ctrl-1")


@pytest.mark.parametrize(("raw", "expected"), [("1", True), ("True", True), ("yes", True), ("0", False),
                                                ("False", False), ("no", False), ("none", False), (" ", False)])
def test_bool_values_like_moby(raw: str, expected: bool) -> None:
    assert bool_value(make_mocked_request("GET", f"/x?v={raw}"), "v") is expected


def test_filters_both_shapes_and_unknown_keys() -> None:
    assert parse_filters(json.dumps({"label": {"a=b": True}}), ["label"]) == {"label": ["a=b"]}
    assert parse_filters(json.dumps({"label": ["a=b", "c"]}), ["label"]) == {"label": ["a=b", "c"]}
    with pytest.raises(InvalidArgument, match="invalid filter 'bogus'"):
        parse_filters(json.dumps({"bogus": ["x"]}), ["label"])
    with pytest.raises(InvalidArgument):
        parse_filters("{nope", ["label"])


async def test_headers_on_every_response_and_unknown_routes() -> None:
    async with TestClient(TestServer(build_app([]))) as client:
        for path in ("/nowhere", "/v1.44/nowhere", "/v1.50/containers/json"):
            resp = await client.get(path)
            assert resp.status == 404
            assert resp.headers["Api-Version"] == "1.50"
            assert resp.headers["Content-Type"] == "application/json"
            assert await resp.json() == {"message": "page not found"}


async def test_ordinary_request_from_a_half_closing_client_is_answered(echo_socket: str) -> None:
    def exchange() -> bytes:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect(echo_socket)
        s.sendall(b"GET /v1.50/nowhere HTTP/1.1\r\nHost: x\r\n\r\n")
        s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(65536):  # ends because the server closes after answering
            data += chunk
        s.close()
        return data

    data = await asyncio.to_thread(exchange)
    assert data.startswith(b"HTTP/1.1 404")
    assert data.endswith(b'{"message":"page not found"}\n')
