"""The pure pieces: json-file lines, the supervisor wire codec, proto conversions, capability
arithmetic and user resolution."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from common.mounts import Mount
from shim import convert, jsonlog, wire
from shim.api import (
    ContainerSpec,
    ContainerState,
    EventType,
    LogEntry,
    LogsOptions,
    NamespaceMode,
    ProcessSpec,
    Resources,
    Status,
    Stream,
    TaskEvent,
)
from shim.supervisor import caps
from shim.supervisor.child import StartError, resolve_user

T0 = 1_700_000_000_123_456_789


def decode_lines(data: bytes) -> list[dict[str, str]]:
    return [json.loads(line) for line in data.splitlines()]


def test_lines_are_docker_json_file_lines() -> None:
    splitter = jsonlog.LineSplitter(Stream.STDERR)
    assert splitter.feed(b"a\nb", T0) == (
        b'{"log":"a\\n","stream":"stderr","time":"2023-11-14T22:13:20.123456789Z"}\n')
    assert splitter.feed(b"c <&>\n", T0 + 1) == (
        b'{"log":"bc \\u003c\\u0026\\u003e\\n","stream":"stderr","time":"2023-11-14T22:13:20.12345679Z"}\n')
    assert splitter.feed(b"", T0) == b""
    assert decode_lines(splitter.feed("é\t\x01\n".encode(), T0))[0]["log"] == "é\t\x01\n"


def test_time_format_trims_zeros_like_go() -> None:
    assert jsonlog.format_time(1_700_000_000_000_000_000) == "2023-11-14T22:13:20Z"
    assert jsonlog.format_time(1_700_000_000_500_000_000) == "2023-11-14T22:13:20.5Z"
    for ns in (T0, 1_700_000_000_000_000_001, 1_700_000_000_000_000_000):
        assert jsonlog.parse_time(jsonlog.format_time(ns)) == ns
    assert jsonlog.parse_time("2023-11-14T23:13:20.5+01:00") == 1_700_000_000_500_000_000


def test_long_lines_split_into_16k_partials_sharing_a_time() -> None:
    splitter = jsonlog.LineSplitter(Stream.STDOUT)
    out = splitter.feed(b"x" * 20000, T0)  # no newline yet: one full 16 KiB piece goes out
    assert [len(e["log"]) for e in decode_lines(out)] == [16384]
    out = splitter.feed(b"y" * 15000 + b"\nshort\n" + b"z" * 16384 + b"\n", T0 + 5)
    entries = decode_lines(out)
    # 3616 + 15000 = 18616 bytes of the first line: another 16 KiB piece, then the rest.
    assert [len(e["log"]) for e in entries] == [16384, 2232 + 1, 6, 16384, 1]
    assert [e["log"].endswith("\n") for e in entries] == [False, True, True, False, True]
    assert entries[0]["time"] == entries[1]["time"] == jsonlog.format_time(T0)
    assert entries[2]["time"] == jsonlog.format_time(T0 + 5)
    assert splitter.flush(T0) == b""
    splitter.feed(b"no newline at the end", T0)
    assert decode_lines(splitter.flush(T0 + 9)) == [
        {"log": "no newline at the end", "stream": "stdout", "time": jsonlog.format_time(T0 + 9)}]


def test_parse_and_tail(tmp_path: Path) -> None:
    path = tmp_path / "log.json"
    splitter = jsonlog.LineSplitter(Stream.STDOUT)
    path.write_bytes(b"".join(splitter.feed(b"%d\n" % i, T0 + i) for i in range(1000)) + b"not json\n")
    reader = jsonlog.LogFileReader(str(path))
    try:
        entries = reader.read()
        assert len(entries) == 1000  # the broken line is skipped
        assert entries[7] == LogEntry(Stream.STDOUT, T0 + 7, b"7\n", False)
        reader.seek_tail(3)
        assert [e.data for e in reader.read()] == [b"998\n", b"999\n"]
        reader.seek_tail(0)
        assert reader.read() == []
        reader.seek_tail(5000)
        assert len(reader.read()) == 1000
    finally:
        reader.close()
    assert jsonlog.parse_line(b'{"log":"x","stream":"stdout","time":"2023-11-14T22:13:20Z"}') == LogEntry(
        Stream.STDOUT, 1_700_000_000_000_000_000, b"x", True)


def test_reader_leaves_an_unfinished_line_for_later(tmp_path: Path) -> None:
    path = tmp_path / "log.json"
    line = jsonlog.LineSplitter(Stream.STDOUT).feed(b"hello\n", T0)
    path.write_bytes(line + line[:10])
    reader = jsonlog.LogFileReader(str(path))
    try:
        assert len(reader.read()) == 1
        assert reader.read() == []
        with open(path, "ab") as f:
            f.write(line[10:])
        assert [e.data for e in reader.read()] == [b"hello\n"]
    finally:
        reader.close()


def spec() -> ContainerSpec:
    return ContainerSpec(
        id="c" * 64, rootfs=(Mount("overlay", "overlay", ("lowerdir=/a:/b", "upperdir=/u", "workdir=/w")),),
        process=ProcessSpec(args=("sh", "-c", "x"), env=("A=1",), cwd="/w", user="1:2", terminal=True,
                            open_stdin=True, stdin_once=True, console_height=24, console_width=80),
        hostname="h", domainname="d", network=NamespaceMode.HOST, ipc=NamespaceMode.HOST,
        pid=NamespaceMode.HOST, uts=NamespaceMode.HOST, readonly_rootfs=True, privileged=True,
        cap_add=("NET_ADMIN",), cap_drop=("MKNOD",),
        resources=Resources(memory=1, memory_swap=2, memory_reservation=3, nano_cpus=4, cpu_shares=5,
                            cpu_period=6, cpu_quota=7, cpuset_cpus="0", cpuset_mems="0", pids_limit=8),
        shm_size=9, labels={"k": "v"})


def test_wire_and_proto_round_trips() -> None:
    original = spec()
    assert wire.decode(ContainerSpec, json.loads(json.dumps(wire.encode(original)))) == original
    assert convert.spec_from_proto(convert.spec_to_proto(original)) == original
    state = ContainerState(id="x", status=Status.STOPPED, pid=1, exit_code=137, started_at_ns=2,
                           finished_at_ns=3, oom_killed=True, error="e", log_path="/l")
    assert wire.decode(ContainerState, wire.encode(state)) == state
    assert convert.state_from_proto(convert.state_to_proto(state)) == state
    event = TaskEvent(EventType.OOM, state)
    assert convert.event_from_proto(convert.event_to_proto(event)) == event
    options = LogsOptions(stdout=False, follow=True, since_ns=5, until_ns=6, tail=-1)
    assert convert.logs_options_from_request(convert.logs_request("x", options)) == options
    entry = LogEntry(Stream.STDERR, 5, b"\xff", True)
    assert convert.log_entry_from_proto(convert.log_entry_to_proto(entry)) == entry


def test_frame_parser_reassembles_split_frames() -> None:
    data = (wire.json_frame({"op": "hello"}) + wire.frame(wire.Kind.STDOUT, b"x" * 70000)
            + wire.frame(wire.Kind.END, b""))
    parser = wire.FrameParser()
    frames = []
    for i in range(0, len(data), 777):
        frames += parser.feed(data[i:i + 777])
    assert [k for k, _ in frames] == [wire.Kind.JSON, wire.Kind.STDOUT, wire.Kind.END]
    assert json.loads(frames[0][1]) == {"op": "hello"} and frames[1][1] == b"x" * 70000
    with pytest.raises(wire.ProtocolError):
        wire.FrameParser().feed(wire.HEADER.pack(wire.Kind.JSON, wire.MAX_FRAME + 1))


def test_capability_arithmetic() -> None:
    everything = frozenset(caps.CAPABILITIES.values())
    default = caps.container_caps(privileged=False, add=(), drop=(), bounding=everything)
    assert sum(1 << c for c in default) == 0xA80425FB  # Docker's well-known default CapEff
    assert caps.container_caps(privileged=False, add=("all",), drop=("cap_sys_admin",), bounding=everything) == \
        everything - {caps.CAPABILITIES["SYS_ADMIN"]}
    assert caps.container_caps(privileged=False, add=("CHOWN",), drop=("ALL",), bounding=everything) == {0}
    no_resource = everything - {caps.CAPABILITIES["SYS_RESOURCE"]}
    assert caps.container_caps(privileged=False, add=("SYS_RESOURCE",), drop=(), bounding=no_resource) == default
    assert caps.container_caps(privileged=True, add=(), drop=("ALL",), bounding=no_resource) == no_resource
    with pytest.raises(caps.UnknownCapability, match='unknown capability: "CAP_BOGUS"'):
        caps.container_caps(privileged=False, add=("bogus",), drop=(), bounding=everything)
    assert caps.to_drop(frozenset({0, 2}), 3) == (1, 3)


PASSWD = [line.split(":") for line in (
    "root:x:0:0:root:/root:/bin/sh", "nobody:x:65534:65534:nobody:/home:/bin/false", "app:x:1000:1001::/srv:/bin/sh")]
GROUP = [line.split(":") for line in ("root:x:0:", "wheel:x:10:root,app", "staff:x:50:app", "apps:x:1001:")]


@pytest.mark.parametrize(("user", "expected"), [
    ("", (0, 0, [10], "/root")),
    ("root", (0, 0, [10], "/root")),
    ("app", (1000, 1001, [10, 50], "/srv")),
    ("1000", (1000, 1001, [10, 50], "/srv")),
    ("app:staff", (1000, 50, [], "/srv")),
    ("app:7", (1000, 7, [], "/srv")),
    ("4242", (4242, 0, [], "/")),
    ("4242:4343", (4242, 4343, [], "/")),
])
def test_resolve_user(user: str, expected: tuple[int, int, list[int], str]) -> None:
    assert resolve_user(user, PASSWD, GROUP) == expected


def test_resolve_user_failures() -> None:
    with pytest.raises(StartError, match="unable to find user ghost: no matching entries in passwd file"):
        resolve_user("ghost", PASSWD, GROUP)
    with pytest.raises(StartError, match="unable to find group ghosts: no matching entries in group file"):
        resolve_user("app:ghosts", PASSWD, GROUP)
    assert resolve_user("", [], []) == (0, 0, [], "/")  # no /etc/passwd at all: root, HOME=/


def test_supervisor_imports_neither_grpc_nor_threads() -> None:
    # The supervisor must stay free of grpc/protobuf: they start threads and are not fork-safe.
    import subprocess
    import sys

    code = ("import sys, threading, shim.supervisor.server, shim.supervisor.__main__; "
            "print(threading.active_count(), 'grpc' in sys.modules, 'google.protobuf' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__)))).stdout
    assert out.split() == ["1", "False", "False"]
