"""The event stream as the API server sees it: one follower of the Redis stream per process,
fanning events out to in-process subscribers (``docker events``, ``wait``, auto-remove).

Subscribers register *before* they look at current state, so nothing falls between the look and
the first delivered event (writers update state before they append the event).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.asyncio as aioredis
import structlog

from common.keys import Keys, text

log = structlog.get_logger()

_BLOCK_MS = 5_000

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Event:
    stream_id: str
    message: dict[str, Any]

    @property
    def type(self) -> str:
        return str(self.message.get("Type", ""))

    @property
    def action(self) -> str:
        return str(self.message.get("Action", ""))

    @property
    def actor_id(self) -> str:
        return str(self.message.get("Actor", {}).get("ID", ""))

    @property
    def attributes(self) -> dict[str, str]:
        attrs = self.message.get("Actor", {}).get("Attributes", {})
        return attrs if isinstance(attrs, dict) else {}

    @property
    def time_ns(self) -> int:
        return int(self.message.get("timeNano", 0))


def _decode(entry_id: Any, fields: Any) -> Event | None:
    sid = text(entry_id) if isinstance(entry_id, bytes) else entry_id
    raw = fields.get(b"e")
    if raw is None:
        return None
    try:
        return Event(sid, json.loads(raw))
    except json.JSONDecodeError:
        return None


async def until_read(read: Callable[[], Awaitable[T]], failure: str) -> T:
    """``read()`` (a blocking Redis read of a follower), retried every 0.5 s through Redis
    outages (logged as ``failure``); a cancellation that redis-py turned into a connection error
    stays a cancellation."""
    while True:
        try:
            return await read()
        except (aioredis.ConnectionError, aioredis.TimeoutError, OSError) as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise asyncio.CancelledError from exc
            log.warning(failure, error=str(exc))
            await asyncio.sleep(0.5)


def _id_tuple(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


class Subscription:
    def __init__(self, predicate: Callable[[Event], bool] | None) -> None:
        self.predicate = predicate
        self.queue: asyncio.Queue[Event] = asyncio.Queue()

    async def get(self) -> Event:
        return await self.queue.get()

    async def next(self, deadline_ns: int | None = None) -> Event | None:
        """The next event; ``None`` once the wall clock passed ``deadline_ns`` with none queued."""
        if deadline_ns is None or not self.queue.empty():
            return await self.queue.get()
        try:
            return await asyncio.wait_for(self.queue.get(), max(0.0, (deadline_ns - time.time_ns()) / 1e9))
        except TimeoutError:
            return None

    async def __aiter__(self) -> AsyncIterator[Event]:
        while True:
            yield await self.queue.get()


class EventBus:
    """Follows the Redis stream only while someone subscribes: every event would otherwise wake
    this process (three per ``docker exec``) for nobody. ``--rm`` removal does not need it
    (the shim queues those exits, see ``Keys.autoremove_queue``)."""

    def __init__(self, redis: aioredis.Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys
        self._subscribers: set[Subscription] = set()
        self._last_id = "0-0"
        self._follower: asyncio.Task[None] | None = None
        self._positioned = asyncio.Event()

    async def run(self) -> None:
        """Owns the follower for the daemon's lifetime: cancelling this stops it."""
        try:
            await asyncio.Event().wait()
        finally:
            if self._follower is not None:
                self._follower.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._follower

    async def _following(self) -> None:
        """A follower positioned at the end of the stream, started if none runs."""
        if self._follower is None or self._follower.done():
            self._positioned = asyncio.Event()
            self._follower = asyncio.get_running_loop().create_task(self._follow(self._positioned))
        await self._positioned.wait()

    async def _follow(self, positioned: asyncio.Event) -> None:
        """Read new events until nobody listens (checked after each read, and the check and the
        end of this task happen in one step: a subscriber either sees it done or is served)."""
        latest: Any = await until_read(lambda: self._redis.xrevrange(self._keys.events, count=1),
                                       "events_follow_failed")
        self._last_id = text(latest[0][0]) if latest else "0-0"
        positioned.set()
        while self._subscribers:
            batches: Any = await until_read(
                lambda: self._redis.xread({self._keys.events: self._last_id}, block=_BLOCK_MS, count=500),
                "events_follow_failed")
            for _, entries in batches or []:
                for entry_id, fields in entries:
                    self._last_id = text(entry_id)
                    event = _decode(entry_id, fields)
                    if event is not None:
                        self._publish(event)

    def _publish(self, event: Event) -> None:
        for sub in list(self._subscribers):
            if sub.predicate is None or sub.predicate(event):
                sub.queue.put_nowait(event)

    @asynccontextmanager
    async def subscribe(self, predicate: Callable[[Event], bool] | None = None) -> AsyncIterator[Subscription]:
        sub = Subscription(predicate)
        self._subscribers.add(sub)
        try:
            await self._following()
            yield sub
        finally:
            self._subscribers.discard(sub)

    async def history(self, since_ns: int, until_ns: int | None) -> list[Event]:
        """Stored events with ``since_ns <= time``, (``< until_ns``), oldest first."""
        start = f"{since_ns // 1_000_000}-0"
        end = "+" if until_ns is None else f"{until_ns // 1_000_000}"
        out: list[Event] = []
        cursor = start
        while True:
            entries: Any = await self._redis.xrange(self._keys.events, min=cursor, max=end, count=1000)
            for entry_id, fields in entries:
                event = _decode(entry_id, fields)
                if event is None:
                    continue
                if event.time_ns < since_ns or (until_ns is not None and event.time_ns > until_ns):
                    continue
                out.append(event)
            if len(entries) < 1000:
                return out
            ms, seq = _id_tuple(text(entries[-1][0]))
            cursor = f"{ms}-{seq + 1}"
