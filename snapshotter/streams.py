"""Moving bytes between asyncio and the worker threads that do tar and disk work.

The tar reader and the layer applier are synchronous (``tarfile`` wants a file object) and must
not run on the event loop, while bytes arrive as async iterators (gRPC streams, the content
store). :class:`ThreadReader` is the bridge: a blocking file object, used from a worker thread,
that pulls chunks from an async iterator on the loop. :func:`run_blocking` runs such work and,
if the caller is cancelled, aborts the reader and waits for the thread to stop, so nobody
deletes a directory a thread is still writing into.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from protos.errors import Unavailable

T = TypeVar("T")

CHUNK = 1 << 20  # gRPC messages and disk reads: ~1 MiB


class Aborted(Unavailable):
    """The operation feeding a worker thread was cancelled."""


class ThreadReader:
    """A blocking ``read(n)`` over an async iterator of bytes, for use from one worker thread."""

    def __init__(self, chunks: AsyncIterator[bytes], loop: asyncio.AbstractEventLoop) -> None:
        self._chunks = chunks
        self._loop = loop
        self._buf = b""
        self._pos = 0
        self._eof = False
        self._aborted = False
        self._pending: concurrent.futures.Future[bytes | None] | None = None

    def abort(self) -> None:
        """Called on the loop: make the thread's current and next reads fail."""
        self._aborted = True
        if self._pending is not None:
            self._pending.cancel()

    async def _next(self) -> bytes | None:
        try:
            return await anext(self._chunks)
        except StopAsyncIteration:
            return None

    def _fill(self) -> bool:
        while not self._eof:
            if self._aborted:
                raise Aborted("operation cancelled")
            self._pending = asyncio.run_coroutine_threadsafe(self._next(), self._loop)
            try:
                chunk = self._pending.result()
            except concurrent.futures.CancelledError:
                raise Aborted("operation cancelled") from None
            finally:
                self._pending = None
            if chunk is None:
                self._eof = True
            elif chunk:
                self._buf, self._pos = chunk, 0
                return True
        return False

    def read(self, n: int = -1) -> bytes:
        if self._pos >= len(self._buf) and not self._fill():
            return b""
        if n < 0:
            parts = [self._buf[self._pos:]]
            self._pos = len(self._buf)
            while self._fill():
                parts.append(self._buf)
                self._pos = len(self._buf)
            return b"".join(parts)
        # Slice only what is asked for: tarfile reads 512-byte headers out of 1 MiB chunks.
        out = self._buf[self._pos:self._pos + n]
        self._pos += len(out)
        return out


class _End:
    def __init__(self, error: BaseException | None) -> None:
        self.error = error


async def thread_output(produce: Callable[[Callable[[bytes], None]], object], *,
                        depth: int = 4) -> AsyncIterator[bytes]:
    """The bytes a blocking ``produce(write)`` writes, from a worker thread, as an async
    iterator. At most ``depth`` chunks wait unread (the thread blocks on ``write``); when the
    consumer stops early, the thread's next ``write`` fails with :class:`Aborted` and the
    iterator waits for the thread to end before it finishes (no thread outlives a mount)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes | _End] = asyncio.Queue()
    room = threading.Semaphore(depth)
    aborted = False

    def write(data: bytes) -> None:
        room.acquire()
        if aborted:
            raise Aborted("operation cancelled")
        loop.call_soon_threadsafe(queue.put_nowait, data)

    def work() -> None:
        try:
            produce(write)
        except BaseException as exc:
            loop.call_soon_threadsafe(queue.put_nowait, _End(exc))
        else:
            loop.call_soon_threadsafe(queue.put_nowait, _End(None))

    task = _keep(asyncio.ensure_future(asyncio.to_thread(work)))
    try:
        while True:
            item = await queue.get()
            if isinstance(item, _End):
                if item.error is not None:
                    raise item.error
                return
            room.release()
            yield item
    finally:
        aborted = True
        for _ in range(depth + 1):
            room.release()
        with contextlib.suppress(BaseException):
            await asyncio.shield(task)


# Strong references to work that must finish after its caller was cancelled (the event loop
# keeps only weak ones).
_finishing: set[asyncio.Future[Any]] = set()


def _keep(task: asyncio.Future[T]) -> asyncio.Future[T]:
    _finishing.add(task)
    task.add_done_callback(_finishing.discard)
    return task


async def run_blocking(fn: Callable[[], T], *, abort: Callable[[], None] = lambda: None,
                       on_cancel: Callable[[T], None] | None = None) -> T:
    """Run ``fn`` in a worker thread. On cancellation call ``abort``, wait for the thread, and
    hand a result that arrived anyway to ``on_cancel`` (to close an fd the caller never got)."""
    task = _keep(asyncio.ensure_future(asyncio.to_thread(fn)))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        abort()
        with contextlib.suppress(BaseException):
            await asyncio.wait({task})
        if on_cancel is not None and task.done() and not task.cancelled() and task.exception() is None:
            on_cancel(task.result())
        raise


async def uncancellable(aw: Awaitable[T]) -> T:
    """Let ``aw`` run to completion even if the caller is cancelled (which is re-raised after):
    for steps that change disk and metadata together and must not stop half-way."""
    task = _keep(asyncio.ensure_future(aw))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(BaseException):
            await asyncio.wait({task})
        raise


def open_file(path: Path | str, flags: int = os.O_RDONLY, mode: int = 0o600) -> Callable[[], int]:
    return functools.partial(os.open, path, flags | os.O_CLOEXEC, mode)


async def file_chunks(path: Path | str, offset: int = 0, size: int = CHUNK) -> AsyncIterator[bytes]:
    """Read a local file in chunks, each read off the loop."""
    fd = await run_blocking(open_file(path), on_cancel=os.close)
    try:
        while True:
            chunk = await run_blocking(functools.partial(os.pread, fd, size, offset))
            if not chunk:
                return
            offset += len(chunk)
            yield chunk
    finally:
        os.close(fd)


async def rechunk(chunks: AsyncIterator[bytes], size: int = CHUNK) -> AsyncIterator[bytes]:
    """Re-cut a byte stream into pieces of about ``size`` (split big ones, merge small ones)."""
    pending: list[bytes] = []
    held = 0
    async for chunk in chunks:
        view = memoryview(chunk)
        while len(view):
            take = view[:size - held]
            pending.append(bytes(take))
            held += len(take)
            view = view[len(take):]
            if held >= size:
                yield b"".join(pending)
                pending, held = [], 0
    if held:
        yield b"".join(pending)


async def iterate_bytes(data: bytes, size: int = CHUNK) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start:start + size]
