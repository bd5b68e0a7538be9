"""Tar streams into and out of a directory tree, with every path confined to a root.

One implementation for everything that moves files between a tar stream and a filesystem:
layer unpack and layer diffs (the snapshotter), ``docker cp`` and ``docker export`` (the
snapshotter for a mounted snapshot; a child of the shim's supervisor inside a running
container's mount namespace), and the copy of image content into a new volume.

Confinement: every lookup goes through ``openat2`` with ``RESOLVE_IN_ROOT`` on a directory fd
of the root, so ``..`` and symlinks (absolute or relative, planted by an image or raced in by a
running container) resolve as if the root were ``/``; the final component is never followed
when something is created, changed or read (``O_NOFOLLOW``, ``follow_symlinks=False``, fds).
Owners are numbers only: nothing here looks up a user or group name (CVE-2019-14271), and the
module imports nothing lazily, so it is safe to run after ``chroot`` into a container.

Reading uses ``tarfile`` only as a header parser (bounded records, stream mode); writing builds
headers by hand (PAX, numeric ids, second-precision mtimes, as moby's archive package does).

Errors are :class:`FsError`, whose ``kind`` names a class of :mod:`protos.errors`: this module
is also used by the shim's supervisor, which must not import gRPC.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import posixpath
import shutil
import stat
import sys
import tarfile
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import IO, Protocol, Self

from common import linux

CHUNK = 1 << 20
# A PAX record or GNU long name beyond this is an attack on memory (CVE-2023-25153's lesson).
MAX_HEADER_RECORD = 1 << 20
MAX_NAME_BYTES = 4096  # PATH_MAX
MAX_ENTRIES = 1_000_000
MAX_SYMLINKS = 255  # moby's symlink.FollowSymlinkInScope gives up after as many

OPAQUE_XATTR = "trusted.overlay.opaque"
WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
# Overlay's own xattrs must never come from (or go into) a tar: a layer could forge redirects,
# metacopy or opaque markers; SELinux labels belong to the host.
_DROPPED_XATTRS = ("trusted.overlay.", "user.overlay.", "security.selinux")
# Only file capabilities travel in archives we write (moby's ReadSecurityXattrToTarHeader).
_WRITTEN_XATTRS = ("security.capability",)
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_TIME_LIMIT_NS = 1 << 62

# Go's os.FileMode bits, which X-Docker-Container-Path-Stat carries instead of st_mode.
GO_MODE_DIR = 1 << 31
GO_MODE_SYMLINK = 1 << 27
GO_MODE_DEVICE = 1 << 26
GO_MODE_NAMED_PIPE = 1 << 25
GO_MODE_SOCKET = 1 << 24
GO_MODE_SETUID = 1 << 23
GO_MODE_SETGID = 1 << 22
GO_MODE_CHAR_DEVICE = 1 << 21
GO_MODE_STICKY = 1 << 20


class FsError(Exception):
    """A failure already worded for Docker clients. ``kind`` names its class in
    :mod:`protos.errors` (``InvalidArgument``, ``UnsafeArchive``, ``NotFound``…)."""

    def __init__(self, message: str, kind: str = "InvalidArgument") -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind


def _q(text: str) -> str:
    """Quote like Go's %q, as Docker's messages do."""
    return json.dumps(text, ensure_ascii=False)


def errtext(err: int) -> str:
    """Go's wording of an errno (lower-case first letter)."""
    text = os.strerror(err)
    return text[:1].lower() + text[1:]


class Reader(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


class _Counting:
    """Counts what a tar parser pulled, so an empty stream can be told from a broken one."""

    def __init__(self, raw: Reader) -> None:
        self._raw = raw
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        self.size += len(data)
        return data


# --- reading tar streams -------------------------------------------------------------------

# A zero block or a clean EOF where a header should be: the end of the archive. (Public since
# Python 3.2, but typeshed does not list them.)
_END_OF_ARCHIVE: tuple[type[Exception], ...] = (
    tarfile.EOFHeaderError, tarfile.EmptyHeaderError)  # type: ignore[attr-defined]


class BoundedTarInfo(tarfile.TarInfo):
    """tarfile's header parser with bounds, and corrupt headers reported instead of read as EOF."""

    @classmethod
    def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> Self:
        try:
            info = super().frombuf(buf, encoding, errors)
        except _END_OF_ARCHIVE:
            raise
        except tarfile.HeaderError as exc:
            # tarfile silently treats a bad header after the first as the end of the archive.
            raise FsError(f"invalid tar header: {exc}") from None
        if info.size < 0:
            raise FsError("invalid tar header: negative size")
        if info.type in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE,
                         tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE) and info.size > MAX_HEADER_RECORD:
            raise FsError(f"tar header record of {info.size} bytes exceeds {MAX_HEADER_RECORD}")
        if info.type == tarfile.GNUTYPE_SPARSE:
            raise FsError(f"sparse files are not supported: {_q(info.name)}")
        return info


def iter_members(raw: Reader, *, what: str,
                 max_entries: int = MAX_ENTRIES) -> Iterator[tuple[tarfile.TarFile, tarfile.TarInfo]]:
    """Headers of a tar stream, bounded; an empty stream has no members. Read a member's data
    (``tar.extractfile``) before asking for the next one."""
    reader = _Counting(raw)
    try:
        tar = tarfile.open(fileobj=reader, mode="r|", tarinfo=BoundedTarInfo,  # type: ignore[call-overload]
                           encoding="utf-8", errors="surrogateescape")
    except tarfile.ReadError as exc:
        if reader.size == 0:
            return
        raise FsError(f"invalid {what} tar: {exc}") from None
    count = 0
    with tar:
        while True:
            try:
                member = tar.next()
            except tarfile.TarError as exc:
                raise FsError(f"invalid {what} tar: {exc}") from None
            if member is None:
                return
            tar.members.clear()  # stream mode never looks back; keep memory flat
            count += 1
            if count > max_entries:
                raise FsError(f"{what} tar has more than {max_entries} entries")
            yield tar, member


def clean_name(name: str, *, where: str = "") -> str:
    """An entry's path relative to its extraction directory ("" for the directory itself);
    climbing out is rejected. ``where`` words the error as moby's Untar does (``"../x" is
    outside of "/dest"``); without it, as its layer applier does."""
    norm = posixpath.normpath(name.lstrip("/")) if name.strip("/") else "."
    if norm == ".." or norm.startswith("../"):
        if where:
            raise FsError(f"{_q(name)} is outside of {_q(where)}", "Internal")
        raise FsError(f"{_q(name)} is outside of the layer root", "UnsafeArchive")
    return "" if norm == "." else norm


def _ns(member: tarfile.TarInfo, key: str) -> int:
    raw = member.pax_headers.get(key)
    try:
        value = int(Decimal(raw) * 1_000_000_000) if raw else int(member.mtime) * 1_000_000_000
    except (InvalidOperation, ValueError, OverflowError):
        value = 0
    return max(-_TIME_LIMIT_NS, min(_TIME_LIMIT_NS, value))


def _xattrs(member: tarfile.TarInfo) -> dict[str, bytes]:
    found = {}
    for key, value in member.pax_headers.items():
        if key.startswith("SCHILY.xattr."):
            name = key[len("SCHILY.xattr."):]
            if name and not name.startswith(_DROPPED_XATTRS):
                found[name] = value.encode("utf-8", "surrogateescape")
    return found


def _lstat(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


# --- extracting ----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ExtractOptions:
    """How a tar lands in a tree.

    ``layer``: an image layer written into a snapshot's upper directory: OCI whiteouts become
    overlay whiteouts, and the tree is one filesystem (``RESOLVE_NO_XDEV``). Otherwise the tar
    is plain files (``docker cp``, COPY): ``.wh.`` names are ordinary, and the tree may span
    mounts (a container's volumes).

    ``dest`` is where names are rooted, relative to the root (it must exist); ``lowers`` are
    the parent layers' directories (nearest first), whose attributes missing parents take;
    ``owner`` replaces every entry's uid/gid (``docker cp -a``); ``no_overwrite_dir_non_dir``
    refuses to replace a directory by a non-directory or the reverse."""

    layer: bool = True
    allow_devices: bool = False
    dest: str = ""
    lowers: tuple[str, ...] = ()
    owner: tuple[int, int] | None = None
    no_overwrite_dir_non_dir: bool = False
    # Setting xattrs on symlinks and device nodes goes through /proc/self/fd paths, which do
    # not exist after a chroot into a container: such a caller turns this off.
    proc_paths: bool = True


class _Applier:
    def __init__(self, root_fd: int, options: ExtractOptions) -> None:
        self.o = options
        self.layer = options.layer
        self.dest = options.dest.strip("/")
        self.where = "/" + self.dest  # how moby's Untar names the extraction directory
        self.resolve = linux.RESOLVE_IN_ROOT | linux.RESOLVE_NO_MAGICLINKS | (
            linux.RESOLVE_NO_XDEV if options.layer else 0)
        self.entries = 0
        self.root_fd = os.dup(root_fd)
        os.set_inheritable(self.root_fd, False)
        self.lower_fds: list[int] = []
        self.parents: OrderedDict[str, int] = OrderedDict()
        # fds dropped from the cache stay open until the current entry is done with them
        self.retired: list[int] = []
        self.dirs: list[tuple[str, int, int]] = []
        try:
            for lower in options.lowers:
                self.lower_fds.append(os.open(lower, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self._forget_parents()
        self._close_retired()
        for fd in (self.root_fd, *self.lower_fds):
            os.close(fd)
        self.lower_fds = []

    def _forget_parents(self) -> None:
        self.retired.extend(self.parents.values())
        self.parents.clear()

    def _close_retired(self) -> None:
        for fd in self.retired:
            os.close(fd)
        self.retired.clear()

    # --- path resolution -------------------------------------------------------------------
    def _open_in_root(self, path: str, flags: int = 0) -> int:
        return linux.openat2(self.root_fd, path, os.O_RDONLY | os.O_DIRECTORY | flags, resolve=self.resolve)

    def parent(self, path: str, *, entry: str, create: bool = True) -> int:
        """An fd of directory ``path`` resolved inside the root, creating missing parents."""
        if not path:
            return self.root_fd
        fd = self.parents.get(path)
        if fd is not None:
            self.parents.move_to_end(path)
            return fd
        try:
            fd = self._open_in_root(path)
        except FileNotFoundError:
            if not create:
                raise
            fd = self._make_parents(path, entry)
        except NotADirectoryError:
            raise FsError(f"cannot extract {_q(entry)}: a parent of it is not a directory", "UnsafeArchive") \
                from None
        self.parents[path] = fd
        if len(self.parents) > 32:
            self.retired.append(self.parents.popitem(last=False)[1])
        return fd

    def _make_parents(self, path: str, entry: str) -> int:
        parts = path.split("/")
        current = self.root_fd
        try:
            for i, part in enumerate(parts):
                prefix = "/".join(parts[:i + 1])
                try:
                    nxt = self._open_in_root(prefix)
                except FileNotFoundError:
                    try:
                        os.mkdir(part, 0o755, dir_fd=current)
                    except FileExistsError:
                        raise FsError(
                            f"cannot extract {_q(entry)}: {_q(prefix)} is a symlink that does not lead to a "
                            "directory inside the root", "UnsafeArchive") from None
                    self._copy_dir_info(current, part, prefix)
                    nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=current)
                except NotADirectoryError:
                    raise FsError(f"cannot extract {_q(entry)}: {_q(prefix)} is not a directory",
                                  "UnsafeArchive") from None
                if current != self.root_fd:
                    os.close(current)
                current = nxt
        except BaseException:
            if current != self.root_fd:
                os.close(current)
            raise
        return current

    def _copy_dir_info(self, parent_fd: int, name: str, rel: str) -> None:
        """A parent the tar did not carry takes mode and owner from the nearest lower layer."""
        os.chmod(name, 0o755, dir_fd=parent_fd)
        for lower in self.lower_fds:
            try:
                fd = linux.openat2(lower, rel, os.O_PATH | os.O_NOFOLLOW, resolve=self.resolve)
            except OSError:
                continue
            try:
                st = os.fstat(fd)
            finally:
                os.close(fd)
            if stat.S_ISDIR(st.st_mode):
                os.chown(name, st.st_uid, st.st_gid, dir_fd=parent_fd, follow_symlinks=False)
                os.chmod(name, stat.S_IMODE(st.st_mode), dir_fd=parent_fd)
                os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=parent_fd, follow_symlinks=False)
            return

    # --- entries -----------------------------------------------------------------------------
    def run(self, raw: Reader) -> None:
        for tar, member in iter_members(raw, what="layer" if self.layer else "archive"):
            try:
                self._close_retired()
                self.entry(tar, member)
            except tarfile.TarError as exc:
                raise FsError(f"invalid {'layer' if self.layer else 'archive'} tar: {exc}") from None
            except OSError as exc:
                if exc.errno in _NO_SPACE:
                    raise FsError(f"no space left on device extracting {_q(member.name)}",
                                  "ResourceExhausted") from exc
                if exc.errno in (errno.EIO, errno.EROFS):
                    raise
                raise FsError(f"cannot extract {_q(member.name)}: {exc.strerror}") from exc
            self.entries += 1
        self.finish_dirs()

    def entry(self, tar: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        name = clean_name(m.name, where="" if self.layer else self.where)
        if len(os.fsencode(name)) > MAX_NAME_BYTES or len(os.fsencode(m.linkname)) > MAX_NAME_BYTES:
            raise FsError(f"name too long: {_q(m.name[:256])}")
        if m.sparse is not None:
            raise FsError(f"sparse files are not supported: {_q(m.name)}")
        if not name:
            return  # the root itself keeps its attributes (containerd and moby do the same)
        rel_parent, base = posixpath.split(name)
        if self.layer:
            if rel_parent and any(part.startswith(WHITEOUT_PREFIX) for part in rel_parent.split("/")):
                if rel_parent.startswith(".wh..wh."):
                    return  # inside AUFS metadata (.wh..wh.plnk/…): moby skips it too
                raise FsError(f"invalid whiteout name: {_q(m.name)}")
            if base.startswith(WHITEOUT_PREFIX):
                self.whiteout(rel_parent, base, m)
                return
        if m.type in (tarfile.CHRTYPE, tarfile.BLKTYPE) and not self.o.allow_devices:
            if not (m.type == tarfile.CHRTYPE and m.devmajor == 0 and m.devminor == 0):
                raise FsError(f"device node not allowed in layer: {_q(m.name)}", "UnsafeArchive")
        if m.type not in (*tarfile.REGULAR_TYPES, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE,
                          tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE):
            raise FsError(f"unsupported tar entry type {m.type!r}: {_q(m.name)}")
        full = posixpath.join(self.dest, name) if self.dest else name
        parent = posixpath.dirname(full)
        pfd = self.parent(parent, entry=m.name)
        if m.type == tarfile.LNKTYPE:
            self.hardlink(pfd, base, full, m)
            return
        existing = _lstat(pfd, base)
        opaque = False
        if existing is not None:
            self._check_overwrite(existing, m.isdir(), full)
            if m.isdir() and stat.S_ISDIR(existing.st_mode):
                pass  # directories merge: only the metadata changes
            else:
                # A directory over our own whiteout must stop merging with the lower layers.
                opaque = self.layer and m.isdir() and is_whiteout(existing)
                self._remove(pfd, base, existing)
        if m.isdir():
            self.directory(pfd, base, full, m, existing is not None and stat.S_ISDIR(existing.st_mode), opaque)
        elif m.isreg():
            self.regular(tar, pfd, base, m)
        elif m.issym():
            os.symlink(m.linkname, base, dir_fd=pfd)
            self._finish_path(pfd, base, m, chmod=False)
        else:
            kind = {tarfile.CHRTYPE: stat.S_IFCHR, tarfile.BLKTYPE: stat.S_IFBLK, tarfile.FIFOTYPE: stat.S_IFIFO}
            os.mknod(base, 0o600 | kind[m.type], os.makedev(m.devmajor, m.devminor), dir_fd=pfd)
            self._finish_path(pfd, base, m, chmod=True)

    def _check_overwrite(self, existing: os.stat_result, new_is_dir: bool, full: str) -> None:
        if not self.o.no_overwrite_dir_non_dir:
            return
        was_dir = stat.S_ISDIR(existing.st_mode)
        if was_dir and not new_is_dir:
            raise FsError(f"cannot overwrite directory {_q('/' + full)} with non-directory {_q(self.where)}",
                          "Internal")
        if not was_dir and new_is_dir:
            raise FsError(f"cannot overwrite non-directory {_q('/' + full)} with directory {_q(self.where)}",
                          "Internal")

    def _remove(self, pfd: int, base: str, st: os.stat_result) -> None:
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(base, dir_fd=pfd)  # fd-based: never follows a symlink out
        else:
            os.unlink(base, dir_fd=pfd)
        if stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode):
            self._forget_parents()  # cached parents may have resolved through it

    def whiteout(self, parent: str, base: str, m: tarfile.TarInfo) -> None:
        if base == OPAQUE_MARKER:
            os.setxattr(self.parent(parent, entry=m.name), OPAQUE_XATTR, b"y")
            return
        if base.startswith(".wh..wh."):
            return  # AUFS metadata (.wh..wh.plnk …): moby skips it too
        target = base[len(WHITEOUT_PREFIX):]
        if target in ("", ".", ".."):
            raise FsError(f"invalid whiteout name: {_q(m.name)}")
        pfd = self.parent(parent, entry=m.name)
        existing = _lstat(pfd, target)
        if existing is not None:
            # The target came from this same layer: a whiteout only hides *lower* layers, so the
            # entry stays; a directory stops merging with what is below it.
            if stat.S_ISDIR(existing.st_mode):
                fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
                try:
                    os.setxattr(fd, OPAQUE_XATTR, b"y")
                finally:
                    os.close(fd)
            return
        os.mknod(target, stat.S_IFCHR, os.makedev(0, 0), dir_fd=pfd)
        os.chown(target, *self._owner(m), dir_fd=pfd, follow_symlinks=False)

    def directory(self, pfd: int, base: str, name: str, m: tarfile.TarInfo, merged: bool, opaque: bool) -> None:
        if not merged:
            os.mkdir(base, 0o700, dir_fd=pfd)
        fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
        try:
            self._finish_fd(fd, m)
            if opaque:
                os.setxattr(fd, OPAQUE_XATTR, b"y")
        finally:
            os.close(fd)
        # Later entries inside it would bump its mtime: set times at the very end.
        self.dirs.append((name, *self._times(m)))

    def regular(self, tar: tarfile.TarFile, pfd: int, base: str, m: tarfile.TarInfo) -> None:
        fd = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=pfd)
        try:
            src: IO[bytes] | None = tar.extractfile(m)
            if src is not None:
                while chunk := src.read(CHUNK):
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view):]
            self._finish_fd(fd, m)
            os.utime(fd, ns=self._times(m))
        finally:
            os.close(fd)

    def hardlink(self, pfd: int, base: str, full: str, m: tarfile.TarInfo) -> None:
        def refuse(why: str) -> FsError:
            return FsError(f"invalid hardlink {_q(m.name)} -> {_q(m.linkname)}: {why}", "UnsafeArchive")

        try:
            target = clean_name(m.linkname)
        except FsError:
            raise refuse("target is outside of the root") from None
        if not target:
            raise refuse("target is the root")
        if self.dest:
            target = posixpath.join(self.dest, target)
        tparent, tbase = posixpath.split(target)
        where = "this layer" if self.layer else "the archive's destination"
        try:
            tfd = self.parent(tparent, entry=m.name, create=False)
        except (FileNotFoundError, FsError):
            raise refuse(f"target is not in {where}") from None
        target_st = _lstat(tfd, tbase)
        if target_st is None or is_whiteout(target_st):
            raise refuse(f"target is not in {where}")
        if stat.S_ISDIR(target_st.st_mode):
            raise refuse("target is a directory")
        existing = _lstat(pfd, base)
        if existing is not None:
            if (existing.st_dev, existing.st_ino) == (target_st.st_dev, target_st.st_ino):
                return
            self._check_overwrite(existing, False, full)
            self._remove(pfd, base, existing)
        # follow_symlinks=False: a link to a symlink links the symlink itself.
        os.link(tbase, base, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)

    # --- metadata ---------------------------------------------------------------------------
    def _owner(self, m: tarfile.TarInfo) -> tuple[int, int]:
        return self.o.owner if self.o.owner is not None else (m.uid, m.gid)

    @staticmethod
    def _times(m: tarfile.TarInfo) -> tuple[int, int]:
        mtime = _ns(m, "mtime")
        return (_ns(m, "atime") if "atime" in m.pax_headers else mtime, mtime)

    @staticmethod
    def _set_xattr(set_one: Callable[[str, bytes], None], m: tarfile.TarInfo, *, regular_or_dir: bool) -> None:
        for key, value in _xattrs(m).items():
            try:
                set_one(key, value)
            except OSError as exc:
                if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
                    continue
                if exc.errno == errno.EPERM and key.startswith("user.") and not regular_or_dir:
                    continue  # the kernel allows user.* only on files and directories
                raise

    def _finish_fd(self, fd: int, m: tarfile.TarInfo) -> None:
        # chown clears setuid/setgid and file capabilities: owner, then xattrs, then mode.
        os.chown(fd, *self._owner(m))
        self._set_xattr(lambda k, v: os.setxattr(fd, k, v), m, regular_or_dir=True)
        os.chmod(fd, stat.S_IMODE(m.mode))

    def _finish_path(self, pfd: int, base: str, m: tarfile.TarInfo, *, chmod: bool) -> None:
        os.chown(base, *self._owner(m), dir_fd=pfd, follow_symlinks=False)
        if self.o.proc_paths:
            where = f"/proc/self/fd/{pfd}/{base}"
            self._set_xattr(lambda k, v: os.setxattr(where, k, v, follow_symlinks=False), m,
                            regular_or_dir=False)
        if chmod:
            os.chmod(base, stat.S_IMODE(m.mode), dir_fd=pfd)  # a node we just made: never a symlink
        os.utime(base, ns=self._times(m), dir_fd=pfd, follow_symlinks=False)

    def finish_dirs(self) -> None:
        self._forget_parents()
        for name, atime, mtime in reversed(self.dirs):
            try:
                fd = self._open_in_root(name, os.O_NOFOLLOW)
            except OSError:
                continue  # replaced by a later entry of the tar
            try:
                os.utime(fd, ns=(atime, mtime))
            finally:
                os.close(fd)


def extract(raw: Reader, root_fd: int, options: ExtractOptions) -> int:
    """Extract the tar read from ``raw`` into the tree at ``root_fd``; returns the number of
    entries. Blocking; raises :class:`FsError` (or ``OSError`` for EIO/EROFS)."""
    applier = _Applier(root_fd, options)
    try:
        applier.run(raw)
    finally:
        applier.close()
    return applier.entries


# --- looking things up ---------------------------------------------------------------------

_IN_ROOT = linux.RESOLVE_IN_ROOT | linux.RESOLVE_NO_MAGICLINKS


def open_in_root(root_fd: int, path: str, flags: int = os.O_PATH, *, follow: bool = False) -> int:
    """``path`` (absolute or relative, inside the root) opened with ``openat2(RESOLVE_IN_ROOT)``;
    the last component is followed only with ``follow``."""
    rel = path.strip("/") or "."
    return linux.openat2(root_fd, rel, flags | (0 if follow else os.O_NOFOLLOW), resolve=_IN_ROOT)


def abs_path(path: str) -> str:
    """moby's ``PreserveTrailingDotOrSeparator(filepath.Join("/", path), path)``."""
    cleaned = "/" + posixpath.normpath("/" + path).lstrip("/")
    if path.endswith("/.") or path == ".":
        return cleaned.rstrip("/") + "/." if cleaned != "/" else "/."
    if path.endswith("/") and cleaned != "/":
        return cleaned + "/"
    return cleaned


def follow_in_scope(root_fd: int, path: str) -> str:
    """Every symlink along ``path`` evaluated inside the root, as far as the path exists (moby's
    ``symlink.FollowSymlinkInScope``: a dangling link resolves lexically)."""
    pending = [p for p in path.split("/") if p]
    pending.reverse()
    resolved: list[str] = []
    links = 0
    while pending:
        part = pending.pop()
        if part == ".":
            continue
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        parent = "/".join(resolved)
        try:
            pfd = open_in_root(root_fd, parent, os.O_PATH | os.O_DIRECTORY, follow=True)
        except OSError:
            resolved.append(part)
            continue
        try:
            st = _lstat(pfd, part)
            if st is None or not stat.S_ISLNK(st.st_mode):
                resolved.append(part)
                continue
            links += 1
            if links > MAX_SYMLINKS:
                raise FsError(f"too many links in {path}", "Internal")
            target = os.readlink(part, dir_fd=pfd)
        finally:
            os.close(pfd)
        if target.startswith("/"):
            resolved = []
        pending.extend(reversed([p for p in target.split("/") if p]))
    return "/" + "/".join(resolved)


def go_mode(st_mode: int) -> int:
    """Go's ``os.FileMode`` of a ``st_mode``, as Docker's path stat reports it."""
    mode = st_mode & 0o777
    kind = stat.S_IFMT(st_mode)
    mode |= {stat.S_IFBLK: GO_MODE_DEVICE, stat.S_IFCHR: GO_MODE_DEVICE | GO_MODE_CHAR_DEVICE,
             stat.S_IFDIR: GO_MODE_DIR, stat.S_IFIFO: GO_MODE_NAMED_PIPE, stat.S_IFLNK: GO_MODE_SYMLINK,
             stat.S_IFSOCK: GO_MODE_SOCKET}.get(kind, 0)
    if st_mode & stat.S_ISGID:
        mode |= GO_MODE_SETGID
    if st_mode & stat.S_ISUID:
        mode |= GO_MODE_SETUID
    if st_mode & stat.S_ISVTX:
        mode |= GO_MODE_STICKY
    return mode


def rfc3339_nano(ns: int) -> str:
    """Go's time.RFC3339Nano in UTC (trailing zeros of the fraction trimmed)."""
    seconds, frac = divmod(ns, 1_000_000_000)
    base = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    fraction = f"{frac:09d}".rstrip("0")
    return f"{base}.{fraction}Z" if fraction else f"{base}Z"


@dataclass(frozen=True, slots=True)
class Stat:
    """What ``X-Docker-Container-Path-Stat`` describes, plus whether it is a directory."""

    name: str
    size: int
    mode: int  # Go's os.FileMode
    mtime: str
    link_target: str = ""

    @property
    def is_dir(self) -> bool:
        return bool(self.mode & GO_MODE_DIR)


def _not_found(exc: OSError, path: str) -> FsError:
    if exc.errno == errno.ENOENT:
        return FsError(f"lstat {path}: no such file or directory", "NotFound")
    return FsError(f"lstat {path}: {errtext(exc.errno or 0)}", "Internal")


def path_stat(root_fd: int, path: str) -> Stat:
    """``os.Lstat`` of ``path`` inside the root as moby's container filesystem view does it: the
    last component is not followed unless the path ends in ``/`` or ``/.``; a symlink reports its
    target fully evaluated inside the root. ``FsError`` kind ``NotFound`` if it does not exist."""
    absolute = abs_path(path)
    follow = absolute.endswith("/") or absolute.endswith("/.")
    try:
        fd = open_in_root(root_fd, absolute, follow=follow)
    except OSError as exc:
        raise _not_found(exc, absolute) from None
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    target = follow_in_scope(root_fd, absolute) if stat.S_ISLNK(st.st_mode) else ""
    base = posixpath.basename(absolute.rstrip("/")) or "/"
    if absolute.endswith("/."):
        base = "."
    return Stat(name=base, size=st.st_size, mode=go_mode(st.st_mode), mtime=rfc3339_nano(st.st_mtime_ns),
                link_target=target)


# --- writing tar streams -------------------------------------------------------------------

Sink = Callable[[bytes], None]


class _Out:
    """Tar bytes gathered into chunks of about ``CHUNK`` for ``sink``."""

    def __init__(self, sink: Sink) -> None:
        self._sink = sink
        self._parts: list[bytes] = []
        self._held = 0
        self.written = 0

    def write(self, data: bytes) -> None:
        self._parts.append(data)
        self._held += len(data)
        self.written += len(data)
        if self._held >= CHUNK:
            self.flush()

    def flush(self) -> None:
        if self._parts:
            self._sink(b"".join(self._parts))
            self._parts, self._held = [], 0


def _header(name: str, st: os.stat_result, kind: bytes, *, size: int = 0, linkname: str = "",
            xattrs: dict[str, bytes] | None = None, mode: int | None = None) -> bytes:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = stat.S_IMODE(st.st_mode) if mode is None else mode
    info.uid, info.gid = st.st_uid, st.st_gid
    info.uname = info.gname = ""  # numeric only: no user database is ever read
    info.mtime = st.st_mtime_ns // 1_000_000_000  # moby truncates to seconds, no atime/ctime
    info.size = size
    info.linkname = linkname
    if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
    if xattrs:
        info.pax_headers = {"SCHILY.xattr." + k: v.decode("utf-8", "surrogateescape") for k, v in xattrs.items()}
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _read_xattrs(fd: int) -> dict[str, bytes]:
    found = {}
    for key in _WRITTEN_XATTRS:
        try:
            found[key] = os.getxattr(fd, key)
        except OSError:
            continue
    return found


@dataclass
class _Walk:
    out: _Out
    layer: bool
    # (dev, ino) of files with several links → the first name written: later ones are links
    links: dict[tuple[int, int], str] = field(default_factory=dict)
    count: int = 0
    skip: frozenset[str] = frozenset()  # "/a/b" paths (relative to the walk's top) left out


def _emit_entry(w: _Walk, dir_fd: int, base: str, name: str, st: os.stat_result) -> int | None:
    """Write one entry; returns an open fd of it when it is a directory to descend into."""
    w.count += 1
    mode = st.st_mode
    if stat.S_ISSOCK(mode):
        return None  # tar cannot carry sockets; moby skips them too
    if w.layer and is_whiteout(st):
        head, tail = posixpath.split(name)
        wh = posixpath.join(head, WHITEOUT_PREFIX + tail) if head else WHITEOUT_PREFIX + tail
        w.out.write(_header(wh, st, tarfile.REGTYPE, mode=0o600))
        return None
    if not stat.S_ISDIR(mode) and st.st_nlink > 1:
        key = (st.st_dev, st.st_ino)
        first = w.links.get(key)
        if first is not None:
            w.out.write(_header(name, st, tarfile.LNKTYPE, linkname=first))
            return None
        w.links[key] = name
    if stat.S_ISDIR(mode):
        fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            w.out.write(_header(name.rstrip("/") + "/", st, tarfile.DIRTYPE, xattrs=_read_xattrs(fd)))
            if w.layer and _opaque(fd):
                marker = f"{name.rstrip('/')}/{OPAQUE_MARKER}"
                w.out.write(_header(marker, st, tarfile.REGTYPE, mode=stat.S_IMODE(mode) & 0o777))
        except BaseException:
            os.close(fd)
            raise
        return fd
    if stat.S_ISREG(mode):
        _emit_file(w, dir_fd, base, name, st)
    elif stat.S_ISLNK(mode):
        w.out.write(_header(name, st, tarfile.SYMTYPE, linkname=os.readlink(base, dir_fd=dir_fd)))
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        w.out.write(_header(name, st, tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE))
    elif stat.S_ISFIFO(mode):
        w.out.write(_header(name, st, tarfile.FIFOTYPE))
    return None


def _opaque(fd: int) -> bool:
    try:
        return os.getxattr(fd, OPAQUE_XATTR) == b"y"
    except OSError:
        return False


def _emit_file(w: _Walk, dir_fd: int, base: str, name: str, st: os.stat_result) -> None:
    # O_NONBLOCK: if a racing writer swapped in a FIFO, opening it must not hang.
    try:
        fd = os.open(base, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return  # unreadable (moby logs "Can't add file" and goes on)
    try:
        now = os.fstat(fd)
        if not stat.S_ISREG(now.st_mode):
            return  # replaced since the directory was read
        size = now.st_size
        w.out.write(_header(name, now, tarfile.REGTYPE, size=size, xattrs=_read_xattrs(fd)))
        left = size
        while left:
            try:
                chunk = os.read(fd, min(CHUNK, left))
            except OSError:
                break
            if not chunk:
                break
            w.out.write(chunk)
            left -= len(chunk)
        if left:
            w.out.write(b"\0" * left)  # the file shrank (or failed) while read: the header's size stands
        w.out.write(b"\0" * (-size % tarfile.BLOCKSIZE))
    finally:
        os.close(fd)


# Kernel filesystems (proc, sysfs, cgroup, devpts, mqueue, securityfs, debugfs, tracefs, nsfs,
# binfmt_misc, bpf): a running container's view has them mounted; their files are no content to
# copy (moby's own view of a container has only its rootfs and volumes), so a walk stops at them.
_PSEUDO_FS = frozenset({0x9FA0, 0x62656572, 0x27E0EB, 0x63677270, 0x1CD1, 0x19800202, 0x73636673, 0x64626720,
                        0x74726163, 0x6E736673, 0x42494E4D, 0xCAFE4A11})
_libc = ctypes.CDLL(None, use_errno=True)


def _pseudo(fd: int) -> bool:
    buf = ctypes.create_string_buffer(256)  # struct statfs; f_type (a long) comes first
    if _libc.fstatfs(fd, buf) != 0:
        return False
    return int.from_bytes(buf.raw[:ctypes.sizeof(ctypes.c_long)], sys.byteorder, signed=True) in _PSEUDO_FS


def _walk(w: _Walk, fd: int, prefix: str) -> None:
    """Children of the directory ``fd`` in Go's walk order (names sorted, depth first)."""
    try:
        names = sorted(os.listdir(fd))
        device = os.fstat(fd).st_dev
    except OSError:
        return
    for base in names:
        st = _lstat(fd, base)
        if st is None:
            continue  # removed since the directory was read
        name = f"{prefix}{base}" if prefix else base
        if w.skip and "/" + name in w.skip:
            continue
        child = _emit_entry(w, fd, base, name, st)
        if child is not None:
            try:
                if st.st_dev == device or not _pseudo(child):
                    _walk(w, child, name + "/")
            finally:
                os.close(child)


def write_tree(root_fd: int, path: str, name: str, sink: Sink, *, layer: bool = False,
               skip: frozenset[str] = frozenset()) -> int:
    """A tar of ``path`` (inside the root, last component not followed) on ``sink``: the entry
    is named ``name`` and a directory's contents ``name/…``; with ``name`` "" the directory's
    contents are named relative to it and it has no entry itself (``docker export``, a layer).
    ``layer``: the tree is an overlay upper directory; its whiteouts and opaque directories
    become OCI ``.wh.`` entries. ``skip``: entries left out (``/a/b``, named as in the archive).
    Returns the number of entries."""
    out = _Out(sink)
    w = _Walk(out=out, layer=layer, skip=skip)
    rel = path.strip("/")
    if rel:
        pdir, base = posixpath.split(rel)
        pfd = open_in_root(root_fd, pdir, os.O_RDONLY | os.O_DIRECTORY, follow=True)
    else:
        pfd, base = -1, ""
    try:
        if pfd < 0:
            top = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=root_fd)
            st = os.fstat(top)
            if name:
                out.write(_header(name.rstrip("/") + "/", st, tarfile.DIRTYPE, xattrs=_read_xattrs(top)))
            try:
                _walk(w, top, name.rstrip("/") + "/" if name else "")
            finally:
                os.close(top)
        else:
            st_top = _lstat(pfd, base)
            if st_top is None:
                raise FsError(f"lstat /{rel}: no such file or directory", "NotFound")
            if name:
                child = _emit_entry(w, pfd, base, name, st_top)
            elif stat.S_ISDIR(st_top.st_mode):
                child = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
            else:
                child = _emit_entry(w, pfd, base, base, st_top)
            if child is not None:
                try:
                    _walk(w, child, name.rstrip("/") + "/" if name else "")
                finally:
                    os.close(child)
    finally:
        if pfd >= 0:
            os.close(pfd)
    out.write(b"\0" * (2 * tarfile.BLOCKSIZE))  # end of archive, as Go's tar writer ends it
    out.flush()
    return w.count


def write_path(root_fd: int, path: str, sink: Sink) -> int:
    """A tar of ``path`` as ``GET /containers/{id}/archive`` answers (moby's
    ``containerArchivePath``): named by the path's base name, a directory with its contents; a
    trailing ``/`` or ``/.`` follows a symlink to its directory; ``/.`` gives ``./…`` names (what
    ``docker cp c:/. dir`` extracts). ``/`` alone gives names relative to the root, without an entry
    of its own (``docker export``)."""
    absolute = abs_path(path)
    if absolute == "/":
        return write_tree(root_fd, "", "", sink)
    st = path_stat(root_fd, absolute)
    target = follow_in_scope(root_fd, absolute) if absolute.endswith(("/", "/.")) else absolute
    return write_tree(root_fd, target, st.name, sink)


# --- copying a tree ------------------------------------------------------------------------

def copy_tree(src_fd: int, dst_fd: int) -> None:
    """Copy the contents of directory ``src_fd`` into directory ``dst_fd`` with owners, modes,
    times, file capabilities and hard links (moby's ``copyExistingContents``: a new volume
    receives the image's files). Nothing is followed: both sides are walked by fd."""
    links: dict[tuple[int, int], tuple[int, str]] = {}
    try:
        _copy_dir(src_fd, dst_fd, links)
    finally:
        for fd, _ in links.values():
            os.close(fd)
    src = os.fstat(src_fd)
    os.chown(dst_fd, src.st_uid, src.st_gid)
    os.chmod(dst_fd, stat.S_IMODE(src.st_mode))
    os.utime(dst_fd, ns=(src.st_atime_ns, src.st_mtime_ns))


def _copy_dir(src_fd: int, dst_fd: int, links: dict[tuple[int, int], tuple[int, str]]) -> None:
    for name in sorted(os.listdir(src_fd)):
        st = _lstat(src_fd, name)
        if st is None:
            continue
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            sfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=src_fd)
            try:
                if _lstat(dst_fd, name) is None:
                    os.mkdir(name, 0o700, dir_fd=dst_fd)
                dfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dst_fd)
                try:
                    _copy_dir(sfd, dfd, links)
                    _copy_meta_fd(sfd, dfd, st)
                finally:
                    os.close(dfd)
            finally:
                os.close(sfd)
            continue
        if st.st_nlink > 1:
            first = links.get((st.st_dev, st.st_ino))
            if first is not None:
                os.link(first[1], name, src_dir_fd=first[0], dst_dir_fd=dst_fd, follow_symlinks=False)
                continue
        if stat.S_ISREG(mode):
            sfd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=src_fd)
            try:
                dfd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                              dir_fd=dst_fd)
                try:
                    while os.sendfile(dfd, sfd, None, CHUNK):
                        pass
                    _copy_meta_fd(sfd, dfd, st)
                finally:
                    os.close(dfd)
            finally:
                os.close(sfd)
        elif stat.S_ISLNK(mode):
            os.symlink(os.readlink(name, dir_fd=src_fd), name, dir_fd=dst_fd)
            os.chown(name, st.st_uid, st.st_gid, dir_fd=dst_fd, follow_symlinks=False)
            os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dst_fd, follow_symlinks=False)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode):
            os.mknod(name, stat.S_IFMT(mode) | 0o600, st.st_rdev, dir_fd=dst_fd)
            os.chown(name, st.st_uid, st.st_gid, dir_fd=dst_fd, follow_symlinks=False)
            os.chmod(name, stat.S_IMODE(mode), dir_fd=dst_fd)
            os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dst_fd, follow_symlinks=False)
        else:
            continue  # sockets
        if st.st_nlink > 1:
            # Keep a dir fd alive for the later links: the directory we are in is open here.
            links[(st.st_dev, st.st_ino)] = (os.dup(dst_fd), name)


def _copy_meta_fd(src: int, dst: int, st: os.stat_result) -> None:
    os.chown(dst, st.st_uid, st.st_gid)
    for key, value in _read_xattrs(src).items():
        try:
            os.setxattr(dst, key, value)
        except OSError as exc:
            if exc.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
                raise
    os.chmod(dst, stat.S_IMODE(st.st_mode))
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
