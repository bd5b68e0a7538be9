"""A forked child of the supervisor that works on a container's files: ``docker cp`` both ways
(stat, tar out, tar in) on a running container, and the copy of image content into new volumes
when a container is created.

Why a child inside the container's mount namespace, and not a frozen cgroup (REFERENCE §5.3,
CVE-2018-15664): it sees exactly what the container sees (its volumes, tmpfs mounts, /etc/hosts
binds) and changes it in place, while the container keeps running; resolution is still
race-free, because every path is resolved by the kernel with ``openat2(RESOLVE_IN_ROOT)``
against the container's root (a component swapped for a symlink by the container resolves
inside it) and the last component is never followed. Freezing would stall the workload for the
length of a copy and still need the same confined resolution.

The child ``setns``es into the container's mount namespace only (not its PID namespace: the
container cannot see, trace or signal it), ``chroot``s to the container's root taken from
``/proc/<pid>/root`` before entering, clears ``sys.path`` so that no module can be imported from
the container's files afterwards, drops every inherited fd but its own, and is not dumpable.
Owners are numeric (no NSS: CVE-2019-14271); tar data arrives already decompressed by the shim
(CVE-2026-41567). To populate volumes it instead unshares a mount namespace of its own, mounts
the container's rootfs there, and copies with both sides walked by fd.

It talks to the shim over the connection the supervisor handed it (the supervisor is not in the
data path), with :mod:`shim.wire` frames: one JSON reply (``ok`` and a ``result``, or an
``error`` with a class name), then for ``get`` STDOUT frames with the tar, for ``put`` the shim
sends STDIN frames and CLOSE_STDIN; both end with an END frame carrying the outcome.
"""

from __future__ import annotations

import gc
import json
import os
import socket
import stat
import sys
from dataclasses import dataclass
from typing import NoReturn

from common import fstree, linux
from common.mounts import Mount, mount_all
from shim import wire
from shim.supervisor import child as child_mod
from shim.supervisor import user_mounts

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


@dataclass(frozen=True, slots=True)
class ArchivePlan:
    """Everything the child needs, prepared by the supervisor before it forks."""

    action: str  # "stat", "get", "put" or "populate"
    sock_fd: int  # the shim's connection, handed over
    path: str = ""
    mnt_ns_fd: int = -1  # a running container's mount namespace
    root_fd: int = -1  # ... and its root directory (/proc/<pid>/root), opened before entering
    rootfs_mounts: tuple[Mount, ...] = ()  # a stopped container's rootfs, mounted privately
    rootfs_dir: str = ""
    mount_steps: tuple[user_mounts.MountStep, ...] = ()  # ... with its volumes and binds on it
    copies: tuple[tuple[str, str], ...] = ()  # populate: (path in the image, volume data directory)
    no_overwrite_dir_non_dir: bool = False
    owner: tuple[int, int] | None = None


class _Conn:
    """Blocking frames over the handed-over socket."""

    def __init__(self, fd: int) -> None:
        self.sock = socket.socket(fileno=fd)
        self.sock.setblocking(True)
        self.parser = wire.FrameParser()
        self.frames: list[tuple[int, bytes]] = []

    def send(self, kind: int, payload: bytes) -> None:
        self.sock.sendall(wire.frame(kind, payload))

    def reply(self, **message: object) -> None:
        self.send(wire.Kind.JSON, json.dumps({"id": 1, **message}, separators=(",", ":")).encode())

    def end(self, **message: object) -> None:
        self.send(wire.Kind.END, json.dumps(message, separators=(",", ":")).encode())

    def next_frame(self) -> tuple[int, bytes] | None:
        while not self.frames:
            data = self.sock.recv(1 << 20)
            if not data:
                return None
            self.frames.extend(self.parser.feed(data))
        return self.frames.pop(0)


class _StdinReader:
    """The tar the shim sends as STDIN frames, as a file object; CLOSE_STDIN ends it."""

    def __init__(self, conn: _Conn) -> None:
        self._conn = conn
        self._buf = b""
        self._pos = 0
        self._eof = False

    def drain(self) -> None:
        """Read to CLOSE_STDIN: the shim must have sent everything before it reads the END
        frame, else its next write fails and the outcome is lost."""
        while not self._eof:
            frame = self._conn.next_frame()
            if frame is None:
                return
            if frame[0] == wire.Kind.CLOSE_STDIN:
                self._eof = True

    def read(self, n: int = -1) -> bytes:
        while self._pos >= len(self._buf):
            if self._eof:
                return b""
            frame = self._conn.next_frame()
            if frame is None:
                raise fstree.FsError("the copy was interrupted: the client went away", "Unavailable")
            kind, payload = frame
            if kind == wire.Kind.CLOSE_STDIN:
                self._eof = True
            elif kind == wire.Kind.STDIN:
                self._buf, self._pos = payload, 0
        if n < 0:
            n = len(self._buf) - self._pos
        out = self._buf[self._pos:self._pos + n]
        self._pos += len(out)
        return out


def _error(exc: BaseException) -> dict[str, str]:
    if isinstance(exc, fstree.FsError):
        return wire.error_payload(exc.kind, exc.message)
    if isinstance(exc, OSError):
        text = fstree.errtext(exc.errno) if exc.errno else str(exc)
        where = f"{exc.filename}: " if exc.filename else ""
        return wire.error_payload("Internal", f"{where}{text}")
    return wire.error_payload("Internal", f"{type(exc).__name__}: {exc}")


def _stat_json(st: fstree.Stat) -> dict[str, object]:
    return {"name": st.name, "size": st.size, "mode": st.mode, "mtime": st.mtime, "link_target": st.link_target}


def run(plan: ArchivePlan, keep: tuple[int, ...] = ()) -> NoReturn:
    """The child's whole life; never returns."""
    gc.disable()  # short-lived: no need to touch (and copy) the inherited heap
    conn: _Conn | None = None
    replied = False
    code = 1
    try:
        child_mod.reset_signals()
        _close_other_fds({0, 1, 2, plan.sock_fd, plan.mnt_ns_fd, plan.root_fd, *keep})
        conn = _Conn(plan.sock_fd)
        root = _enter(plan)
        if plan.action == "stat":
            conn.reply(ok=True, result=_stat_json(fstree.path_stat(root, plan.path)))
            replied = True
        elif plan.action == "get":
            _get(conn, root, plan.path)
            replied = True
        elif plan.action == "put":
            _put(conn, root, plan)
            replied = True
        elif plan.action == "populate":
            for image_path, volume_dir in plan.copies:
                _populate(root, image_path, volume_dir)
            conn.reply(ok=True, result=None)
            replied = True
        else:
            raise fstree.FsError(f"unknown action {plan.action!r}", "InvalidArgument")
        code = 0
    except BaseException as exc:  # never unwind into the supervisor's code
        if conn is not None:
            try:
                if replied:
                    conn.end(ok=False, error=_error(exc))
                else:
                    conn.reply(ok=False, error=_error(exc), result={})
            except OSError:
                pass
    os._exit(code)


def _close_other_fds(keep: set[int]) -> None:
    """The supervisor's fds (containers' stdio, other connections) must not be held here: a
    container's stdin would never see its EOF while this child runs."""
    keep = {fd for fd in keep if fd >= 0}
    low = 3
    for fd in sorted(keep):
        if fd >= low:
            os.closerange(low, fd)
            low = fd + 1
    os.closerange(low, 1 << 20)


def _enter(plan: ArchivePlan) -> int:
    """Enter the container's filesystem; returns an fd of its root."""
    if plan.mnt_ns_fd >= 0:
        linux.setns(plan.mnt_ns_fd, linux.CLONE_NEWNS)
        os.close(plan.mnt_ns_fd)
        os.fchdir(plan.root_fd)
        os.chroot(".")
        os.chdir("/")
        os.close(plan.root_fd)
        root = os.open("/", _DIR)
    else:
        linux.unshare(linux.CLONE_NEWNS)
        linux.mount(None, "/", None, linux.MS_REC | linux.MS_SLAVE)  # nothing mounted here leaks out
        mount_all(plan.rootfs_mounts, plan.rootfs_dir)
        if plan.action == "populate":
            root = os.open(plan.rootfs_dir, _DIR)
        else:
            # A stopped container, seen as moby's openContainerFS sees it: rootfs plus volumes.
            for late in (False, True):
                try:
                    user_mounts.mount(plan.rootfs_dir, plan.mount_steps, late_group=late)
                except user_mounts.ChildMountError as exc:
                    raise fstree.FsError(str(exc), "Internal") from None
            os.chdir(plan.rootfs_dir)
            os.chroot(".")
            os.chdir("/")
            root = os.open("/", _DIR)
    # From here on the root may be the container's: nothing may be imported from its files.
    sys.path[:] = []
    sys.path_importer_cache.clear()
    return root


def _get(conn: _Conn, root: int, path: str) -> None:
    conn.reply(ok=True, result=_stat_json(fstree.path_stat(root, path)))

    def sink(data: bytes) -> None:
        conn.send(wire.Kind.STDOUT, data)

    fstree.write_path(root, path, sink)
    conn.end(ok=True)


def _put(conn: _Conn, root: int, plan: ArchivePlan) -> None:
    resolved = fstree.follow_in_scope(root, plan.path)
    try:
        fd = fstree.open_in_root(root, resolved, os.O_PATH, follow=True)
    except FileNotFoundError:
        raise fstree.FsError(f"lstat {plan.path}: no such file or directory", "NotFound") from None
    try:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            raise fstree.FsError("extraction point is not a directory", "InvalidArgument")
    finally:
        os.close(fd)
    conn.reply(ok=True, result=None)  # ready: the shim sends the tar now
    reader = _StdinReader(conn)
    try:
        entries = fstree.extract(reader, root, fstree.ExtractOptions(
            layer=False, allow_devices=True, dest=resolved, owner=plan.owner,
            no_overwrite_dir_non_dir=plan.no_overwrite_dir_non_dir, proc_paths=False))
    finally:
        reader.drain()
    conn.end(ok=True, entries=entries)


def _populate(root: int, image_path: str, volume_dir: str) -> None:
    """moby's ``populateVolume``: the image's directory at the mount point is copied into the
    volume, only if the path exists in the image and the volume is still empty."""
    try:
        src = fstree.open_in_root(root, image_path, _DIR, follow=True)
    except (FileNotFoundError, NotADirectoryError):
        return
    try:
        dst = os.open(volume_dir, _DIR | os.O_NOFOLLOW)
        try:
            if os.listdir(dst):
                return
            fstree.copy_tree(src, dst)
        finally:
            os.close(dst)
    finally:
        os.close(src)
