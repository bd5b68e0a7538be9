"""The supervisor's side of a ``files`` connection (``docker cp`` of a running container, volume
population at create): check the request, open what the child needs while still in the host's
view (``/proc/<pid>/ns/mnt`` and ``/proc/<pid>/root`` of the container's process, so a reused
pid cannot be confused with it), fork :mod:`shim.supervisor.archive_child`, and hand it the
connection. From then on the child and the shim talk directly; the supervisor only reaps it.

Request: ``{"id", "op": "files", "action": "stat"|"get"|"put"|"populate", "cid", "path",
"no_overwrite_dir_non_dir", "owner": [uid, gid] | null}``.
"""

from __future__ import annotations

import errno
import os
import threading
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from shim.supervisor import archive_child
from shim.supervisor.user_mounts import MountError, ensure_volume_mounted, volume_data
from shim.supervisor.user_mounts import plan as plan_mounts

if TYPE_CHECKING:
    from shim.supervisor.server import Connection, Supervisor

log = structlog.get_logger()

ACTIONS = ("stat", "get", "put", "populate")


def volumes_root(sup: Supervisor) -> Path:
    """Where the local volume driver keeps volumes: ``<shim root>/volumes``."""
    return sup.config.paths.root / "volumes"


def handle(sup: Supervisor, conn: Connection, message: dict[str, Any]) -> None:
    try:
        _handle(sup, conn, message)
    except Exception as exc:  # a bug here must not take the supervisor's loop down
        from shim.supervisor.server import OpError

        log.exception("files_request_failed")
        sup._reply_error(conn, message.get("id"), OpError("Internal", f"supervisor: {type(exc).__name__}: {exc}"))
        conn.close()


def _handle(sup: Supervisor, conn: Connection, message: dict[str, Any]) -> None:
    from shim.supervisor.server import OpError  # server imports this module

    rid = message.get("id")
    opened: list[int] = []
    try:
        c = sup._get(message)
        action = str(message.get("action", ""))
        if action not in ACTIONS:
            raise OpError("InvalidArgument", f"unknown files action {action!r}")
        if action == "populate":
            copies = []
            for m in c.spec.mounts:
                if m.type == "volume" and m.copy_up:
                    try:
                        ensure_volume_mounted(volumes_root(sup), m.source)
                    except MountError as exc:
                        raise OpError(exc.kind, exc.message) from None
                    copies.append((m.destination, str(volume_data(volumes_root(sup), m.source))))
            if not copies:
                conn.send_json({"id": rid, "ok": True, "result": None})
                conn.close()
                return
            if c.process is not None:
                raise OpError("FailedPrecondition", f"container {c.id} is running")
            plan = archive_child.ArchivePlan(action="populate", sock_fd=-1, rootfs_mounts=c.spec.rootfs,
                                             rootfs_dir=str(c.dir / "rootfs"), copies=tuple(copies))
        elif c.process is None and any(m.type != "tmpfs" for m in c.spec.mounts):
            # Not running, but with volumes or binds: a private view of rootfs and mounts, so that
            # a copy reaches them as in Docker (whose tmpfs mounts are not part of that view).
            try:
                steps, _ = plan_mounts(tuple(m for m in c.spec.mounts if m.type != "tmpfs"), volumes_root(sup))
            except MountError as exc:
                raise OpError(exc.kind, exc.message) from None
            owner = message.get("owner")
            plan = archive_child.ArchivePlan(
                action=action, sock_fd=-1, path=str(message.get("path", "")), rootfs_mounts=c.spec.rootfs,
                rootfs_dir=str(c.dir / "rootfs"), mount_steps=steps,
                no_overwrite_dir_non_dir=bool(message.get("no_overwrite_dir_non_dir")),
                owner=(int(owner[0]), int(owner[1])) if owner else None)
        else:
            main = sup._running_process(c)  # ContainerNotRunning: the caller asks the snapshotter
            try:
                opened.append(os.open(f"/proc/{main.pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC))
                opened.append(os.open(f"/proc/{main.pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
            except OSError as exc:
                if exc.errno == errno.ENOENT:
                    raise OpError("ContainerNotRunning", f"container {c.id} is not running") from None
                raise
            owner = message.get("owner")
            plan = archive_child.ArchivePlan(
                action=action, sock_fd=-1, path=str(message.get("path", "")), mnt_ns_fd=opened[0],
                root_fd=opened[1], no_overwrite_dir_non_dir=bool(message.get("no_overwrite_dir_non_dir")),
                owner=(int(owner[0]), int(owner[1])) if owner else None)
    except OpError as exc:
        for fd in opened:
            os.close(fd)
        sup._reply_error(conn, rid, exc)
        conn.close()
        return
    except OSError as exc:
        for fd in opened:
            os.close(fd)
        sup._reply_error(conn, rid, OpError("Internal", f"files: {os.strerror(exc.errno or 0)}"))
        conn.close()
        return
    transport = conn.transport
    assert transport is not None
    transport.pause_reading()  # every further byte is the child's
    sock = transport.get_extra_info("socket")
    sock_fd = os.dup(sock.fileno())
    plan = replace(plan, sock_fd=sock_fd)
    try:
        assert threading.active_count() == 1, "the supervisor must not run threads"
        pid = os.fork()
        if pid == 0:
            archive_child.run(plan)  # never returns
    except OSError as exc:
        sup._reply_error(conn, rid, OpError("Internal", f"files: fork: {os.strerror(exc.errno or 0)}"))
        pid = 0
    finally:
        os.close(sock_fd)
        for fd in opened:
            os.close(fd)
    conn.close()  # the child holds its own copy of the connection
    if pid:
        log.info("files_child_started", container=c.id[:12], action=plan.action, pid=pid)
