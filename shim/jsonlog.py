"""Docker's json-file log format: the supervisor writes it, the runtime reads it back.

One JSON object per line, ``{"log":"…\\n","stream":"stdout","time":"<RFC3339Nano UTC>"}``, with
Docker's line splitting (moby ``daemon/logger/copier.go``): a message ends at ``\\n``; 16 KiB
without a newline are written as a *partial* entry (its ``log`` has no trailing ``\\n``), and so
is what is left at end of stream. The pieces of one long line share the first piece's time.
"""

from __future__ import annotations

import calendar
import itertools
import json
import operator
import os
import re
import time

from shim.api import LogBatch, LogEntry, Stream

# moby's copier buffer: a line longer than this is split into partial messages.
MAX_LINE = 16 * 1024

_encode_string = json.encoder.encode_basestring
_STREAM_NAMES = {Stream.STDOUT: "stdout", Stream.STDERR: "stderr"}
_STREAMS_BY_NAME = {"stdout": Stream.STDOUT, "stderr": Stream.STDERR}


def _go_string(text: str) -> str:
    """JSON string as Go's encoder writes it (HTML-safe escapes for <, >, & and U+2028/9)."""
    out: str = _encode_string(text)
    if "<" in out or ">" in out or "&" in out or "\u2028" in out or "\u2029" in out:
        out = (out.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
               .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))
    return out


class _Clock:
    """RFC3339Nano (trailing zeros trimmed, as Go formats it) with the seconds part cached."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def format(self, ns: int) -> str:
        second, frac = divmod(ns, 1_000_000_000)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        if frac:
            return f"{self._prefix}.{frac:09d}".rstrip("0") + "Z"
        return self._prefix + "Z"


_CLOCK = _Clock()


def format_time(ns: int) -> str:
    return _CLOCK.format(ns)


class LineSplitter:
    """Turns one stream's raw output into json-file lines."""

    __slots__ = ("_buf", "_partial_ns", "_suffixes", "name")

    def __init__(self, stream: Stream) -> None:
        self.name = _STREAM_NAMES[stream]
        self._buf = bytearray()
        self._partial_ns = 0  # time of the first piece of a line being split, else 0
        self._suffixes: dict[int, str] = {}

    def _suffix(self, ns: int) -> str:
        suffix = self._suffixes.get(ns)
        if suffix is None:
            suffix = f',"stream":"{self.name}","time":"{format_time(ns)}"}}\n'
            self._suffixes = {ns: suffix}
        return suffix

    def feed(self, data: bytes, now_ns: int) -> bytes:
        """Encoded log lines for ``data`` (possibly none yet); the rest is kept for later."""
        buf = self._buf
        buf += data
        out: list[str] = []
        end = buf.rfind(b"\n") + 1
        if end:
            lines = buf[:end].split(b"\n")
            lines.pop()  # the empty piece after the last newline
            del buf[:end]
            for line in lines:
                # Docker's buffer holds 16 KiB including the newline: 16 KiB of content is a
                # partial piece even when the newline comes right after it.
                while len(line) >= MAX_LINE:
                    out.append(self._partial(bytes(line[:MAX_LINE]), now_ns))
                    line = line[MAX_LINE:]
                ns = self._partial_ns or now_ns
                self._partial_ns = 0
                out.append('{"log":' + _go_string(line.decode("utf-8", "replace") + "\n") + self._suffix(ns))
        while len(buf) >= MAX_LINE:
            out.append(self._partial(bytes(buf[:MAX_LINE]), now_ns))
            del buf[:MAX_LINE]
        return "".join(out).encode()

    def flush(self, now_ns: int) -> bytes:
        """At end of stream: what is left, as a partial entry."""
        if not self._buf:
            return b""
        line = self._partial(bytes(self._buf), now_ns)
        self._buf.clear()
        self._partial_ns = 0
        return line.encode()

    def _partial(self, piece: bytes, now_ns: int) -> str:
        if not self._partial_ns:
            self._partial_ns = now_ns
        return '{"log":' + _go_string(piece.decode("utf-8", "replace")) + self._suffix(self._partial_ns)


# Reading ---------------------------------------------------------------------------------------

_SECONDS: dict[str | bytes, int] = {}


def _seconds(base: str | bytes) -> int:
    """Unix seconds of ``YYYY-MM-DDTHH:MM:SS`` (str or ASCII bytes), cached: a log's lines
    share few distinct seconds."""
    seconds = _SECONDS.get(base)
    if seconds is None:
        seconds = calendar.timegm((int(base[0:4]), int(base[5:7]), int(base[8:10]),
                                   int(base[11:13]), int(base[14:16]), int(base[17:19]), 0, 0, 0))
        if len(_SECONDS) > 4096:
            _SECONDS.clear()
        _SECONDS[base] = seconds
    return seconds


def parse_time(text: str) -> int:
    """Unix ns of an RFC3339(Nano) timestamp (Docker writes UTC, ``Z``; offsets are honoured)."""
    seconds = _seconds(text[:19])
    rest = text[19:]
    frac = 0
    if rest.startswith("."):
        digits = 1
        while digits < len(rest) and rest[digits].isdigit():
            digits += 1
        frac = int(rest[1:digits][:9].ljust(9, "0"))
        rest = rest[digits:]
    if rest and rest != "Z":
        sign = -1 if rest[0] == "+" else 1
        seconds += sign * (int(rest[1:3]) * 3600 + int(rest[4:6]) * 60)
    return seconds * 1_000_000_000 + frac


def parse_line(raw: bytes) -> LogEntry | None:
    """One json-file line as an entry; ``None`` for a line that is not one (skipped, as Docker)."""
    try:
        obj = json.loads(raw)
        text: str = obj["log"]
        stream = _STREAMS_BY_NAME[obj["stream"]]
        time_ns = parse_time(obj["time"])
    except (ValueError, KeyError, TypeError, IndexError):
        return None
    return LogEntry(stream=stream, time_ns=time_ns, data=_utf8(text), partial=not text.endswith("\n"))


_SURROGATE = re.compile("[\ud800-\udfff]")


def _utf8(text: str) -> bytes:
    """``text`` as UTF-8; a lone surrogate (``\\ud800`` escaped in a line) becomes U+FFFD, as
    Go's decoder makes it."""
    try:
        return text.encode()
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text).encode()


# The shape every line written by LineSplitter has (Go's encoder, Docker's key order): a JSON
# string for "log" (no raw control characters, escapes kept for later), the stream, and a UTC
# time with up to 9 fraction digits. Lines of any other shape take parse_line's way.
_LINE = re.compile(rb'\{"log":"([^"\\\x00-\x1f]*(?:\\.[^"\\\x00-\x1f]*)*)","stream":"std(o|e)(?:ut|rr)",'
                   rb'"time":"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?Z"\}\n')
# Bytes of a match besides the log text and the fraction digits (and its dot).
_LINE_FIXED = len(b'{"log":"' b'","stream":"stdout",' b'"time":"' b'2006-01-02T15:04:05' b'Z"}\n')
_NS = 1_000_000_000
_STREAM_BYTES = bytes.maketrans(b"oe", bytes((Stream.STDOUT, Stream.STDERR)))
_first = operator.itemgetter(0)
_second = operator.itemgetter(1)
_third = operator.itemgetter(2)
_fourth = operator.itemgetter(3)


def parse_lines(data: bytes) -> LogBatch:
    """The entries of complete json-file lines (``data`` ends with a newline), as
    :func:`parse_line` reads each: lines that are not entries are skipped."""
    batch = _parse_common(data)
    if batch is None:
        batch = LogBatch.of(e for e in map(parse_line, data.split(b"\n")[:-1]) if e is not None)
    return batch


def _parse_common(data: bytes) -> LogBatch | None:
    """Every line of ``data`` in the shape this module writes, in bulk; ``None`` if any line is
    not (the caller then reads line by line). The regular expression, the byte count and the
    UTF-8 check together accept exactly what ``json.loads`` reads as such a line."""
    try:
        data.decode()
    except UnicodeDecodeError:
        return None
    found = _LINE.findall(data)
    if not found or len(found) != data.count(b"\n"):
        return None
    texts: list[bytes] = list(map(_first, found))
    fractions: list[bytes] = list(map(_fourth, found))
    # The matches cover every byte, so each line is one match from its start to its newline.
    covered = (len(found) * _LINE_FIXED + sum(map(len, texts)) + sum(map(len, fractions))
               + len(found) - fractions.count(b""))
    if covered != len(data):
        return None
    bases = list(map(_third, found))
    base_ns = {base: _seconds(base) * _NS for base in set(bases)}
    nanos = map(int, map(bytes.ljust, fractions, itertools.repeat(9), itertools.repeat(b"0")))
    times = tuple(map(operator.add, map(base_ns.__getitem__, bases), nanos))
    streams = b"".join(map(_second, found)).translate(_STREAM_BYTES)
    joined = b"".join(texts)
    if joined.count(b"\\") == joined.count(b"\\n"):  # the only escapes are the newlines
        lengths = map(operator.sub, map(len, texts), map(bytes.count, texts, itertools.repeat(b"\\")))
        return LogBatch(streams=streams, times_ns=times, data=joined.replace(b"\\n", b"\n"),
                        ends=tuple(itertools.accumulate(lengths)))
    try:
        pieces = [_unescape(t) for t in texts]
    except ValueError:  # an escape JSON does not know: parse_line skips that line
        return None
    return LogBatch(streams=streams, times_ns=times, data=b"".join(pieces),
                    ends=tuple(itertools.accumulate(map(len, pieces))))


def _unescape(text: bytes) -> bytes:
    """The bytes a JSON string's body (valid, as matched by ``_LINE``) stands for."""
    if b"\\" not in text:
        return text
    if text.endswith(b"\\n") and b"\\" not in text[:-2]:
        return text[:-2] + b"\n"
    decoded: str = json.loads(b'"' + text + b'"')
    return _utf8(decoded)


def tail_offset(fd: int, lines: int, size: int | None = None) -> int:
    """File offset where the last ``lines`` complete lines of ``fd`` begin (blocking)."""
    end = os.fstat(fd).st_size if size is None else size
    if lines <= 0:
        return end
    pos = end
    wanted = lines + 1  # the newline that ends the file is not a line boundary before it
    block = 64 * 1024
    while pos > 0:
        start = max(0, pos - block)
        chunk = os.pread(fd, pos - start, start)
        idx = len(chunk)
        while True:
            idx = chunk.rfind(b"\n", 0, idx)
            if idx < 0:
                break
            wanted -= 1
            if wanted == 0:
                return start + idx + 1
        pos = start
    return 0


class LogFileReader:
    """Reads entries from a json-file log that may still be growing (blocking calls).

    Only complete lines are consumed: a line the writer has not finished yet is read next time.
    """

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self.offset = 0

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def seek_tail(self, lines: int) -> None:
        self.offset = tail_offset(self.fd, lines)

    def read(self, limit: int = 1 << 20) -> list[LogEntry]:
        batch = self.read_batch(limit)
        return list(batch.entries()) if batch is not None else []

    def read_batch(self, limit: int = 1 << 20) -> LogBatch | None:
        """The entries of the complete lines from the offset on (up to ``limit`` bytes);
        ``None`` when there is nothing new (the batch may be empty when lines were skipped)."""
        data = os.pread(self.fd, limit, self.offset)
        end = data.rfind(b"\n") + 1
        if not end:
            if len(data) == limit:  # one absurdly long line: skip it rather than stall
                self.offset += len(data)
                return LogBatch()
            return None
        self.offset += end
        return parse_lines(data[:end] if end < len(data) else data)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]

