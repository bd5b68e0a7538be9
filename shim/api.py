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
import itertools
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from common.mounts import Mount
from shim.network.api import Networking


class Status(enum.StrEnum):
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"
    RESTARTING = "restarting"  # exited; its restart policy starts it again after a back-off


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
    oom_kill_disable: bool = False


@dataclass(frozen=True, slots=True)
class BindMount:
    """A host file or directory bind-mounted at ``destination`` inside the container (resolved
    within the rootfs, symlinks included, never escaping it), after the rootfs is mounted."""

    source: str
    destination: str
    readonly: bool = False


@dataclass(frozen=True, slots=True)
class ContainerMount:
    """A user's mount (``-v``, ``--mount``, ``--tmpfs``, ``--volumes-from``), made in the
    container's child before ``pivot_root`` with the target resolved inside the rootfs.
    ``type``: ``bind`` (``source`` a host path; ``create_source`` makes a missing directory, as
    ``-v`` does), ``volume`` (``source`` a volume name on this host) or ``tmpfs`` (``data`` its
    options). ``propagation``: Docker's words (``rprivate``…, "" for the default); ``recursive``
    false for a non-recursive bind; ``copy_up``: an empty volume receives the image's content at
    ``destination`` when the container is created."""

    type: str
    destination: str
    source: str = ""
    readonly: bool = False
    propagation: str = ""
    recursive: bool = True
    data: str = ""
    copy_up: bool = False
    create_source: bool = False


class NamespaceMode(enum.StrEnum):
    PRIVATE = "private"
    HOST = "host"


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """Docker's restart policy: ``no``, ``always``, ``unless-stopped`` or ``on-failure``
    (``maximum_retry_count`` 0 = unlimited). The shim applies it: an exit that the policy restarts
    leaves the container ``restarting`` for Docker's back-off (100 ms, doubling, at most 1 min,
    back to 100 ms after 10 s of running); a manual stop or kill cancels it."""

    name: str = "no"
    maximum_retry_count: int = 0


@dataclass(frozen=True, slots=True)
class Healthcheck:
    """Docker's ``HealthConfig`` with durations in ns (0 = Docker's default). ``test`` is
    ``("CMD", arg…)``, ``("CMD-SHELL", script)`` or empty/``("NONE",)`` for no check."""

    test: tuple[str, ...] = ()
    interval_ns: int = 0
    timeout_ns: int = 0
    start_period_ns: int = 0
    start_interval_ns: int = 0
    retries: int = 0
    shell: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Ulimit:
    """One ``--ulimit``: ``name`` as Docker spells it (``nofile``, ``nproc``…)."""

    name: str
    soft: int
    hard: int


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
    restart_policy: RestartPolicy = field(default_factory=RestartPolicy)
    healthcheck: Healthcheck = field(default_factory=Healthcheck)
    ulimits: tuple[Ulimit, ...] = ()
    sysctls: Mapping[str, str] = field(default_factory=dict)
    group_add: tuple[str, ...] = ()
    init: bool = False  # a reaping PID 1 (tini) runs the process, as --init
    no_new_privileges: bool = False
    # "" = Docker's default profile, "unconfined" = none, else a profile's JSON text.
    seccomp_profile: str = ""
    # Networking (shim/network): what the API server decided; the shim's network layer fills
    # ``netns_path`` (a namespace file to join instead of creating one; network PRIVATE only)
    # and ``binds`` (its generated /etc/hosts, /etc/hostname, /etc/resolv.conf).
    networking: Networking = field(default_factory=Networking)
    netns_path: str = ""
    binds: tuple[BindMount, ...] = ()
    # Users' mounts (volumes, binds, tmpfs), in Docker's order of precedence.
    mounts: tuple[ContainerMount, ...] = ()


class HealthStatus(enum.StrEnum):
    STARTING = "starting"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


@dataclass(frozen=True, slots=True)
class HealthLogEntry:
    start_ns: int
    end_ns: int
    exit_code: int
    output: str


@dataclass(frozen=True, slots=True)
class Health:
    """Docker's ``State.Health``: the last five probe results."""

    status: HealthStatus = HealthStatus.STARTING
    failing_streak: int = 0
    log: tuple[HealthLogEntry, ...] = ()


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
    restart_count: int = 0
    health: Health | None = None  # None: no healthcheck configured


@dataclass(frozen=True, slots=True)
class ExecSpec:
    """A process to run inside a running container (``docker exec``). It joins every namespace
    and cgroup of the container and gets the container's capabilities (all of the host's bounding
    set with ``privileged``), seccomp profile, no_new_privs, rlimits and supplementary groups.
    ``detach``: nobody reads its output, which is discarded."""

    exec_id: str
    process: ProcessSpec
    privileged: bool = False
    detach: bool = False


@dataclass(frozen=True, slots=True)
class ExecState:
    """One exec process. ``exit_code`` is meaningful once ``running`` is false and ``pid`` was
    set (a process that could not start has exit code 126/127 and ``error``)."""

    exec_id: str
    container_id: str
    pid: int = 0
    running: bool = False
    exit_code: int = 0
    error: str = ""
    args: tuple[str, ...] = ()


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


_STREAM_OF = {1: Stream.STDOUT, 2: Stream.STDERR}


@dataclass(frozen=True, slots=True)
class LogBatch:
    """Consecutive log entries column by column, what :meth:`Runtime.log_batches` yields: one
    object per column instead of one per entry (a log of 100,000 lines costs a few batches).

    Entry ``i`` came from ``streams[i]`` (a :class:`Stream` value: 1 stdout, 2 stderr) at
    ``times_ns[i]``; its bytes are ``data[ends[i - 1]:ends[i]]`` (from 0 for the first). An entry
    is partial — a piece of a line longer than 16 KiB, or output that ended without a newline —
    exactly when its bytes do not end with ``\\n`` (so ``partial`` needs no column)."""

    streams: bytes = b""
    times_ns: Sequence[int] = ()
    data: bytes = b""
    ends: Sequence[int] = ()

    def __len__(self) -> int:
        return len(self.streams)

    def __bool__(self) -> bool:
        return bool(self.streams)

    @classmethod
    def of(cls, entries: Iterable[LogEntry]) -> LogBatch:
        """The batch of ``entries`` (their ``partial`` is implied by their bytes, see above)."""
        items = list(entries)
        return cls(streams=bytes(int(e.stream) for e in items), times_ns=tuple(e.time_ns for e in items),
                   data=b"".join(e.data for e in items),
                   ends=tuple(itertools.accumulate(len(e.data) for e in items)))

    def entries(self) -> Iterator[LogEntry]:
        """The entries one by one (an object each: for callers that want them so)."""
        data, start = self.data, 0
        for stream, time_ns, end in zip(self.streams, self.times_ns, self.ends, strict=True):
            piece = data[start:end]
            start = end
            yield LogEntry(_STREAM_OF.get(stream) or Stream(stream), time_ns, piece,
                           not piece.endswith(b"\n"))


class EventType(enum.StrEnum):
    START = "start"
    EXIT = "exit"
    OOM = "oom"
    DELETE = "delete"
    PAUSE = "pause"
    RESUME = "resume"
    UPDATE = "update"  # state changed without a Docker event (restart cancelled, limits updated)
    EXEC_START = "exec_start"
    EXEC_EXIT = "exec_exit"
    HEALTH_CHECK = "health_check"  # a probe ran; the health status did not change
    HEALTH_STATUS = "health_status"  # a probe ran and changed the health status


@dataclass(frozen=True, slots=True)
class TaskEvent:
    type: EventType
    state: ContainerState
    exec: ExecState | None = None  # exec and health events: the process concerned


@dataclass(frozen=True, slots=True)
class CPUUsage:
    total_ns: int = 0
    percpu_ns: tuple[int, ...] = ()
    kernel_ns: int = 0
    user_ns: int = 0
    throttling_periods: int = 0
    throttled_periods: int = 0
    throttled_ns: int = 0


@dataclass(frozen=True, slots=True)
class BlkioEntry:
    """One ``major:minor op value`` line of a blkio/io counter; ``kind`` names the Docker list
    (``io_service_bytes_recursive``, ``io_serviced_recursive``…)."""

    kind: str
    major: int
    minor: int
    op: str
    value: int


@dataclass(frozen=True, slots=True)
class NetworkCounters:
    rx_bytes: int = 0
    rx_packets: int = 0
    rx_errors: int = 0
    rx_dropped: int = 0
    tx_bytes: int = 0
    tx_packets: int = 0
    tx_errors: int = 0
    tx_dropped: int = 0


@dataclass(frozen=True, slots=True)
class ContainerStats:
    """One sample of a running container's cgroup counters (Docker's stats, without the
    previous sample). ``system_cpu_ns`` is the host's total from /proc/stat, read at the same
    moment; ``memory_limit`` is capped at the host's memory."""

    read_ns: int
    cpu: CPUUsage = field(default_factory=CPUUsage)
    system_cpu_ns: int = 0
    online_cpus: int = 0
    memory_usage: int = 0
    memory_max_usage: int = 0
    memory_limit: int = 0
    memory_failcnt: int = 0
    memory_stats: Mapping[str, int] = field(default_factory=dict)
    pids_current: int = 0
    pids_limit: int = 0
    blkio: tuple[BlkioEntry, ...] = ()
    networks: Mapping[str, NetworkCounters] = field(default_factory=dict)
    cgroup_v2: bool = False


@dataclass(frozen=True, slots=True)
class TopResult:
    titles: tuple[str, ...]
    processes: tuple[tuple[str, ...], ...]


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

    async def kill(self, id: str, signal: int = 15, all: bool = False, *, manual: bool = False,
                   cancel_restart: bool = False) -> None:
        """Send ``signal`` to the process (``all``: to every process of the container).
        ``manual``: a user asked (an ``unless-stopped`` container then stays down);
        ``cancel_restart``: the exit this causes is final, whatever the restart policy. A
        ``restarting`` container has no process: only the cancellation applies. A paused
        container is thawed after a cancelling signal, so that it can act on it."""
        ...

    async def stop(self, id: str, signal: int = 15, timeout: float = 10.0, *,
                   manual: bool = True) -> ContainerState:
        """Send ``signal``; after ``timeout`` seconds (< 0: wait forever) send SIGKILL; return the
        stopped state. Pending and future restarts are cancelled; ``manual`` is false only when
        the daemon stops containers to shut down (restart policies apply again at its next start)."""
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

    def log_batches(self, id: str, options: LogsOptions) -> AsyncIterator[LogBatch]:
        """What :meth:`logs` yields, in batches (as they are read: a burst is one batch, a
        follower gets a trickle at once); never an empty batch. The cheap way to read a big log."""
        ...

    async def resize(self, id: str, height: int, width: int) -> None:
        """Set the pty's window size; a no-op for containers without a terminal."""
        ...

    async def close_stdin(self, id: str) -> None:
        ...

    def events(self) -> AsyncIterator[TaskEvent]:
        """Every state transition from now on, in order."""
        ...

    async def pause(self, id: str) -> ContainerState:
        """Freeze every process of a running container (cgroup freezer, v1 or v2);
        ``ContainerNotRunning`` if it does not run, ``Conflict`` if already paused."""
        ...

    async def resume(self, id: str) -> ContainerState:
        """Thaw a paused container; ``FailedPrecondition`` if it is not paused."""
        ...

    async def update(self, id: str, resources: Resources, restart_policy: RestartPolicy) -> ContainerState:
        """Replace the container's limits and restart policy: written to its cgroups at once if it
        runs, and kept for its next starts."""
        ...

    async def stats(self, id: str) -> ContainerStats:
        """One sample of the counters of a running (or paused) container;
        ``ContainerNotRunning`` otherwise."""
        ...

    async def top(self, id: str, ps_args: str) -> TopResult:
        """The host's ``ps`` (``ps_args``, default ``-ef``) limited to the container's processes."""
        ...

    async def exec(self, id: str, spec: ExecSpec,
                   stdin: AsyncIterator[AttachInput]) -> tuple[ExecState, AsyncIterator[Output]]:
        """Start ``spec`` in the running container ``id``; returns once it runs (its start is
        recorded) with its output, which ends when it exited and its exit is recorded.
        ``StartFailed`` (the failure recorded, exit code 126/127), ``ContainerNotRunning``,
        ``Conflict`` (paused) or ``AlreadyExists`` (the exec id ran already) otherwise. Without
        ``detach`` the output must be read: it is not buffered elsewhere."""
        ...

    async def resize_exec(self, id: str, exec_id: str, height: int, width: int) -> None:
        """Set an exec's pty window size; a no-op once it exited or without a terminal."""
        ...

    async def check_user(self, id: str, user: str) -> None:
        """Resolve ``user`` (as :class:`ProcessSpec` takes it) in the running container's own
        /etc/passwd and /etc/group; ``InvalidArgument`` in runc's words if it names nobody."""
        ...
