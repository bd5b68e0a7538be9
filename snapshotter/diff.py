"""What an active snapshot changed, read straight from its overlay upper directory.

The mounts always carry ``redirect_dir=off`` and ``metacopy=off`` (and this kernel has both off
by default), so the upper directory is a complete change set (REFERENCE §1.3): a file there is
added or modified, a 0/0 character device is a deleted path, a directory with
``trusted.overlay.opaque=y`` replaced whatever was below it. Nothing needs mounting.

:func:`changes` is ``docker diff`` (moby's ``archive.Changes`` for overlay, with one fix: a
path counts as present below only if the layer stack really shows it — whiteouts and opaque
directories of nearer layers hide it — instead of being looked up in every layer blindly).
:func:`normalize_upper` makes an upper directory indistinguishable from one produced by
unpacking its own diff (``commit_layer(consume=True)``).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence

from common import linux
from common.fstree import OPAQUE_XATTR, is_whiteout
from snapshotter.api import Change, ChangeKind

_BENEATH = linux.RESOLVE_BENEATH | linux.RESOLVE_NO_SYMLINKS | linux.RESOLVE_NO_MAGICLINKS | linux.RESOLVE_NO_XDEV
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _lstat(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _opaque_at(dir_fd: int, name: str) -> bool:
    try:
        fd = os.open(name, _DIR, dir_fd=dir_fd)
    except OSError:
        return False
    try:
        return os.getxattr(fd, OPAQUE_XATTR) == b"y"
    except OSError:
        return False
    finally:
        os.close(fd)


class _Stack:
    """Lookups of a path in the lower layers as overlay composes them (nearest layer first)."""

    def __init__(self, lowers: Sequence[str]) -> None:
        self.fds = [os.open(lower, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC) for lower in lowers]
        # (layer index, directory) → its fd in that layer (-1: absent), opacity, or "blocks": a
        # whiteout or non-directory there hides the deeper layers.
        self._dirs: dict[tuple[int, str], tuple[int, bool, bool]] = {}

    def close(self) -> None:
        roots = set(self.fds)
        for fd, _, _ in self._dirs.values():
            if fd >= 0 and fd not in roots:
                os.close(fd)
        for fd in self.fds:
            os.close(fd)

    def _dir(self, layer: int, path: str) -> tuple[int, bool, bool]:
        key = (layer, path)
        found = self._dirs.get(key)
        if found is not None:
            return found
        parent, _, base = path.rpartition("/")
        if not base:
            result = (self.fds[layer], False, False)
        else:
            pfd, _, blocks = self._dir(layer, parent)
            if pfd < 0 or blocks:
                result = (-1, False, blocks)
            else:
                st = _lstat(pfd, base)
                if st is None:
                    result = (-1, False, False)
                elif not stat.S_ISDIR(st.st_mode):
                    result = (-1, False, True)  # a whiteout or a file hides the directories below
                else:
                    fd = os.open(base, _DIR, dir_fd=pfd)
                    try:
                        opaque = os.getxattr(fd, OPAQUE_XATTR) == b"y"
                    except OSError:
                        opaque = False
                    result = (fd, opaque, False)
        self._dirs[key] = result
        return result

    def lookup(self, path: str) -> os.stat_result | None:
        """The entry the lower layers show at ``path`` (``/a/b``), or None."""
        parent, _, base = path.rpartition("/")
        for layer in range(len(self.fds)):
            pfd, opaque, blocks = self._dir(layer, parent)
            if blocks:
                return None
            if pfd >= 0:
                st = _lstat(pfd, base)
                if st is not None:
                    return None if is_whiteout(st) else st
                if opaque:
                    return None
            # A nearer layer's opaque ancestor hides the deeper ones as well.
            if any(self._dir(layer, a)[1] for a in _ancestors(parent)):
                return None
        return None


def _ancestors(path: str) -> list[str]:
    """``/a/b`` → ``["/a", "/a/b"]``."""
    parts = [p for p in path.split("/") if p]
    return ["/" + "/".join(parts[:i + 1]) for i in range(len(parts))]


def _same_time(a: int, b: int) -> bool:
    """moby's sameFsTime: equal, or equal seconds when either side lost its nanoseconds."""
    return a == b or (a // 1_000_000_000 == b // 1_000_000_000
                      and (a % 1_000_000_000 == 0 or b % 1_000_000_000 == 0))


# Docker's init layer (moby daemon/initlayer): mount points a runtime creates in a container's
# root when the image lacks them, plus Berth's --init binary. Created empty by the shim in the
# upper directory, they are not changes of the container: not in its diff, not in a commit.
RUNTIME_MOUNT_POINTS = frozenset({
    "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/dev/console", "/proc", "/sys", "/.dockerenv",
    "/etc/resolv.conf", "/etc/hosts", "/etc/hostname", "/sbin/docker-init"})


def _ignorable(dir_fd: int, rel: str, stack: _Stack, out: set[str]) -> bool:
    """Add to ``out`` the entries under directory ``dir_fd`` (path ``rel``) that only exist
    because the runtime made mount points; returns whether that is all the directory holds."""
    everything = True
    for name in os.listdir(dir_fd):
        path = f"{rel}/{name}"
        st = _lstat(dir_fd, name)
        if st is None:
            continue
        ignored = False
        if not is_whiteout(st):
            below = stack.lookup(path)
            if stat.S_ISREG(st.st_mode):
                ignored = below is None and st.st_size == 0 and path in RUNTIME_MOUNT_POINTS
            elif stat.S_ISDIR(st.st_mode) and not _opaque_at(dir_fd, name):
                fd = os.open(name, _DIR, dir_fd=dir_fd)
                try:
                    inside = _ignorable(fd, path, stack, out)
                    empty = not os.listdir(fd)
                finally:
                    os.close(fd)
                if below is None:
                    ignored = inside and (not empty or path in RUNTIME_MOUNT_POINTS)
                else:  # copied up only to hold mount points, its own metadata unchanged
                    ignored = inside and not empty and stat.S_ISDIR(below.st_mode) and \
                        (below.st_mode, below.st_uid, below.st_gid) == (st.st_mode, st.st_uid, st.st_gid)
        if ignored:
            out.add(path)
        else:
            everything = False
    return everything


def runtime_artifacts(upper: str, lowers: Sequence[str]) -> set[str]:
    """Paths (``/etc/hosts``…) of the upper directory that are only the runtime's mount points."""
    out: set[str] = set()
    stack = _Stack(lowers)
    root = os.open(upper, _DIR)
    try:
        _ignorable(root, "", stack, out)
    finally:
        os.close(root)
        stack.close()
    return out


def changes(upper: str, lowers: Sequence[str]) -> list[Change]:
    """``docker diff`` of an upper directory over its lower layers (nearest first), in moby's
    order: a walk with names sorted, each directory before its contents; the parent of an added
    or deleted entry is reported modified (once) even if its own metadata did not change. The
    runtime's mount points are left out, as Docker's init layer keeps them out."""
    out: list[Change] = []
    changed_dirs: set[str] = set()
    stack = _Stack(lowers)
    root = os.open(upper, _DIR)
    try:
        skip: set[str] = set()
        _ignorable(root, "", stack, skip)
        _walk(root, "", stack, out, changed_dirs, skip)
    finally:
        os.close(root)
        stack.close()
    return out


def _walk(dir_fd: int, rel: str, stack: _Stack, out: list[Change], changed_dirs: set[str], skip: set[str]) -> None:
    for name in sorted(os.listdir(dir_fd)):
        path = f"{rel}/{name}"
        if path in skip:
            continue
        st = _lstat(dir_fd, name)
        if st is None:
            continue
        is_dir = stat.S_ISDIR(st.st_mode)
        record = True
        if is_whiteout(st) or (is_dir and _opaque_at(dir_fd, name)):
            kind = ChangeKind.DELETED
        else:
            below = stack.lookup(path)
            if below is None:
                kind = ChangeKind.ADDED
            else:
                kind = ChangeKind.MODIFIED
                if is_dir and stat.S_ISDIR(below.st_mode) and below.st_size == st.st_size \
                        and below.st_mode == st.st_mode and _same_time(below.st_mtime_ns, st.st_mtime_ns):
                    record = False  # only a parent of a change: reported once a child needs it
        if record:
            if is_dir:
                changed_dirs.add(path)
            if kind in (ChangeKind.ADDED, ChangeKind.DELETED) and rel and rel not in changed_dirs:
                out.append(Change(path=rel, kind=ChangeKind.MODIFIED))
                changed_dirs.add(rel)
            out.append(Change(path=path, kind=kind))
        if is_dir:
            try:
                child = os.open(name, _DIR, dir_fd=dir_fd)
            except OSError:
                continue
            try:
                _walk(child, path, stack, out, changed_dirs, skip)
            finally:
                os.close(child)


def remove_paths(upper: str, paths: set[str]) -> None:
    """Delete ``paths`` (absolute inside the upper directory) deepest first, by fd."""
    root = os.open(upper, _DIR)
    try:
        for path in sorted(paths, key=lambda p: p.count("/"), reverse=True):
            parent, _, name = path.strip("/").rpartition("/")
            try:
                pfd = linux.openat2(root, parent or ".", _DIR, resolve=_BENEATH)
            except OSError:
                continue
            try:
                st = _lstat(pfd, name)
                if st is None:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    os.rmdir(name, dir_fd=pfd)
                else:
                    os.unlink(name, dir_fd=pfd)
            finally:
                os.close(pfd)
    finally:
        os.close(root)


def is_empty(upper: str, skip: frozenset[str] = frozenset()) -> bool:
    """Whether the upper directory holds nothing but ``skip`` (``/a`` paths of its top level)."""
    return all("/" + name in skip for name in os.listdir(upper))


def normalize_upper(upper: str) -> None:
    """Make an upper directory what unpacking its own diff would produce, so it can become the
    committed layer in place: xattrs a layer tar does not carry go (all but file capabilities,
    and ``opaque`` which the tar carries as a marker), sockets go (a tar cannot carry them),
    times drop to whole seconds with atime = mtime (as extracted from a tar written by
    :func:`common.fstree.write_tree`)."""
    root = os.open(upper, _DIR)
    try:
        _normalize(root)
    finally:
        os.close(root)


def _normalize(dir_fd: int) -> None:
    for name in os.listdir(dir_fd):
        st = _lstat(dir_fd, name)
        if st is None:
            continue
        if stat.S_ISSOCK(st.st_mode):
            os.unlink(name, dir_fd=dir_fd)
            continue
        if stat.S_ISDIR(st.st_mode):
            fd = os.open(name, _DIR, dir_fd=dir_fd)
            try:
                _normalize(fd)
                _drop_xattrs(fd)
                seconds = st.st_mtime_ns // 1_000_000_000 * 1_000_000_000
                os.utime(fd, ns=(seconds, seconds))
            finally:
                os.close(fd)
            continue
        if stat.S_ISREG(st.st_mode):
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
            try:
                _drop_xattrs(fd)
            finally:
                os.close(fd)
        else:  # symlinks, devices, fifos: by path, never following the link
            _drop_xattrs(f"/proc/self/fd/{dir_fd}/{name}")
        seconds = st.st_mtime_ns // 1_000_000_000 * 1_000_000_000
        os.utime(name, ns=(seconds, seconds), dir_fd=dir_fd, follow_symlinks=False)


_KEPT_XATTRS = frozenset({"security.capability", OPAQUE_XATTR})


def _drop_xattrs(target: int | str) -> None:
    follow = isinstance(target, int)  # an fd is the file itself; a path must not be followed
    try:
        names = os.listxattr(target, follow_symlinks=follow)
    except OSError:
        return
    for key in names:
        if key not in _KEPT_XATTRS:
            try:
                os.removexattr(target, key, follow_symlinks=follow)
            except OSError as exc:
                if exc.errno not in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
                    raise
