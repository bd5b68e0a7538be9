"""Log batches: the bulk json-file reader must read exactly what the line-by-line reader reads,
selections by stream and time, the proto round trip, and the API server's framing of a batch."""

from __future__ import annotations

import random
import struct

import pytest

from apiserver.containers.logframes import LogEncoder
from shim import convert, jsonlog
from shim.api import LogBatch, LogEntry, LogsOptions, Stream
from shim.linux import select_entries

T0 = 1_700_000_000_123_456_789


def slow_parse(data: bytes) -> list[LogEntry]:
    return [e for e in map(jsonlog.parse_line, data.split(b"\n")[:-1]) if e is not None]


def written(chunks: list[tuple[Stream, bytes, int]]) -> bytes:
    """What the shim writes for these outputs: LineSplitter's lines, flushed at the end."""
    splitters = {s: jsonlog.LineSplitter(s) for s in (Stream.STDOUT, Stream.STDERR)}
    out = [splitters[stream].feed(data, ns) for stream, data, ns in chunks]
    out += [s.flush(T0 + 10**9) for s in splitters.values()]
    return b"".join(out)


CASES = {
    "plain lines": [(Stream.STDOUT, b"one\ntwo\n", T0), (Stream.STDERR, b"err\n", T0 + 1)],
    "round seconds and short fractions": [(Stream.STDOUT, b"a\n", 1_700_000_000_000_000_000),
                                          (Stream.STDOUT, b"b\n", 1_700_000_000_500_000_000)],
    "escapes": [(Stream.STDOUT, b'quote " backslash \\ tab \t bell \x07 <&>\n', T0)],
    "literal backslash n": [(Stream.STDOUT, b"a\\nb\n", T0), (Stream.STDOUT, b"x\\\n", T0 + 2)],
    "non-ASCII": [(Stream.STDOUT, "h\u00e9llo \u2028 \U0001f600\n".encode(), T0)],
    "invalid UTF-8": [(Stream.STDOUT, b"bad \xff\xfe bytes\n", T0)],
    "partials": [(Stream.STDOUT, b"x" * (jsonlog.MAX_LINE * 2 + 5) + b"\nend", T0)],
    "empty lines": [(Stream.STDERR, b"\n\n\n", T0)],
}


@pytest.mark.parametrize("chunks", list(CASES.values()), ids=list(CASES))
def test_bulk_reader_reads_what_the_line_reader_reads(chunks: list[tuple[Stream, bytes, int]]) -> None:
    data = written(chunks)
    expected = slow_parse(data)
    assert expected, "the case must produce entries"
    bulk = jsonlog._parse_common(data)
    assert bulk is not None, "lines the shim writes take the bulk way"
    assert list(bulk.entries()) == expected
    assert list(jsonlog.parse_lines(data).entries()) == expected


def test_bulk_reader_matches_on_random_output() -> None:
    rng = random.Random(7)
    alphabet = b'ab \\"\n\t\x01<>' + "\u00e9".encode()
    chunks = [(rng.choice([Stream.STDOUT, Stream.STDERR]),
               bytes(rng.choice(alphabet) for _ in range(rng.randrange(0, 300))),
               T0 + rng.randrange(0, 3 * 10**9)) for _ in range(300)]
    data = written(chunks)
    bulk = jsonlog._parse_common(data)
    assert bulk is not None
    assert list(bulk.entries()) == slow_parse(data)


def test_lines_of_another_shape_are_read_one_by_one() -> None:
    other = (b'{"log":"a\\n","stream":"stdout","time":"2023-11-14T23:13:20+01:00"}\n'  # offset
             b'not json\n'
             b'{"stream":"stderr","log":"b\\n","time":"2023-11-14T22:13:20Z"}\n'  # other key order
             b'{"log":"lone \\ud800 surrogate\\n","stream":"stdout","time":"2023-11-14T22:13:20Z"}\n')
    assert jsonlog._parse_common(other) is None
    entries = list(jsonlog.parse_lines(other).entries())
    assert [e.data for e in entries] == [b"a\n", b"b\n", "lone \ufffd surrogate\n".encode()]
    assert entries[0].time_ns == entries[1].time_ns == 1_700_000_000 * 10**9
    assert entries[1].stream == Stream.STDERR


def test_select_entries_by_stream_since_and_until() -> None:
    entries = [LogEntry(Stream.STDOUT, T0, b"a\n"), LogEntry(Stream.STDERR, T0 + 10, b"b\n"),
               LogEntry(Stream.STDOUT, T0 + 20, b"c"), LogEntry(Stream.STDOUT, T0 + 30, b"d\n")]
    batch = LogBatch.of(entries)
    everything, past = select_entries(batch, LogsOptions())
    assert everything is batch and not past
    only_out, _ = select_entries(batch, LogsOptions(stderr=False))
    assert [e.data for e in only_out.entries()] == [b"a\n", b"c", b"d\n"]
    window, past = select_entries(batch, LogsOptions(since_ns=T0 + 5, until_ns=T0 + 25))
    assert [e.data for e in window.entries()] == [b"b\n", b"c"] and past
    assert [e.partial for e in window.entries()] == [False, True]


def test_batches_survive_the_proto_and_old_shims_entries_are_understood() -> None:
    batch = LogBatch.of([LogEntry(Stream.STDERR, T0, b"x\n"), LogEntry(Stream.STDOUT, T0 + 1, b"yz", True)])
    assert convert.log_batch_from_proto(convert.log_batch_to_proto(batch)) == batch
    old = convert.pb.LogsResponse(entries=[convert.log_entry_to_proto(e) for e in batch.entries()])
    assert list(convert.log_batch_from_proto(old).entries()) == list(batch.entries())


def unframe(body: bytes) -> list[tuple[int, bytes]]:
    out, pos = [], 0
    while pos < len(body):
        stream, size = struct.unpack_from(">BxxxI", body, pos)
        out.append((stream, body[pos + 8:pos + 8 + size]))
        pos += 8 + size
    return out


def test_log_encoder_frames_and_stamps_like_docker() -> None:
    batch = LogBatch.of([LogEntry(Stream.STDOUT, 1_700_000_000_000_000_005, b"a\n"),
                         LogEntry(Stream.STDERR, 1_700_000_001_500_000_000, b"bc\n")])
    assert unframe(LogEncoder(tty=False, timestamps=False).encode(batch)) == [(1, b"a\n"), (2, b"bc\n")]
    assert unframe(LogEncoder(tty=False, timestamps=True).encode(batch)) == [
        (1, b"2023-11-14T22:13:20.000000005Z a\n"), (2, b"2023-11-14T22:13:21.500000000Z bc\n")]
    assert LogEncoder(tty=True, timestamps=False).encode(batch) == b"a\nbc\n"
    assert LogEncoder(tty=True, timestamps=True).encode(batch) == (
        b"2023-11-14T22:13:20.000000005Z a\n2023-11-14T22:13:21.500000000Z bc\n")
