"""Docker-shaped events appended to the shared Redis stream by whoever causes them."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

import redis.asyncio as aioredis

from common.keys import Keys

# The stream is capped (approximately, which keeps XADD O(1)).
EVENTS_MAXLEN = 10_000


def event_message(
    type: str, action: str, actor_id: str, attributes: Mapping[str, str] | None = None,
    *, scope: str = "local", time_ns: int | None = None,
) -> dict[str, Any]:
    """One event in Docker's JSON shape (``Type``, ``Action``, ``Actor``, ``scope``, ``time``,
    ``timeNano``, plus the deprecated ``status``/``id``/``from`` for containers and images)."""
    now = time.time_ns() if time_ns is None else time_ns
    attrs = dict(attributes or {})
    message: dict[str, Any] = {}
    if type in ("container", "image"):
        message["status"] = action
        message["id"] = actor_id
        if type == "container" and "image" in attrs:
            message["from"] = attrs["image"]
    message.update({
        "Type": type, "Action": action, "Actor": {"ID": actor_id, "Attributes": attrs},
        "scope": scope, "time": now // 1_000_000_000, "timeNano": now,
    })
    return message


async def append_event(
    redis: aioredis.Redis, keys: Keys, type: str, action: str, actor_id: str,
    attributes: Mapping[str, str] | None = None, *, scope: str = "local",
) -> str:
    """XADD the event; returns its stream id."""
    message = event_message(type, action, actor_id, attributes, scope=scope)
    entry_id = await redis.xadd(keys.events, {"e": json.dumps(message, separators=(",", ":"))},
                                maxlen=EVENTS_MAXLEN, approximate=True)
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
