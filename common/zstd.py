"""zstd streams, decompressed with bounded output and checked for truncation.

Why the ``zstandard`` package: the standard library of Python 3.11 has no zstd, and layers of
``application/vnd.oci.image.layer.v1.tar+zstd`` (what Docker and containerd push with
``compression=zstd``) are common. Its ``stream_reader`` bounds each read's output, so a bomb never
sits in memory, but it ends quietly when its input ends inside a frame; :class:`FrameWalker` follows
the frame and block headers of the compressed bytes (RFC 8878 §3.1) to tell a complete stream
from a truncated one, as Go's decoder does with "unexpected EOF".
"""

from __future__ import annotations

from typing import Any, Protocol

import zstandard

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_SKIPPABLE_TAIL = b"\x2a\x4d\x18"  # skippable frames: 0x184D2A50 … 0x184D2A5F, little-endian


class ZstdError(Exception):
    """Corrupt or truncated zstd input."""


class RawReader(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


class FrameWalker:
    """Follows frame and block boundaries of a zstd stream fed in pieces; knows whether the bytes
    so far end exactly after a frame."""

    def __init__(self) -> None:
        self._state = "magic"
        self._need = 4  # header bytes the current state waits for
        self._header = b""
        self._skip = 0  # body bytes to pass over (block contents, skippable frame data, checksums)
        self._checksum = False
        self.frames = 0
        self.bad = ""

    def feed(self, data: bytes) -> None:
        pos = 0
        while pos < len(data) and not self.bad:
            if self._skip:
                step = min(self._skip, len(data) - pos)
                self._skip -= step
                pos += step
                if not self._skip:
                    self._after_body()
                continue
            take = min(self._need - len(self._header), len(data) - pos)
            self._header += data[pos:pos + take]
            pos += take
            if len(self._header) == self._need:
                header, self._header = self._header, b""
                self._parse(header)

    def complete(self) -> bool:
        """True when the input so far is whole frames (at least one) and nothing else."""
        return not self.bad and self._state == "magic" and not self._header and not self._skip and self.frames > 0

    def _expect(self, state: str, need: int) -> None:
        self._state, self._need = state, need
        if need == 0:
            self._parse(b"")

    def _parse(self, header: bytes) -> None:
        state = self._state
        if state == "magic":
            if header == ZSTD_MAGIC:
                self._expect("descriptor", 1)
            elif header[1:] == _SKIPPABLE_TAIL and header[0] & 0xF0 == 0x50:
                self._expect("skippable-size", 4)
            else:
                self.bad = "data after the last frame is not a zstd frame"
        elif state == "descriptor":
            d = header[0]
            single_segment = bool(d & 0x20)
            if d & 0x08:
                self.bad = "reserved bit set in a frame header"
                return
            self._checksum = bool(d & 0x04)
            content_size = (1 if single_segment else 0, 2, 4, 8)[d >> 6]
            rest = (0 if single_segment else 1) + (0, 1, 2, 4)[d & 0x03] + content_size
            self._expect("frame-header", rest)
        elif state == "frame-header":
            self._expect("block", 3)
        elif state == "block":
            value = int.from_bytes(header, "little")
            last, kind, size = value & 1, (value >> 1) & 3, value >> 3
            if kind == 3:
                self.bad = "reserved block type"
                return
            self._state = "last-block" if last else "block-body"
            self._skip = 1 if kind == 1 else size  # an RLE block holds one byte
            if not self._skip:
                self._after_body()
        elif state == "skippable-size":
            self._state = "skippable-body"
            self._skip = int.from_bytes(header, "little")
            if not self._skip:
                self._after_body()

    def _after_body(self) -> None:
        state = self._state
        if state == "block-body":
            self._expect("block", 3)
        elif state == "last-block" and self._checksum:
            self._state, self._skip = "checksum", 4
        else:  # the end of a frame: the last block (and its checksum), or a skippable frame
            self.frames += state != "skippable-body"
            self._expect("magic", 4)


class _Tap:
    """The raw stream (after ``head``, bytes already read from it), shown to a walker as read."""

    def __init__(self, raw: RawReader, head: bytes, walker: FrameWalker) -> None:
        self._raw = raw
        self._head = head
        self._walker = walker

    def read(self, n: int = -1) -> bytes:
        if self._head:
            data, self._head = self._head, b""
        else:
            data = self._raw.read(n)
        self._walker.feed(data)
        return data


class ZstdReader:
    """``read(n)`` of the decompressed bytes of every frame of ``raw`` (``head`` first);
    :class:`ZstdError` for corrupt, truncated or trailing data."""

    def __init__(self, raw: RawReader, head: bytes = b"", *, read_size: int = 1 << 20) -> None:
        self._walker = FrameWalker()
        source: Any = _Tap(raw, head, self._walker)  # any object with read(n) will do
        self._reader = zstandard.ZstdDecompressor().stream_reader(
            source, read_size=read_size, read_across_frames=True, closefd=False)
        self._done = False

    def read(self, n: int) -> bytes:
        if self._done:
            return b""
        try:
            out: bytes = self._reader.read(n)
        except zstandard.ZstdError as exc:
            raise ZstdError(f"invalid zstd stream: {exc}") from None
        if out or not n:
            return out
        self._done = True
        if self._walker.bad:
            raise ZstdError(f"invalid zstd stream: {self._walker.bad}")
        if not self._walker.complete():
            raise ZstdError("unexpected EOF: the zstd stream is truncated")
        return b""
