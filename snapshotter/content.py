"""The content store: blobs by digest on this host's disk, verified before they become visible.

Layout under ``root``::

    blobs/sha256/<hex>   committed blobs, read-only (0444)
    ingest/              writes in progress, one temp file each

A write streams into an ingest file while hashing; only when the sha256 (and the size, when
given) match is the file fsynced and renamed into ``blobs``. On a mismatch, a broken stream or
cancellation the temp file is deleted and nothing is stored. Writing a blob that already exists
succeeds without touching it (the bytes are still hashed, so a wrong expectation still fails).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import structlog

from protos.errors import BlobNotFound, DigestMismatch, InvalidArgument
from snapshotter.api import BlobInfo
from snapshotter.streams import CHUNK, open_file, run_blocking

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def check_digest(digest: str) -> str:
    """The hex part of a ``sha256:<hex>`` digest; anything else (and so any path trick) is rejected."""
    if not _DIGEST.fullmatch(digest):
        raise InvalidArgument(f"invalid digest {digest[:80]!r}: want sha256:<64 hex digits>")
    return digest[len("sha256:"):]


class LocalContentStore:
    """The ``ContentStore`` of one host. Build it with :meth:`open`."""

    def __init__(self, *, root: Path) -> None:
        self._root = Path(root)
        self._blobs = self._root / "blobs" / "sha256"
        self._ingest = self._root / "ingest"
        self._log = structlog.get_logger().bind(component="content")

    @classmethod
    async def open(cls, *, root: Path) -> LocalContentStore:
        store = cls(root=root)

        def init() -> None:
            store._root.mkdir(mode=0o700, parents=True, exist_ok=True)
            store._blobs.mkdir(mode=0o700, parents=True, exist_ok=True)
            store._ingest.mkdir(mode=0o700, exist_ok=True)

        await asyncio.to_thread(init)
        return store

    def path(self, digest: str) -> Path:
        return self._blobs / check_digest(digest)

    async def cleanup(self) -> int:
        """Delete ingest files left by a crash (call before serving)."""
        def sweep() -> int:
            names = os.listdir(self._ingest)
            for name in names:
                target = self._ingest / name
                if target.is_dir():
                    shutil.rmtree(target, ignore_errors=True)
                else:
                    target.unlink(missing_ok=True)
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
        tmp = self._ingest / f"{os.getpid()}-{os.urandom(8).hex()}"
        fd = await run_blocking(open_file(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL),
                                on_cancel=lambda fd: _close(fd, tmp))
        committed = False
        try:
            h = hashlib.sha256()
            total = 0
            async for chunk in chunks:
                total += len(chunk)
                if size >= 0 and total > size:
                    raise DigestMismatch(f"unexpected commit size {total}, expected {size}")
                # run_blocking waits for the thread even when cancelled: fd stays ours until closed.
                await run_blocking(functools.partial(_write_all, fd, chunk, h))
            digest = "sha256:" + h.hexdigest()
            self._verify(expected, digest, size, total)
            await run_blocking(functools.partial(self._commit, fd, tmp, digest))
            committed = True
        finally:
            await run_blocking(functools.partial(_close, fd, None if committed else tmp))
        self._log.debug("blob_written", digest=digest, size=total)
        return BlobInfo(digest=digest, size=total)

    async def delete(self, digest: str) -> None:
        path = self.path(digest)
        try:
            await asyncio.to_thread(os.unlink, path)
        except FileNotFoundError:
            raise BlobNotFound(f"content digest {digest}: not found") from None
        self._log.info("blob_deleted", digest=digest)

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
