"""The forked child of an exec: from a copy of the supervisor into a running container, then
``execve`` (no Python process stays behind).

The supervisor forks it already inside the container's PID namespace (``setns`` on the
supervisor's PID-namespace-for-children, as ``nsenter`` does), so it is the supervisor's own
child: reaped there, with its exit status. Here it joins the container's cgroups and its other
namespaces (mount last), takes the container's root as its root, opens its pty in the
container's devpts, and finishes like the container's first process
(:func:`shim.supervisor.child.exec_process`). The rules of :mod:`shim.supervisor.child` apply:
syscalls and plain data only, and any failure is written to ``err_fd`` in Docker's words.
"""

from __future__ import annotations

import fcntl
import gc
import os
import socket
import struct
import termios
from dataclasses import dataclass
from typing import NoReturn

from common import linux
from shim.supervisor import child as child_mod
from shim.supervisor.child import StartError, errtext

_TIOCSPTLCK = 0x40045431
_TIOCGPTN = 0x80045430


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


def run(plan: ExecPlan) -> NoReturn:
    gc.disable()
    step = "init"
    try:
        child_mod.reset_signals()
        os.setsid()
        step = "join cgroups"
        for path in plan.cgroup_procs:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, b"0")
            finally:
                os.close(fd)
        step = "join namespaces"
        for fd, nstype in plan.namespaces:
            linux.setns(fd, nstype)
        os.fchdir(plan.root_fd)
        os.chroot(".")
        os.chdir("/")
        slave = _console(plan) if plan.terminal else -1
        step = "prepare process"
        child_mod.exec_process(plan, slave)
    except StartError as exc:
        message = str(exc)
    except OSError as exc:
        message = f"{step}: {errtext(exc.errno)}" if exc.errno else f"{step}: {exc}"
    except BaseException as exc:  # never let anything unwind into the supervisor's code
        message = f"{step}: internal error: {type(exc).__name__}: {exc}"
    try:
        os.write(plan.err_fd, message.encode(errors="replace"))
    finally:
        os._exit(1)


def _console(plan: ExecPlan) -> int:
    """A new pty of the container's devpts; the master goes back to the supervisor."""
    master = os.open("/dev/pts/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    fcntl.ioctl(master, _TIOCSPTLCK, struct.pack("i", 0))
    (number,) = struct.unpack("I", fcntl.ioctl(master, _TIOCGPTN, b"\0\0\0\0"))
    slave = os.open(f"/dev/pts/{number}", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    if plan.console_height and plan.console_width:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", plan.console_height, plan.console_width, 0, 0))
    with socket.socket(fileno=plan.pty_socket_fd) as sock:
        socket.send_fds(sock, [b"m"], [master])
    os.close(master)
    return slave
