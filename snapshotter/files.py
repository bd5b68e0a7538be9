"""Files inside a snapshot: ``docker cp`` and ``docker export`` of a stopped container, COPY/ADD
of a build, and ``docker commit`` / a build step's layer.

Reading and writing need the *merged* view (a path may live in any layer, through symlinks of
any layer), so the snapshot is mounted on a private directory for the duration of the call and
unmounted afterwards (lazily, so a reader that is still closing never blocks it). The
``berth-snapshotter`` process runs in a mount namespace of its own (``__main__`` unshares one
before any thread exists, with the host's mounts as slaves), so these mounts are invisible to
the host and die with the process; an in-process user (a test) mounts in its own namespace and
the mounts are always removed.

Inside the mount every path is resolved with ``openat2(RESOLVE_IN_ROOT)`` (:mod:`common.fstree`):
``..`` and symlinks of the image cannot lead out, and nothing looks up user names. Active
snapshots are mounted read-only for reading (their upper directory as the top lower layer: no
workdir is touched) and read-write, with their own upper and work directories, for writing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import stat
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import structlog

from common import fstree, mounts
from common.decompress import DecompressError, PlainReader
from common.mounts import Mount
from protos.errors import FailedPrecondition, InvalidArgument, NotFound
from snapshotter.api import Info, Kind, PathStat, Snapshotter
from snapshotter.archive import classified
from snapshotter.streams import ThreadReader, run_blocking, thread_output

log = structlog.get_logger()


def read_only(specs: Sequence[Mount]) -> list[Mount]:
    """The mounts of a snapshot, made read-only without touching its workdir: an overlay's
    upper directory becomes its top lower layer (overlay reads whiteouts and opaque directories
    in lower layers too); a bind becomes a read-only bind."""
    out = []
    for m in specs:
        if m.type == "overlay":
            options = [o for o in m.options if not o.startswith(("upperdir=", "workdir=", "lowerdir="))
                       and o not in ("rw", "ro")]
            opts = dict(o.partition("=")[::2] for o in m.options)
            lowers = [d for d in (opts.get("upperdir", ""), opts.get("lowerdir", "")) if d]
            out.append(Mount("overlay", m.source, (*options, "ro", "lowerdir=" + ":".join(lowers))))
        elif m.type == "bind":
            out.append(Mount("bind", m.source, ("ro", "rbind")))
        else:
            out.append(m)
    return out


class MountDir:
    """Where snapshots are mounted for file operations: ``<dir>/<random>``, one per call."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def create(self) -> None:
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)

    def cleanup(self) -> int:
        """Remove directories a crash left (their mounts died with that process's namespace)."""
        removed = 0
        if not self.path.exists():
            return 0
        for entry in self.path.iterdir():
            with contextlib.suppress(OSError):
                mounts.unmount(str(entry), lazy=True)
            with contextlib.suppress(OSError):
                entry.rmdir()
                removed += 1
        return removed

    @contextlib.contextmanager
    def mounted(self, specs: Sequence[Mount]) -> Iterator[int]:
        """Mount ``specs`` on a fresh directory; yields an fd of its root. Blocking."""
        self.create()
        target = self.path / secrets.token_hex(8)
        target.mkdir(mode=0o700)
        try:
            mounts.mount_all(specs, str(target))
            try:
                fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                try:
                    yield fd
                finally:
                    os.close(fd)
            finally:
                mounts.unmount(str(target), lazy=True)
        finally:
            with contextlib.suppress(OSError):
                target.rmdir()


async def _specs(snapshots: Snapshotter, key: str, *, writable: bool) -> tuple[Info, list[Mount]]:
    info = await snapshots.stat(key)
    if info.kind is Kind.COMMITTED:
        raise FailedPrecondition(f"snapshot {key} is committed: only active snapshots and views have files")
    specs = await snapshots.mounts(key)
    if writable:
        if info.kind is not Kind.ACTIVE:
            raise FailedPrecondition(f"snapshot {key} is a view: it cannot be written")
        return info, specs
    return info, read_only(specs)


def _stat(root_fd: int, path: str) -> PathStat:
    st = fstree.path_stat(root_fd, path)
    return PathStat(name=st.name, size=st.size, mode=st.mode, mtime=st.mtime, link_target=st.link_target)


async def stat_path(mount_dir: MountDir, snapshots: Snapshotter, key: str, path: str) -> PathStat:
    _, specs = await _specs(snapshots, key, writable=False)

    def work() -> PathStat:
        with mount_dir.mounted(specs) as root, classified():
            return _stat(root, path)

    return await run_blocking(work)


async def read_tar(mount_dir: MountDir, snapshots: Snapshotter, key: str, path: str) -> AsyncIterator[bytes]:
    """moby's ``containerArchivePath`` (:func:`common.fstree.write_path`)."""
    _, specs = await _specs(snapshots, key, writable=False)

    def produce(write: fstree.Sink) -> None:
        with mount_dir.mounted(specs) as root, classified():
            fstree.write_path(root, path, write)

    async for chunk in thread_output(produce):
        yield chunk


async def apply_tar(mount_dir: MountDir, snapshots: Snapshotter, key: str, chunks: AsyncIterator[bytes],
                    dest: str, *, no_overwrite_dir_non_dir: bool, owner: tuple[int, int] | None) -> None:
    """moby's ``containerExtractToDir``: ``dest`` is resolved with every symlink followed (also
    the last: extracting "to a symlink" lands in the directory it names) and must be a
    directory; the stream may be gzip, bzip2 or xz compressed (decompressed here)."""
    _, specs = await _specs(snapshots, key, writable=True)
    reader = ThreadReader(chunks, asyncio.get_running_loop())

    def work() -> None:
        try:
            plain = PlainReader(reader)
        except DecompressError as exc:
            raise InvalidArgument(str(exc)) from None
        with mount_dir.mounted(specs) as root, classified():
            resolved = fstree.follow_in_scope(root, dest)
            try:
                fd = fstree.open_in_root(root, resolved, os.O_PATH, follow=True)
            except FileNotFoundError:
                raise NotFound(f"lstat {dest}: no such file or directory") from None
            try:
                if not stat.S_ISDIR(os.fstat(fd).st_mode):
                    raise InvalidArgument("extraction point is not a directory")
            finally:
                os.close(fd)
            try:
                fstree.extract(plain, root, fstree.ExtractOptions(
                    layer=False, allow_devices=True, dest=resolved, owner=owner,
                    no_overwrite_dir_non_dir=no_overwrite_dir_non_dir))
            except DecompressError as exc:
                raise InvalidArgument(str(exc)) from None

    await run_blocking(work, abort=reader.abort)
