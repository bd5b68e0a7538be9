"""Network namespaces as files, and work done inside them from a thread.

A container's namespace is created by a worker thread (``unshare(CLONE_NEWNET)`` affects only
the calling thread), pinned by bind-mounting ``/proc/thread-self/ns/net`` on a file under the
shim's exec root (the ``SandboxKey``), and joined by the container's process with ``setns``.
Sockets keep the namespace they were created in, so a thread that enters a namespace, opens a
netlink or DNS socket and switches back leaves the socket usable from the event loop.

A thread that cannot switch back to the shim's own namespace is never reused: its pool is
discarded (:class:`NamespaceWorker`), so no later work runs in the wrong namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import socket
import struct
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import structlog

from common import linux

log = structlog.get_logger()

T = TypeVar("T")

_SIOCSIFFLAGS = 0x8914
_IFF_UP_LOOPBACK_RUNNING = 0x1 | 0x8 | 0x40
NETLINK_ROUTE = 0


class NamespaceLost(Exception):
    """A worker thread could not return to the shim's own network namespace."""


def loopback_up() -> None:
    """Bring ``lo`` up in the calling thread's namespace (an ioctl: no netlink round trips)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        fcntl.ioctl(s.fileno(), _SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", _IFF_UP_LOOPBACK_RUNNING))


def rtnl_socket() -> socket.socket:
    """A route-netlink socket of the calling thread's namespace (for pyroute2's ``use_socket``)."""
    return socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, NETLINK_ROUTE)


_NLMSG = struct.Struct("=IHHII")  # struct nlmsghdr
_IFINFO = struct.Struct("=BxHiII")  # struct ifinfomsg
_RTM_DELLINK = 17
_NLM_F_REQUEST_ACK = 0x1 | 0x4
_NLMSG_ERROR = 2
_IFLA_IFNAME = 3


def delete_link(name: str) -> bool:
    """Delete the interface ``name`` of the calling thread's namespace (a veth takes its peer
    with it); False if there is none. Blocking: the kernel does the work inside the request,
    so call it from a worker thread, never from the event loop."""
    ifname = name.encode() + b"\0"
    attr = struct.pack("=HH", 4 + len(ifname), _IFLA_IFNAME) + ifname
    attr += b"\0" * (-len(attr) % 4)
    body = _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + attr
    request = _NLMSG.pack(_NLMSG.size + len(body), _RTM_DELLINK, _NLM_F_REQUEST_ACK, 1, 0) + body
    with rtnl_socket() as sock:
        sock.send(request)
        while True:
            reply = sock.recv(65536)
            pos = 0
            while pos + _NLMSG.size <= len(reply):
                length, kind, _, seq, _ = _NLMSG.unpack_from(reply, pos)
                if kind == _NLMSG_ERROR and seq == 1:
                    (code,) = struct.unpack_from("=i", reply, pos + _NLMSG.size)
                    if code == 0:
                        return True
                    if -code in (errno.ENODEV, errno.ENOENT):
                        return False
                    raise OSError(-code, f"deleting link {name}: {os.strerror(-code)}")
                pos += max(length, _NLMSG.size)


def _own() -> int:
    return os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)


def _back(own: int) -> None:
    try:
        linux.setns(own, linux.CLONE_NEWNET)
    except OSError as exc:
        raise NamespaceLost(str(exc)) from exc


def create(path: Path, inside: Callable[[], T]) -> T:
    """Create a namespace pinned at ``path`` (which must not exist), bring ``lo`` up and run
    ``inside`` in it. On failure the file is removed again."""
    own = _own()
    try:
        linux.unshare(linux.CLONE_NEWNET)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDONLY | os.O_CLOEXEC, 0o444)
            os.close(fd)
            try:
                linux.mount("/proc/thread-self/ns/net", str(path), None, linux.MS_BIND)
                loopback_up()
                return inside()
            except BaseException:
                remove(path)
                raise
        finally:
            _back(own)
    finally:
        os.close(own)


def enter(path: Path | str, inside: Callable[[], T]) -> T:
    """Run ``inside`` in the namespace pinned at (or referred to by) ``path``."""
    own = _own()
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            linux.setns(target, linux.CLONE_NEWNET)
        finally:
            os.close(target)
        try:
            return inside()
        finally:
            _back(own)
    finally:
        os.close(own)


def pin(source: str, path: Path) -> None:
    """Pin an existing namespace (``/proc/<pid>/ns/net`` or another pin) at ``path`` too."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDONLY | os.O_CLOEXEC, 0o444))
    linux.mount(source, str(path), None, linux.MS_BIND)


def is_pinned(path: Path) -> bool:
    """Whether ``path`` is a namespace pin (an nsfs mount), not just the file under one."""
    try:
        return os.stat(path).st_dev != os.stat(path.parent).st_dev
    except OSError:
        return False


def remove(path: Path) -> None:
    """Unpin and delete ``path``; the namespace goes when nothing else holds it. Idempotent."""
    for _ in range(4):  # stacked pins (a repeated pin after a crash) come off one by one
        try:
            linux.umount2(str(path), linux.MNT_DETACH)
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.ENOENT):
                break
            raise
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


class NamespaceWorker:
    """The threads that enter namespaces. A thread that fails to switch back poisons its pool,
    which is then replaced."""

    def __init__(self, threads: int = 2) -> None:
        self._threads = threads
        self._pool = self._new()

    def _new(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(max_workers=self._threads, thread_name_prefix="berth-netns")

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        pool = self._pool
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)
        except NamespaceLost:
            log.critical("netns_thread_lost")
            if pool is self._pool:
                self._pool = self._new()
                pool.shutdown(wait=False)
            raise

    def close(self) -> None:
        self._pool.shutdown(wait=True)
