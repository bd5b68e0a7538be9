"""The shim's interface: the containers of one host.

A container is registered with :meth:`Runtime.create` (stdio allocated, nothing forked), started
any number of times with :meth:`Runtime.start` (one process per start, forked by the shim's
single-threaded supervisor), and removed with :meth:`Runtime.delete`. The supervisor is the parent
of every container process, so the shim's RPC side can restart without losing a process, an exit
code or a log line.

State machine (illegal transitions raise the classified errors in :mod:`protos.errors`)::

    created ──start──► running ──exit/kill/stop──► stopped ──start──► running …
       │                  │                           │
       └──────delete──────┴─(force: kill, then)───────┴──► (gone)

* ``start`` of a running container: ``NotModified``. A process that cannot be started (binary
  not found, not executable, bad working directory) leaves the container ``stopped`` with exit
  code 127/126 and raises ``StartFailed`` whose text contains Docker's phrases
  (``executable file not found in $PATH``, ``no such file or directory``, ``permission denied``).
* ``stop`` of a container that is not running: ``NotModified``. ``kill`` of one that is not
  running: ``ContainerNotRunning``.
* ``delete`` of a running container without ``force``: ``FailedPrecondition``.
* Every method on an unknown id: ``ContainerNotFound``.

Output: each process's stdout and stderr are written by the supervisor to a json-file log
(Docker's format, one JSON object per line) and copied to every attached client. ``logs`` reads
that file (and follows live output with ``follow``); ``attach`` streams live output only.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from common.mounts import Mount


class Status(enum.StrEnum):
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"


class Stream(enum.IntEnum):
    """Docker's stdcopy stream numbers; a TTY's output is reported as STDOUT."""

    STDIN = 0
    STDOUT = 1
    STDERR = 2


@dataclass(frozen=True, slots=True)
class ProcessSpec:
    """What to run. ``args[0]`` is looked up in the container's ``PATH`` (from ``env``) unless it
    contains a slash. ``user`` is ``""`` (root), ``name``, ``uid``, ``name:group`` or ``uid:gid``,
    resolved against the container's own ``/etc/passwd`` and ``/etc/group``."""

    args: tuple[str, ...]
    env: tuple[str, ...] = ()
    cwd: str = "/"
    user: str = ""
    terminal: bool = False
    open_stdin: bool = False
    stdin_once: bool = False
    console_height: int = 0
    console_width: int = 0


@dataclass(frozen=True, slots=True)
class Resources:
    """cgroup limits; 0 (or "") means unlimited / unset, as in Docker's HostConfig."""

    memory: int = 0
    memory_swap: int = 0
    memory_reservation: int = 0
    nano_cpus: int = 0
    cpu_shares: int = 0
    cpu_period: int = 0
    cpu_quota: int = 0
    cpuset_cpus: str = ""
    cpuset_mems: str = ""
    pids_limit: int = 0


class NamespaceMode(enum.StrEnum):
    PRIVATE = "private"
    HOST = "host"


@dataclass(frozen=True, slots=True)
class ContainerSpec:
    """Docker-level description of a container; the shim turns it into the runtime setup
    (namespaces, mounts, cgroups, capabilities, masked paths) itself.

    ``network`` is ``private`` (own network namespace; only ``lo`` until networking lands) or
    ``host``. ``rootfs`` are the snapshotter's mounts for the container's active snapshot."""

    id: str
    rootfs: tuple[Mount, ...]
    process: ProcessSpec
    hostname: str = ""
    domainname: str = ""
    network: NamespaceMode = NamespaceMode.PRIVATE
    ipc: NamespaceMode = NamespaceMode.PRIVATE
    pid: NamespaceMode = NamespaceMode.PRIVATE
    uts: NamespaceMode = NamespaceMode.PRIVATE
    readonly_rootfs: bool = False
    privileged: bool = False
    cap_add: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()
    resources: Resources = field(default_factory=Resources)
    shm_size: int = 64 * 1024 * 1024
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ContainerState:
    """Runtime state of a container as the shim knows it. Times are Unix nanoseconds (0 = never)."""

    id: str
    status: Status
    pid: int = 0
    exit_code: int = 0
    started_at_ns: int = 0
    finished_at_ns: int = 0
    oom_killed: bool = False
    error: str = ""
    log_path: str = ""


@dataclass(frozen=True, slots=True)
class AttachOptions:
    stdin: bool = False
    stdout: bool = True
    stderr: bool = True


@dataclass(frozen=True, slots=True)
class AttachInput:
    """One message from an attached client: stdin bytes, or the end of stdin (``close``)."""

    data: bytes = b""
    close: bool = False


@dataclass(frozen=True, slots=True)
class Output:
    stream: Stream
    data: bytes


@dataclass(frozen=True, slots=True)
class LogsOptions:
    """``since_ns``/``until_ns`` bound entry times (0 = unbounded); ``tail`` < 0 means all."""

    stdout: bool = True
    stderr: bool = True
    follow: bool = False
    since_ns: int = 0
    until_ns: int = 0
    tail: int = -1


@dataclass(frozen=True, slots=True)
class LogEntry:
    stream: Stream
    time_ns: int
    data: bytes
    partial: bool = False


class EventType(enum.StrEnum):
    START = "start"
    EXIT = "exit"
    OOM = "oom"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class TaskEvent:
    type: EventType
    state: ContainerState


class StateSink(Protocol):
    """Where a runtime reports every state transition before the call that caused it returns
    (the Redis writer in production, a recorder in tests)."""

    async def record(self, event: TaskEvent) -> None:
        ...


class Runtime(Protocol):
    """The containers of one host. Every method is ``async`` and safe to call concurrently."""

    async def create(self, spec: ContainerSpec) -> ContainerState:
        """Register a container and allocate its stdio; ``AlreadyExists`` if the id is known."""
        ...

    async def start(self, id: str) -> ContainerState:
        """Fork and exec the container's process; returns once it runs (or raises StartFailed)."""
        ...

    async def kill(self, id: str, signal: int = 15, all: bool = False) -> None:
        """Send ``signal`` to the process (``all``: to every process of the container)."""
        ...

    async def stop(self, id: str, signal: int = 15, timeout: float = 10.0) -> ContainerState:  # noqa: ASYNC109
        """Send ``signal``; after ``timeout`` seconds (< 0: wait forever) send SIGKILL; return the
        stopped state."""
        ...

    async def delete(self, id: str, force: bool = False) -> ContainerState:
        """Forget the container: its log, stdio and cgroups go. ``force`` kills it first."""
        ...

    async def state(self, id: str) -> ContainerState:
        ...

    async def list(self) -> list[ContainerState]:
        ...

    async def wait(self, id: str) -> ContainerState:
        """Return once the container is not running (at once if it is not)."""
        ...

    def attach(
        self, id: str, options: AttachOptions, stdin: AsyncIterator[AttachInput]
    ) -> AsyncIterator[Output]:
        """Stream live output of the current (or, if none runs, the next) process until it exits,
        feeding ``stdin`` to it. Input that arrives before the process starts is kept for it,
        including its end; at the end of stdin the process's stdin is closed if ``stdin_once``.
        The attachment is made when this method is called, not at the first iteration: a
        ``start`` called afterwards delivers all of its process's output to it."""
        ...

    def logs(self, id: str, options: LogsOptions) -> AsyncIterator[LogEntry]:
        """Entries from the container's log; with ``follow``, then live ones until it stops."""
        ...

    async def resize(self, id: str, height: int, width: int) -> None:
        """Set the pty's window size; a no-op for containers without a terminal."""
        ...

    async def close_stdin(self, id: str) -> None:
        ...

    def events(self) -> AsyncIterator[TaskEvent]:
        """Every state transition from now on, in order."""
        ...
