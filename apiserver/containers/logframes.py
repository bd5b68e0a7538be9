"""``GET /containers/{id}/logs`` bodies, encoded a :class:`~shim.api.LogBatch` at a time.

A log of 100,000 lines arrives in a few batches; encoding each in one pass (rather than an
object, a frame and a write per line) is what keeps ``docker logs`` of a big log cheap.
"""

from __future__ import annotations

import struct
import time

from shim.api import LogBatch

# The multiplexed stream's frame header (moby's stdcopy): stream, 3 zero bytes, big-endian size.
_HEADER = struct.Struct(">BxxxI")


class LogEncoder:
    """Encodes batches as Docker writes them: raw for a terminal, framed per entry otherwise,
    each entry preceded by its RFC3339Nano time (nine fraction digits, as moby) with
    ``timestamps``."""

    def __init__(self, *, tty: bool, timestamps: bool) -> None:
        self._tty = tty
        self._timestamps = timestamps
        self._seconds: dict[int, bytes] = {}

    def encode(self, batch: LogBatch) -> bytes:
        if self._tty and not self._timestamps:
            return batch.data
        data, start = batch.data, 0
        pack = _HEADER.pack
        out: list[bytes] = []
        append = out.append
        for stream, time_ns, end in zip(batch.streams, batch.times_ns, batch.ends, strict=True):
            piece = data[start:end]
            start = end
            if self._timestamps:
                piece = self._stamp(time_ns) + piece
            if not self._tty:
                append(pack(stream, len(piece)))
            append(piece)
        return b"".join(out)

    def _stamp(self, time_ns: int) -> bytes:
        seconds, fraction = divmod(time_ns, 1_000_000_000)
        prefix = self._seconds.get(seconds)
        if prefix is None:
            if len(self._seconds) > 4096:
                self._seconds.clear()
            prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)).encode()
            self._seconds[seconds] = prefix
        return b"%s.%09dZ " % (prefix, fraction)
