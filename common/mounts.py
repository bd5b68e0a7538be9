"""Mount specs as the snapshotter returns them, and how a consumer mounts them.

Overlay's classic ``mount(2)`` takes all options as one page (4096 bytes), which a chain of a
hundred layers overflows. On Linux >= 6.8 overlay accepts lower layers one at a time through the
new mount API (``fsconfig(fd, FSCONFIG_SET_STRING, "lowerdir+", dir)``), so :func:`mount_all`
uses that whenever the options would not fit in a page, and plain ``mount(2)`` otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from common import linux

# containerd leaves 512 bytes of headroom below the page size for labels (SELinux etc.).
_OPTIONS_LIMIT = os.sysconf("SC_PAGE_SIZE") - 512


@dataclass(frozen=True, slots=True)
class Mount:
    """One mount(2) call: ``type`` (``overlay``, ``bind``), ``source``, and options.

    For overlay, ``options`` holds ``lowerdir=a:b:c`` (nearest parent first), and ``upperdir=`` /
    ``workdir=`` for active snapshots. ``mount_all`` copes with lowerdir lists longer than a page.
    """

    type: str
    source: str
    options: tuple[str, ...] = ()


_FLAG_OPTIONS = {
    "ro": linux.MS_RDONLY, "rw": 0, "nosuid": linux.MS_NOSUID, "nodev": linux.MS_NODEV,
    "noexec": linux.MS_NOEXEC, "bind": linux.MS_BIND, "rbind": linux.MS_BIND | linux.MS_REC,
}


def _split_options(options: Sequence[str]) -> tuple[int, list[str]]:
    flags = 0
    data: list[str] = []
    for opt in options:
        if opt in _FLAG_OPTIONS:
            flags |= _FLAG_OPTIONS[opt]
        else:
            data.append(opt)
    return flags, data


def mount_one(m: Mount, target: str) -> None:
    """Mount ``m`` on ``target`` (which must exist)."""
    flags, data = _split_options(m.options)
    if m.type == "bind" or flags & linux.MS_BIND:
        linux.mount(m.source, target, None, flags | linux.MS_BIND)
        if flags & linux.MS_RDONLY:
            # A bind mount ignores MS_RDONLY on creation; read-only needs a remount.
            linux.mount(None, target, None, linux.MS_REMOUNT | linux.MS_BIND | flags)
        return
    joined = ",".join(data)
    if m.type == "overlay" and len(joined) >= _OPTIONS_LIMIT:
        _mount_overlay_incrementally(data, target, flags)
        return
    linux.mount(m.source, target, m.type, flags, joined or None)


def _mount_overlay_incrementally(data: Sequence[str], target: str, flags: int) -> None:
    """Overlay with lower layers added one by one (new mount API, Linux >= 6.8)."""
    fd = linux.fsopen("overlay")
    try:
        linux.fsconfig_string(fd, "source", "overlay")
        for opt in data:
            key, _, value = opt.partition("=")
            if key == "lowerdir":
                for lower in value.split(":"):
                    linux.fsconfig_string(fd, "lowerdir+", lower)
            elif value:
                linux.fsconfig_string(fd, key, value)
            else:
                linux.fsconfig_flag(fd, key)
        linux.fsconfig_create(fd)
        attrs = 0x1 if flags & linux.MS_RDONLY else 0  # MOUNT_ATTR_RDONLY
        mnt = linux.fsmount(fd, attrs)
        try:
            linux.move_mount(mnt, target)
        finally:
            os.close(mnt)
    finally:
        os.close(fd)


def mount_all(mounts: Sequence[Mount], target: str) -> None:
    """Mount every spec on ``target`` in order (a rootfs is normally exactly one mount)."""
    for m in mounts:
        mount_one(m, target)


def unmount(target: str, *, lazy: bool = False) -> None:
    linux.umount2(target, linux.MNT_DETACH if lazy else 0)
