# ruff: noqa: ASYNC240 - tests read small files of the container's directories inline
"""The Runtime contract: one suite, run against ``LinuxRuntime`` and against ``RemoteRuntime``
through a live gRPC server (see test_runtime.py). A subclass provides the ``runtime`` fixture.

Every container runs for real: namespaces, an overlay rootfs, cgroups, busybox.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from protos.errors import (
    AlreadyExists,
    ContainerNotFound,
    ContainerNotRunning,
    FailedPrecondition,
    InvalidArgument,
    NotModified,
    StartFailed,
)
from shim.api import (
    AttachInput,
    AttachOptions,
    ContainerSpec,
    ContainerState,
    EventType,
    LogsOptions,
    NamespaceMode,
    Resources,
    Runtime,
    Status,
    Stream,
)
from shim.supervisor import caps
from shim.supervisor.cgroups import Layout
from tests.shim.conftest import Containers, Recorder, collect, eventually

TIMEOUT = 30


async def inputs(items: Sequence[AttachInput], gate: asyncio.Event | None = None) -> AsyncIterator[AttachInput]:
    for item in items:
        if gate is not None:
            await gate.wait()
        yield item


async def run(runtime: Runtime, spec: ContainerSpec) -> ContainerState:
    await runtime.create(spec)
    await runtime.start(spec.id)
    return await asyncio.wait_for(runtime.wait(spec.id), TIMEOUT)


async def attached_run(runtime: Runtime, spec: ContainerSpec, stdin: Sequence[AttachInput] = ()
                       ) -> tuple[ContainerState, bytes, bytes]:
    """Create, attach (before start, as ``docker run`` does), start; all output and the exit."""
    await runtime.create(spec)
    stream = runtime.attach(spec.id, AttachOptions(stdin=bool(stdin)), inputs(stdin))
    reading = asyncio.ensure_future(collect(stream))
    await runtime.start(spec.id)
    outputs = await asyncio.wait_for(reading, TIMEOUT)
    state = await asyncio.wait_for(runtime.wait(spec.id), TIMEOUT)
    out = b"".join(o.data for o in outputs if o.stream == Stream.STDOUT)
    err = b"".join(o.data for o in outputs if o.stream == Stream.STDERR)
    return state, out, err


async def logged(runtime: Runtime, id: str, line: str) -> bool:
    return line in await log_text(runtime, id)


async def log_text(runtime: Runtime, id: str, **options: object) -> list[str]:
    entries = await collect(runtime.logs(id, LogsOptions(**options)))  # type: ignore[arg-type]
    return [e.data.decode() for e in entries]


class RuntimeContract:
    # Lifecycle and exit codes ------------------------------------------------------------------

    async def test_exit_code_and_events(self, runtime: Runtime, containers: Containers, recorder: Recorder) -> None:
        spec = containers.spec("sh", "-c", "exit 3")
        created = await runtime.create(spec)
        assert created.status == Status.CREATED
        started = await runtime.start(spec.id)
        assert started.status == Status.RUNNING and started.pid > 0 and started.started_at_ns > 0
        state = await runtime.wait(spec.id)
        assert (state.status, state.exit_code, state.pid) == (Status.STOPPED, 3, 0)
        assert state.finished_at_ns >= state.started_at_ns
        assert [e.type for e in recorder.of(spec.id)] == [EventType.START, EventType.EXIT]
        assert recorder.of(spec.id)[1].state.exit_code == 3
        assert (await runtime.state(spec.id)) == state
        assert spec.id in {s.id for s in await runtime.list()}

    async def test_sigkill_death_is_128_plus_signal(self, runtime: Runtime, containers: Containers) -> None:
        spec = containers.spec("sleep", "1000")
        await runtime.create(spec)
        await runtime.start(spec.id)
        await runtime.kill(spec.id, signal.SIGKILL)
        state = await asyncio.wait_for(runtime.wait(spec.id), TIMEOUT)
        assert state.exit_code == 128 + signal.SIGKILL

    async def test_signal_death_with_host_pid_namespace(self, runtime: Runtime, containers: Containers) -> None:
        # PID 1 of a PID namespace ignores unhandled signals; with --pid=host TERM kills.
        spec = containers.spec("sleep", "1000", pid=NamespaceMode.HOST)
        await runtime.create(spec)
        await runtime.start(spec.id)
        await runtime.kill(spec.id, signal.SIGTERM)
        state = await asyncio.wait_for(runtime.wait(spec.id), TIMEOUT)
        assert state.exit_code == 128 + signal.SIGTERM

    async def test_wait_returns_at_once_when_not_running(self, runtime: Runtime, containers: Containers) -> None:
        spec = containers.spec("true")
        created = await runtime.create(spec)
        assert await asyncio.wait_for(runtime.wait(spec.id), 1) == created
        await runtime.start(spec.id)
        stopped = await asyncio.wait_for(runtime.wait(spec.id), TIMEOUT)
        assert stopped.status == Status.STOPPED
        assert await asyncio.wait_for(runtime.wait(spec.id), 1) == stopped

    async def test_restart_appends_to_the_log(self, runtime: Runtime, containers: Containers,
                                              recorder: Recorder) -> None:
        spec = containers.spec("sh", "-c", "echo run; exit 4")
        first = await run(runtime, spec)
        await runtime.start(spec.id)
        second = await asyncio.wait_for(runtime.wait(spec.id), TIMEOUT)
        assert first.exit_code == second.exit_code == 4
        assert second.started_at_ns > first.finished_at_ns
        assert await log_text(runtime, spec.id) == ["run\n", "run\n"]
        assert [e.type for e in recorder.of(spec.id)] == [EventType.START, EventType.EXIT] * 2

    # Output ---------------------------------------------------------------------------------------

    async def test_stdout_and_stderr_kept_apart(self, runtime: Runtime, containers: Containers) -> None:
        spec = containers.spec("sh", "-c", "echo out; echo err >&2; echo out2")
        state, out, err = await attached_run(runtime, spec)
        assert (state.exit_code, out, err) == (0, b"out\nout2\n", b"err\n")
        entries = await collect(runtime.logs(spec.id, LogsOptions()))
        assert sorted((e.stream, e.data) for e in entries) == [
            (Stream.STDOUT, b"out\n"), (Stream.STDOUT, b"out2\n"), (Stream.STDERR, b"err\n")]
        only_err = await collect(runtime.logs(spec.id, LogsOptions(stdout=False)))
        assert [(e.stream, e.data) for e in only_err] == [(Stream.STDERR, b"err\n")]

    async def test_stdin_sent_before_start_reaches_cat_and_its_end_ends_it(
            self, runtime: Runtime, containers: Containers) -> None:
        spec = containers.spec("cat", open_stdin=True, stdin_once=True)
        state, out, _ = await attached_run(
            runtime, spec, [AttachInput(b"hello\n"), AttachInput(b"world\n"), AttachInput(close=True)])
        assert (state.exit_code, out) == (0, b"hello\nworld\n")

    async def test_close_stdin(self, runtime: Runtime, containers: Containers) -> None:
        spec = containers.spec("sh", "-c", "cat; echo done", open_stdin=True)
        await runtime.create(spec)
        gate = asyncio.Event()
        stream = runtime.attach(spec.id, AttachOptions(stdin=True), inputs([AttachInput(b"abc\n")], gate))
        reading = asyncio.ensure_future(collect(stream))
        await runtime.start(spec.id)
        gate.set()
        await asyncio.sleep(0)
        # stdin_once is off: the attach ending its input does not close stdin; close_stdin does.
        await eventually(lambda: logged(runtime, spec.id, "abc\n"))
        await runtime.close_stdin(spec.id)
        state = await asyncio.wait_for(runtime.wait(spec.id), TIMEOUT)
        outputs = await asyncio.wait_for(reading, TIMEOUT)
        assert state.exit_code == 0
        assert b"".join(o.data for o in outputs) == b"abc\ndone\n"

    async def test_200000_lines_arrive_complete_in_attach_and_logs(
            self, runtime: Runtime, containers: Containers) -> None:
        count = 200_000
        expected = b"".join(b"%d\n" % i for i in range(1, count + 1))
        spec = containers.spec("seq", "1", str(count))
        state, out, err = await attached_run(runtime, spec)
        assert state.exit_code == 0 and err == b""
        assert len(out) == len(expected) and out == expected
        entries = await collect(runtime.logs(spec.id, LogsOptions()))
        assert len(entries) == count
        assert b"".join(e.data for e in entries) == expected
        assert not any(e.partial for e in entries)

    async def test_long_lines_are_split_as_partial_entries(self, runtime: Runtime, containers: Containers) -> None:
        spec = containers.spec("sh", "-c", "head -c 40000 /dev/zero | tr '\\0' x; echo; printf tail")
        state = await run(runtime, spec)
        assert state.exit_code == 0
        entries = await collect(runtime.logs(spec.id, LogsOptions()))
        assert [(len(e.data), e.partial) for e in entries] == [
            (16384, True), (16384, True), (40000 - 2 * 16384 + 1, False), (4, True)]
        assert entries[0].time_ns == entries[1].time_ns == entries[2].time_ns

    async def test_logs_tail_since_until_and_timestamps(self, runtime: Runtime, containers: Containers) -> None:
        spec = containers.spec("sh", "-c", "for i in 1 2 3 4 5; do echo $i; done; sleep 0.2; echo late")
        state = await run(runtime, spec)
        entries = await collect(runtime.logs(spec.id, LogsOptions()))
        assert [e.data for e in entries] == [b"1\n", b"2\n", b"3\n", b"4\n", b"5\n", b"late\n"]
        times = [e.time_ns for e in entries]
        assert times == sorted(times)
        assert state.started_at_ns <= times[0] and times[-1] <= state.finished_at_ns
        assert times[-1] - times[4] >= 150_000_000  # the sleep shows in the timestamps
        assert await log_text(runtime, spec.id, tail=2) == ["5\n", "late\n"]
        assert await log_text(runtime, spec.id, tail=0) == []
        assert len(await log_text(runtime, spec.id, tail=100)) == 6
        assert await log_text(runtime, spec.id, since_ns=times[5]) == ["late\n"]
        assert await log_text(runtime, spec.id, until_ns=times[4]) == ["1\n", "2\n", "3\n", "4\n", "5\n"]
        # The file is Docker's json-file format, time in RFC3339Nano UTC.
        lines = Path(state.log_path).read_text().splitlines()
        assert len(lines) == 6
        assert re.fullmatch(r'\{"log":"1\\n","stream":"stdout","time":"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z"\}',
                            lines[0])
        assert json.loads(lines[5])["log"] == "late\n"

    async def test_logs_follow_until_the_container_stops(self, runtime: Runtime, containers: Containers) -> None:
        spec = containers.spec("sh", "-c", "echo one; read x; echo two; exit 0", open_stdin=True)
        await runtime.create(spec)
        gate = asyncio.Event()
        attach = runtime.attach(spec.id, AttachOptions(stdin=True),
                                inputs([AttachInput(b"go\n"), AttachInput(close=True)], gate))
        attaching = asyncio.ensure_future(collect(attach))
        await runtime.start(spec.id)
        follow = runtime.logs(spec.id, LogsOptions(follow=True))
        first = await asyncio.wait_for(anext(follow), TIMEOUT)
        assert first.data == b"one\n"
        gate.set()  # only now may the container print its second line and exit
        rest = await asyncio.wait_for(collect(follow), TIMEOUT)
        assert [e.data for e in rest] == [b"two\n"]
        assert (await runtime.state(spec.id)).status == Status.STOPPED
        await asyncio.wait_for(attaching, TIMEOUT)

    async def test_tty_output(self, runtime: Runtime, containers: Containers) -> None:
        spec = containers.spec("sh", "-c", "tty; echo hi >&2; stty size", terminal=True, console=(30, 100))
        state, out, err = await attached_run(runtime, spec)
        assert state.exit_code == 0
        assert err == b""  # a terminal has one output stream
        assert out == b"/dev/pts/0\r\nhi\r\n30 100\r\n"

    async def test_resize(self, runtime: Runtime, containers: Containers) -> None:
        spec = containers.spec("sh", "-c", "read x; stty size", terminal=True, open_stdin=True, console=(24, 80))
        await runtime.create(spec)
        gate = asyncio.Event()
        stream = runtime.attach(spec.id, AttachOptions(stdin=True), inputs([AttachInput(b"go\n")], gate))
        reading = asyncio.ensure_future(collect(stream))
        await runtime.start(spec.id)
        await runtime.resize(spec.id, 40, 120)
        gate.set()
        outputs = await asyncio.wait_for(reading, TIMEOUT)
        assert b"40 120\r\n" in b"".join(o.data for o in outputs)
        await runtime.resize(spec.id, 10, 10)  # after exit: a no-op, not an error

    async def test_tty_stdin_and_its_end(self, runtime: Runtime, containers: Containers) -> None:
        spec = containers.spec("cat", terminal=True, open_stdin=True, stdin_once=True)
        state, out, _ = await attached_run(runtime, spec, [AttachInput(b"hi\n"), AttachInput(close=True)])
        assert state.exit_code == 0  # the end of stdin reached cat as the terminal's EOF character
        assert out.startswith(b"hi\r\nhi\r\n")  # the terminal's echo, then cat's copy

    async def test_attach_to_a_running_container(self, runtime: Runtime, containers: Containers) -> None:
        spec = containers.spec("sh", "-c", "echo before; read x; echo got $x", open_stdin=True)
        await runtime.create(spec)
        await runtime.start(spec.id)
        await eventually(lambda: logged(runtime, spec.id, "before\n"))
        stream = runtime.attach(spec.id, AttachOptions(stdin=True), inputs([AttachInput(b"it\n")]))
        outputs = await asyncio.wait_for(collect(stream), TIMEOUT)
        assert b"".join(o.data for o in outputs) == b"got it\n"  # live output only, until the exit
        assert (await runtime.state(spec.id)).status == Status.STOPPED

    async def test_parallel_starts(self, runtime: Runtime, containers: Containers) -> None:
        specs = [containers.spec("sh", "-c", f"echo {i}; exit {i}") for i in range(12)]

        async def one(spec: ContainerSpec) -> tuple[int, list[str]]:
            state = await run(runtime, spec)
            return state.exit_code, await log_text(runtime, spec.id)

        results = await asyncio.gather(*(one(s) for s in specs))
        assert results == [(i, [f"{i}\n"]) for i in range(12)]

    async def test_events_in_order(self, runtime: Runtime, containers: Containers) -> None:
        events = runtime.events()
        spec = containers.spec("sh", "-c", "exit 2")
        await run(runtime, spec)
        await runtime.delete(spec.id)
        seen = []
        async for event in events:
            if event.state.id == spec.id:
                seen.append((event.type, event.state.status, event.state.exit_code))
            if event.type is EventType.DELETE and event.state.id == spec.id:
                break
        assert seen == [(EventType.START, Status.RUNNING, 0), (EventType.EXIT, Status.STOPPED, 2),
                        (EventType.DELETE, Status.STOPPED, 2)]

    # Stopping ---------------------------------------------------------------------------------------

    async def test_stop_graceful(self, runtime: Runtime, containers: Containers) -> None:
        spec = containers.spec("sh", "-c", "trap 'echo bye; exit 0' TERM; echo ready;"
                                           " while true; do sleep 0.05; done")
        await runtime.create(spec)
        await runtime.start(spec.id)
        await eventually(lambda: logged(runtime, spec.id, "ready\n"))
        began = time.monotonic()
        state = await runtime.stop(spec.id, signal.SIGTERM, 10)
        assert time.monotonic() - began < 5
        assert (state.status, state.exit_code) == (Status.STOPPED, 0)
        assert "bye\n" in await log_text(runtime, spec.id)

    async def test_stop_kills_after_timeout(self, runtime: Runtime, containers: Containers) -> None:
        spec = containers.spec("sleep", "1000")  # PID 1 without a TERM handler ignores TERM
        await runtime.create(spec)
        await runtime.start(spec.id)
        began = time.monotonic()
        state = await runtime.stop(spec.id, signal.SIGTERM, 0.5)
        assert 0.5 <= time.monotonic() - began < 5
        assert (state.status, state.exit_code) == (Status.STOPPED, 137)

    async def test_kill_all(self, runtime: Runtime, containers: Containers) -> None:
        # PID 1 (no handler) ignores USR1; only "all" reaches its child, whose death ends the wait.
        spec = containers.spec("sh", "-c", "sleep 1000 & echo ready; wait $!; echo waited $?")
        await runtime.create(spec)
        await runtime.start(spec.id)
        await eventually(lambda: logged(runtime, spec.id, "ready\n"))
        await runtime.kill(spec.id, signal.SIGUSR1, all=True)
        state = await asyncio.wait_for(runtime.wait(spec.id), TIMEOUT)
        assert state.exit_code == 0
        assert await log_text(runtime, spec.id, stderr=False) == ["ready\n", f"waited {128 + signal.SIGUSR1}\n"]

    async def test_delete(self, runtime: Runtime, containers: Containers, recorder: Recorder,
                          cgroup_parent: str) -> None:
        spec = containers.spec("sleep", "1000")
        await runtime.create(spec)
        started = await runtime.start(spec.id)
        log_path = Path(started.log_path)
        assert log_path.exists()
        with pytest.raises(FailedPrecondition):
            await runtime.delete(spec.id)
        assert (await runtime.state(spec.id)).status == Status.RUNNING
        final = await runtime.delete(spec.id, force=True)
        assert (final.status, final.exit_code) == (Status.STOPPED, 137)
        assert [e.type for e in recorder.of(spec.id)] == [EventType.START, EventType.EXIT, EventType.DELETE]
        with pytest.raises(ContainerNotFound):
            await runtime.state(spec.id)
        assert spec.id not in {s.id for s in await runtime.list()}
        assert not log_path.exists() and not log_path.parent.exists()
        for h in Layout.detect().hierarchies:
            assert not os.path.exists(os.path.join(h.mount, cgroup_parent, spec.id))

    # The state machine --------------------------------------------------------------------------------

    async def test_state_machine_errors(self, runtime: Runtime, containers: Containers) -> None:
        spec = containers.spec("sleep", "1000")
        await runtime.create(spec)
        with pytest.raises(AlreadyExists):
            await runtime.create(spec)
        with pytest.raises(NotModified):
            await runtime.stop(spec.id)  # created, never started
        with pytest.raises(ContainerNotRunning):
            await runtime.kill(spec.id)
        await runtime.start(spec.id)
        with pytest.raises(NotModified):
            await runtime.start(spec.id)
        with pytest.raises(FailedPrecondition):
            await runtime.delete(spec.id)
        with pytest.raises(InvalidArgument, match="invalid signal"):
            await runtime.kill(spec.id, 99)
        await runtime.kill(spec.id, signal.SIGKILL)
        await asyncio.wait_for(runtime.wait(spec.id), TIMEOUT)
        with pytest.raises(NotModified):
            await runtime.stop(spec.id)
        with pytest.raises(ContainerNotRunning):
            await runtime.kill(spec.id)

    async def test_unknown_container(self, runtime: Runtime) -> None:
        missing = "0" * 64
        for call in (runtime.state(missing), runtime.start(missing), runtime.kill(missing),
                     runtime.stop(missing), runtime.delete(missing), runtime.wait(missing),
                     runtime.resize(missing, 1, 1), runtime.close_stdin(missing)):
            with pytest.raises(ContainerNotFound):
                await call
        with pytest.raises(ContainerNotFound):
            await collect(runtime.logs(missing, LogsOptions()))
        with pytest.raises(ContainerNotFound):
            await collect(runtime.attach(missing, AttachOptions(), inputs([])))

    async def test_invalid_specs(self, runtime: Runtime, containers: Containers) -> None:
        with pytest.raises(InvalidArgument, match='unknown capability: "CAP_NOPE"'):
            await runtime.create(containers.spec("true", cap_add=("NOPE",)))
        with pytest.raises(InvalidArgument):
            await runtime.create(containers.spec("true", resources=Resources(cpuset_cpus="999")))

    @pytest.mark.parametrize(("args", "text", "code"), [
        (("nope",), 'exec: "nope": executable file not found in $PATH', 127),
        (("/nope",), "no such file or directory", 127),
        (("/bin/notexec",), "permission denied", 126),
        (("/etc",), "is a directory", 126),
    ])
    async def test_start_failures(self, runtime: Runtime, containers: Containers, recorder: Recorder,
                                  args: tuple[str, ...], text: str, code: int) -> None:
        spec = containers.spec(*args)
        await runtime.create(spec)
        with pytest.raises(StartFailed) as failure:
            await runtime.start(spec.id)
        assert text in str(failure.value)
        state = await runtime.state(spec.id)
        assert (state.status, state.exit_code) == (Status.STOPPED, code)
        assert text in state.error
        assert [e.type for e in recorder.of(spec.id)] == [EventType.EXIT]

    async def test_start_failure_for_unknown_user(self, runtime: Runtime, containers: Containers) -> None:
        spec = containers.spec("true", user="nobody-here")
        await runtime.create(spec)
        with pytest.raises(StartFailed, match="unable to find user nobody-here: no matching entries in passwd file"):
            await runtime.start(spec.id)

    # Isolation --------------------------------------------------------------------------------------

    async def test_pid_namespace(self, runtime: Runtime, containers: Containers) -> None:
        spec = containers.spec("sh", "-c", "echo $$; cat /proc/1/cmdline | tr '\\0' ' '; echo; ls -d /proc/[0-9]*")
        _, out, _ = await attached_run(runtime, spec)
        lines = out.decode().split("\n")
        assert lines[0] == "1"
        assert lines[1] == "sh -c " + spec.process.args[2] + " "
        pids = [int(p.removeprefix("/proc/")) for p in lines[2:] if p]
        assert 1 in pids and len(pids) <= 3 and max(pids) < 10  # sh, its pipeline helpers, no host pid

    async def test_namespaces_hostname_and_loopback(self, runtime: Runtime, containers: Containers) -> None:
        spec = containers.spec("sh", "-c", "hostname; cat /proc/sys/kernel/domainname; cat /sys/class/net/lo/flags;"
                               " ls /sys/class/net; for n in ipc mnt net uts pid; do readlink /proc/self/ns/$n; done",
                               hostname="berth-box", domainname="example.org")
        _, out, _ = await attached_run(runtime, spec)
        lines = out.decode().split()
        assert lines[:4] == ["berth-box", "example.org", "0x9", "lo"]  # lo is up (IFF_UP|IFF_LOOPBACK)
        host = [os.readlink(f"/proc/self/ns/{n}") for n in ("ipc", "mnt", "net", "uts", "pid")]
        inside = lines[4:]
        assert [link.split(":")[0] for link in inside] == ["ipc", "mnt", "net", "uts", "pid"]
        assert all(i != h for i, h in zip(inside, host, strict=True))

    async def test_host_network_namespace(self, runtime: Runtime, containers: Containers) -> None:
        spec = containers.spec("readlink", "/proc/self/ns/net", network=NamespaceMode.HOST)
        _, out, _ = await attached_run(runtime, spec)
        assert out.decode().strip() == os.readlink("/proc/self/ns/net")

    async def test_writes_land_in_the_upper_dir(self, runtime: Runtime, containers: Containers) -> None:
        spec = containers.spec("sh", "-c", "echo data > /newfile; rm /etc/hostname; mkdir -p /var/x")
        state = await run(runtime, spec)
        assert state.exit_code == 0
        upper = containers.upper(spec.id)
        assert (upper / "newfile").read_text() == "data\n"
        assert os.stat(upper / "etc" / "hostname").st_rdev == 0  # a whiteout
        assert (upper / "var" / "x").is_dir()
        assert not (containers.lowerdir / "newfile").exists()
        assert (containers.lowerdir / "etc" / "hostname").exists()
        assert not [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if str(upper) in line]

    async def test_masked_and_readonly_paths(self, runtime: Runtime, containers: Containers) -> None:
        script = ("wc -c < /proc/interrupts; ls -A /sys/firmware | wc -l; ls -A /proc/acpi | wc -l;"
                  " cat /proc/timer_list | wc -c;"
                  " echo x > /proc/sys/kernel/domainname || echo ro-proc-sys;"
                  " touch /sys/kernel/x || echo ro-sys; grep ' /sys sysfs ' /proc/mounts | cut -d' ' -f4")
        _, out, err = await attached_run(runtime, containers.spec("sh", "-c", script))
        lines = out.decode().split()
        assert lines[:6] == ["0", "0", "0", "0", "ro-proc-sys", "ro-sys"]
        assert lines[6].split(",")[0] == "ro"
        assert b"Read-only file system" in err

    async def test_dev(self, runtime: Runtime, containers: Containers) -> None:
        script = ("ls /dev; stat -c '%t:%T %a' /dev/null /dev/zero /dev/full /dev/random /dev/urandom /dev/tty;"
                  " readlink /dev/ptmx; readlink /dev/fd;"
                  " grep -E ' /dev/(pts|shm|mqueue) ' /proc/mounts | cut -d' ' -f2,3,4;"
                  " echo hi > /dev/shm/x && cat /dev/shm/x")
        spec = containers.spec("sh", "-c", script, shm_size=8 * 1024 * 1024)
        state, out, _ = await attached_run(runtime, spec)
        text = out.decode()
        assert state.exit_code == 0
        for name in ("null", "zero", "full", "random", "urandom", "tty", "pts", "shm", "mqueue", "ptmx", "fd",
                     "stdin", "stdout", "stderr"):
            assert re.search(rf"^{name}$", text, re.M), name
        assert "1:3 666\n1:5 666\n1:7 666\n1:8 666\n1:9 666\n5:0 666\n" in text
        assert "pts/ptmx\n/proc/self/fd\n" in text
        assert re.search(r"^/dev/pts devpts .*ptmxmode=666", text, re.M)
        assert re.search(r"^/dev/shm tmpfs .*size=8192k", text, re.M)
        assert text.endswith("hi\n")

    async def test_default_capabilities(self, runtime: Runtime, containers: Containers) -> None:
        bounding = caps.bounding_set()
        default = caps.container_caps(privileged=False, add=(), drop=(), bounding=bounding)
        assert len(default) == 14
        cases = [
            (containers.spec("grep", "Cap", "/proc/self/status"), default),
            (containers.spec("grep", "Cap", "/proc/self/status", cap_add=("NET_ADMIN",), cap_drop=("MKNOD",)),
             (default | {caps.CAPABILITIES["NET_ADMIN"]}) - {caps.CAPABILITIES["MKNOD"]}),
            (containers.spec("grep", "Cap", "/proc/self/status", cap_drop=("ALL",), cap_add=("KILL",)),
             {caps.CAPABILITIES["KILL"]}),
            (containers.spec("grep", "Cap", "/proc/self/status", privileged=True), bounding),
        ]
        for spec, expected in cases:
            _, out, _ = await attached_run(runtime, spec)
            fields = dict(line.split(":\t") for line in out.decode().splitlines())
            mask = sum(1 << c for c in expected)
            assert int(fields["CapEff"], 16) == mask, spec.cap_add
            assert int(fields["CapBnd"], 16) == mask
            assert int(fields["CapInh"], 16) == 0

    async def test_user_group_home_and_workdir(self, runtime: Runtime, containers: Containers) -> None:
        spec = containers.spec("sh", "-c", "id -u; id -g; id -G; echo $HOME; pwd; grep CapEff /proc/self/status",
                               user="nobody", cwd="/work/dir")
        _, out, _ = await attached_run(runtime, spec)
        assert out.decode().split("\n")[:6] == ["65534", "65534", "65534", "/home", "/work/dir",
                                                "CapEff:\t0000000000000000"]
        assert (containers.upper(spec.id) / "work" / "dir").is_dir()
        spec = containers.spec("sh", "-c", "id -u; id -g; echo $HOME", user="1234:5678", env=("HOME=/h",))
        _, out, _ = await attached_run(runtime, spec)
        assert out.decode().split() == ["1234", "5678", "/h"]
        spec = containers.spec("sh", "-c", "id -G; echo $HOME")  # root: supplementary groups from /etc/group
        _, out, _ = await attached_run(runtime, spec)
        assert out.decode().split() == ["0", "10", "/root"]

    async def test_readonly_rootfs(self, runtime: Runtime, containers: Containers) -> None:
        spec = containers.spec("sh", "-c", "touch /x || echo ro; echo ok > /dev/shm/y && cat /dev/shm/y",
                               readonly_rootfs=True)
        _, out, _ = await attached_run(runtime, spec)
        assert out == b"ro\nok\n"

    async def test_memory_limit_and_cgroup(self, runtime: Runtime, containers: Containers,
                                           cgroup_parent: str) -> None:
        limit = 64 * 1024 * 1024
        layout = Layout.detect()
        memory = layout.owner("memory")
        assert memory is not None
        inside = "/sys/fs/cgroup/memory/memory.limit_in_bytes" if not memory.v2 else "/sys/fs/cgroup/memory.max"
        spec = containers.spec("sh", "-c", f"cat {inside}; cat /proc/self/cgroup",
                               resources=Resources(memory=limit, pids_limit=100, cpu_shares=512))
        await runtime.create(spec)
        stream = runtime.attach(spec.id, AttachOptions(), inputs([]))
        reading = asyncio.ensure_future(collect(stream))
        await runtime.start(spec.id)
        out = b"".join(o.data for o in await asyncio.wait_for(reading, TIMEOUT)).decode()
        assert out.split("\n")[0] == str(limit)
        assert f"/{spec.id}" in out  # the container's own cgroup
        host_dir = os.path.join(memory.mount, cgroup_parent, spec.id)
        name = "memory.max" if memory.v2 else "memory.limit_in_bytes"
        assert Path(host_dir, name).read_text().strip() == str(limit)
        pids = layout.owner("pids")
        if pids is not None and not pids.v2:
            host_pids = os.path.join(pids.mount, cgroup_parent, spec.id)
            assert Path(host_pids, "pids.max").read_text().strip() == "100"

    async def test_oom_kill_is_reported(self, runtime: Runtime, containers: Containers, recorder: Recorder) -> None:
        limit = 32 * 1024 * 1024
        spec = containers.spec("tail", "/dev/zero", resources=Resources(memory=limit, memory_swap=limit))
        state = await run(runtime, spec)
        assert (state.exit_code, state.oom_killed) == (137, True)
        types = [e.type for e in recorder.of(spec.id)]
        assert types == [EventType.START, EventType.OOM, EventType.EXIT]


