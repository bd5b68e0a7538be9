"""An exec's child: the native helper ``berth-exec`` (shim/native/berth-exec.c), started with
``posix_spawn`` from inside the container's PID namespace.

``posix_spawn`` is glibc's vfork-style clone: unlike a fork of the 30 MiB supervisor it copies
no page tables, and the child runs no Python (no copy-on-write faults, no interpreter to tear
down at ``execve``). From fork to the exec'd process that was most of an exec's start. The
supervisor spawns it already inside the container's PID namespace (``setns`` on its
PID-namespace-for-children, as ``nsenter`` does), so it is the supervisor's own child: reaped
there, with its exit status. The helper joins the container's cgroups and other namespaces
(mount last), takes the container's root, opens its pty in the container's devpts, and finishes
like the container's first process (:func:`shim.supervisor.child.exec_process`): any failure
is written to ``err_fd`` in Docker's words.

The plan goes over in a memfd (written whole before the spawn), encoded by :func:`encode`;
the helper decodes it in the same order.
"""

from __future__ import annotations

import os
import signal
import struct
from dataclasses import dataclass
from pathlib import Path

_MAGIC = 0x31584542  # "BEX1"
_TERMINAL = 1
_NO_NEW_PRIVS = 2
_NATIVE = Path(__file__).resolve().parents[1] / "native"
HELPER = _NATIVE / "berth-exec"
_SOURCE = _NATIVE / "berth-exec.c"
# Every signal back to its default in the helper: execve keeps ignored signals ignored (Python
# ignores SIGPIPE and SIGXFSZ), and handlers must not run in a vfork child.
_DEFAULT_SIGNALS = frozenset(signal.valid_signals()) - {signal.SIGKILL, signal.SIGSTOP}


@dataclass(frozen=True, slots=True)
class ExecPlan:
    cgroup_procs: tuple[str, ...]
    namespaces: tuple[tuple[int, int], ...]  # (fd, CLONE_NEW*) joined in this order
    root_fd: int  # the container's root directory (/proc/<pid>/root), taken after the mount ns
    user: str
    args: tuple[str, ...]
    env: tuple[str, ...]
    cwd: str
    terminal: bool
    console_height: int
    console_width: int
    stdin_fd: int
    stdout_fd: int
    stderr_fd: int
    pty_socket_fd: int
    err_fd: int
    drop_caps: tuple[int, ...]
    nofile: tuple[int, int]
    rlimits: tuple[tuple[int, int, int], ...]
    group_add: tuple[str, ...]
    no_new_privileges: bool
    seccomp: bytes

    def fds(self) -> tuple[int, ...]:
        """The supervisor's fds the helper uses (they are close-on-exec here)."""
        own = (self.stdin_fd, self.stdout_fd, self.stderr_fd, self.pty_socket_fd, self.err_fd, self.root_fd)
        return tuple(sorted({fd for fd in (*own, *(fd for fd, _ in self.namespaces)) if fd >= 0}))


class HelperMissing(RuntimeError):
    pass


def check_helper() -> None:
    """Refuse to run without a current helper (``make native`` builds it)."""
    if not os.access(HELPER, os.X_OK):
        raise HelperMissing(f"{HELPER} is missing: build it with `make native` (part of `make install`)")
    if _SOURCE.exists() and _SOURCE.stat().st_mtime > HELPER.stat().st_mtime:
        raise HelperMissing(f"{HELPER} is older than its source: rebuild it with `make native`")


def _limit(value: int) -> int:
    return -1 if value < 0 or value >= 1 << 63 else value


def _bytes(data: bytes) -> bytes:
    return struct.pack("<I", len(data)) + data


def _strs(items: tuple[str, ...]) -> bytes:
    return struct.pack("<I", len(items)) + b"".join(_bytes(s.encode()) for s in items)


def encode(plan: ExecPlan) -> bytes:
    """The plan as berth-exec.c's ``read_plan`` reads it."""
    flags = (_TERMINAL if plan.terminal else 0) | (_NO_NEW_PRIVS if plan.no_new_privileges else 0)
    parts = [
        struct.pack("<II6iIIqq", _MAGIC, flags, plan.stdin_fd, plan.stdout_fd, plan.stderr_fd, plan.pty_socket_fd,
                    plan.err_fd, plan.root_fd, plan.console_height, plan.console_width,
                    _limit(plan.nofile[0]), _limit(plan.nofile[1])),
        struct.pack("<I", len(plan.rlimits)),
        *(struct.pack("<iqq", kind, _limit(soft), _limit(hard)) for kind, soft, hard in plan.rlimits),
        struct.pack(f"<I{len(plan.drop_caps)}I", len(plan.drop_caps), *plan.drop_caps),
        struct.pack("<I", len(plan.namespaces)),
        *(struct.pack("<ii", fd, nstype) for fd, nstype in plan.namespaces),
        _strs(plan.cgroup_procs),
        _bytes(plan.user.encode()),
        _strs(plan.group_add),
        _strs(plan.args),
        _strs(plan.env),
        _bytes(plan.cwd.encode()),
        _bytes(plan.seccomp),
    ]
    return b"".join(parts)


def spawn(plan: ExecPlan) -> int:
    """Start the helper on ``plan``; returns its pid. The caller is in the PID namespace the
    child must be in, and single-threaded."""
    memfd = os.memfd_create("berth-exec-plan", os.MFD_CLOEXEC)
    try:
        os.write(memfd, encode(plan))  # a memfd takes a whole write
        passed = (memfd, *plan.fds())
        return os.posix_spawn(
            str(HELPER), [HELPER.name, str(memfd)], {},
            file_actions=[(os.POSIX_SPAWN_DUP2, fd, fd) for fd in passed],  # dup2 onto itself: inherited
            setsid=True, setsigmask=(), setsigdef=_DEFAULT_SIGNALS)
    finally:
        os.close(memfd)
