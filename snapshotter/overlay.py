"""The overlayfs snapshotter: containerd's overlay plugin with its metadata in Redis.

Layout under ``root`` (0700, so unprivileged users cannot reach setuid files in layers)::

    snapshots/<id>/fs     the snapshot's own layer: overlay upperdir, or a lowerdir once committed
    snapshots/<id>/work   overlay workdir, active snapshots only

Creation is crash-safe: the directory is built as ``snapshots/new-XXXX`` and renamed to its id
*before* the metadata record exists, so a record never points at a missing or half-made
directory; a crash in between leaves an orphan directory that :meth:`cleanup` deletes. Removal
drops the record first, then renames the directory to ``rm-<id>`` and deletes it.

The snapshotter mounts nothing. Mounts are returned as containerd returns them, and overlay is
always given ``index=off`` (when the kernel has the parameter: index=on ties upper/work dirs to
one mount and records file handles of lower layers) and ``redirect_dir=off``/``metacopy=off``,
so an upper directory is always a self-contained change set that commit and diff can read.
"""

from __future__ import annotations

import asyncio
import builtins
import errno
import os
import shutil
import stat
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path

import redis.asyncio as aioredis
import structlog

from common.keys import Keys
from common.mounts import Mount
from protos.errors import AlreadyExists, FailedPrecondition, InvalidArgument, SnapshotNotFound
from snapshotter import diff
from snapshotter.api import Change, Info, Kind, Usage
from snapshotter.metadata import MetaStore, SnapshotRecord, labels_json, validate_key
from snapshotter.streams import uncancellable

OVERLAY_PARAMETERS = Path("/sys/module/overlay/parameters")


def overlay_options(parameters: Path = OVERLAY_PARAMETERS) -> tuple[str, ...]:
    """Options every overlay mount gets; each only if this kernel knows it (else mount fails)."""
    wanted = (("index", "index=off"), ("redirect_dir", "redirect_dir=off"), ("metacopy", "metacopy=off"))
    return tuple(option for param, option in wanted if (parameters / param).exists())


def disk_usage(path: str) -> Usage:
    """Blocks and inodes under ``path`` (hard links counted once), never following symlinks."""
    seen: set[tuple[int, int]] = set()
    size = inodes = 0
    stack = [path]
    root = os.lstat(path)
    seen.add((root.st_dev, root.st_ino))
    size, inodes = root.st_blocks * 512, 1
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                st = entry.stat(follow_symlinks=False)
                if (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    size += st.st_blocks * 512
                    inodes += 1
                if stat.S_ISDIR(st.st_mode):
                    stack.append(entry.path)
    return Usage(size=size, inodes=inodes)


def _owner(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_uid, st.st_gid


def _rmtree(path: Path) -> None:
    """Delete a tree; tolerate parts a concurrent remover or cleanup already deleted."""
    def onerror(_fn: object, _path: str, info: tuple[type[BaseException], BaseException, object]) -> None:
        if not isinstance(info[1], FileNotFoundError):
            raise info[1]

    shutil.rmtree(path, onerror=onerror)


class OverlaySnapshotter:
    """containerd-style snapshots on overlayfs; metadata in Redis under this node's keys.

    Build it with :meth:`open`. Safe for concurrent use by many tasks of one process; one
    process per ``root`` (directory ids in flight are tracked in memory for :meth:`cleanup`).
    """

    def __init__(self, *, root: Path, meta: MetaStore, mount_options: Sequence[str], node: str = "") -> None:
        self._root = root
        self._snapshots = root / "snapshots"
        self._meta = meta
        self._options = tuple(mount_options)
        self._inflight: set[str] = set()
        self._emptying: set[asyncio.Task[None]] = set()  # directories of removed snapshots
        self._log = structlog.get_logger().bind(component="snapshots", node=node)

    @classmethod
    async def open(cls, *, root: Path, redis: aioredis.Redis, keys: Keys, node: str,
                   mount_options: Sequence[str] | None = None) -> OverlaySnapshotter:
        """Create the directory layout (root 0700) and probe overlay's options."""
        root = Path(root)
        if not root.is_absolute() or any(c in str(root) for c in ":,\n"):
            # Paths go into mount(2) option strings, where ':' and ',' are separators.
            raise InvalidArgument(f"snapshotter root must be an absolute path without ':' or ',': {root}")

        def init() -> tuple[str, ...]:
            root.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(root, 0o700)
            (root / "snapshots").mkdir(mode=0o700, exist_ok=True)
            return overlay_options() if mount_options is None else tuple(mount_options)

        options = await asyncio.to_thread(init)
        return cls(root=root, meta=MetaStore(redis=redis, keys=keys, node=node), mount_options=options,
                   node=node)

    # paths
    def _dir(self, id: str) -> Path:
        return self._snapshots / id

    def _fs(self, id: str) -> str:
        return str(self._snapshots / id / "fs")

    def _work(self, id: str) -> str:
        return str(self._snapshots / id / "work")

    def _mounts(self, rec: SnapshotRecord) -> list[Mount]:
        if not rec.chain:
            return [Mount("bind", self._fs(rec.id), ("ro" if rec.kind is Kind.VIEW else "rw", "rbind"))]
        if rec.kind is Kind.VIEW and len(rec.chain) == 1:
            return [Mount("bind", self._fs(rec.chain[0]), ("ro", "rbind"))]
        options = list(self._options)
        if rec.kind is Kind.ACTIVE:
            options += [f"workdir={self._work(rec.id)}", f"upperdir={self._fs(rec.id)}"]
        options.append("lowerdir=" + ":".join(self._fs(i) for i in rec.chain))
        return [Mount("overlay", "overlay", tuple(options))]

    # creation
    def _make_dir(self, id: str, kind: Kind, owner: tuple[int, int] | None) -> None:
        tmp = Path(tempfile.mkdtemp(prefix="new-", dir=self._snapshots))
        try:
            fs = tmp / "fs"
            fs.mkdir(mode=0o755)
            os.chmod(fs, 0o755)  # regardless of umask
            if kind is Kind.ACTIVE:
                (tmp / "work").mkdir(mode=0o711)
            if owner is not None and owner != (0, 0):
                # A remapped (userns) rootfs stays consistent: the new upper root is owned like
                # the parent's root directory.
                os.lchown(fs, *owner)
            os.rename(tmp, self._dir(id))
        except BaseException:
            _rmtree(tmp)
            raise

    def _remove_dir_now(self, id: str) -> None:
        doomed = self._set_aside(id)
        if doomed is not None:
            _rmtree(doomed)

    def _set_aside(self, id: str) -> Path | None:
        """Move a snapshot's directory out of the way (``rm-<id>``, which cleanup() finds after a
        crash); None if it is gone already."""
        doomed = self._snapshots / f"rm-{id}"
        try:
            os.rename(self._dir(id), doomed)
        except FileNotFoundError:
            return None
        return doomed

    async def _create(self, kind: Kind, key: str, parent: str, labels: Mapping[str, str] | None) -> list[Mount]:
        validate_key(key)
        if parent:
            validate_key(parent, "parent")
        stored_labels = labels_json(labels)
        # Cheap early answers; the create script re-checks everything atomically.
        if await self._meta.exists(key):
            raise AlreadyExists(f"snapshot {key}: already exists")
        owner = None
        if parent:
            try:
                parent_rec = await self._meta.get(parent)
            except SnapshotNotFound:
                raise SnapshotNotFound(f"parent snapshot {parent} does not exist") from None
            # Only a hint: if the parent goes away meanwhile, the create script says so.
            owner = await asyncio.to_thread(_owner, self._fs(parent_rec.id))
        for _ in range(3):
            id = await self._meta.next_id()
            self._inflight.add(id)
            try:
                # Directory and record are made together or not at all, even if we are cancelled.
                rec = await uncancellable(self._materialize(id, key, kind, parent, stored_labels, owner))
            finally:
                self._inflight.discard(id)
            if rec is None:
                continue  # a stale directory of a lost id: take the next one
            self._log.info(f"snapshot_{'viewed' if kind is Kind.VIEW else 'prepared'}", key=key,
                           parent=parent, id=id)
            return self._mounts(rec)
        raise FailedPrecondition(f"no free snapshot directory under {self._snapshots}")

    async def _materialize(self, id: str, key: str, kind: Kind, parent: str, labels: str,
                           owner: tuple[int, int] | None) -> SnapshotRecord | None:
        try:
            await asyncio.to_thread(self._make_dir, id, kind, owner)
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                return None
            raise
        try:
            return await self._meta.create(key, id=id, kind=kind, parent=parent, labels=labels)
        except BaseException:
            await asyncio.to_thread(self._remove_dir_now, id)
            raise

    async def prepare(self, key: str, parent: str = "", labels: Mapping[str, str] | None = None) -> list[Mount]:
        return await self._create(Kind.ACTIVE, key, parent, labels)

    async def view(self, key: str, parent: str = "", labels: Mapping[str, str] | None = None) -> list[Mount]:
        return await self._create(Kind.VIEW, key, parent, labels)

    async def mounts(self, key: str) -> list[Mount]:
        rec = await self._meta.get(key)
        if rec.kind is Kind.COMMITTED:
            raise FailedPrecondition(f"snapshot {key} is committed: only active snapshots and views have mounts")
        return self._mounts(rec)

    async def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None) -> None:
        validate_key(name, "name")
        stored_labels = labels_json(labels)
        rec = await self._meta.get(key)
        if rec.kind is not Kind.ACTIVE:
            raise FailedPrecondition(f"snapshot {key} is not active ({rec.kind})")
        if await self._meta.exists(name):
            raise AlreadyExists(f"snapshot {name}: already exists")
        usage = await asyncio.to_thread(disk_usage, self._fs(rec.id))
        await self._meta.commit(key, name, labels=stored_labels, size=usage.size, inodes=usage.inodes)
        self._log.info("snapshot_committed", key=key, name=name, id=rec.id, size=usage.size)

    async def remove(self, key: str) -> None:
        rec = await uncancellable(self._remove(key))
        self._log.info("snapshot_removed", key=key, id=rec.id)

    async def _remove(self, key: str) -> SnapshotRecord:
        rec = await self._meta.remove(key)
        # The record is gone, so the key is free at once; a crash before the directory is
        # deleted leaves an orphan for cleanup().
        doomed = await asyncio.to_thread(self._set_aside, rec.id)
        if doomed is not None:  # emptied after the reply: a container's rm need not wait for it
            task = asyncio.get_running_loop().create_task(asyncio.to_thread(self._empty, doomed))
            self._emptying.add(task)
            task.add_done_callback(self._emptying.discard)
        return rec

    def _empty(self, doomed: Path) -> None:
        try:
            _rmtree(doomed)
        except OSError as exc:  # left for cleanup(), which removes rm-* directories
            self._log.warning("snapshot_dir_not_removed", path=str(doomed), error=str(exc))

    async def settle(self) -> None:
        """Wait until the directories of removed snapshots are deleted."""
        while self._emptying:
            await asyncio.wait(set(self._emptying))

    async def stat(self, key: str) -> Info:
        return (await self._meta.get(key)).info()

    async def update(self, key: str, labels: Mapping[str, str]) -> Info:
        return (await self._meta.update_labels(key, labels_json(labels))).info()

    async def usage(self, key: str) -> Usage:
        rec = await self._meta.get(key)
        if rec.kind is Kind.COMMITTED:
            return Usage(size=rec.size, inodes=rec.inodes)
        return await asyncio.to_thread(disk_usage, self._fs(rec.id))

    async def changes(self, key: str) -> builtins.list[Change]:
        rec = await self._meta.get(key)
        if rec.kind is not Kind.ACTIVE:
            raise FailedPrecondition(f"snapshot {key} is not active ({rec.kind}): it has no changes of its own")
        return await asyncio.to_thread(diff.changes, self._fs(rec.id), [self._fs(i) for i in rec.chain])

    async def cleanup(self) -> int:
        # Order matters: list directories, then copy the in-flight set, then read the records.
        # A directory created after the listing is not a candidate; one listed while its create
        # runs is either in flight or already recorded.
        names = await asyncio.to_thread(os.listdir, self._snapshots)
        inflight = set(self._inflight)
        known = await self._meta.ids()
        doomed = [n for n in names if n not in known and n not in inflight
                  and (n.isdigit() or n.startswith(("new-", "rm-")))]
        for name in doomed:
            await asyncio.to_thread(_rmtree, self._snapshots / name)
        if doomed:
            self._log.info("snapshots_cleaned", removed=len(doomed))
        return len(doomed)

    async def list(self, filters: Sequence[str] = ()) -> AsyncIterator[Info]:
        match = parse_filters(filters)
        async for rec in self._meta.walk():
            info = rec.info()
            if match(info):
                yield info


# --- filters (containerd syntax, the part snapshots use) ---------------------------------

def _split_unquoted(text: str, sep: str) -> builtins.list[str]:
    parts: builtins.list[str] = []
    current: builtins.list[str] = []
    quoted = False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == sep and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def _unquote(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return text[1:-1]
    return text


def _field(info: Info, name: str) -> str | None:
    if name == "name":
        return info.name
    if name == "parent":
        return info.parent
    if name == "kind":
        return info.kind.value
    if name.startswith("labels."):
        return info.labels.get(_unquote(name[len("labels."):]))
    raise InvalidArgument(f"unknown snapshot filter field: {name}")


def _clause(text: str) -> Callable[[Info], bool]:
    for op in ("==", "!="):
        if op in text:
            left, _, right = text.partition(op)
            name, value = left.strip(), _unquote(right)
            if not name:
                raise InvalidArgument(f"invalid filter: {text}")
            if name == "kind":
                value = value.lower()
            _field(Info("", "", Kind.ACTIVE, 0, 0), name)  # reject unknown fields up front
            if op == "==":
                return lambda info: _field(info, name) == value
            return lambda info: _field(info, name) != value
    name = text.strip()
    if not name:
        raise InvalidArgument("invalid filter: empty clause")
    _field(Info("", "", Kind.ACTIVE, 0, 0), name)
    return lambda info: bool(_field(info, name))


def parse_filters(filters: Sequence[str]) -> Callable[[Info], bool]:
    """``filters`` are OR-ed; within one, comma-separated clauses are AND-ed (containerd)."""
    alternatives = [[_clause(c) for c in _split_unquoted(f, ",")] for f in filters if f.strip()]
    if not alternatives:
        return lambda info: True
    return lambda info: any(all(c(info) for c in clauses) for clauses in alternatives)
