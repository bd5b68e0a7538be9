"""``RedisStateSink``: the shim's runtime state and Docker events, written to Redis.

The container hash (``keys.container(id)``) belongs to the apiserver, which creates it; the shim
only sets its ``state`` field, and only while the hash exists (one Lua call, so a container
removed meanwhile is never resurrected by a late write). Transitions become Docker events in the
shared stream: ``start``, ``die`` (``exitCode``, ``execDuration``) and ``oom``, with the actor
attributes dockerd gives them (``name``, ``image`` and the container's labels).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import redis.asyncio as aioredis
import structlog

from common.events import append_event
from common.keys import Keys
from shim.api import ContainerState, EventType, TaskEvent

log = structlog.get_logger()

# Set ``state`` if the hash exists; return its ``config`` ("" when absent), or false if no hash.
_SET_STATE = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  return false
end
redis.call('HSET', KEYS[1], 'state', ARGV[1])
local config = redis.call('HGET', KEYS[1], 'config')
if config then
  return config
end
return ''
"""

_ACTIONS = {EventType.START: "start", EventType.EXIT: "die", EventType.OOM: "oom"}


def state_json(state: ContainerState) -> str:
    return json.dumps(asdict(state), separators=(",", ":"))


def actor_attributes(config_json: str | bytes) -> dict[str, str]:
    """Docker's container actor attributes from the apiserver's ``config`` record."""
    try:
        config: Any = json.loads(config_json) if config_json else {}
    except ValueError:
        config = {}
    if not isinstance(config, dict):
        config = {}
    inner = config.get("Config") if isinstance(config.get("Config"), dict) else {}
    attributes: dict[str, str] = {}
    labels = inner.get("Labels")
    if isinstance(labels, dict):
        attributes.update({str(k): str(v) for k, v in labels.items()})
    if isinstance(inner.get("Image"), str):
        attributes["image"] = inner["Image"]
    if isinstance(config.get("Name"), str):
        attributes["name"] = config["Name"].lstrip("/")
    return attributes


class RedisStateSink:
    def __init__(self, redis: aioredis.Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys
        self._set_state = redis.register_script(_SET_STATE)

    async def record(self, event: TaskEvent) -> None:
        if event.type is EventType.DELETE:
            return  # the apiserver removes the record and reports "destroy"
        state = event.state
        config = await self._set_state(keys=[self._keys.container(state.id)], args=[state_json(state)])
        if config is None:
            log.debug("state_for_unknown_container", container=state.id[:12])
            return
        attributes = actor_attributes(config)
        if event.type is EventType.EXIT:
            attributes["exitCode"] = str(state.exit_code)
            # A failed start ran nothing: its started_at is the previous run's, if any.
            if not state.error and state.started_at_ns and state.finished_at_ns >= state.started_at_ns:
                attributes["execDuration"] = str((state.finished_at_ns - state.started_at_ns) // 1_000_000_000)
        await append_event(self._redis, self._keys, "container", _ACTIONS[event.type], state.id, attributes)

    async def sync(self, states: Sequence[ContainerState]) -> None:
        """Write the current state of every container (after a restart of the shim)."""
        if not states:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for state in states:
                await self._set_state(keys=[self._keys.container(state.id)], args=[state_json(state)], client=pipe)
            await pipe.execute()
