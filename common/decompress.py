"""A file object that turns a possibly compressed tar stream into a plain one.

``PUT /containers/{id}/archive`` accepts a tar that is plain, gzip, bzip2, xz or zstd compressed
(Docker's ``archive.DecompressStream``). Berth always decompresses on the host side with the
standard library's codecs and ``zstandard`` (C implementations, no helper programs) and hands a plain tar to
whatever writes into the container: moby once ran ``xz``/``unpigz`` resolved inside the
container's filesystem (CVE-2026-41567).
"""

from __future__ import annotations

import asyncio
import bz2
import contextlib
import lzma
import queue
import zlib
from collections.abc import AsyncIterator
from typing import Protocol

from common.zstd import ZSTD_MAGIC, ZstdError, ZstdReader

CHUNK = 1 << 20
GZIP_MAGIC = b"\x1f\x8b\x08"
BZIP2_MAGIC = b"BZh"
XZ_MAGIC = b"\xfd7zXZ\x00"


class DecompressError(Exception):
    """The stream claims a compression it does not hold (truncated, corrupt, unsupported)."""


class Reader(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


class _Bounded:
    """zlib's and bz2/lzma's decoders differ in how they hold back input; one interface here."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._zlib = zlib.decompressobj(wbits=31) if kind == "gzip" else None
        self._other: bz2.BZ2Decompressor | lzma.LZMADecompressor | None = (
            bz2.BZ2Decompressor() if kind == "bzip2" else lzma.LZMADecompressor() if kind == "xz" else None)
        self.pending = b""

    @property
    def eof(self) -> bool:
        if self._zlib is not None:
            return self._zlib.eof
        assert self._other is not None
        return self._other.eof

    @property
    def unused(self) -> bytes:
        if self._zlib is not None:
            return self._zlib.unused_data
        assert self._other is not None
        return self._other.unused_data

    def feed(self, data: bytes, limit: int) -> bytes:
        """Decompress from ``data`` plus what was held back, at most ``limit`` bytes out."""
        if self._zlib is not None:
            out = self._zlib.decompress(self.pending + data, limit)
            self.pending = self._zlib.unconsumed_tail
            return out
        assert self._other is not None
        if self._other.needs_input:
            return self._other.decompress(data, limit)
        return self._other.decompress(b"", limit)

    def needs_input(self) -> bool:
        if self._zlib is not None:
            return not self.pending
        assert self._other is not None
        return bool(self._other.needs_input)


def sniff(head: bytes) -> str:
    """``gzip``, ``bzip2``, ``xz``, ``zstd`` or ``""`` (plain) from a stream's first bytes."""
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(BZIP2_MAGIC) and len(head) >= 4 and head[3:4].isdigit():
        return "bzip2"
    if head.startswith(XZ_MAGIC):
        return "xz"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    return ""


class PlainReader:
    """``read(n)`` of the decompressed stream (multi-member gzip included); plain input passes
    through. At most ``CHUNK`` bytes are decompressed at a time, so a bomb never sits in memory."""

    def __init__(self, raw: Reader) -> None:
        self._raw = raw
        head = b""
        while len(head) < 6:
            more = raw.read(CHUNK)
            if not more:
                break
            head += more
        self.kind = sniff(head)
        self._zstd = ZstdReader(raw, head, read_size=CHUNK) if self.kind == "zstd" else None
        self._in = b"" if self._zstd else head
        self._dec: _Bounded | None = _Bounded(self.kind) if self.kind and not self._zstd else None
        self._buf = b""
        self._pos = 0
        self._done = False

    def _produce(self) -> bytes:
        if self._zstd is not None:
            try:
                return self._zstd.read(CHUNK)
            except ZstdError as exc:
                raise DecompressError(str(exc)) from None
        if self._dec is None:
            if self._in:
                data, self._in = self._in, b""
                return data
            return self._raw.read(CHUNK)
        while not self._done:
            dec = self._dec
            if dec.eof:
                rest = dec.unused + self._in
                self._in = b""
                if not rest:
                    rest = self._raw.read(CHUNK)
                if not rest:
                    self._done = True
                    return b""
                if dec.kind != "gzip" or not rest.startswith(GZIP_MAGIC[:2]):
                    # Trailing bytes after the stream: Go's readers stop at the end, so do we.
                    self._done = True
                    return b""
                self._dec = dec = _Bounded(dec.kind)
                self._in = rest
            data = b""
            if dec.needs_input():
                data = self._in or self._raw.read(CHUNK)
                self._in = b""
                if not data:
                    raise DecompressError(f"unexpected EOF: the {dec.kind} stream is truncated")
            try:
                out = dec.feed(data, CHUNK)
            except (zlib.error, OSError, EOFError, lzma.LZMAError) as exc:
                raise DecompressError(f"invalid {dec.kind} stream: {exc}") from None
            if out:
                return out
        return b""

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            parts = []
            while piece := self.read(CHUNK):
                parts.append(piece)
            return b"".join(parts)
        if self._pos >= len(self._buf):
            self._buf, self._pos = self._produce(), 0
        out = self._buf[self._pos:self._pos + n]
        self._pos += len(out)
        return out


class _Inbox:
    """A blocking reader (for a worker thread) of chunks an asyncio task puts in a queue."""

    def __init__(self) -> None:
        self.queue: queue.Queue[bytes | None] = queue.Queue(maxsize=4)

    def read(self, n: int = -1) -> bytes:
        item = self.queue.get()
        if item is None:
            self.queue.put(None)  # stay at the end for later reads
            return b""
        return item


async def plain_stream(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """:class:`PlainReader` over an async stream: decompression runs in worker threads, input is
    read ahead by at most a few chunks. An error of the input stream is raised as itself."""
    inbox = _Inbox()

    async def feed() -> None:
        try:
            async for chunk in chunks:
                if chunk:
                    await asyncio.to_thread(inbox.queue.put, chunk)
        finally:
            await asyncio.to_thread(inbox.queue.put, None)

    feeder = asyncio.ensure_future(feed())
    try:
        try:
            reader = await asyncio.to_thread(PlainReader, inbox)
            while piece := await asyncio.to_thread(reader.read, CHUNK):
                yield piece
        except DecompressError:
            if feeder.done() and not feeder.cancelled() and feeder.exception() is not None:
                raise feeder.exception() from None  # type: ignore[misc]
            raise
        await feeder
    finally:
        feeder.cancel()
        # Unblock both sides: a feeder thread waiting for room, a reader thread waiting for input.
        with contextlib.suppress(queue.Empty):
            while True:
                inbox.queue.get_nowait()
        with contextlib.suppress(queue.Full):
            inbox.queue.put_nowait(None)
        with contextlib.suppress(BaseException):
            await feeder
