"""The supervisor: the single-threaded parent of every container of this host.

It forks containers (:mod:`shim.supervisor.child`), reaps them, keeps their exit codes, holds
their stdio (pipes, or the master of a pty), writes their json-file logs, copies live output to
attached clients, and buffers stdin that arrives before a process starts. The shim's RPC side
talks to it over a unix socket (:mod:`shim.wire`); the RPC side may die and come back at any
time, so the supervisor owns all runtime truth:

* every transition is an *event* with a sequence number, kept until the subscribed client
  acknowledges it, and replayed (in order) to the next subscriber;
* every container has ``spec.json`` and ``state.json`` in ``<root>/containers/<id>/``, so a new
  supervisor (after a crash or a reboot) finds the containers again; the ones it finds running
  are orphans it cannot hold stdio for: it kills them and reports them stopped.

Threads would make forking unsafe: the process never starts one (no executor, no
``getaddrinfo``, no grpc); asyncio here is just a selector loop.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import errno
import fcntl
import functools
import json
import os
import re
import resource
import secrets
import shutil
import signal
import socket
import struct
import termios
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from common import linux
from shim import jsonlog, wire
from shim.api import (
    ContainerSpec,
    ContainerState,
    EventType,
    ExecSpec,
    ExecState,
    Health,
    HealthLogEntry,
    NamespaceMode,
    ProcessSpec,
    Resources,
    RestartPolicy,
    Status,
    Stream,
)
from shim.supervisor import caps as capabilities
from shim.supervisor import child as child_mod
from shim.supervisor import exec_child, options, restart, user_mounts
from shim.supervisor import files as files_mod
from shim.supervisor import seccomp as seccomp_mod
from shim.supervisor import stats as stats_mod
from shim.supervisor.cgroups import ContainerCgroup, Layout, cgroup_pids, ensure_parent
from shim.supervisor.health import MAX_OUTPUT, HealthMonitor, Probe, probe_args

log = structlog.get_logger()

# Docker's masked and read-only paths (moby daemon/pkg/oci/defaults.go).
MASKED_PATHS = ("/proc/acpi", "/proc/asound", "/proc/interrupts", "/proc/kcore", "/proc/keys",
                "/proc/latency_stats", "/proc/sched_debug", "/proc/scsi", "/proc/timer_list",
                "/proc/timer_stats", "/sys/devices/virtual/powercap", "/sys/firmware")
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")

READ_SIZE = 64 * 1024
# After the process exits, wait this long for its output pipes to close (a daemonised grandchild
# of a --pid=host container may hold them) before closing them ourselves, as dockerd does.
DRAIN_TIMEOUT = 2.0
# Unacknowledged events kept for the next subscriber.
MAX_EVENTS = 100_000
# An attached exec's start event waits this long: one that ended by then (docker exec <c> true
# takes ~1 ms) is recorded by its exit event alone, which carries all its start said: an event,
# a Redis write and an ack less. Its client has had the start's answer already; a detached exec's
# start waits for its record, so that one is never held.
EXEC_START_HOLD_S = 0.005
# How long what waits for an event's record (Supervisor.after_recorded) waits for a shim to come
# back once the one subscribed went away: a restarted shim records the events again within it.
NO_RECORDER_S = 10.0
STDIN_HIGH = 4 << 20
STDIN_LOW = 1 << 20
OUTPUT_HIGH = 4 << 20
OUTPUT_LOW = 1 << 20
CGROUP_REMOVE_TIMEOUT = 10.0
FREEZE_TIMEOUT = 10.0
INIT_PATH = "/sbin/docker-init"  # where --init's binary appears in the container, as in Docker
# Container ids name directories and cgroups: no slashes, no dot-names.
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def json_frame(message: Any) -> bytes:
    return wire.frame(wire.Kind.JSON, wire.compact_json(message))


def _event_frame(event: bytes, seq: int) -> bytes:
    """``{"event": …, "seq": n}`` around an event encoded already."""
    return wire.frame(wire.Kind.JSON, b'{"event":%b,"seq":%d}' % (event, seq))


class OpError(Exception):
    """A request failed; ``cls`` names the error class in :mod:`protos.errors`."""

    def __init__(self, cls: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.cls = cls
        self.message = message
        self.extra = extra


def start_failure_exit_code(message: str) -> int:
    """Docker's mapping of start errors to exit codes (moby ``setExitCodeFromError``)."""
    if "executable file not found" in message or "no such file or directory" in message \
            or "not a directory" in message:
        return 127
    if "permission denied" in message or "is a directory" in message:
        return 126
    return 128


@dataclass(frozen=True, slots=True)
class SupervisorConfig:
    paths: wire.SupervisorPaths
    cgroup_parent: str = "berth"
    init_binary: str = "/usr/bin/tini-static"  # Debian's tini, bind-mounted for --init


class Process:
    """One run of a container's command, from fork until it is reaped and its output drained."""

    def __init__(self, container: Container, pid: int, started_ns: int) -> None:
        self.container = container
        self.pid = pid
        self.started_ns = started_ns
        self.outputs: dict[int, tuple[Stream, jsonlog.LineSplitter]] = {}
        self.stdin_fd = -1
        self.stdin_buf = bytearray()
        self.stdin_eof = False
        self.stdin_writing = False
        self.err_fd = -1
        self.err_buf = bytearray()
        self.pty_socket: socket.socket | None = None
        self.exec_done = False
        self.exec_error = ""
        self.reaped = False
        self.wait_status = 0
        self.oom_reported = False
        self.attachers: set[Connection] = set()
        self.paused = False
        self.drain_timer: asyncio.TimerHandle | None = None
        self.finalized = False
        self.start_seq = 0
        self.start_state: ContainerState | None = None
        self.exit_seq = 0
        self.started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.terminal = False
        self.exec: ExecRun | None = None  # set for an exec (docker exec, a health probe)


class ExecRun:
    """What makes a process an exec: its id, its one client (or none), and for health probes
    the captured output and a callback."""

    def __init__(self, exec_id: str, args: tuple[str, ...], *, conn: Connection | None = None, rid: Any = None,
                 keep: bool = False, recorded: bool = False, capture: bool = False,
                 on_done: Callable[[int, str], None] | None = None, events: bool = True) -> None:
        self.exec_id = exec_id
        self.args = args
        self.conn = conn
        self.rid = rid
        self.keep = keep  # its client reuses the connection for another exec once this one ended
        self.recorded = recorded  # its client learns how it ended once the shim recorded that
        self.capture: bytearray | None = bytearray() if capture else None
        self.truncated = False
        self.on_done = on_done
        self.events = events  # health probes report through health events instead
        self.pending_outputs: list[tuple[int, Stream]] = []
        self.pid = 0
        self.running = False
        self.exit_code = 0
        self.error = ""
        self.start_seq = 0
        self.exit_seq = 0
        self.start_event: asyncio.TimerHandle | None = None  # its start event, held (EXEC_START_HOLD_S)

    def state(self, container_id: str) -> ExecState:
        return ExecState(exec_id=self.exec_id, container_id=container_id, pid=self.pid, running=self.running,
                         exit_code=self.exit_code, error=self.error, args=self.args)

    def output(self) -> str:
        text = bytes(self.capture or b"").decode("utf-8", "replace")
        return text + "..." if self.truncated else text


class ExecHandles:
    """What every exec of a running container joins, opened at its first exec and kept until its
    process ends: the namespace files and the root of its first process (six opens and closes
    less per exec)."""

    def __init__(self, pid: int, private_pid: bool) -> None:
        self.pid = pid
        self.fds: list[int] = []
        try:
            self.namespaces = []
            for name, flag in (("ipc", linux.CLONE_NEWIPC), ("uts", linux.CLONE_NEWUTS),
                               ("net", linux.CLONE_NEWNET), ("mnt", linux.CLONE_NEWNS)):
                self.namespaces.append((self._open(f"/proc/{pid}/ns/{name}", os.O_RDONLY), flag))
            self.root_fd = self._open(f"/proc/{pid}/root", os.O_PATH | os.O_DIRECTORY)
            self.pidns = self._open(f"/proc/{pid}/ns/pid", os.O_RDONLY) if private_pid else -1
        except BaseException:
            self.close()
            raise

    def _open(self, path: str, flags: int) -> int:
        fd = os.open(path, flags | os.O_CLOEXEC)
        self.fds.append(fd)
        return fd

    def close(self) -> None:
        while self.fds:
            os.close(self.fds.pop())


class Container:
    def __init__(self, spec: ContainerSpec, directory: Path, cgroup: ContainerCgroup,
                 drop_caps: tuple[int, ...]) -> None:
        self.spec = spec
        self.dir = directory
        self.cgroup = cgroup
        self.drop_caps = drop_caps
        self.log = structlog.get_logger().bind(container=spec.id[:12])
        self.log_path = str(directory / f"{spec.id}-json.log")
        self.log_fd = -1
        self.log_failing = False
        self.oom_fd: int | None = None
        self.oom_base = 0
        self.cgroup_ready = False
        self.status = Status.CREATED
        self.pid = 0
        self.exit_code = 0
        self.started_at_ns = 0
        self.finished_at_ns = 0
        self.oom_killed = False
        self.error = ""
        self.process: Process | None = None
        self.pending_stdin = bytearray()
        self.pending_eof = False
        self.waiting_attachers: set[Connection] = set()
        self.stdin_paused: set[Connection] = set()
        self.deleting = False
        self.execs: dict[str, Process] = {}
        self.seccomp = b""  # the compiled profile ("" = unconfined)
        self._exec_handles: ExecHandles | None = None  # its namespaces for execs, while it runs
        # restart policy (moby's restart manager)
        self.restart_count = 0
        self.manually_stopped = False
        self.restart_canceled = False
        self.backoff = restart.Backoff()
        self.restart_timer: asyncio.TimerHandle | None = None
        # healthcheck
        self.health: Health | None = None
        self.monitor: HealthMonitor | None = None
        self.probe_exec_id = ""

    @property
    def id(self) -> str:
        return self.spec.id

    def state(self) -> ContainerState:
        return ContainerState(id=self.id, status=self.status, pid=self.pid, exit_code=self.exit_code,
                              started_at_ns=self.started_at_ns, finished_at_ns=self.finished_at_ns,
                              oom_killed=self.oom_killed, error=self.error, log_path=self.log_path,
                              restart_count=self.restart_count, health=self.health)

    def restore(self, state: ContainerState) -> None:
        self.status, self.pid, self.exit_code = state.status, state.pid, state.exit_code
        self.started_at_ns, self.finished_at_ns = state.started_at_ns, state.finished_at_ns
        self.oom_killed, self.error = state.oom_killed, state.error
        self.restart_count, self.health = state.restart_count, state.health

    def running(self) -> bool:
        return self.process is not None

    def exec_handles(self, pid: int) -> ExecHandles:
        """The namespaces execs join, for its first process ``pid`` (opened anew after a restart)."""
        if self._exec_handles is None or self._exec_handles.pid != pid:
            self.drop_exec_handles()
            self._exec_handles = ExecHandles(pid, self.spec.pid == NamespaceMode.PRIVATE)
        return self._exec_handles

    def drop_exec_handles(self) -> None:
        if self._exec_handles is not None:
            self._exec_handles.close()
            self._exec_handles = None


class Connection(asyncio.Protocol):
    """One client connection: control requests/events, or one attach stream."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.sup = supervisor
        self.parser = wire.FrameParser()
        self.transport: asyncio.Transport | None = None
        self.attach: Container | None = None
        self.exec_proc: Process | None = None  # an exec connection: the exec's stdio
        self.streams: frozenset[int] = frozenset()
        self.stdin = False
        self.paused = False
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=OUTPUT_HIGH, low=OUTPUT_LOW)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.sup.disconnected(self)

    def pause_writing(self) -> None:
        self.paused = True
        self.sup.output_backpressure(self)

    def resume_writing(self) -> None:
        self.paused = False
        self.sup.output_backpressure(self)

    def send(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def send_json(self, message: dict[str, Any]) -> None:
        self.send(wire.json_frame(message))

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.parser.feed(data)
        except wire.ProtocolError as exc:
            log.warning("protocol_error", error=str(exc))
            self.close()
            return
        for kind, payload in frames:
            if self.exec_proc is not None:
                if kind == wire.Kind.STDIN:
                    self.sup.feed_exec_stdin(self.exec_proc, payload, self)
                elif kind == wire.Kind.CLOSE_STDIN:
                    self.sup.close_exec_stdin(self.exec_proc)
                continue
            if self.attach is not None:
                if kind == wire.Kind.STDIN:
                    self.sup.feed_stdin(self.attach, payload, self)
                elif kind == wire.Kind.CLOSE_STDIN:
                    self.sup.attach_stdin_closed(self.attach)
                continue
            if kind != wire.Kind.JSON:
                self.close()
                return
            try:
                message = json.loads(payload)
            except ValueError:
                self.close()
                return
            self.sup.request(self, message)


class Supervisor:
    def __init__(self, config: SupervisorConfig) -> None:
        self.config = config
        self.loop = asyncio.get_running_loop()
        self.layout = Layout.detect()
        self.bounding = capabilities.bounding_set()
        self.last_cap = capabilities.last_cap()
        self.masked_paths = MASKED_PATHS + _thermal_throttle_dirs()
        self.devnull = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
        self.pidns_fd = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        self.nofile = resource.getrlimit(resource.RLIMIT_NOFILE)
        # Three or four fds per container: take what the hard limit allows.
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile[1], self.nofile[1]))
        self.containers: dict[str, Container] = {}
        self.procs: dict[int, Process] = {}
        self.events: collections.deque[tuple[int, bytes]] = collections.deque()  # (seq, event JSON)
        self.seq = 0
        self.subscriber: Connection | None = None
        self.acked = 0  # the subscriber recorded the events up to this one
        # What waits for an event's record (:meth:`after_recorded`): (seq, action), in seq order.
        self.held: collections.deque[tuple[int, Callable[[], None]]] = collections.deque()
        self.connections: set[Connection] = set()
        self.stopping = asyncio.Event()
        self.tasks: set[asyncio.Task[Any]] = set()
        self.machine_memory = stats_mod.host_memory()
        self.seccomp_cache: dict[tuple[str, frozenset[int]], bytes] = {}
        self.shutting_down = False
        self.boot_restarts: list[str] = []
        linux.prctl(linux.PR_SET_CHILD_SUBREAPER, 1)
        ensure_parent(self.layout, config.cgroup_parent)

    # Lifecycle ----------------------------------------------------------------------------------

    async def serve(self, ready_fd: int = -1) -> None:
        cfg = self.config
        cfg.paths.containers.mkdir(parents=True, exist_ok=True, mode=0o700)
        shutil.rmtree(cfg.paths.removed, ignore_errors=True)  # what a previous one left half done
        cfg.paths.removed.mkdir(mode=0o700, exist_ok=True)
        self.recover()
        self.loop.add_signal_handler(signal.SIGCHLD, self.reap)
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self.terminate)
        try:
            cfg.paths.socket.unlink()
        except FileNotFoundError:
            pass
        server = await self.loop.create_unix_server(self._connection, str(cfg.paths.socket))
        os.chmod(cfg.paths.socket, 0o600)
        cfg.paths.pid_file.write_text(f"{os.getpid()}\n")
        self.reap()  # children that exited before the handler was installed
        self._restart_on_boot()
        log.info("supervisor_ready", socket=str(cfg.paths.socket), cgroups=self.layout.mode,
                 containers=len(self.containers))
        if ready_fd >= 0:
            os.write(ready_fd, b"ready\n")
            os.close(ready_fd)
        try:
            await self.stopping.wait()
        finally:
            server.close()
            for conn in list(self.connections):
                conn.close()
            await server.wait_closed()
            for path in (cfg.paths.socket, cfg.paths.pid_file):
                try:
                    path.unlink()
                except FileNotFoundError:
                    pass
        log.info("supervisor_exited")

    def _connection(self) -> Connection:
        conn = Connection(self)
        self.connections.add(conn)
        return conn

    def running_count(self) -> int:
        return sum(1 for c in self.containers.values() if c.running())

    def terminate(self) -> None:
        """SIGTERM: stop every container (TERM, then KILL after 10 s), then exit."""
        log.info("supervisor_terminating", running=self.running_count())
        self._spawn_task(self._stop_all_and_exit())

    async def _stop_all_and_exit(self) -> None:
        self.shutting_down = True  # no restart policy applies to these exits
        procs = [c.process for c in self.containers.values() if c.process is not None]
        for proc in procs:
            self._signal(proc, signal.SIGTERM)
        if procs:
            await asyncio.wait([p.done for p in procs], timeout=10)
            for proc in procs:
                if not proc.done.done():
                    self._signal(proc, signal.SIGKILL)
            await asyncio.wait([p.done for p in procs], timeout=5)
        self.stopping.set()

    def _spawn_task(self, coro: Any) -> None:
        task = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # Persistence -------------------------------------------------------------------------------

    def recover(self) -> None:
        """Load containers a previous supervisor left on disk; those it left running are orphans:
        kill them and report them stopped (exit 137 if something was killed, else 255)."""
        for directory in sorted(self.config.paths.containers.iterdir()):
            try:
                spec = wire.decode(ContainerSpec, json.loads((directory / "spec.json").read_text()))
                raw_state = json.loads((directory / "state.json").read_text())
                state = wire.decode(ContainerState, raw_state)
                c = self._new_container(spec, directory)
            except (OSError, ValueError, KeyError, TypeError, wire.ProtocolError,
                    capabilities.UnknownCapability, seccomp_mod.ProfileError) as exc:
                log.warning("container_record_unreadable", dir=str(directory), error=str(exc))
                continue
            c.restore(state)
            c.manually_stopped = bool(raw_state.get("manually_stopped"))
            c.log_fd = _open_log(c.log_path)
            self.containers[c.id] = c
            if state.status == Status.RESTARTING:  # its back-off timer died with that supervisor
                c.status = Status.STOPPED
                self._persist(c)
                self._emit(EventType.UPDATE, c)
            if state.status in (Status.RUNNING, Status.PAUSED):
                if state.status == Status.PAUSED:
                    with contextlib.suppress(OSError):
                        c.cgroup.set_frozen(False)  # a frozen task cannot die
                killed = c.cgroup.signal_all(signal.SIGKILL)
                c.status, c.pid, c.finished_at_ns = Status.STOPPED, 0, time.time_ns()
                c.exit_code = 137 if killed else 255
                c.error = "the supervisor that ran this container died"
                self._persist(c)
                self._emit(EventType.EXIT, c)
                c.log.warning("orphan_container_stopped", killed=len(killed))

    def _persist(self, c: Container) -> None:
        tmp = c.dir / "state.json.tmp"
        tmp.write_text(json.dumps({**wire.encode(c.state()), "manually_stopped": c.manually_stopped}))
        os.replace(tmp, c.dir / "state.json")

    # Events -------------------------------------------------------------------------------------

    def _emit(self, type: EventType, c: Container, exec: ExecState | None = None) -> int:
        self.seq += 1
        message: dict[str, Any] = {"type": type.value, "state": c.state()}
        if exec is not None:
            message["exec"] = exec
        event = wire.compact_json(message)
        self.events.append((self.seq, event))
        if len(self.events) > MAX_EVENTS:
            self.events.popleft()
            log.warning("event_dropped_unacknowledged")
        if self.subscriber is not None:
            self.subscriber.send(_event_frame(event, self.seq))
        return self.seq

    def ack(self, seq: int) -> None:
        while self.events and self.events[0][0] <= seq:
            self.events.popleft()
        self.acked = max(self.acked, seq)
        while self.held and self.held[0][0] <= self.acked:
            self.held.popleft()[1]()

    def after_recorded(self, seq: int, action: Callable[[], None]) -> None:
        """Run ``action`` once a subscriber acknowledged event ``seq`` (it is in the state store
        then): now if it did. A shim that goes away meanwhile is waited for (its successor is
        replayed the events and records them) :data:`NO_RECORDER_S` at most, see
        :meth:`_recorder_gone`."""
        if seq <= self.acked:
            action()
        else:
            self.held.append((seq, action))

    def _recorder_gone(self) -> None:
        """No shim records now: what waits for a record runs after all if none is back in time
        (its client learns how the exec ended rather than wait for a shim that may not come)."""
        def release() -> None:
            if self.subscriber is None:
                while self.held:
                    self.held.popleft()[1]()

        self.loop.call_later(NO_RECORDER_S, release)

    # Requests -----------------------------------------------------------------------------------

    def request(self, conn: Connection, message: dict[str, Any]) -> None:
        op = message.get("op")
        rid = message.get("id")
        if op == "ack":
            self.ack(int(message.get("seq", 0)))
            return
        if op == "attach":
            self._attach(conn, message)
            return
        if op == "files":  # the connection goes to a forked child (shim.supervisor.files)
            files_mod.handle(self, conn, message)
            return
        if op == "exec_attach":
            self._exec_attach(conn, message)
            return
        handler: Callable[..., Any] | None = getattr(self, f"op_{op}", None)
        if handler is None:
            self._reply_error(conn, rid, OpError("InvalidArgument", f"unknown op {op!r}"))
            return
        try:
            result = handler(conn, message)
        except OpError as exc:
            self._reply_error(conn, rid, exc)
            return
        except Exception as exc:
            log.exception("op_failed", op=op)
            self._reply_error(conn, rid, OpError("Internal", f"supervisor: {type(exc).__name__}: {exc}"))
            return
        if asyncio.iscoroutine(result):
            self._spawn_task(self._finish(conn, rid, str(op), result))
        else:
            conn.send_json({"id": rid, "ok": True, "result": result})

    async def _finish(self, conn: Connection, rid: Any, op: str, coro: Any) -> None:
        try:
            result = await coro
        except OpError as exc:
            self._reply_error(conn, rid, exc)
        except Exception as exc:
            log.exception("op_failed", op=op)
            self._reply_error(conn, rid, OpError("Internal", f"supervisor: {type(exc).__name__}: {exc}"))
        else:
            conn.send_json({"id": rid, "ok": True, "result": result})

    @staticmethod
    def _reply_error(conn: Connection, rid: Any, exc: OpError) -> None:
        conn.send_json({"id": rid, "ok": False, "error": wire.error_payload(exc.cls, exc.message),
                        "result": exc.extra})

    def _get(self, message: dict[str, Any]) -> Container:
        id = str(message.get("cid", ""))
        c = self.containers.get(id)
        if c is None:
            raise OpError("ContainerNotFound", f"No such container: {id}")
        return c

    def op_hello(self, conn: Connection, message: dict[str, Any]) -> dict[str, Any]:
        return {"version": wire.PROTOCOL_VERSION, "pid": os.getpid(), "cgroups": self.layout.mode}

    def op_subscribe(self, conn: Connection, message: dict[str, Any]) -> dict[str, Any]:
        """Make ``conn`` the event subscriber: answer with a snapshot at the current sequence
        number, then replay unacknowledged events, then a ``replayed`` marker."""
        self.subscriber = conn
        snapshot = {"seq": self.seq, "states": [wire.encode(c.state()) for c in self.containers.values()]}
        # Queued behind the reply on the same transport: the client sees the snapshot first.
        self.loop.call_soon(self._replay, conn, self.seq)
        return snapshot

    def _replay(self, conn: Connection, upto: int) -> None:
        if self.subscriber is not conn:
            return
        for seq, event in list(self.events):
            if seq <= upto:
                conn.send(_event_frame(event, seq))
        conn.send_json({"replayed": upto})

    def op_list(self, conn: Connection, message: dict[str, Any]) -> list[Any]:
        return [wire.encode(c.state()) for c in self.containers.values()]

    def op_state(self, conn: Connection, message: dict[str, Any]) -> Any:
        return wire.encode(self._get(message).state())

    def op_create(self, conn: Connection, message: dict[str, Any]) -> Any:
        try:
            spec = wire.decode(ContainerSpec, message["spec"])
        except (KeyError, TypeError, ValueError, wire.ProtocolError) as exc:
            raise OpError("InvalidArgument", f"invalid container spec: {exc}") from None
        _validate(spec)
        if spec.id in self.containers:
            raise OpError("AlreadyExists", f"container {spec.id} already exists")
        directory = self.config.paths.containers / spec.id
        try:
            c = self._new_container(spec, directory)
            options.check_cpuset(spec.resources.cpuset_cpus, spec.resources.cpuset_mems)
            options.rlimits(spec.ulimits)
        except (capabilities.UnknownCapability, seccomp_mod.ProfileError, options.OptionError) as exc:
            raise OpError("InvalidArgument", str(exc)) from None
        try:
            directory.mkdir(mode=0o710)
        except FileExistsError:  # left by a crash between mkdir and the record: reuse it
            pass
        try:
            (directory / "rootfs").mkdir(mode=0o755, exist_ok=True)
            (directory / "spec.json").write_text(json.dumps(wire.encode(spec)))
            self._ensure_cgroup(c)
            c.log_fd = _open_log(c.log_path)
            self._persist(c)
        except BaseException:
            self._close_container_fds(c)
            c.cgroup.remove()
            shutil.rmtree(directory, ignore_errors=True)
            raise
        self.containers[spec.id] = c
        c.log.info("container_created")
        return wire.encode(c.state())

    def _new_container(self, spec: ContainerSpec, directory: Path) -> Container:
        caps = capabilities.container_caps(privileged=spec.privileged, add=spec.cap_add,
                                           drop=spec.cap_drop, bounding=self.bounding)
        cgroup = ContainerCgroup(self.layout, self.config.cgroup_parent, spec.id)
        c = Container(spec, directory, cgroup, capabilities.to_drop(caps, self.last_cap))
        c.seccomp = self._seccomp_program(spec, caps)
        return c

    def _seccomp_program(self, spec: ContainerSpec, caps: frozenset[int]) -> bytes:
        """moby's WithSeccomp: none when unconfined, or privileged with the default profile."""
        profile = spec.seccomp_profile
        if profile == "unconfined" or (spec.privileged and profile in ("", "builtin")):
            return b""
        text = seccomp_mod.default_profile_text() if profile in ("", "builtin") else profile
        key = (text, caps)
        program = self.seccomp_cache.get(key)
        if program is None:
            names = {number: name for name, number in capabilities.CAPABILITIES.items()}
            program = seccomp_mod.compile_profile(text, ("CAP_" + names[c] for c in caps if c in names))
            if len(self.seccomp_cache) > 64:
                self.seccomp_cache.clear()
            self.seccomp_cache[key] = program
        return program

    def _ensure_cgroup(self, c: Container) -> None:
        if c.cgroup_ready:
            return
        try:
            c.cgroup.create(c.spec.resources, privileged=c.spec.privileged)
        except OSError as exc:
            raise OpError("InvalidArgument",
                          f"failed to apply cgroup limits: {exc.filename or ''}: "
                          f"{child_mod.errtext(exc.errno or 0)}") from None
        if c.oom_fd is None:
            c.oom_fd = c.cgroup.oom_notifier()
            if c.oom_fd is not None:
                self.loop.add_reader(c.oom_fd, self._on_oom, c)
        c.cgroup_ready = True

    def op_start(self, conn: Connection, message: dict[str, Any]) -> Any:
        c = self._get(message)
        if c.deleting:
            raise OpError("FailedPrecondition", f"container {c.id} is being removed")
        if c.process is not None or c.restart_timer is not None:
            raise OpError("NotModified", "container is already running")
        # A start through the API resets the restart policy's count and back-off (moby's
        # ResetRestartManager) and forgets a manual stop.
        c.restart_count, c.manually_stopped, c.restart_canceled = 0, False, False
        c.backoff = restart.Backoff()
        self._ensure_cgroup(c)
        proc = self._spawn(c)
        return self._await_start(proc)

    async def _await_start(self, proc: Process) -> Any:
        await proc.started
        c = proc.container
        if not proc.exec_error:
            return {"state": wire.encode(proc.start_state), "seq": proc.start_seq}
        await proc.done
        raise OpError("StartFailed", c.error, state=wire.encode(c.state()), seq=proc.exit_seq)

    def op_kill(self, conn: Connection, message: dict[str, Any]) -> Any:
        c = self._get(message)
        proc = c.process
        sig = int(message.get("signal", signal.SIGKILL))
        if not 0 < sig < signal.NSIG:
            raise OpError("InvalidArgument", f"invalid signal: {sig}")
        cancel = bool(message.get("cancel_restart"))
        if message.get("manual") and not c.manually_stopped:
            c.manually_stopped = True
            self._persist(c)
        if cancel:
            c.restart_canceled = True
        if proc is None or proc.reaped:
            if c.restart_timer is not None:  # no process to signal; only the cancellation applies
                return {"seq": self._cancel_restart(c)} if cancel else None
            raise OpError("ContainerNotRunning", f"container {c.id} is not running")
        if message.get("all"):
            c.cgroup.signal_all(sig)
        self._signal(proc, sig)
        if cancel and c.status == Status.PAUSED:
            # The signal is pending in the frozen processes: thaw them so they act on it (moby).
            return {"seq": self._thaw(c)}
        return None

    def _cancel_restart(self, c: Container) -> int:
        if c.restart_timer is not None:
            c.restart_timer.cancel()
            c.restart_timer = None
        c.status = Status.STOPPED
        self._persist(c)
        c.log.info("container_restart_cancelled")
        return self._emit(EventType.UPDATE, c)

    def _signal(self, proc: Process, sig: int) -> None:
        # Safe against pid reuse: the process is our unreaped child until reap() runs.
        if not proc.reaped:
            try:
                os.kill(proc.pid, sig)
            except ProcessLookupError:
                pass

    def op_resize(self, conn: Connection, message: dict[str, Any]) -> Any:
        c = self._get(message)
        proc = c.execs.get(str(message["exec_id"])) if message.get("exec_id") else c.process
        if proc is None or not proc.terminal or proc.stdin_fd < 0 or proc.reaped:
            return None
        height, width = int(message.get("height", 0)), int(message.get("width", 0))
        try:
            fcntl.ioctl(proc.stdin_fd, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))
        except OSError as exc:
            raise OpError("Internal", f"resize: {child_mod.errtext(exc.errno or 0)}") from None
        return None

    def op_close_stdin(self, conn: Connection, message: dict[str, Any]) -> Any:
        self._close_stdin(self._get(message))
        return None

    def op_delete(self, conn: Connection, message: dict[str, Any]) -> Any:
        c = self._get(message)
        if c.process is not None:
            raise OpError("FailedPrecondition",
                          f"container {c.id} is running: stop the container before removing or force remove")
        if c.deleting:
            raise OpError("FailedPrecondition", f"removal of container {c.id} is already in progress")
        c.deleting = True
        if c.restart_timer is not None:
            c.restart_timer.cancel()
            c.restart_timer = None
        self._stop_health(c)
        return self._delete(c)

    async def _delete(self, c: Container) -> Any:
        deadline = time.monotonic() + CGROUP_REMOVE_TIMEOUT
        if c.oom_fd is not None:
            self.loop.remove_reader(c.oom_fd)
        while not c.cgroup.remove():
            if time.monotonic() > deadline:
                c.log.warning("cgroup_not_removed")
                break
            await asyncio.sleep(0.01)
        self._close_container_fds(c)
        # Out of containers/ at once (a new supervisor never finds it), emptied after the reply.
        removed = self.config.paths.removed / f"{c.id}.{secrets.token_hex(4)}"
        try:
            os.rename(c.dir, removed)
        except OSError:
            removed = c.dir
        self.loop.call_soon(shutil.rmtree, removed, True)
        del self.containers[c.id]
        for conn in c.waiting_attachers:
            self._end_attach(conn)
        c.waiting_attachers.clear()
        seq = self._emit(EventType.DELETE, c)
        c.log.info("container_deleted")
        return {"state": wire.encode(c.state()), "seq": seq}

    @staticmethod
    def _close_container_fds(c: Container) -> None:
        for fd in (c.log_fd, c.oom_fd):
            if fd is not None and fd >= 0:
                os.close(fd)
        c.log_fd, c.oom_fd = -1, None
        c.drop_exec_handles()

    def op_shutdown(self, conn: Connection, message: dict[str, Any]) -> Any:
        """Exit if no container runs (``if_idle``), else stay; ``force`` stops them all first."""
        running = self.running_count()
        if running and not message.get("force"):
            return {"exiting": False, "running": running}
        if running:
            self._spawn_task(self._stop_all_and_exit())
        else:
            self.loop.call_soon(self.stopping.set)
        return {"exiting": True, "running": running}

    # Starting -----------------------------------------------------------------------------------

    def _plan(self, c: Container, fds: dict[str, int]) -> child_mod.ChildPlan:
        spec, p = c.spec, c.spec.process
        flags = linux.CLONE_NEWNS
        if spec.uts == NamespaceMode.PRIVATE:
            flags |= linux.CLONE_NEWUTS
        if spec.ipc == NamespaceMode.PRIVATE:
            flags |= linux.CLONE_NEWIPC
        if spec.network == NamespaceMode.PRIVATE and not spec.netns_path:
            flags |= linux.CLONE_NEWNET
        try:
            sysctls = options.sysctls(spec.sysctls, network=spec.network, ipc=spec.ipc, uts=spec.uts)
            rlimits = options.rlimits(spec.ulimits)
        except options.OptionError as exc:
            raise OpError("Internal", "failed to create task for container: failed to create shim task: OCI runtime "
                          f"create failed: runc create failed: {exc}: unknown") from None
        args = p.args
        try:
            mount_steps, root_propagation = user_mounts.plan(spec.mounts, files_mod.volumes_root(self))
        except user_mounts.MountError as exc:
            raise OpError(exc.kind, exc.message) from None
        # A user's mount of /etc/hosts (and friends) replaces the generated file, as in Docker.
        taken = {os.path.normpath(m.destination) for m in spec.mounts}
        binds = tuple((b.source, b.destination, b.readonly) for b in spec.binds
                      if os.path.normpath(b.destination) not in taken)
        if spec.init and spec.pid == NamespaceMode.PRIVATE:  # with the host's PID 1 there is an init already
            args = (INIT_PATH, "--", *p.args)
            binds += ((self.config.init_binary, INIT_PATH, True),)
        return child_mod.ChildPlan(
            id=spec.id, rootfs=str(c.dir / "rootfs"), mounts=spec.rootfs, unshare_flags=flags,
            hostname=spec.hostname or spec.id[:12], domainname=spec.domainname,
            cgroup_procs=c.cgroup.procs_files,
            cgroup_binds=tuple((d, h.name) for h, d in c.cgroup.dirs),
            privileged=spec.privileged, readonly_rootfs=spec.readonly_rootfs,
            masked_paths=self.masked_paths, readonly_paths=READONLY_PATHS, shm_size=spec.shm_size,
            drop_caps=c.drop_caps, user=p.user, args=args, env=p.env, cwd=p.cwd or "/",
            terminal=p.terminal, console_height=p.console_height, console_width=p.console_width,
            stdin_fd=fds.get("stdin", self.devnull), stdout_fd=fds.get("stdout", -1),
            stderr_fd=fds.get("stderr", -1), pty_socket_fd=fds.get("pty", -1), err_fd=fds["err"],
            nofile=self.nofile,
            netns_path=spec.netns_path if spec.network == NamespaceMode.PRIVATE else "",
            binds=binds, sysctls=sysctls, rlimits=rlimits, group_add=spec.group_add,
            no_new_privileges=spec.no_new_privileges, seccomp=c.seccomp,
            user_mounts=mount_steps, root_propagation=root_propagation,
        )

    def _spawn(self, c: Container) -> Process:
        p = c.spec.process
        parent_ends: dict[str, int] = {}  # what the supervisor keeps
        child_ends: dict[str, int] = {}  # what the child gets (closed here after the fork)
        pty_sockets: tuple[socket.socket, socket.socket] | None = None
        try:
            if p.terminal:
                pty_sockets = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            else:
                parent_ends["stdout"], child_ends["stdout"] = os.pipe()
                parent_ends["stderr"], child_ends["stderr"] = os.pipe()
                if p.open_stdin:
                    child_ends["stdin"], parent_ends["stdin"] = os.pipe()
            parent_ends["err"], child_ends["err"] = os.pipe()
            pty_fd = {"pty": pty_sockets[1].fileno()} if pty_sockets else {}
            plan = self._plan(c, child_ends | pty_fd)
            assert threading.active_count() == 1, "the supervisor must not run threads"
            c.oom_base = c.cgroup.oom_kills()
            if c.oom_fd is not None:  # a notification of the previous run is not this run's OOM
                with contextlib.suppress(BlockingIOError):
                    os.read(c.oom_fd, 8)
            started_ns = time.time_ns()
            pid = self._fork(plan, new_pid_ns=c.spec.pid == NamespaceMode.PRIVATE)
        except BaseException:
            for fd in parent_ends.values():
                os.close(fd)
            if pty_sockets is not None:
                pty_sockets[0].close()
            raise
        finally:
            for fd in child_ends.values():
                os.close(fd)
            if pty_sockets is not None:
                pty_sockets[1].close()

        proc = Process(c, pid, started_ns)
        proc.terminal = p.terminal
        self.procs[pid] = proc
        c.process = proc
        proc.pty_socket = pty_sockets[0] if pty_sockets else None
        proc.err_fd = parent_ends["err"]
        os.set_blocking(proc.err_fd, False)
        self.loop.add_reader(proc.err_fd, self._on_exec_status, proc)
        for name, stream in (("stdout", Stream.STDOUT), ("stderr", Stream.STDERR)):
            if name in parent_ends:
                self._add_output(proc, parent_ends[name], stream)
        if "stdin" in parent_ends:
            proc.stdin_fd = parent_ends["stdin"]
            os.set_blocking(proc.stdin_fd, False)
        # stdin sent before the start belongs to this process.
        proc.stdin_buf, c.pending_stdin = c.pending_stdin, bytearray()
        proc.stdin_eof, c.pending_eof = c.pending_eof, False
        if proc.stdin_fd >= 0:
            self._flush_stdin(proc)
        proc.attachers, c.waiting_attachers = c.waiting_attachers, set()
        return proc

    def _fork(self, plan: child_mod.ChildPlan, *, new_pid_ns: bool) -> int:
        """fork() into a new PID namespace: unshare(CLONE_NEWPID) only changes where *children*
        go, so the child is PID 1 there, and the supervisor steps back into its own namespace."""
        if new_pid_ns:
            linux.unshare(linux.CLONE_NEWPID)
        try:
            pid = linux.fork_for_exec()
            if pid == 0:
                child_mod.run(plan)  # never returns
        finally:
            if new_pid_ns and os.getpid() != 1:
                linux.setns(self.pidns_fd, linux.CLONE_NEWPID)
        return pid

    def _add_output(self, proc: Process, fd: int, stream: Stream) -> None:
        os.set_blocking(fd, False)
        proc.outputs[fd] = (stream, jsonlog.LineSplitter(stream))
        if not proc.paused:
            self.loop.add_reader(fd, self._on_output, proc, fd)

    def _on_exec_status(self, proc: Process) -> None:
        try:
            data = os.read(proc.err_fd, 4096)
        except BlockingIOError:
            return
        if data:
            proc.err_buf += data
            return
        self.loop.remove_reader(proc.err_fd)
        os.close(proc.err_fd)
        proc.err_fd = -1
        proc.exec_done = True
        c = proc.container
        master = self._receive_master(proc)
        if proc.err_buf:
            proc.exec_error = proc.err_buf.decode(errors="replace")
            if master >= 0:
                os.close(master)
            if proc.exec is not None:
                for fd, _ in proc.exec.pending_outputs:
                    os.close(fd)
                proc.exec.pending_outputs.clear()
            c.log.info("exec_start_failed" if proc.exec else "container_start_failed", error=proc.exec_error)
        else:
            if master >= 0:
                proc.stdin_fd = master
                self._add_output(proc, os.dup(master), Stream.STDOUT)
                if proc.stdin_buf or proc.stdin_eof:
                    self._flush_stdin(proc)
            if proc.exec is not None:
                self._exec_running(proc)
            else:
                # Announced here, synchronously, so the start event always precedes the exit event.
                c.status, c.pid, c.exit_code = Status.RUNNING, proc.pid, 0
                c.started_at_ns, c.finished_at_ns, c.oom_killed, c.error = proc.started_ns, 0, False, ""
                if probe_args(c.spec.healthcheck) is not None:  # moby's initHealthMonitor
                    c.health = Health(log=c.health.log if c.health else ())
                self._persist(c)
                proc.start_state = c.state()
                proc.start_seq = self._emit(EventType.START, c)
                self._start_health(c)
                c.log.info("container_started", pid=proc.pid,
                           ms=round((time.time_ns() - proc.started_ns) / 1e6, 2))
        if not proc.started.done():
            proc.started.set_result(None)
        self._maybe_finalize(proc)

    @staticmethod
    def _receive_master(proc: Process) -> int:
        sock = proc.pty_socket
        if sock is None:
            return -1
        proc.pty_socket = None
        try:
            sock.setblocking(False)
            _, fds, _, _ = socket.recv_fds(sock, 16, 1)
        except OSError:
            fds = []
        finally:
            sock.close()
        return fds[0] if fds else -1

    # Output --------------------------------------------------------------------------------------

    def _on_output(self, proc: Process, fd: int) -> None:
        try:
            data = os.read(fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno != errno.EIO:  # EIO: every holder of the pty slave has gone
                proc.container.log.warning("output_read_failed", error=str(exc))
            data = b""
        stream, splitter = proc.outputs[fd]
        c = proc.container
        run = proc.exec  # an exec's output goes to its client only, never to the log
        now = time.time_ns()
        if not data:
            self._close_output(proc, fd)
            lines = splitter.flush(now) if run is None else b""
            if lines:
                self._write_log(c, lines)
            if not proc.outputs and not proc.reaped:
                self._reap_one(proc)
            self._maybe_finalize(proc)
            return
        if run is None:
            lines = splitter.feed(data, now)
            if lines:
                self._write_log(c, lines)
        elif run.capture is not None:
            room = MAX_OUTPUT - len(run.capture)
            if len(data) > room:
                run.truncated = True
            run.capture += data[:max(room, 0)]
        if proc.attachers:
            frame = wire.frame(stream, data)
            for conn in proc.attachers:
                if stream in conn.streams:
                    conn.send(frame)

    @staticmethod
    def _write_log(c: Container, lines: bytes) -> None:
        try:
            jsonlog.write_all(c.log_fd, lines)
        except OSError as exc:  # a full disk loses log lines, as dockerd does; attach goes on
            if not c.log_failing:
                c.log.error("log_write_failed", error=str(exc))
            c.log_failing = True
        else:
            c.log_failing = False

    def _close_output(self, proc: Process, fd: int) -> None:
        if not proc.paused:
            self.loop.remove_reader(fd)
        os.close(fd)
        del proc.outputs[fd]

    def output_backpressure(self, conn: Connection) -> None:
        """An attached client is slow: stop reading the process's output until it catches up
        (as dockerd, whose attach copy blocks the container's writes)."""
        if conn.exec_proc is not None:
            self._update_pause(conn.exec_proc)
            return
        c = conn.attach
        if c is None or c.process is None or conn not in c.process.attachers:
            return
        self._update_pause(c.process)

    def _update_pause(self, proc: Process) -> None:
        paused = any(conn.paused for conn in proc.attachers)
        if paused == proc.paused:
            return
        proc.paused = paused
        for fd in proc.outputs:
            if paused:
                self.loop.remove_reader(fd)
            else:
                self.loop.add_reader(fd, self._on_output, proc, fd)

    # Stdin ---------------------------------------------------------------------------------------

    def feed_stdin(self, c: Container, data: bytes, conn: Connection) -> None:
        if not conn.stdin or not c.spec.process.open_stdin:
            return
        proc = c.process
        if proc is not None and not proc.reaped:
            if proc.stdin_eof or (proc.stdin_fd < 0 and proc.exec_done):
                return  # stdin already closed
            proc.stdin_buf += data
            backlog = len(proc.stdin_buf)
            if proc.stdin_fd >= 0:
                self._flush_stdin(proc)
        else:
            c.pending_stdin += data
            backlog = len(c.pending_stdin)
        if backlog > STDIN_HIGH and conn.transport is not None:
            conn.transport.pause_reading()
            c.stdin_paused.add(conn)

    def attach_stdin_closed(self, c: Container) -> None:
        if c.spec.process.stdin_once:
            self._close_stdin(c)

    def _close_stdin(self, c: Container) -> None:
        proc = c.process
        if proc is None or proc.reaped:
            c.pending_eof = True
            return
        proc.stdin_eof = True
        if proc.stdin_fd >= 0:
            self._flush_stdin(proc)

    def _flush_stdin(self, proc: Process) -> None:
        fd = proc.stdin_fd
        buf = proc.stdin_buf
        try:
            while buf:
                written = os.write(fd, buf[:READ_SIZE])
                del buf[:written]
        except BlockingIOError:
            if not proc.stdin_writing:
                proc.stdin_writing = True
                self.loop.add_writer(fd, self._flush_stdin, proc)
            return
        except OSError:  # the process closed its stdin: drop what it will never read
            buf.clear()
            proc.stdin_eof = True
        if proc.stdin_writing:
            proc.stdin_writing = False
            self.loop.remove_writer(fd)
        c = proc.container
        if c.stdin_paused and len(buf) < STDIN_LOW:
            for conn in c.stdin_paused:
                if conn.transport is not None and not conn.closed:
                    conn.transport.resume_reading()
            c.stdin_paused.clear()
        if proc.stdin_eof:
            self._release_stdin(proc)

    def _release_stdin(self, proc: Process) -> None:
        fd = proc.stdin_fd
        if fd < 0:
            return
        if proc.stdin_writing:
            self.loop.remove_writer(fd)
            proc.stdin_writing = False
        if proc.terminal:
            # A pty has no end of input: send the EOF character, keep the master for output.
            try:
                os.write(fd, b"\x04")
            except OSError:
                pass
            return
        os.close(fd)
        proc.stdin_fd = -1

    # Attach ---------------------------------------------------------------------------------------

    def _attach(self, conn: Connection, message: dict[str, Any]) -> None:
        rid = message.get("id")
        try:
            c = self._get(message)
        except OpError as exc:
            self._reply_error(conn, rid, exc)
            conn.close()
            return
        if c.deleting:
            self._reply_error(conn, rid, OpError("FailedPrecondition", f"container {c.id} is being removed"))
            conn.close()
            return
        conn.attach = c
        conn.stdin = bool(message.get("stdin"))
        conn.streams = frozenset(s for s, key in ((Stream.STDOUT, "stdout"), (Stream.STDERR, "stderr"))
                                 if message.get(key, True))
        conn.send_json({"id": rid, "ok": True, "result": {"running": c.process is not None}})
        if c.process is not None and not c.process.finalized:
            c.process.attachers.add(conn)
            self._update_pause(c.process)
        else:
            c.waiting_attachers.add(conn)

    def _end_attach(self, conn: Connection) -> None:
        conn.send(wire.frame(wire.Kind.END, b""))
        conn.close()

    def disconnected(self, conn: Connection) -> None:
        self.connections.discard(conn)
        if self.subscriber is conn:
            self.subscriber = None
            self._recorder_gone()
        c = conn.attach
        if c is None:
            return
        c.waiting_attachers.discard(conn)
        c.stdin_paused.discard(conn)
        proc = conn.exec_proc
        if proc is not None:
            # The client of an exec left: the process runs on, without stdin (moby's CloseStdin).
            proc.attachers.discard(conn)
            if proc.exec is not None and proc.exec.conn is conn:
                proc.exec.conn = None
            self.close_exec_stdin(proc)
            self._update_pause(proc)
            return
        if c.process is not None and conn in c.process.attachers:
            c.process.attachers.discard(conn)
            self._update_pause(c.process)

    # Exits ----------------------------------------------------------------------------------------

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            proc = self.procs.get(pid)
            if proc is None:
                continue  # an orphan we adopted as subreaper
            self._reaped(proc, status)
            self._maybe_finalize(proc)

    def _reaped(self, proc: Process, status: int) -> None:
        self.procs.pop(proc.pid, None)
        proc.reaped = True
        proc.wait_status = status

    def _reap_one(self, proc: Process) -> None:
        """Reap ``proc`` now if it exited: its last output closing is, most often, its exit,
        and this spares the SIGCHLD's turns through the loop (~0.3 ms on an exec's path)."""
        try:
            pid, status = os.waitpid(proc.pid, os.WNOHANG)
        except ChildProcessError:
            return  # reaped already: reap() has it
        if pid == proc.pid:
            self._reaped(proc, status)

    def _on_oom(self, c: Container) -> None:
        if c.oom_fd is None:
            return
        try:
            os.read(c.oom_fd, 8)
        except BlockingIOError:
            return
        proc = c.process
        if proc is None or not proc.exec_done or proc.exec_error or c.status != Status.RUNNING:
            return
        c.oom_killed = True
        proc.oom_reported = True
        self._emit(EventType.OOM, c)
        c.log.info("container_oom")

    def _maybe_finalize(self, proc: Process) -> None:
        if proc.finalized or not proc.reaped or not proc.exec_done:
            return
        if proc.outputs:
            if proc.drain_timer is None:
                proc.drain_timer = self.loop.call_later(DRAIN_TIMEOUT, self._drain_expired, proc)
            return
        self._finalize(proc)

    def _drain_expired(self, proc: Process) -> None:
        now = time.time_ns()
        for fd in list(proc.outputs):
            lines = proc.outputs[fd][1].flush(now)
            if lines:
                self._write_log(proc.container, lines)
            self._close_output(proc, fd)
        self._finalize(proc)

    def _finalize(self, proc: Process) -> None:
        proc.finalized = True
        if proc.drain_timer is not None:
            proc.drain_timer.cancel()
        if proc.exec is not None:
            self._finalize_exec(proc)
            return
        c = proc.container
        self._stop_health(c)
        if proc.stdin_fd >= 0:
            if proc.stdin_writing:
                self.loop.remove_writer(proc.stdin_fd)
            os.close(proc.stdin_fd)
            proc.stdin_fd = -1
        for conn in c.stdin_paused:
            if conn.transport is not None and not conn.closed:
                conn.transport.resume_reading()
        c.stdin_paused.clear()
        if c.spec.pid == NamespaceMode.HOST:
            c.cgroup.signal_all(signal.SIGKILL)  # no PID namespace took the rest down with it
        if proc.exec_error:
            c.exit_code = start_failure_exit_code(proc.exec_error)
            c.error = proc.exec_error
        else:
            code = os.waitstatus_to_exitcode(proc.wait_status)
            c.exit_code = 128 - code if code < 0 else code
            if c.cgroup.oom_kills() > c.oom_base:
                c.oom_killed = True
                if not proc.oom_reported:
                    self._emit(EventType.OOM, c)
        c.status, c.pid, c.finished_at_ns = Status.STOPPED, 0, time.time_ns()
        c.process = None
        c.drop_exec_handles()  # its namespaces go with it
        delay = self._restart_delay(c, proc)
        if delay is not None:
            c.restart_count += 1
            c.status = Status.RESTARTING
            c.restart_timer = self.loop.call_later(delay, self._auto_restart, c)
        self._persist(c)
        proc.exit_seq = self._emit(EventType.EXIT, c)
        if not proc.exec_error:
            c.log.info("container_exited", exit_code=c.exit_code, oom_killed=c.oom_killed,
                       restart_in=delay, restart_count=c.restart_count)
        for conn in proc.attachers:
            self._end_attach(conn)
        proc.attachers.clear()
        if not proc.started.done():
            proc.started.set_result(None)
        proc.done.set_result(None)


    # Restart policies --------------------------------------------------------------------------

    def _restart_delay(self, c: Container, proc: Process) -> float | None:
        """The back-off before the policy restarts this exit, or None (moby's ShouldRestart;
        a process that could not start is never restarted)."""
        policy = c.spec.restart_policy
        if policy.name in ("", "no") or proc.exec_error or c.deleting or self.shutting_down:
            return None
        delay = c.backoff.next((c.finished_at_ns - proc.started_ns) / 1e9)
        if c.restart_canceled or not restart.should_restart(
                policy, c.exit_code, manually_stopped=c.manually_stopped, restart_count=c.restart_count):
            return None
        return delay

    def _auto_restart(self, c: Container) -> None:
        c.restart_timer = None
        if c.deleting or c.process is not None or c.status != Status.RESTARTING:
            return
        try:
            self._ensure_cgroup(c)
            self._spawn(c)
        except (OpError, OSError) as exc:
            c.status = Status.STOPPED
            c.error = exc.message if isinstance(exc, OpError) else str(exc)
            self._persist(c)
            self._emit(EventType.UPDATE, c)
            c.log.warning("container_restart_failed", error=c.error)

    def _restart_on_boot(self) -> None:
        """A new supervisor (host or daemon start) knows which containers their policy brings
        back, as dockerd at its start; the shim starts them (``boot_restarts``) once its other
        layers (networking) are ready."""
        self.boot_restarts = [
            c.id for c in self.containers.values()
            if c.status == Status.STOPPED and restart.restart_on_boot(
                c.spec.restart_policy, c.exit_code, manually_stopped=c.manually_stopped,
                restart_count=c.restart_count, started_before=c.started_at_ns > 0)]

    def op_boot_restarts(self, conn: Connection, message: dict[str, Any]) -> Any:
        """The containers to start because this supervisor is new; handed out once."""
        ids, self.boot_restarts = self.boot_restarts, []
        return ids

    # Pause, update, stats, top -------------------------------------------------------------------

    def _running_process(self, c: Container) -> Process:
        proc = c.process
        if proc is None or proc.reaped or not proc.exec_done or proc.exec_error:
            if c.restart_timer is not None:
                raise OpError("Conflict", f"Container {c.id} is restarting, wait until the container is running")
            raise OpError("ContainerNotRunning", f"container {c.id} is not running")
        return proc

    def op_pause(self, conn: Connection, message: dict[str, Any]) -> Any:
        c = self._get(message)
        self._running_process(c)
        if c.status == Status.PAUSED:
            raise OpError("Conflict", f"Container {c.id} is already paused")
        return self._pause(c)

    async def _pause(self, c: Container) -> Any:
        try:
            c.cgroup.set_frozen(True)
            deadline = time.monotonic() + FREEZE_TIMEOUT
            while not c.cgroup.frozen():
                if time.monotonic() > deadline:
                    raise OSError(errno.ETIMEDOUT, "the freezer did not settle")
                await asyncio.sleep(0.005)
        except OSError as exc:
            with contextlib.suppress(OSError):
                c.cgroup.set_frozen(False)
            raise OpError("Internal", f"cannot pause container {c.id}: {exc.strerror or exc}") from None
        if c.process is None:  # it exited meanwhile
            c.cgroup.set_frozen(False)
            raise OpError("ContainerNotRunning", f"container {c.id} is not running")
        c.status = Status.PAUSED
        self._stop_health(c)
        self._persist(c)
        seq = self._emit(EventType.PAUSE, c)
        c.log.info("container_paused")
        return {"state": wire.encode(c.state()), "seq": seq}

    def op_resume(self, conn: Connection, message: dict[str, Any]) -> Any:
        c = self._get(message)
        if c.status != Status.PAUSED or c.process is None:
            raise OpError("Internal", f"Container {c.id} is not paused")
        seq = self._thaw(c)
        return {"state": wire.encode(c.state()), "seq": seq}

    def _thaw(self, c: Container) -> int:
        try:
            c.cgroup.set_frozen(False)
        except OSError as exc:
            raise OpError("Internal", f"Cannot unpause container {c.id}: {exc.strerror or exc}") from None
        c.status = Status.RUNNING
        self._persist(c)
        seq = self._emit(EventType.RESUME, c)
        self._start_health(c)
        c.log.info("container_unpaused")
        return seq

    def op_update(self, conn: Connection, message: dict[str, Any]) -> Any:
        c = self._get(message)
        try:
            resources = wire.decode(Resources, message["resources"])
            policy = wire.decode(RestartPolicy, message["restart_policy"])
        except (KeyError, TypeError, ValueError, wire.ProtocolError) as exc:
            raise OpError("InvalidArgument", f"invalid update: {exc}") from None
        try:
            options.check_cpuset(resources.cpuset_cpus, resources.cpuset_mems)
        except options.OptionError as exc:
            raise OpError("InvalidArgument", str(exc)) from None
        if c.cgroup_ready:
            try:
                c.cgroup.update(resources)
            except OSError as exc:
                # put back what was there; the container keeps running with its old limits
                with contextlib.suppress(OSError):
                    c.cgroup.update(c.spec.resources)
                raise OpError("Internal", f"Cannot update container {c.id}: failed to write "
                              f"{exc.filename or 'cgroup'}: {child_mod.errtext(exc.errno or 0)}") from None
        c.spec = dataclasses.replace(c.spec, resources=resources, restart_policy=policy)
        (c.dir / "spec.json").write_text(json.dumps(wire.encode(c.spec)))
        seq = self._emit(EventType.UPDATE, c)
        c.log.info("container_updated")
        return {"state": wire.encode(c.state()), "seq": seq}

    def op_stats(self, conn: Connection, message: dict[str, Any]) -> Any:
        c = self._get(message)
        self._running_process(c)
        return wire.encode(stats_mod.sample(c.cgroup, c.pid, machine_memory=self.machine_memory,
                                            private_network=c.spec.network == NamespaceMode.PRIVATE))

    def op_pids(self, conn: Connection, message: dict[str, Any]) -> Any:
        c = self._get(message)
        self._running_process(c)
        d = c.cgroup.any_dir
        return sorted(cgroup_pids(d)) if d else [c.pid]

    # Exec ------------------------------------------------------------------------------------------

    def _exec_attach(self, conn: Connection, message: dict[str, Any]) -> None:
        """An exec whose client is this connection: the reply comes once the process runs (or
        failed), then its output, then END with the exit. With ``keep`` (no stdin only), the
        connection then takes another request instead of closing (END says ``keep``)."""
        rid = message.get("id")
        try:
            c = self._get(message)
            spec = _exec_spec(message)
            keep = bool(message.get("keep")) and not spec.process.open_stdin
            if message.get("recorded") and self.subscriber is None:
                # Nothing would record it now: its client goes through the shim instead.
                raise OpError("Unavailable", "no shim is connected to record the exec")
            run = ExecRun(spec.exec_id, spec.process.args, conn=conn, rid=rid, keep=keep,
                          recorded=bool(message.get("recorded")))
            proc = self._start_exec(c, spec, run)
        except OpError as exc:
            self._reply_error(conn, rid, exc)
            conn.close()
            return
        conn.attach = c
        conn.exec_proc = proc
        conn.stdin = spec.process.open_stdin
        conn.streams = frozenset((Stream.STDOUT, Stream.STDERR))

    def op_exec(self, conn: Connection, message: dict[str, Any]) -> Any:
        """A detached exec: nothing reads its output."""
        c = self._get(message)
        spec = _exec_spec(message)
        proc = self._start_exec(c, spec, ExecRun(spec.exec_id, spec.process.args))
        return self._await_exec(proc)

    async def _await_exec(self, proc: Process) -> Any:
        await proc.started
        run = proc.exec
        assert run is not None
        cid = proc.container.id
        if not proc.exec_error:
            return {"state": wire.encode(run.state(cid)), "seq": run.start_seq}
        await proc.done
        raise OpError("StartFailed", run.error, state=wire.encode(run.state(cid)), seq=run.exit_seq)

    def _start_exec(self, c: Container, spec: ExecSpec, run: ExecRun) -> Process:
        """Start ``spec`` in the container: spawned inside its PID namespace, the child joins
        the rest (:mod:`shim.supervisor.exec_child`)."""
        main = self._running_process(c)
        if c.status == Status.PAUSED:
            raise OpError("Conflict", f"Container {c.id} is paused, unpause the container before exec")
        if spec.exec_id in c.execs:
            raise OpError("AlreadyExists", f"exec {spec.exec_id} is already running")
        p = spec.process
        detached = run.conn is None and run.capture is None
        parent_ends: dict[str, int] = {}
        child_ends: dict[str, int] = {}
        pty_sockets: tuple[socket.socket, socket.socket] | None = None
        try:
            handles = c.exec_handles(main.pid)
            pidns = handles.pidns
            if p.terminal and not detached:
                pty_sockets = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            elif not detached:
                parent_ends["stdout"], child_ends["stdout"] = os.pipe()
                parent_ends["stderr"], child_ends["stderr"] = os.pipe()
            if p.open_stdin and not detached and not p.terminal:
                child_ends["stdin"], parent_ends["stdin"] = os.pipe()
            parent_ends["err"], child_ends["err"] = os.pipe()
            plan = exec_child.ExecPlan(
                cgroup_procs=c.cgroup.procs_files, namespaces=tuple(handles.namespaces), root_fd=handles.root_fd,
                user=p.user, args=p.args, env=p.env, cwd=p.cwd or "/", terminal=p.terminal and not detached,
                console_height=p.console_height, console_width=p.console_width,
                stdin_fd=child_ends.get("stdin", self.devnull), stdout_fd=child_ends.get("stdout", self.devnull),
                stderr_fd=child_ends.get("stderr", self.devnull),
                pty_socket_fd=pty_sockets[1].fileno() if pty_sockets else -1, err_fd=child_ends["err"],
                drop_caps=() if spec.privileged else c.drop_caps, nofile=self.nofile,
                rlimits=options.rlimits(c.spec.ulimits), group_add=c.spec.group_add,
                no_new_privileges=c.spec.no_new_privileges, seccomp=c.seccomp)
            assert threading.active_count() == 1, "the supervisor must not run threads"
            started_ns = time.time_ns()
            if pidns >= 0:
                linux.setns(pidns, linux.CLONE_NEWPID)  # only where children go
            try:
                pid = exec_child.spawn(plan)
            finally:
                if pidns >= 0 and os.getpid() != 1:
                    linux.setns(self.pidns_fd, linux.CLONE_NEWPID)
        except (OSError, options.OptionError) as exc:
            for fd in parent_ends.values():
                os.close(fd)
            if pty_sockets is not None:
                pty_sockets[0].close()
            if isinstance(exc, options.OptionError):
                raise OpError("InvalidArgument", str(exc)) from None
            raise OpError("ContainerNotRunning" if exc.errno == errno.ENOENT else "Internal",
                          f"container {c.id} is not running" if exc.errno == errno.ENOENT
                          else f"exec: {child_mod.errtext(exc.errno or 0)}") from None
        finally:
            for fd in child_ends.values():
                os.close(fd)
            if pty_sockets is not None:
                pty_sockets[1].close()
        proc = Process(c, pid, started_ns)
        proc.terminal = p.terminal and not detached
        proc.exec = run
        run.pid = pid
        self.procs[pid] = proc
        c.execs[spec.exec_id] = proc
        proc.pty_socket = pty_sockets[0] if pty_sockets else None
        proc.err_fd = parent_ends["err"]
        os.set_blocking(proc.err_fd, False)
        self.loop.add_reader(proc.err_fd, self._on_exec_status, proc)
        for name, stream in (("stdout", Stream.STDOUT), ("stderr", Stream.STDERR)):
            if name in parent_ends:  # read once it runs, so that its client gets the reply first
                os.set_blocking(parent_ends[name], False)
                run.pending_outputs.append((parent_ends[name], stream))
        if "stdin" in parent_ends:
            proc.stdin_fd = parent_ends["stdin"]
            os.set_blocking(proc.stdin_fd, False)
        return proc

    def _exec_running(self, proc: Process) -> None:
        run = proc.exec
        assert run is not None
        c = proc.container
        run.running = True
        if run.events and run.conn is not None:
            run.start_event = self.loop.call_later(EXEC_START_HOLD_S, self._emit_exec_start, proc)
        elif run.events:
            self._emit_exec_start(proc)
        if run.conn is not None:
            reply = {"id": run.rid, "ok": True, "result": {"state": run.state(c.id), "seq": run.start_seq}}
            run.conn.send(json_frame(reply))
            proc.attachers.add(run.conn)
        for fd, stream in run.pending_outputs:
            self._add_output(proc, fd, stream)
        run.pending_outputs.clear()
        if proc.stdin_fd >= 0 and (proc.stdin_buf or proc.stdin_eof):
            self._flush_stdin(proc)

    def _emit_exec_start(self, proc: Process) -> None:
        run = proc.exec
        assert run is not None
        run.start_event = None
        run.start_seq = self._emit(EventType.EXEC_START, proc.container, exec=run.state(proc.container.id))

    def _finalize_exec(self, proc: Process) -> None:
        run = proc.exec
        assert run is not None
        c = proc.container
        if run.start_event is not None:  # ended within the hold: its exit event says it all
            run.start_event.cancel()
            run.start_event = None
        if proc.stdin_fd >= 0:
            if proc.stdin_writing:
                self.loop.remove_writer(proc.stdin_fd)
            os.close(proc.stdin_fd)
            proc.stdin_fd = -1
        run.running = False
        if proc.exec_error:
            run.exit_code, run.error = start_failure_exit_code(proc.exec_error), proc.exec_error
        else:
            code = os.waitstatus_to_exitcode(proc.wait_status)
            run.exit_code = 128 - code if code < 0 else code
        c.execs.pop(run.exec_id, None)
        if run.events:
            run.exit_seq = self._emit(EventType.EXEC_EXIT, c, exec=run.state(c.id))
        conn = run.conn
        if conn is not None:
            if run.recorded and run.events:
                self.after_recorded(run.exit_seq, functools.partial(self._end_exec, conn, proc))
            else:
                self._end_exec(conn, proc)
        proc.attachers.clear()
        if not proc.started.done():
            proc.started.set_result(None)
        proc.done.set_result(None)
        if run.on_done is not None:
            run.on_done(run.exit_code, run.output())

    def _end_exec(self, conn: Connection, proc: Process) -> None:
        """Tell an exec's client how it ended: its start's error, or END with the exit."""
        run = proc.exec
        assert run is not None
        if proc.exec_error:
            self._reply_error(conn, run.rid, OpError("StartFailed", run.error,
                                                     state=wire.encode(run.state(proc.container.id)),
                                                     seq=run.exit_seq))
            conn.close()
        elif run.keep:
            end = {"seq": run.exit_seq, "exit_code": run.exit_code, "keep": True}
            conn.send(wire.frame(wire.Kind.END, wire.compact_json(end)))
            conn.attach, conn.exec_proc, conn.stdin, conn.streams = None, None, False, frozenset()
        else:
            end = {"seq": run.exit_seq, "exit_code": run.exit_code}
            conn.send(wire.frame(wire.Kind.END, wire.compact_json(end)))
            conn.close()

    def op_check_user(self, conn: Connection, message: dict[str, Any]) -> Any:
        """Resolve a user in the container's own databases, read through its root with the
        kernel confining every lookup to it (no symlink of the image leads out)."""
        c = self._get(message)
        main = self._running_process(c)
        user = str(message.get("user") or "")
        try:
            root = os.open(f"/proc/{main.pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            raise OpError("ContainerNotRunning", f"container {c.id} is not running") from None
        try:
            passwd, group = (_read_in_root(root, name) for name in ("etc/passwd", "etc/group"))
        finally:
            os.close(root)
        try:
            child_mod.resolve_user(user, passwd, group)
        except child_mod.StartError as exc:
            raise OpError("InvalidArgument", str(exc)) from None
        return None

    def feed_exec_stdin(self, proc: Process, data: bytes, conn: Connection) -> None:
        if not conn.stdin or proc.reaped or proc.stdin_eof or (proc.stdin_fd < 0 and proc.exec_done):
            return
        proc.stdin_buf += data
        if proc.stdin_fd >= 0:
            self._flush_stdin(proc)
        if len(proc.stdin_buf) > STDIN_HIGH and conn.transport is not None:
            conn.transport.pause_reading()
            proc.container.stdin_paused.add(conn)

    def close_exec_stdin(self, proc: Process) -> None:
        if proc.reaped or proc.stdin_eof:
            return
        proc.stdin_eof = True
        if proc.stdin_fd >= 0:
            self._flush_stdin(proc)

    # Health ----------------------------------------------------------------------------------------

    def _start_health(self, c: Container) -> None:
        if c.monitor is not None or c.process is None or probe_args(c.spec.healthcheck) is None:
            return
        c.monitor = HealthMonitor(c.spec.healthcheck, c.started_at_ns, c.health or Health(),
                                  lambda args, done: self._probe(c, args, done),
                                  lambda health, changed, entry: self._health_result(c, health, changed, entry))
        c.monitor.start()

    def _stop_health(self, c: Container) -> None:
        if c.monitor is not None:
            c.monitor.stop()
            c.monitor = None

    def _probe(self, c: Container, args: tuple[str, ...], done: Callable[[int, str], None]) -> Probe:
        p = c.spec.process
        env = tuple(e for e in p.env if not (p.terminal and e == "TERM=xterm"))  # the probe has no tty
        spec = ExecSpec(exec_id=secrets.token_hex(32),
                        process=ProcessSpec(args=args, env=env, cwd=p.cwd, user=p.user))
        c.probe_exec_id = spec.exec_id
        proc = self._start_exec(c, spec, ExecRun(spec.exec_id, args, capture=True, on_done=done, events=False))
        return _ProbeHandle(self, proc)

    def _health_result(self, c: Container, health: Health, changed: bool, entry: HealthLogEntry) -> None:
        c.health = health
        self._persist(c)
        probe = ExecState(exec_id=c.probe_exec_id, container_id=c.id, exit_code=entry.exit_code,
                          args=probe_args(c.spec.healthcheck) or ())
        self._emit(EventType.HEALTH_STATUS if changed else EventType.HEALTH_CHECK, c, exec=probe)
        if changed:
            c.log.info("container_health", status=health.status.value, failing_streak=health.failing_streak)


class _ProbeHandle(Probe):
    def __init__(self, sup: Supervisor, proc: Process) -> None:
        self._sup = sup
        self._proc = proc

    def kill(self) -> None:
        self._sup._signal(self._proc, signal.SIGKILL)


def _read_in_root(root: int, path: str, limit: int = 4 << 20) -> list[list[str]]:
    """Rows of a colon-separated database under ``root`` (missing: none)."""
    try:
        fd = linux.openat2(root, path, os.O_RDONLY, resolve=linux.RESOLVE_IN_ROOT)
    except OSError:
        return []
    try:
        data = os.read(fd, limit)
    finally:
        os.close(fd)
    lines = (line.strip() for line in data.decode("utf-8", "replace").splitlines())
    return [line.split(":") for line in lines if line and not line.startswith("#")]


def _exec_spec(message: dict[str, Any]) -> ExecSpec:
    try:
        spec = wire.decode(ExecSpec, message["spec"])
    except (KeyError, TypeError, ValueError, wire.ProtocolError) as exc:
        raise OpError("InvalidArgument", f"invalid exec spec: {exc}") from None
    if not spec.process.args:
        raise OpError("InvalidArgument", "No exec command specified")
    if not spec.exec_id:
        raise OpError("InvalidArgument", "exec: no id given")
    return spec


def _validate(spec: ContainerSpec) -> None:
    if not _ID.fullmatch(spec.id):
        raise OpError("InvalidArgument", f"invalid container id {spec.id!r}")
    if not spec.process.args:
        raise OpError("InvalidArgument", "no command specified")
    if not spec.rootfs:
        raise OpError("InvalidArgument", "no rootfs mounts given")


def _open_log(path: str) -> int:
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)


def _thermal_throttle_dirs() -> tuple[str, ...]:
    base = "/sys/devices/system/cpu"
    try:
        names = sorted(n for n in os.listdir(base) if n.startswith("cpu") and n[3:].isdigit())
    except OSError:
        return ()
    return tuple(f"{base}/{n}/thermal_throttle" for n in names if os.path.isdir(f"{base}/{n}/thermal_throttle"))
