"""Hijacked connections for attach and exec start (ENGINE-API.md §2.2, §7.3-7.5).

After the ``101 UPGRADED`` (or, for clients that did not ask to upgrade, ``200 OK``) header, the
socket carries raw bytes both ways. aiohttp closes a connection whose peer half-closes, but the
docker CLI half-closes its write side as soon as stdin ends (or at once when stdin is not
attached) and still expects output. So the handler takes the transport over with its own
protocol: reads become an async queue, EOF from the client is just "stdin ended", and only a
write failure or ``connection_lost`` means the client is gone.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web
from aiohttp.helpers import DEFAULT_CHUNK_SIZE
from aiohttp.http_parser import HttpRequestParserPy
from aiohttp.web_protocol import MAX_MSG_QUEUE_SIZE, RequestHandler, RequestPayloadError
from aiohttp.web_server import Server

RAW_STREAM = "application/vnd.docker.raw-stream"
MULTIPLEXED_STREAM = "application/vnd.docker.multiplexed-stream"

_HIGH_WATER = 1024 * 1024


class _HalfCloseTolerantHandler(RequestHandler):
    """Two departures from aiohttp's protocol, both needed by ``Upgrade: tcp`` hijacks:

    * aiohttp's C parser only honours ``Upgrade: websocket``; its pure-Python parser also accepts
      ``tcp``. Without it, stdin sent right behind the request is parsed as a next request.
    * aiohttp closes the connection when the peer half-closes. After an upgrade the docker CLI
      half-closes as soon as its stdin ends (possibly before our handler ran) and still expects
      output, so the EOF of a connection with a request in flight is only remembered.
    """

    __slots__ = ("half_closed",)

    def __init__(self, manager: Server, *, loop: asyncio.AbstractEventLoop, **kwargs: Any) -> None:
        super().__init__(manager, loop=loop, **kwargs)
        self._parser = HttpRequestParserPy(
            self, loop, kwargs.get("read_bufsize", DEFAULT_CHUNK_SIZE),
            max_line_size=kwargs.get("max_line_size", 8190), max_field_size=kwargs.get("max_field_size", 8190),
            max_headers=kwargs.get("max_headers", 128), payload_exception=RequestPayloadError,
            auto_decompress=kwargs.get("auto_decompress", True), max_msg_queue_size=MAX_MSG_QUEUE_SIZE)
        self.half_closed = False

    def eof_received(self) -> bool | None:  # type: ignore[override]  # aiohttp types it as None
        idle = self._waiter is not None and not self._waiter.done()
        if self._upgraded or not idle:
            # A request is in flight: answer it (a hijack keeps streaming), then close.
            self.half_closed = True
            if not self._upgraded:
                self._close = True  # no keep-alive after this response: the peer sends nothing more
            return True
        return None


class _EngineServer(Server):
    def __call__(self) -> RequestHandler:
        return _HalfCloseTolerantHandler(self, loop=self._loop, **self._kwargs)


class EngineRunner(web.AppRunner):
    """An ``AppRunner`` whose connections tolerate a client half-close after an upgrade."""

    async def _make_server(self) -> Server:
        server = await super()._make_server()
        server.__class__ = _EngineServer
        return server


class _HijackProtocol(asyncio.Protocol):
    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.incoming: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.lost = asyncio.Event()
        self.on_lost: list[Callable[[], None]] = []
        self._can_write = asyncio.Event()
        self._can_write.set()

    def data_received(self, data: bytes) -> None:
        self.incoming.put_nowait(data)

    def eof_received(self) -> bool:
        self.incoming.put_nowait(None)
        return True  # keep our write side open: half-close is not a disconnect

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set()
        self._can_write.set()
        self.incoming.put_nowait(None)
        callbacks, self.on_lost = self.on_lost, []
        for callback in callbacks:
            callback()

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    async def drain(self) -> None:
        await self._can_write.wait()


class HijackedConnection:
    """The raw connection after the upgrade: read client bytes, write output, close."""

    def __init__(self, protocol: _HijackProtocol, initial: bytes) -> None:
        self._protocol = protocol
        if initial:
            protocol.incoming.put_nowait(initial)
        self._eof = False

    @property
    def closed(self) -> bool:
        return self._protocol.lost.is_set()

    async def wait_closed(self) -> None:
        await self._protocol.lost.wait()

    def on_close(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the client is gone (at once if it is already)."""
        if self.closed:
            callback()
        else:
            self._protocol.on_lost.append(callback)

    async def read(self) -> bytes | None:
        """Next chunk from the client; ``None`` once it half-closed or disconnected."""
        if self._eof:
            return None
        chunk = await self._protocol.incoming.get()
        if chunk is None:
            self._eof = True
        return chunk

    async def chunks(self) -> AsyncIterator[bytes]:
        while (chunk := await self.read()) is not None:
            yield chunk

    async def write(self, data: bytes) -> bool:
        """Write output; False if the client is gone."""
        if self.closed:
            return False
        self._protocol.transport.write(data)
        if self._protocol.transport.get_write_buffer_size() > _HIGH_WATER:
            await self._protocol.drain()
        return not self.closed

    async def close(self) -> None:
        transport = self._protocol.transport
        if not transport.is_closing():
            if transport.can_write_eof():
                try:
                    transport.write_eof()
                except OSError:
                    pass
            transport.close()


def wants_upgrade(request: web.Request) -> bool:
    connection = request.headers.get("Connection", "").lower()
    return "upgrade" in connection and request.headers.get("Upgrade", "").lower() == "tcp"


async def hijack(request: web.Request, content_type: str) -> tuple[web.StreamResponse, HijackedConnection]:
    """Send the upgrade header and take the connection over. The handler must return the
    response object once it is done with the connection (aiohttp then writes nothing more)."""
    upgrade = wants_upgrade(request)
    resp = web.StreamResponse(status=101 if upgrade else 200, reason="UPGRADED" if upgrade else "OK")
    resp.headers["Content-Type"] = content_type
    if upgrade:
        resp.headers["Connection"] = "Upgrade"
        resp.headers["Upgrade"] = "tcp"
    # The raw stream has no framing: no chunked encoding (aiohttp's WebSocketResponse does the same).
    resp._length_check = False
    resp.force_close()
    await resp.prepare(request)
    transport = request.transport
    assert transport is not None  # a stream transport: asyncio's, or uvloop's (not a subclass)
    handler = request.protocol
    # Bytes the client sent right behind the request headers (stdin typed before the 101 arrived).
    initial = bytes(getattr(handler, "_message_tail", b""))
    if initial:
        handler._message_tail = b""
    protocol = _HijackProtocol(transport)
    transport.set_protocol(protocol)
    conn = HijackedConnection(protocol, initial)
    if getattr(handler, "half_closed", False):
        protocol.incoming.put_nowait(None)  # the client's stdin ended before we took over
    else:
        transport.resume_reading()
    return resp, conn


def frame(stream: int, data: bytes) -> bytes:
    """stdcopy framing: 1 byte stream, 3 zero bytes, 4 bytes big-endian length, payload."""
    return struct.pack(">BxxxL", stream, len(data)) + data


class DetachScanner:
    """Finds the detach key sequence (default ctrl-p ctrl-q) in stdin, across chunk borders.

    Bytes that might start the sequence are held back until it is clear they do not."""

    def __init__(self, keys: bytes) -> None:
        self.keys = keys
        self._held = b""

    def feed(self, chunk: bytes) -> tuple[bytes, bool]:
        """Returns (bytes to pass on, detached?)."""
        if not self.keys:
            return chunk, False
        data = self._held + chunk
        self._held = b""
        idx = data.find(self.keys)
        if idx >= 0:
            return data[:idx], True
        # hold back the longest suffix that is a prefix of the key sequence
        for n in range(min(len(self.keys) - 1, len(data)), 0, -1):
            if self.keys.startswith(data[-n:]):
                self._held = data[-n:]
                return data[:-n], False
        return data, False

    def flush(self) -> bytes:
        held, self._held = self._held, b""
        return held


def parse_detach_keys(spec: str) -> bytes:
    """Docker's detach key syntax: comma separated ``ctrl-<c>`` or single characters."""
    from protos.errors import InvalidArgument

    if not spec:
        return b"\x10\x11"
    out = bytearray()
    for part in spec.split(","):
        part = part.strip()
        if len(part) == 1:
            out.append(ord(part))
            continue
        if not part.startswith("ctrl-") or len(part) != 6:
            raise InvalidArgument(f"Invalid detach keys ({spec}) provided")
        c = part[5]
        if "a" <= c <= "z":
            out.append(ord(c) - ord("a") + 1)
        elif c in "@[\\]^_":
            out.append({"@": 0, "[": 27, "\\": 28, "]": 29, "^": 30, "_": 31}[c])
        else:
            raise InvalidArgument(f"Invalid detach keys ({spec}) provided")
    return bytes(out)
