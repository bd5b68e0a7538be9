"""The content store: blobs by digest on this host's disk, verified before they become visible.

Layout under ``root``::

    blobs/sha256/<hex>   committed blobs, read-only (0444)
    ingest/              writes in progress, one temp file each
    labels/<hex>         a blob's labels (JSON), deleted with the blob

A write streams into an ingest file while hashing; only when the sha256 (and the size, when
given) match is the file fsynced and renamed into ``blobs``. On a mismatch, a broken stream or
cancellation the temp file is deleted and nothing is stored. Writing a blob that already exists
succeeds without touching it (the bytes are still hashed, so a wrong expectation still fails).

An :class:`Ingest` is that write held open: a pull downloads a layer into it, and the unpacker
:meth:`~Ingest.follow` s the same file while it grows, so a layer is extracted as it arrives and
the downloaded bytes are stored once. Followers read what is written (the page cache hands it
back), wait for more, and end only when the blob is committed — that is, verified — or fail
with the writer's error.

Labels are containerd's content labels (``containerd.io/distribution.source.<registry>=<repos>``
records where a blob can be cross-repository mounted from). They live beside the blob on this
host's disk, so they share its lifetime: whoever deletes the blob deletes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import os
import re
import shutil
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import structlog

from common.bounded import remember
from protos.errors import BerthError, BlobNotFound, DigestMismatch, FailedPrecondition, InvalidArgument, Unavailable
from snapshotter.api import BlobInfo, ContentStore
from snapshotter.streams import CHUNK, open_file, run_blocking, uncancellable

MAX_LABELS_BYTES = 64 * 1024
LABEL_CACHE_ENTRIES = 4096  # a few hundred bytes each

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def check_digest(digest: str) -> str:
    """The hex part of a ``sha256:<hex>`` digest; anything else (and so any path trick) is rejected."""
    if not _DIGEST.fullmatch(digest):
        raise InvalidArgument(f"invalid digest {digest[:80]!r}: want sha256:<64 hex digits>")
    return digest[len("sha256:"):]


class Ingest:
    """One blob being written: hashed as it lands, then committed or aborted; followable.

    Not safe for concurrent writers: one task writes, any number follow."""

    def __init__(self, store: LocalContentStore, tmp: Path, wfd: int, rfd: int, expected: str, size: int,
                 mismatch: str) -> None:
        self._store = store
        self._mismatch = mismatch
        self.path = tmp
        self._wfd = wfd
        self._rfd = rfd
        self.expected = expected
        self.size = size
        self.written = 0
        self.digest = ""  # known once committed
        self._hash = hashlib.sha256()
        self._state = "open"  # → committed | aborted
        self._error: BaseException | None = None
        self._changed = asyncio.Event()
        self._followers = 0

    @property
    def done(self) -> bool:
        return self._state != "open"

    @property
    def digest_so_far(self) -> str:
        """The sha256 of what was written until now (the blob's digest once the input ended)."""
        return "sha256:" + self._hash.copy().hexdigest()

    def _mismatched(self, detail: str) -> DigestMismatch:
        return DigestMismatch(self._mismatch or detail)

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def write(self, chunk: bytes) -> None:
        if self._state != "open":
            raise FailedPrecondition(f"ingest of {self.expected or 'a blob'} is already {self._state}")
        if self.size >= 0 and self.written + len(chunk) > self.size:
            error = self._mismatched(f"unexpected commit size {self.written + len(chunk)}, expected {self.size}")
            await self.abort(error)
            raise error
        try:
            # run_blocking waits for the thread even when cancelled: the fd stays ours until closed.
            await run_blocking(functools.partial(_write_all, self._wfd, chunk, self._hash))
        except BaseException as exc:
            await self.abort(exc)  # bytes may be half-written: this ingest cannot go on
            raise
        self.written += len(chunk)
        self._wake()

    async def commit(self) -> BlobInfo:
        """Verify digest and size, then make the blob visible. On a mismatch nothing is stored."""
        if self._state != "open":
            raise FailedPrecondition(f"ingest of {self.expected or 'a blob'} is already {self._state}")
        digest = "sha256:" + self._hash.hexdigest()
        try:
            try:
                self._store._verify(self.expected, digest, self.size, self.written)
            except DigestMismatch as exc:
                raise self._mismatched(exc.message) from None
            await uncancellable(run_blocking(functools.partial(self._store._commit, self._wfd, self.path, digest)))
        except BaseException as exc:
            await self.abort(exc)
            raise
        self._state = "committed"
        self.digest = digest
        await uncancellable(run_blocking(functools.partial(os.close, self._wfd)))
        self._release_reader()
        self._wake()
        self._store._log.debug("blob_written", digest=digest, size=self.written)
        return BlobInfo(digest=digest, size=self.written)

    async def abort(self, error: BaseException | None = None) -> None:
        """Delete what was written; followers fail with ``error`` (idempotent)."""
        if self._state != "open":
            return
        self._state = "aborted"
        self._error = error
        await uncancellable(run_blocking(functools.partial(_close, self._wfd, self.path)))
        self._release_reader()
        self._wake()

    def _release_reader(self) -> None:
        if self._followers == 0 and self._rfd >= 0 and self._state != "open":
            os.close(self._rfd)
            self._rfd = -1

    def _failure(self) -> BaseException:
        err = self._error
        if isinstance(err, BerthError):
            return type(err)(err.message)  # each follower raises its own instance
        if isinstance(err, asyncio.CancelledError) or err is None:
            return Unavailable(f"download of {self.expected or 'a blob'} was cancelled")
        return Unavailable(f"writing {self.expected or 'a blob'} failed: {err}")

    async def follow(self, offset: int = 0) -> AsyncIterator[bytes]:
        """The blob's bytes from ``offset``, as they are written; ends once the blob is committed,
        raises the writer's error if it is aborted."""
        if self._rfd < 0:  # finished before this follower started reading
            if self._state == "aborted":
                raise self._failure()
            async for chunk in self._store.read(self.digest, offset):
                yield chunk
            return
        self._followers += 1
        try:
            position = offset
            while True:
                if position < self.written:
                    want = min(CHUNK, self.written - position)
                    chunk = await run_blocking(functools.partial(os.pread, self._rfd, want, position))
                    if not chunk:
                        raise Unavailable(f"ingest file of {self.expected or 'a blob'} shrank")
                    position += len(chunk)
                    yield chunk
                elif self._state == "committed":
                    return
                elif self._state == "aborted":
                    raise self._failure()
                else:
                    await self._changed.wait()
        finally:
            self._followers -= 1
            self._release_reader()


class LocalContentStore:
    """The ``ContentStore`` of one host. Build it with :meth:`open`."""

    def __init__(self, *, root: Path) -> None:
        self._root = Path(root)
        self._blobs = self._root / "blobs" / "sha256"
        self._ingest = self._root / "ingest"
        self._labels = self._root / "labels"
        self._labels_lock = asyncio.Lock()
        # Labels as last read or written, by digest. This process owns the store (blobs and their
        # labels go only through it), so an entry is true until delete() drops it.
        self._label_cache: dict[str, dict[str, str]] = {}
        self._deletions = 0  # what was read before a deletion is not cached after it
        self._log = structlog.get_logger().bind(component="content")

    @classmethod
    async def open(cls, *, root: Path) -> LocalContentStore:
        store = cls(root=root)

        def init() -> None:
            store._root.mkdir(mode=0o700, parents=True, exist_ok=True)
            store._blobs.mkdir(mode=0o700, parents=True, exist_ok=True)
            store._ingest.mkdir(mode=0o700, exist_ok=True)
            store._labels.mkdir(mode=0o700, exist_ok=True)

        await asyncio.to_thread(init)
        return store

    def path(self, digest: str) -> Path:
        return self._blobs / check_digest(digest)

    async def cleanup(self) -> int:
        """Delete ingest files left by a crash, and labels of blobs that are gone (call before
        serving)."""
        def sweep() -> int:
            names = os.listdir(self._ingest)
            for name in names:
                target = self._ingest / name
                if target.is_dir():
                    shutil.rmtree(target, ignore_errors=True)
                else:
                    target.unlink(missing_ok=True)
            for name in os.listdir(self._labels):
                if "." in name or not (self._blobs / name).exists():  # a torn update, or an orphan
                    (self._labels / name).unlink(missing_ok=True)
            return len(names)

        return await asyncio.to_thread(sweep)

    async def info(self, digest: str) -> BlobInfo:
        path = self.path(digest)
        try:
            st = await asyncio.to_thread(os.stat, path)
        except FileNotFoundError:
            raise BlobNotFound(f"content digest {digest}: not found") from None
        return BlobInfo(digest=digest, size=st.st_size)

    async def read(self, digest: str, offset: int = 0) -> AsyncIterator[bytes]:
        path = self.path(digest)
        try:
            fd = await run_blocking(open_file(path), on_cancel=os.close)
        except FileNotFoundError:
            raise BlobNotFound(f"content digest {digest}: not found") from None
        try:
            size = os.fstat(fd).st_size
            if offset < 0 or offset > size:
                raise InvalidArgument(f"offset {offset} outside blob {digest} of {size} bytes")
            while True:
                chunk = await run_blocking(functools.partial(os.pread, fd, CHUNK, offset))
                if not chunk:
                    return
                offset += len(chunk)
                yield chunk
        finally:
            os.close(fd)

    async def write(self, chunks: AsyncIterator[bytes], expected: str = "", size: int = -1) -> BlobInfo:
        if expected:
            check_digest(expected)
        exists = bool(expected) and await asyncio.to_thread(self.path(expected).exists)
        if exists:
            # Already stored: hash the stream to honour the contract, but write nothing.
            digest, total = await self._hash(chunks, size)
            self._verify(expected, digest, size, total)
            return BlobInfo(digest=expected, size=total)
        ingest = await self.ingest(expected, size)
        try:
            async for chunk in chunks:
                await ingest.write(chunk)
            return await ingest.commit()
        finally:
            await ingest.abort()  # no-op once committed

    async def ingest(self, expected: str = "", size: int = -1, *, mismatch: str = "") -> Ingest:
        """Open a write of one blob (``expected`` digest and ``size`` checked at commit);
        ``mismatch`` is the message of the ``DigestMismatch`` when they do not match."""
        if expected:
            check_digest(expected)
        tmp = self._ingest / f"{os.getpid()}-{os.urandom(8).hex()}"

        def open_both() -> tuple[int, int]:
            wfd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                return wfd, os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
            except BaseException:
                _close(wfd, tmp)
                raise

        def undo(fds: tuple[int, int]) -> None:
            os.close(fds[1])
            _close(fds[0], tmp)

        wfd, rfd = await run_blocking(open_both, on_cancel=undo)
        return Ingest(self, tmp, wfd, rfd, expected, size, mismatch)

    async def delete(self, digest: str) -> None:
        path = self.path(digest)
        self._label_cache.pop(digest, None)
        self._deletions += 1
        try:
            await asyncio.to_thread(os.unlink, path)
        except FileNotFoundError:
            raise BlobNotFound(f"content digest {digest}: not found") from None
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(os.unlink, self._labels / check_digest(digest))
        self._log.info("blob_deleted", digest=digest)

    # labels
    async def labels(self, digest: str) -> dict[str, str]:
        """The labels of a stored blob (``BlobNotFound`` if it is not stored)."""
        cached = self._label_cache.get(digest)
        if cached is not None:
            return dict(cached)
        blob, target = self.path(digest), self._labels / check_digest(digest)
        deletions = self._deletions

        def read() -> bytes | None:
            try:
                return target.read_bytes()
            except FileNotFoundError:
                pass
            os.stat(blob)  # no labels: is there a blob at all?
            return None

        try:
            raw = await asyncio.to_thread(read)
        except FileNotFoundError:
            raise BlobNotFound(f"content digest {digest}: not found") from None
        labels = _parse_labels(raw) if raw is not None else {}
        self._remember_labels(digest, labels, deletions)
        return dict(labels)

    async def update_labels(self, digest: str, changes: Mapping[str, str]) -> dict[str, str]:
        """Set labels of a stored blob (an empty value removes the label); returns them all.
        Nothing is written when they are already so."""
        async with self._labels_lock:  # read-modify-write; this process owns the store
            before = await self.labels(digest)
            labels = dict(before)
            for key, value in changes.items():
                if value:
                    labels[key] = value
                else:
                    labels.pop(key, None)
            if labels == before:
                return labels
            data = json.dumps(labels, sort_keys=True).encode()
            if len(data) > MAX_LABELS_BYTES:
                raise InvalidArgument(f"labels of {digest} exceed {MAX_LABELS_BYTES} bytes")
            target = self._labels / check_digest(digest)
            self._label_cache.pop(digest, None)  # unknown until the write is done
            deletions = self._deletions
            await uncancellable(asyncio.to_thread(_write_atomic, target, data))
            self._remember_labels(digest, labels, deletions)
        return dict(labels)

    def _remember_labels(self, digest: str, labels: dict[str, str], deletions: int) -> None:
        if deletions != self._deletions:
            return
        remember(self._label_cache, digest, dict(labels), LABEL_CACHE_ENTRIES)

    async def list(self) -> AsyncIterator[BlobInfo]:
        def scan() -> list[BlobInfo]:
            found = []
            with os.scandir(self._blobs) as entries:
                for entry in entries:
                    if _DIGEST.fullmatch("sha256:" + entry.name):
                        try:
                            found.append(BlobInfo("sha256:" + entry.name, entry.stat().st_size))
                        except FileNotFoundError:
                            continue  # deleted meanwhile
            return sorted(found, key=lambda b: b.digest)

        for blob in await asyncio.to_thread(scan):
            yield blob

    # helpers
    @staticmethod
    def _verify(expected: str, digest: str, size: int, total: int) -> None:
        if size >= 0 and total != size:
            raise DigestMismatch(f"unexpected commit size {total}, expected {size}")
        if expected and digest != expected:
            raise DigestMismatch(f"unexpected commit digest {digest}, expected {expected}")

    @staticmethod
    async def _hash(chunks: AsyncIterator[bytes], size: int) -> tuple[str, int]:
        h = hashlib.sha256()
        total = 0
        async for chunk in chunks:
            total += len(chunk)
            if size >= 0 and total > size:
                raise DigestMismatch(f"unexpected commit size {total}, expected {size}")
            await asyncio.to_thread(h.update, chunk)
        return "sha256:" + h.hexdigest(), total

    def _commit(self, fd: int, tmp: Path, digest: str) -> None:
        os.fsync(fd)
        os.fchmod(fd, 0o444)
        # rename is atomic; a concurrent writer of the same digest renames identical bytes.
        os.rename(tmp, self._blobs / digest[len("sha256:"):])
        dir_fd = os.open(self._blobs, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _write_all(fd: int, data: bytes, h: Any) -> None:
    h.update(data)
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _close(fd: int, unlink: Path | None) -> None:
    os.close(fd)
    if unlink is not None:
        unlink.unlink(missing_ok=True)


def _parse_labels(raw: bytes) -> dict[str, str]:
    try:
        doc = json.loads(raw)
    except ValueError:
        return {}  # a torn file of an older crash: labels are hints, start over
    return {str(k): str(v) for k, v in doc.items()} if isinstance(doc, dict) else {}


def _write_atomic(target: Path, data: bytes) -> None:
    tmp = target.with_name(f"{target.name}.{os.urandom(4).hex()}")
    try:
        tmp.write_bytes(data)
        os.rename(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class IngestingStore(ContentStore, Protocol):
    """A content store on this host's disk: writes that can be followed while they grow, and
    labels (what :class:`~snapshotter.images.LocalImages` needs beyond ``ContentStore``)."""

    async def ingest(self, expected: str = "", size: int = -1, *, mismatch: str = "") -> Ingest:
        ...

    async def labels(self, digest: str) -> dict[str, str]:
        ...

    async def update_labels(self, digest: str, changes: Mapping[str, str]) -> dict[str, str]:
        ...
