"""Progress of long operations (pull, push) as an async stream of Docker-style lines.

The work runs in a task and reports through a :class:`ProgressChannel`; :func:`run_with_progress`
turns that into an async iterator of progress lines ending with the operation's result (or its
error). Byte counts (``Downloading``, ``Extracting``, ``Pushing``) are throttled at the source to
one line per layer per 100 ms, as moby's progress reader does, and coalesced in the channel: a
count not yet read is replaced by a newer one, so a slow reader makes nothing pile up.

If the reader goes away (the iterator is closed or its task cancelled), the work is cancelled
and waited for, so its rollback has finished when the iterator is closed.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncGenerator, Callable, Coroutine
from typing import Any, TypeVar

from snapshotter.api import Progress
from snapshotter.streams import uncancellable

T = TypeVar("T")

INTERVAL = 0.1
BYTE_STATUSES = frozenset({"Downloading", "Extracting", "Pushing"})


def short_id(digest: str) -> str:
    """Docker's progress id of a layer: 12 hex digits of a digest."""
    return digest.removeprefix("sha256:")[:12]


class ProgressChannel:
    def __init__(self) -> None:
        self._items: collections.deque[list[Progress]] = collections.deque()
        self._counts: dict[str, list[Progress]] = {}  # id → its byte-count line still queued
        self._ready = asyncio.Event()
        self._closed = False

    def put(self, line: Progress) -> None:
        if self._closed:
            return
        if line.status in BYTE_STATUSES:
            cell = self._counts.get(line.id)
            if cell is not None and cell[0].status == line.status:
                cell[0] = line
                return
            cell = [line]
            self._counts[line.id] = cell
        else:
            self._counts.pop(line.id, None)  # later counts must queue after this line
            cell = [line]
        self._items.append(cell)
        self._ready.set()

    def close(self) -> None:
        self._closed = True
        self._ready.set()

    async def get(self) -> Progress | None:
        """The next line; None once closed and drained."""
        while not self._items:
            if self._closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        cell = self._items.popleft()
        if self._counts.get(cell[0].id) is cell:
            del self._counts[cell[0].id]
        return cell[0]


class Throttle:
    """Byte counts of one layer and status, at most one line per ``INTERVAL`` (and the last)."""

    def __init__(self, emit: Callable[[Progress], None], id: str, status: str, total: int) -> None:
        self._emit = emit
        self._id = id
        self._status = status
        self._total = total
        self._last = 0.0
        self._sent = -1

    def update(self, current: int) -> None:
        now = time.monotonic()
        if now - self._last >= INTERVAL or (self._total > 0 and current >= self._total):
            self._last = now
            self._sent = current
            self._emit(Progress(self._id, self._status, current, self._total))

    def finish(self, current: int) -> None:
        """The final count, unless it was the last line sent."""
        if self._sent != current:
            self._sent = current
            self._emit(Progress(self._id, self._status, current, self._total))


async def run_with_progress(
        work: Callable[[ProgressChannel], Coroutine[Any, Any, T]]) -> AsyncGenerator[Progress | T, None]:
    """Run ``work`` in a task; yield its progress lines, then its result."""
    channel = ProgressChannel()
    task = asyncio.ensure_future(work(channel))
    task.add_done_callback(lambda _: channel.close())
    try:
        while (line := await channel.get()) is not None:
            yield line
        yield task.result()
    finally:
        if not task.done():
            task.cancel()
            await uncancellable(asyncio.wait({task}))
        if not task.cancelled():
            task.exception()  # retrieved: raised above, or the reader left before the end
