"""Users' mounts (``-v``, ``--mount``, ``--tmpfs``, ``--volumes-from``): planned by the supervisor
before it forks, made by the container's child before ``pivot_root``.

The supervisor (:func:`plan`) turns the spec's :class:`shim.api.ContainerMount` list into
:class:`MountStep` s: a volume becomes a bind of ``<root>/volumes/<name>/_data`` (a ``local``
volume with ``type``/``device``/``o`` options is first mounted there, once, on the host), a
missing ``-v`` source directory is created as dockerd does, and a ``shared``/``slave``
propagation is checked against the host's mount table (moby's ``ensureShared``). Steps are
sorted by depth (moby's ``sortMounts``) so that ``/a`` never hides ``/a/b``.

The child (:func:`mount`) only makes syscalls: every target is opened inside the rootfs with
``openat2(RESOLVE_IN_ROOT)`` and without following its last component (created if missing,
parents included), and the mount goes onto ``/proc/self/fd/N`` of that fd, so a symlink planted
in the image cannot redirect a mount onto the host (CVE-2021-30465). Mounts under ``/dev``,
``/proc`` and ``/sys`` are made after those filesystems (``late``), the others before the
network files (so ``-v`` of ``/etc`` does not hide ``/etc/hosts``).
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from common import linux
from shim.api import ContainerMount

PROPAGATION = {
    "private": linux.MS_PRIVATE, "rprivate": linux.MS_PRIVATE | linux.MS_REC,
    "slave": linux.MS_SLAVE, "rslave": linux.MS_SLAVE | linux.MS_REC,
    "shared": linux.MS_SHARED, "rshared": linux.MS_SHARED | linux.MS_REC,
}
# moby/sys/mount's option words: name → (flags to clear, flags to set).
_FLAG_WORDS: dict[str, tuple[int, int]] = {
    "defaults": (0, 0), "ro": (0, linux.MS_RDONLY), "rw": (linux.MS_RDONLY, 0),
    "suid": (linux.MS_NOSUID, 0), "nosuid": (0, linux.MS_NOSUID), "dev": (linux.MS_NODEV, 0),
    "nodev": (0, linux.MS_NODEV), "exec": (linux.MS_NOEXEC, 0), "noexec": (0, linux.MS_NOEXEC),
    "sync": (0, 0x10), "async": (0x10, 0), "dirsync": (0, 0x80), "remount": (0, linux.MS_REMOUNT),
    "mand": (0, 0x40), "nomand": (0x40, 0), "atime": (0x400, 0), "noatime": (0, 0x400),
    "diratime": (0x800, 0), "nodiratime": (0, 0x800), "bind": (0, linux.MS_BIND),
    "rbind": (0, linux.MS_BIND | linux.MS_REC), "relatime": (0, linux.MS_RELATIME),
    "norelatime": (linux.MS_RELATIME, 0), "strictatime": (0, linux.MS_STRICTATIME),
    "nostrictatime": (linux.MS_STRICTATIME, 0),
}
_LATE = ("/dev", "/proc", "/sys")


class MountError(Exception):
    """A mount that cannot be set up, in Docker's words; ``kind`` names the protos.errors class."""

    def __init__(self, message: str, kind: str = "InvalidArgument") -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind


@dataclass(frozen=True, slots=True)
class MountStep:
    """One mount the child makes: a bind of a host path or a tmpfs."""

    kind: str  # "bind" or "tmpfs"
    source: str
    destination: str
    readonly: bool = False
    recursive: bool = True
    propagation: int = 0
    flags: int = 0  # tmpfs
    data: str = ""  # tmpfs
    directory: bool = True


def parse_options(text: str) -> tuple[int, str]:
    """``o=`` / tmpfs options → (mount flags, data string), as moby/sys/mount parses them."""
    flags = 0
    data: list[str] = []
    for word in (w for w in text.split(",") if w):
        known = _FLAG_WORDS.get(word)
        if known is None:
            data.append(word)
            continue
        flags = (flags & ~known[0]) | known[1]
    return flags, ",".join(data)


def tmpfs_options(text: str) -> tuple[int, str]:
    """moby's tmpfs mount: ``noexec,nosuid,nodev`` unless the options say otherwise (``exec``…);
    propagation words are dropped (a new filesystem takes its parent's propagation)."""
    words = [w for w in text.split(",") if w and w not in PROPAGATION]
    flags = linux.MS_NOEXEC | linux.MS_NOSUID | linux.MS_NODEV
    data: list[str] = []
    for word in words:
        known = _FLAG_WORDS.get(word)
        if known is None:
            data.append(word)
        else:
            flags = (flags & ~known[0]) | known[1]
    return flags, ",".join(data)


def volume_data(volumes_root: Path, name: str) -> Path:
    return volumes_root / name / "_data"


def read_volume_options(volumes_root: Path, name: str) -> dict[str, str]:
    try:
        raw = (volumes_root / name / "opts.json").read_text()
    except FileNotFoundError:
        return {}
    loaded = json.loads(raw)
    return {str(k): str(v) for k, v in loaded.items()} if isinstance(loaded, dict) else {}


def mount_point_of(path: str, mountinfo: str | None = None) -> tuple[str, str]:
    """(mount point, optional fields) of the mount holding ``path`` (the longest prefix)."""
    text = mountinfo if mountinfo is not None else Path("/proc/self/mountinfo").read_text()
    best, fields = "/", ""
    for line in text.splitlines():
        parts = line.split(" - ", 1)[0].split()
        if len(parts) < 6:
            continue
        point = parts[4].replace("\\040", " ")
        if (path == point or path.startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
            best, fields = point, " ".join(parts[6:])
    return best, fields


def is_mount_point(path: str) -> bool:
    return mount_point_of(path)[0] == path


def ensure_volume_mounted(volumes_root: Path, name: str) -> None:
    """A ``local`` volume with ``type``/``device``/``o`` options is mounted on its ``_data`` the
    first time a container needs it, and stays mounted until the volume is removed."""
    options = read_volume_options(volumes_root, name)
    if not options.get("type") and not options.get("device"):
        return
    target = str(volume_data(volumes_root, name))
    if is_mount_point(target):
        return
    flags, data = parse_options(options.get("o", ""))
    fstype = options.get("type") or None
    try:
        linux.mount(options.get("device", ""), target, None if flags & linux.MS_BIND else fstype, flags,
                    data or None)
    except OSError as exc:
        raise MountError(f"error while mounting volume '{target}': failed to mount local volume: mount "
                         f"{options.get('device', '')}:{target}, flags: {hex(flags)}, data: {data}: "
                         f"{_errtext(exc.errno or 0)}", "Internal") from None


def _errtext(err: int) -> str:
    text = os.strerror(err)
    return text[:1].lower() + text[1:]


def _check_propagation(source: str, mode: str) -> None:
    if mode in ("shared", "rshared"):
        point, fields = mount_point_of(source)
        if "shared:" not in fields:
            raise MountError(f"path {source} is mounted on {point} but it is not a shared mount")
    elif mode in ("slave", "rslave"):
        point, fields = mount_point_of(source)
        if "shared:" not in fields and "master:" not in fields:
            raise MountError(f"path {source} is mounted on {point} but it is not a shared or slave mount")


def plan(mounts: Sequence[ContainerMount], volumes_root: Path) -> tuple[tuple[MountStep, ...], int]:
    """The child's steps for ``mounts``, and the propagation the rootfs needs (``MS_SLAVE``
    when a mount must receive the host's mounts, else ``MS_PRIVATE``)."""
    steps: list[MountStep] = []
    root_propagation = linux.MS_PRIVATE
    for m in mounts:
        if m.type == "tmpfs":
            flags, data = tmpfs_options(m.data)
            if m.readonly:
                flags |= linux.MS_RDONLY
            steps.append(MountStep("tmpfs", "tmpfs", m.destination, flags=flags, data=data))
            continue
        if m.type == "volume":
            ensure_volume_mounted(volumes_root, m.source)
            source = str(volume_data(volumes_root, m.source))
            if not os.path.isdir(source):
                raise MountError(f"error while mounting volume '{source}': volume {m.source} has no data directory",
                                 "NotFound")
        else:
            source = m.source
            if m.create_source:
                try:
                    os.makedirs(source, 0o755, exist_ok=True)
                except FileExistsError:
                    pass  # a file: mounted as one
                except OSError as exc:
                    if exc.errno != errno.ENOTDIR:
                        raise MountError(f"error while creating mount source path '{source}': mkdir {source}: "
                                         f"{_errtext(exc.errno or 0)}", "Internal") from None
            elif not os.path.lexists(source):
                raise MountError(f'invalid mount config for type "bind": bind source path does not exist: {source}')
        mode = m.propagation or ""
        if mode:
            _check_propagation(source, mode)
            if mode in ("slave", "rslave", "shared", "rshared"):
                root_propagation = linux.MS_SLAVE
        steps.append(MountStep("bind", source, m.destination, readonly=m.readonly, recursive=m.recursive,
                               propagation=PROPAGATION.get(mode, 0), directory=os.path.isdir(source)))
    steps.sort(key=lambda s: os.path.normpath(s.destination).count("/"))
    return tuple(steps), root_propagation


def late(destination: str) -> bool:
    return any(destination == p or destination.startswith(p + "/") for p in _LATE)


# --- in the child -----------------------------------------------------------------------------

_NR_MOUNT_SETATTR = 442  # the same number on every architecture
_AT_EMPTY_PATH = 0x1000
_AT_RECURSIVE = 0x8000
_MOUNT_ATTR_RDONLY = 0x1
_libc = ctypes.CDLL(None, use_errno=True)


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def _read_only_recursive(fd: int) -> None:
    """``mount_setattr(AT_RECURSIVE, MOUNT_ATTR_RDONLY)``: submounts of the bind read-only too
    (Docker's "rro", Linux >= 5.12)."""
    attr = _MountAttr(_MOUNT_ATTR_RDONLY, 0, 0, 0)
    result = _libc.syscall(ctypes.c_long(_NR_MOUNT_SETATTR), ctypes.c_int(fd), b"",
                           ctypes.c_uint(_AT_EMPTY_PATH | _AT_RECURSIVE), ctypes.byref(attr),
                           ctypes.c_size_t(ctypes.sizeof(attr)))
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _open_target(root_fd: int, dest: str, directory: bool) -> int:
    """An O_PATH fd of ``dest`` inside the rootfs, never through its last component if that is a
    symlink; created (parents as directories) if missing."""
    rel = dest.strip("/")
    resolve = linux.RESOLVE_IN_ROOT | linux.RESOLVE_NO_MAGICLINKS
    try:
        return linux.openat2(root_fd, rel, os.O_PATH | os.O_NOFOLLOW, resolve=resolve)
    except FileNotFoundError:
        pass
    parent, _, name = rel.rpartition("/")
    pfd = root_fd
    if parent:
        parts = parent.split("/")
        pfd = os.dup(root_fd)
        for i in range(len(parts)):
            path = "/".join(parts[:i + 1])
            try:
                nxt = linux.openat2(root_fd, path, os.O_PATH | os.O_DIRECTORY, resolve=resolve)
            except FileNotFoundError:
                try:
                    os.mkdir(parts[i], 0o755, dir_fd=pfd)
                except FileExistsError:
                    pass
                nxt = linux.openat2(root_fd, path, os.O_PATH | os.O_DIRECTORY, resolve=resolve)
            os.close(pfd)
            pfd = nxt
    try:
        if directory:
            try:
                os.mkdir(name, 0o755, dir_fd=pfd)
            except FileExistsError:
                pass
        else:
            os.close(os.open(name, os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o755, dir_fd=pfd))
        return os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
    finally:
        if pfd != root_fd:
            os.close(pfd)


class ChildMountError(Exception):
    pass


def mount(rootfs: str, steps: Sequence[MountStep], *, late_group: bool) -> None:
    """Make the steps of one group (see :func:`late`) under ``rootfs``; syscalls only."""
    root_fd = os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for step in steps:
            if late(step.destination) != late_group:
                continue
            try:
                _mount_one(root_fd, step)
            except OSError as exc:
                raise ChildMountError(f'error mounting "{step.source}" to rootfs at "{step.destination}": '
                                      f"{_errtext(exc.errno or 0)}") from None
    finally:
        os.close(root_fd)


def _mount_one(root_fd: int, step: MountStep) -> None:
    fd = _open_target(root_fd, step.destination, step.kind == "tmpfs" or step.directory)
    try:
        target = f"/proc/self/fd/{fd}"
        if step.kind == "tmpfs":
            linux.mount("tmpfs", target, "tmpfs", step.flags, step.data or None)
            return
        linux.mount(step.source, target, None, linux.MS_BIND | (linux.MS_REC if step.recursive else 0))
    finally:
        os.close(fd)
    # ``fd`` names what is under the new mount: the mount itself needs a fresh lookup.
    mounted = linux.openat2(root_fd, step.destination.strip("/"), os.O_PATH | os.O_NOFOLLOW,
                            resolve=linux.RESOLVE_IN_ROOT | linux.RESOLVE_NO_MAGICLINKS)
    try:
        target = f"/proc/self/fd/{mounted}"
        if step.propagation:
            linux.mount(None, target, None, step.propagation)
        if step.readonly:
            if step.recursive:
                _read_only_recursive(mounted)
            else:
                linux.mount(None, target, None, linux.MS_REMOUNT | linux.MS_BIND | linux.MS_RDONLY)
    finally:
        os.close(mounted)
