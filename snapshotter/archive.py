"""Apply an OCI/Docker layer tarball to a snapshot's upper directory, safely.

We extract straight into the new snapshot's ``fs`` directory (overlay's upperdir) before anything
mounts it, so no running container can race the extraction, and whiteouts are written in overlay's
own form: ``.wh.<name>`` becomes a 0/0 character device with the entry's owner, and
``.wh..wh..opq`` the ``trusted.overlay.opaque=y`` xattr on its directory (REFERENCE §1.5/§1.6).

``tarfile`` is used only to parse headers (stream mode, with bounded header records); every
filesystem write is ours, relative to a directory fd:

* Each entry's parent directory is opened with ``openat2(RESOLVE_IN_ROOT)``: the kernel resolves
  ``..`` and symlinks (absolute or relative) as if the snapshot root were ``/``. The final
  component is never followed: files are created ``O_CREAT|O_EXCL|O_NOFOLLOW``, metadata is set
  through the new fd or with ``follow_symlinks=False``.

What is rejected and what is contained (the choices of moby and containerd):

* A name that climbs above the root (``../x``, ``a/../../x``) is **rejected** with
  ``UnsafeArchive`` — moby's ``breakoutError``. An absolute name (``/etc/x``) is **contained**:
  it is taken relative to the root, as both moby and containerd do.
* A symlink entry is created verbatim whatever it points at: it is data until a container
  resolves it inside its own root. Entries written *through* a symlink are **contained** (the
  kernel resolves the link inside the snapshot, like moby's chrooted applier and containerd's
  ``RootPath``); if the link leads nowhere inside the layer the entry is **rejected**.
* A hardlink must name a file already extracted from this same layer, resolved inside the root;
  a target that climbs out or is missing (``/etc/shadow``) is **rejected**.
* Device nodes are **rejected** unless ``allow_devices`` is set, except char 0/0 (a whiteout
  already in overlay form). FIFOs are allowed.
* Overlay xattrs (``trusted.overlay.*``, ``user.overlay.*``) and ``security.selinux`` from the tar
  are dropped: a layer must not forge redirects, metacopy or opaque markers.

The diffID (sha256 of the uncompressed tar) is computed while streaming, gzip is detected by its
magic and decompressed on the fly (multi-member streams included); a truncated or corrupt stream
and a diffID that differs from the expected one fail the apply. The caller owns cleanup of the
partly written snapshot (it removes the snapshot).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import posixpath
import re
import shutil
import stat
import tarfile
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import IO, Protocol, Self

import structlog

from common import linux
from protos.errors import DigestMismatch, InvalidArgument, ResourceExhausted, UnsafeArchive
from snapshotter.streams import CHUNK

log = structlog.get_logger()

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# Full magics (bzip2: "BZh", level, block header): a tar's first bytes are a file name.
_UNSUPPORTED_MAGIC = tuple((re.compile(m, re.DOTALL), kind) for m, kind in (
    (rb"BZh[1-9]1AY&SY", "bzip2"), (rb"\xfd7zXZ\x00", "xz")))

# A PAX record or GNU long name beyond this is an attack on memory (CVE-2023-25153's lesson).
MAX_HEADER_RECORD = 1 << 20
MAX_NAME_BYTES = 4096  # PATH_MAX
MAX_ENTRIES = 1_000_000

OPAQUE_XATTR = "trusted.overlay.opaque"
_DROPPED_XATTRS = ("trusted.overlay.", "user.overlay.", "security.selinux")
_RESOLVE = linux.RESOLVE_IN_ROOT | linux.RESOLVE_NO_MAGICLINKS | linux.RESOLVE_NO_XDEV
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_TIME_LIMIT_NS = 1 << 62


class RawReader(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


def _q(text: str) -> str:
    """Quote like Go's %q, as Docker's messages do."""
    return json.dumps(text, ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class ApplyResult:
    diff_id: str
    size: int  # uncompressed bytes of the tar
    entries: int


class LayerReader:
    """A file object over a layer blob: transparent gunzip, sha256 and size of what it yields.

    Output is produced in pieces of at most ``chunk`` bytes, so a decompression bomb never sits
    in memory at once.
    """

    def __init__(self, raw: RawReader, *, chunk: int = CHUNK) -> None:
        self._raw = raw
        self._chunk = chunk
        self._hash = hashlib.sha256()
        self.size = 0
        self._buf = b""
        self._pos = 0
        head = b""
        while len(head) < 4:
            more = raw.read(chunk)
            if not more:
                break
            head += more
        if head.startswith(ZSTD_MAGIC):
            raise InvalidArgument("zstd-compressed layers are not supported")
        for magic, kind in _UNSUPPORTED_MAGIC:
            if magic.match(head):
                raise InvalidArgument(f"{kind}-compressed archives are not supported: use tar or tar.gz")
        self.compressed = head.startswith(GZIP_MAGIC)
        self._in = head
        self._z: zlib._Decompress | None = zlib.decompressobj(wbits=31) if self.compressed else None

    @property
    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()

    def _raw_read(self) -> bytes:
        return self._raw.read(self._chunk)

    def _produce(self) -> bytes:
        if not self.compressed:
            if self._in:
                data, self._in = self._in, b""
                return data
            return self._raw_read()
        while True:
            if self._z is None:  # between gzip members
                if not self._in:
                    self._in = self._raw_read()
                    if not self._in:
                        return b""
                if len(self._in) < 2:
                    more = self._raw_read()
                    if not more:
                        raise InvalidArgument("invalid gzip layer: trailing garbage after the last member")
                    self._in += more
                    continue
                if not self._in.startswith(GZIP_MAGIC):
                    raise InvalidArgument("invalid gzip layer: trailing garbage after the last member")
                self._z = zlib.decompressobj(wbits=31)
            if not self._in:
                self._in = self._raw_read()
                if not self._in:
                    raise InvalidArgument("unexpected EOF: the gzip layer is truncated")
            try:
                out = self._z.decompress(self._in, self._chunk)
            except zlib.error as exc:
                raise InvalidArgument(f"invalid gzip layer: {exc}") from None
            if self._z.eof:
                self._in, self._z = self._z.unused_data, None
            else:
                self._in = self._z.unconsumed_tail
            if out:
                return out

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            parts = []
            while piece := self.read(self._chunk):
                parts.append(piece)
            return b"".join(parts)
        if self._pos >= len(self._buf):
            self._buf, self._pos = self._produce(), 0
            self._hash.update(self._buf)
            self.size += len(self._buf)
        out = self._buf[self._pos:self._pos + n]
        self._pos += len(out)
        return out

    def drain(self) -> None:
        while self.read(self._chunk):
            pass


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
            raise InvalidArgument(f"invalid tar header: {exc}") from None
        if info.size < 0:
            raise InvalidArgument("invalid tar header: negative size")
        if info.type in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE,
                         tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE) and info.size > MAX_HEADER_RECORD:
            raise InvalidArgument(f"tar header record of {info.size} bytes exceeds {MAX_HEADER_RECORD}")
        if info.type == tarfile.GNUTYPE_SPARSE:
            raise InvalidArgument(f"sparse files are not supported: {_q(info.name)}")
        return info


def iter_members(reader: LayerReader, *, what: str,
                 max_entries: int = MAX_ENTRIES) -> Iterator[tuple[tarfile.TarFile, tarfile.TarInfo]]:
    """Headers of a tar stream, bounded; an empty stream has no members. Read a member's data
    (``tar.extractfile``) before asking for the next one."""
    try:
        tar = tarfile.open(fileobj=reader, mode="r|", tarinfo=BoundedTarInfo,  # type: ignore[call-overload]
                           encoding="utf-8", errors="surrogateescape")
    except tarfile.ReadError as exc:
        if reader.size == 0:
            return
        raise InvalidArgument(f"invalid {what} tar: {exc}") from None
    count = 0
    with tar:
        while True:
            try:
                member = tar.next()
            except tarfile.TarError as exc:
                raise InvalidArgument(f"invalid {what} tar: {exc}") from None
            if member is None:
                return
            tar.members.clear()  # stream mode never looks back; keep memory flat
            count += 1
            if count > max_entries:
                raise InvalidArgument(f"{what} tar has more than {max_entries} entries")
            yield tar, member


def clean_name(name: str) -> str:
    """The entry's path relative to the root ("" for the root itself); climbing out is rejected."""
    norm = posixpath.normpath(name.lstrip("/")) if name.strip("/") else "."
    if norm == ".." or norm.startswith("../"):
        raise UnsafeArchive(f"{_q(name)} is outside of the layer root")
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


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


class _Applier:
    def __init__(self, root: str, lowers: Sequence[str], allow_devices: bool) -> None:
        self.allow_devices = allow_devices
        self.entries = 0
        self.root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        self.root_path = os.readlink(f"/proc/self/fd/{self.root_fd}")
        self.lower_fds: list[int] = []
        self.parents: OrderedDict[str, int] = OrderedDict()
        # fds dropped from the cache stay open until the current entry is done with them
        self.retired: list[int] = []
        self.dirs: list[tuple[str, int, int]] = []
        try:
            for lower in lowers:
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
        return linux.openat2(self.root_fd, path, os.O_RDONLY | os.O_DIRECTORY | flags, resolve=_RESOLVE)

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
            raise UnsafeArchive(f"cannot extract {_q(entry)}: a parent of it is not a directory") from None
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
                        raise UnsafeArchive(
                            f"cannot extract {_q(entry)}: {_q(prefix)} is a symlink that does not lead to a "
                            "directory inside the layer") from None
                    self._copy_dir_info(current, part)
                    nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=current)
                except NotADirectoryError:
                    raise UnsafeArchive(f"cannot extract {_q(entry)}: {_q(prefix)} is not a directory") from None
                if current != self.root_fd:
                    os.close(current)
                current = nxt
        except BaseException:
            if current != self.root_fd:
                os.close(current)
            raise
        return current

    def _copy_dir_info(self, parent_fd: int, name: str) -> None:
        """A parent the tar did not carry takes mode and owner from the nearest lower layer."""
        os.chmod(name, 0o755, dir_fd=parent_fd)
        if not self.lower_fds:
            return
        where = os.readlink(f"/proc/self/fd/{parent_fd}")
        rel = posixpath.join(posixpath.relpath(where, self.root_path), name)
        for lower in self.lower_fds:
            try:
                fd = linux.openat2(lower, rel, os.O_PATH | os.O_NOFOLLOW, resolve=_RESOLVE)
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
    def run(self, reader: LayerReader) -> None:
        for tar, member in iter_members(reader, what="layer"):
            try:
                self._close_retired()
                self.entry(tar, member)
            except tarfile.TarError as exc:
                raise InvalidArgument(f"invalid layer tar: {exc}") from None
            except OSError as exc:
                if exc.errno in _NO_SPACE:
                    raise ResourceExhausted(f"no space left on device extracting {_q(member.name)}") from exc
                if exc.errno in (errno.EIO, errno.EROFS):
                    raise
                raise InvalidArgument(f"cannot extract {_q(member.name)}: {exc.strerror}") from exc
            self.entries += 1
        self.finish_dirs()

    def entry(self, tar: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        name = clean_name(m.name)
        if len(os.fsencode(name)) > MAX_NAME_BYTES or len(os.fsencode(m.linkname)) > MAX_NAME_BYTES:
            raise InvalidArgument(f"name too long: {_q(m.name[:256])}")
        if m.sparse is not None:
            raise InvalidArgument(f"sparse files are not supported: {_q(m.name)}")
        if not name:
            return  # the root itself keeps the snapshot's attributes (containerd does the same)
        parent, base = posixpath.split(name)
        if parent and any(part.startswith(".wh.") for part in parent.split("/")):
            if parent.startswith(".wh..wh."):
                return  # inside AUFS metadata (.wh..wh.plnk/…): moby skips it too
            raise InvalidArgument(f"invalid whiteout name: {_q(m.name)}")
        if base.startswith(".wh."):
            self.whiteout(parent, base, m)
            return
        if m.type in (tarfile.CHRTYPE, tarfile.BLKTYPE) and not self.allow_devices:
            if not (m.type == tarfile.CHRTYPE and m.devmajor == 0 and m.devminor == 0):
                raise UnsafeArchive(f"device node not allowed in layer: {_q(m.name)}")
        if m.type not in (*tarfile.REGULAR_TYPES, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE,
                          tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE):
            raise InvalidArgument(f"unsupported tar entry type {m.type!r}: {_q(m.name)}")
        pfd = self.parent(parent, entry=m.name)
        if m.type == tarfile.LNKTYPE:
            self.hardlink(pfd, base, m)
            return
        existing = _lstat(pfd, base)
        opaque = False
        if existing is not None:
            if m.isdir() and stat.S_ISDIR(existing.st_mode):
                pass  # directories merge: only the metadata changes
            else:
                # A directory over our own whiteout must stop merging with the lower layers.
                opaque = m.isdir() and _is_whiteout(existing)
                self._remove(pfd, base, existing)
        if m.isdir():
            self.directory(pfd, base, name, m, existing is not None and stat.S_ISDIR(existing.st_mode), opaque)
        elif m.isreg():
            self.regular(tar, pfd, base, m)
        elif m.issym():
            os.symlink(m.linkname, base, dir_fd=pfd)
            self._finish_path(pfd, base, m, chmod=False)
        else:
            kind = {tarfile.CHRTYPE: stat.S_IFCHR, tarfile.BLKTYPE: stat.S_IFBLK, tarfile.FIFOTYPE: stat.S_IFIFO}
            os.mknod(base, 0o600 | kind[m.type], os.makedev(m.devmajor, m.devminor), dir_fd=pfd)
            self._finish_path(pfd, base, m, chmod=True)

    def _remove(self, pfd: int, base: str, st: os.stat_result) -> None:
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(base, dir_fd=pfd)  # fd-based: never follows a symlink out
        else:
            os.unlink(base, dir_fd=pfd)
        if stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode):
            self._forget_parents()  # cached parents may have resolved through it

    def whiteout(self, parent: str, base: str, m: tarfile.TarInfo) -> None:
        if base == ".wh..wh..opq":
            os.setxattr(self.parent(parent, entry=m.name), OPAQUE_XATTR, b"y")
            return
        if base.startswith(".wh..wh."):
            return  # AUFS metadata (.wh..wh.plnk …): moby skips it too
        target = base[len(".wh."):]
        if target in ("", ".", ".."):
            raise InvalidArgument(f"invalid whiteout name: {_q(m.name)}")
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
        os.chown(target, m.uid, m.gid, dir_fd=pfd, follow_symlinks=False)

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

    def hardlink(self, pfd: int, base: str, m: tarfile.TarInfo) -> None:
        def refuse(why: str) -> UnsafeArchive:
            return UnsafeArchive(f"invalid hardlink {_q(m.name)} -> {_q(m.linkname)}: {why}")

        try:
            target = clean_name(m.linkname)
        except UnsafeArchive:
            raise refuse("target is outside of the layer root") from None
        if not target:
            raise refuse("target is the layer root")
        tparent, tbase = posixpath.split(target)
        try:
            tfd = self.parent(tparent, entry=m.name, create=False)
        except (FileNotFoundError, UnsafeArchive):
            raise refuse("target is not in this layer") from None
        target_st = _lstat(tfd, tbase)
        if target_st is None or _is_whiteout(target_st):
            raise refuse("target is not in this layer")
        if stat.S_ISDIR(target_st.st_mode):
            raise refuse("target is a directory")
        existing = _lstat(pfd, base)
        if existing is not None:
            if (existing.st_dev, existing.st_ino) == (target_st.st_dev, target_st.st_ino):
                return
            self._remove(pfd, base, existing)
        # follow_symlinks=False: a link to a symlink links the symlink itself.
        os.link(tbase, base, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)

    # --- metadata ---------------------------------------------------------------------------
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
        os.chown(fd, m.uid, m.gid)
        self._set_xattr(lambda k, v: os.setxattr(fd, k, v), m, regular_or_dir=True)
        os.chmod(fd, stat.S_IMODE(m.mode))

    def _finish_path(self, pfd: int, base: str, m: tarfile.TarInfo, *, chmod: bool) -> None:
        os.chown(base, m.uid, m.gid, dir_fd=pfd, follow_symlinks=False)
        where = f"/proc/self/fd/{pfd}/{base}"
        self._set_xattr(lambda k, v: os.setxattr(where, k, v, follow_symlinks=False), m, regular_or_dir=False)
        if chmod:
            os.chmod(base, stat.S_IMODE(m.mode), dir_fd=pfd)  # a node we just made: never a symlink
        os.utime(base, ns=self._times(m), dir_fd=pfd, follow_symlinks=False)

    def finish_dirs(self) -> None:
        self._forget_parents()
        for name, atime, mtime in reversed(self.dirs):
            try:
                fd = self._open_in_root(name, os.O_NOFOLLOW)
            except OSError:
                continue  # replaced by a later entry of the layer
            try:
                os.utime(fd, ns=(atime, mtime))
            finally:
                os.close(fd)


def apply_layer(raw: RawReader, root: str, *, lowers: Sequence[str] = (), expected_diff_id: str = "",
                allow_devices: bool = False) -> ApplyResult:
    """Extract the layer read from ``raw`` (tar, maybe gzip) into ``root``; blocking.

    ``lowers`` are the parent layers' directories, nearest first: parents missing from the tar
    are created with their attributes. Raises ``UnsafeArchive`` for escaping entries,
    ``InvalidArgument`` for malformed input and ``DigestMismatch`` if the tar's sha256 is not
    ``expected_diff_id``.
    """
    reader = LayerReader(raw)
    applier = _Applier(root, lowers, allow_devices)
    try:
        applier.run(reader)
    finally:
        applier.close()
    reader.drain()  # the diffID covers the end-of-archive blocks and padding too
    if expected_diff_id and reader.digest != expected_diff_id:
        raise DigestMismatch(f"invalid diffID: expected {_q(expected_diff_id)}, got {_q(reader.digest)}")
    return ApplyResult(diff_id=reader.digest, size=reader.size, entries=applier.entries)
