"""The embedded DNS resolver: one per shim, answering at 127.0.0.11 inside every container that
is on a user-defined network, as Docker's does.

Each such container gets a UDP and a TCP socket, opened inside its namespace (on 127.0.0.11 at
ports of the shim's choosing, reached by DNAT from port 53) and served by this process's event
loop: no process or thread per container. Names are answered from the networks the asking
container is on (container name, aliases, short id, and each of them ``.<network>``); A
queries get the addresses, AAAA queries for a known name an empty answer (IPv4 networks), PTR
queries the container name. Anything else is forwarded to the upstream servers (the host's
resolvers, or the container's ``--dns``), unless the container has no external access
(internal networks only); failures are answered SERVFAIL.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import random
import socket
import struct
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field

import structlog

from shim.network.api import Endpoint

log = structlog.get_logger()

TTL = 600
UPSTREAM_TIMEOUT = 4.0
MAX_UPSTREAMS = 3

TYPE_A, TYPE_PTR, TYPE_MX, TYPE_AAAA = 1, 12, 15, 28
CLASS_IN = 1
RCODE_OK, RCODE_FORMERR, RCODE_SERVFAIL, RCODE_NXDOMAIN = 0, 1, 2, 3

_HEADER = struct.Struct(">HHHHHH")


class DnsFormatError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Question:
    name: str  # lower case, no trailing dot
    qtype: int
    qclass: int
    end: int  # offset after the question in the query


def parse_question(data: bytes) -> tuple[int, int, Question]:
    """(id, flags, first question) of a query."""
    if len(data) < _HEADER.size:
        raise DnsFormatError("short message")
    qid, flags, qdcount, _, _, _ = _HEADER.unpack_from(data)
    if qdcount < 1:
        raise DnsFormatError("no question")
    labels: list[str] = []
    pos = _HEADER.size
    while True:
        if pos >= len(data):
            raise DnsFormatError("truncated name")
        length = data[pos]
        pos += 1
        if length == 0:
            break
        if length & 0xC0 or pos + length > len(data):
            raise DnsFormatError("bad label")
        labels.append(data[pos:pos + length].decode("ascii", "replace"))
        pos += length
    if pos + 4 > len(data):
        raise DnsFormatError("truncated question")
    qtype, qclass = struct.unpack_from(">HH", data, pos)
    return qid, flags, Question(".".join(labels).lower(), qtype, qclass, pos + 4)


def encode_name(name: str) -> bytes:
    out = b""
    for label in name.split("."):
        if label:
            raw = label.encode()
            out += bytes([len(raw)]) + raw
    return out + b"\0"


def response(query: bytes, qid: int, flags: int, q: Question, rcode: int, answers: Sequence[bytes]) -> bytes:
    """A reply to ``query`` (its first question echoed) with resource records ``answers``."""
    reply_flags = 0x8000 | (flags & 0x7900) | 0x0080 | rcode  # QR, opcode+RD kept, RA
    header = _HEADER.pack(qid, reply_flags, 1, len(answers), 0, 0)
    return header + query[_HEADER.size:q.end] + b"".join(answers)


def rr(rtype: int, rdata: bytes) -> bytes:
    # The owner name points at the question's name (offset 12).
    return struct.pack(">HHHIH", 0xC00C, rtype, CLASS_IN, TTL, len(rdata)) + rdata


def ptr_name(address: str) -> str:
    return ipaddress.ip_address(address).reverse_pointer


@dataclass(slots=True)
class _Sandbox:
    container: str
    networks: set[str] = field(default_factory=set)
    upstreams: list[tuple[str, bool]] = field(default_factory=list)
    external: bool = True
    transports: list[asyncio.BaseTransport] = field(default_factory=list)
    servers: list[asyncio.Server] = field(default_factory=list)


class Resolver:
    def __init__(self) -> None:
        # network id → name → {container id: address}
        self._names: dict[str, dict[str, dict[str, str]]] = {}
        # network id → address → container name
        self._ptr: dict[str, dict[str, str]] = {}
        self._sandboxes: dict[str, _Sandbox] = {}

    # Records ------------------------------------------------------------------------------------

    def add_endpoint(self, container: str, endpoint: Endpoint) -> None:
        net = endpoint.network
        table = self._names.setdefault(net.id, {})
        for name in _names(endpoint):
            table.setdefault(name, {})[container] = endpoint.address
        if endpoint.names:
            self._ptr.setdefault(net.id, {})[endpoint.address] = endpoint.names[0]

    def remove_endpoint(self, container: str, endpoint: Endpoint) -> None:
        net = endpoint.network
        table = self._names.get(net.id, {})
        for name in _names(endpoint):
            owners = table.get(name)
            if owners is not None:
                owners.pop(container, None)
                if not owners:
                    del table[name]
        ptr = self._ptr.get(net.id, {})
        if endpoint.names and ptr.get(endpoint.address) == endpoint.names[0]:
            del ptr[endpoint.address]

    def lookup(self, container: str, name: str) -> list[str] | None:
        """Addresses of ``name`` as seen from ``container``; None if it is not a known name."""
        sandbox = self._sandboxes.get(container)
        if sandbox is None:
            return None
        found: list[str] = []
        known = False
        for net in sandbox.networks:
            owners = self._names.get(net, {}).get(name)
            if owners:
                known = True
                found += [a for a in owners.values() if a not in found]
        return found if known else None

    def reverse(self, container: str, name: str) -> str | None:
        sandbox = self._sandboxes.get(container)
        if sandbox is None:
            return None
        for net in sandbox.networks:
            for address, owner in self._ptr.get(net, {}).items():
                if ptr_name(address) == name:
                    return owner
        return None

    # Sandboxes ------------------------------------------------------------------------------------

    async def serve(self, container: str, udp: socket.socket, tcp: socket.socket, *, networks: Sequence[str],
                    upstreams: Sequence[tuple[str, bool]], external: bool) -> None:
        """Answer queries arriving on ``udp``/``tcp`` (sockets of the container's namespace)."""
        await self.stop(container)
        sandbox = _Sandbox(container, set(networks), list(upstreams)[:MAX_UPSTREAMS], external)
        self._sandboxes[container] = sandbox
        loop = asyncio.get_running_loop()
        udp.setblocking(False)
        tcp.setblocking(False)
        transport, _ = await loop.create_datagram_endpoint(lambda: _UdpServer(self, container), sock=udp)
        sandbox.transports.append(transport)
        server = await asyncio.start_server(
            lambda r, w: self._tcp_client(container, r, w), sock=tcp)
        sandbox.servers.append(server)

    def update(self, container: str, *, networks: Sequence[str], external: bool) -> None:
        sandbox = self._sandboxes.get(container)
        if sandbox is not None:
            sandbox.networks = set(networks)
            sandbox.external = external

    def serving(self, container: str) -> bool:
        return container in self._sandboxes

    async def stop(self, container: str) -> None:
        sandbox = self._sandboxes.pop(container, None)
        if sandbox is None:
            return
        for transport in sandbox.transports:
            transport.close()
        for server in sandbox.servers:
            server.close()
            with contextlib.suppress(Exception):
                await server.wait_closed()

    async def close(self) -> None:
        for container in list(self._sandboxes):
            await self.stop(container)

    # Queries --------------------------------------------------------------------------------------

    async def answer(self, container: str, query: bytes, *, tcp: bool) -> bytes | None:
        try:
            qid, flags, q = parse_question(query)
        except DnsFormatError:
            if len(query) >= 2:
                return _HEADER.pack(struct.unpack_from(">H", query)[0], 0x8000 | RCODE_FORMERR, 0, 0, 0, 0)
            return None
        if flags & 0x8000:
            return None  # a response: not for us
        local = self._local(container, query, qid, flags, q)
        if local is not None:
            return local
        sandbox = self._sandboxes.get(container)
        if sandbox is not None and sandbox.external:
            for server, _ in sandbox.upstreams:
                reply = await _forward(server, query, tcp=tcp)
                if reply is not None and len(reply) >= 4 and reply[3] & 0x0F not in (2, 5):
                    return reply
        return response(query, qid, flags, q, RCODE_SERVFAIL, ())

    def _local(self, container: str, query: bytes, qid: int, flags: int, q: Question) -> bytes | None:
        if q.qclass != CLASS_IN:
            return None
        if q.qtype in (TYPE_A, TYPE_AAAA, TYPE_MX):
            addresses = self.lookup(container, q.name)
            if addresses is None:
                return None
            answers: list[bytes] = []
            if q.qtype == TYPE_A:
                shuffled = list(addresses)
                random.shuffle(shuffled)
                answers = [rr(TYPE_A, socket.inet_aton(a)) for a in shuffled]
            return response(query, qid, flags, q, RCODE_OK, answers)
        if q.qtype == TYPE_PTR:
            owner = self.reverse(container, q.name)
            if owner is None:
                return None
            return response(query, qid, flags, q, RCODE_OK, [rr(TYPE_PTR, encode_name(owner))])
        return None

    async def _tcp_client(self, container: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    size = struct.unpack(">H", await reader.readexactly(2))[0]
                    query = await reader.readexactly(size)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                reply = await self.answer(container, query, tcp=True)
                if reply is None:
                    return
                writer.write(struct.pack(">H", len(reply)) + reply)
                await writer.drain()
        finally:
            writer.close()


class _UdpServer(asyncio.DatagramProtocol):
    def __init__(self, resolver: Resolver, container: str) -> None:
        self._resolver = resolver
        self._container = container
        self._transport: asyncio.DatagramTransport | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = typing.cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        task = asyncio.get_running_loop().create_task(self._reply(data, addr))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reply(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            reply = await self._resolver.answer(self._container, data, tcp=False)
        except Exception as exc:  # one bad query must not stop the resolver
            log.warning("dns_query_failed", container=self._container[:12], error=str(exc))
            return
        if reply is None or self._transport is None or self._transport.is_closing():
            return
        self._transport.sendto(reply, addr)

    def connection_lost(self, exc: Exception | None) -> None:
        for task in self._tasks:
            task.cancel()


class _Exchange(asyncio.DatagramProtocol):
    def __init__(self, done: asyncio.Future[bytes], qid: bytes) -> None:
        self._done = done
        self._qid = qid

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if data[:2] == self._qid and not self._done.done():
            self._done.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self._done.done():
            self._done.set_exception(exc)


async def _forward(server: str, query: bytes, *, tcp: bool) -> bytes | None:
    """Ask ``server`` (from the shim's own namespace); None on timeout or error."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(UPSTREAM_TIMEOUT):
            if tcp:
                reader, writer = await asyncio.open_connection(server, 53)
                try:
                    writer.write(struct.pack(">H", len(query)) + query)
                    size = struct.unpack(">H", await reader.readexactly(2))[0]
                    return await reader.readexactly(size)
                finally:
                    writer.close()
            done: asyncio.Future[bytes] = loop.create_future()
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _Exchange(done, query[:2]), remote_addr=(server, 53))
            try:
                transport.sendto(query)
                return await done
            finally:
                transport.close()
    except (TimeoutError, OSError, asyncio.IncompleteReadError):
        return None


def _names(endpoint: Endpoint) -> set[str]:
    names = {n.lower() for n in endpoint.names if n}
    return names | {f"{n}.{endpoint.network.name.lower()}" for n in names}
