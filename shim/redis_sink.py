"""``RedisStateSink``: the shim's runtime state and Docker events, written to Redis.

The container hash (``keys.container(id)``) belongs to the apiserver, which creates it; the shim
only sets its ``state`` field (with a new ``v`` stamp, which tells API servers that cached the
record to read it again), and only while the hash exists (one Lua call, so a container removed
meanwhile is never resurrected by a late write). Transitions become Docker events in the
shared stream: ``start``, ``die`` (``exitCode``, ``execDuration``) and ``oom``, with the actor
attributes dockerd gives them (``name``, ``image`` and the container's labels).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import orjson
import redis.asyncio as aioredis
import structlog

from common.events import EVENTS_MAXLEN, append_event, event_message
from common.fastredis import fast_script
from common.keys import Keys, text, version_stamp
from shim.api import ContainerState, EventType, ExecState, TaskEvent

log = structlog.get_logger()

# Set ``state`` (ARGV[1]) with a new ``v`` stamp (ARGV[2]), and count the change in the
# containers' generation KEYS[2], if the hash KEYS[1] exists and the state changed; return its
# ``config`` ("" when absent), or false if no hash.
_SET_STATE = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  return false
end
if redis.call('HGET', KEYS[1], 'state') ~= ARGV[1] then
  redis.call('HSET', KEYS[1], 'state', ARGV[1], 'v', ARGV[2])
  redis.call('INCR', KEYS[2])
end
return redis.call('HGET', KEYS[1], 'config') or ''
"""

_ACTIONS = {EventType.START: "start", EventType.EXIT: "die", EventType.OOM: "oom", EventType.PAUSE: "pause",
            EventType.RESUME: "unpause"}

# An exec's transition in one call. Unless the container's hash KEYS[1] is gone (then false): the
# container's state as _SET_STATE (ARGV[1], ARGV[2]); the exec's ``state`` (ARGV[3]) if its hash
# KEYS[2] exists (a container removal may have dropped it); once it exited (ARGV[4], the record's
# time to live in seconds, is not ""), the record's expiry and the exec's (ARGV[5]) removal from
# the container's set KEYS[3]. The caller knows the container's actor attributes if its ``v``
# stamp was ARGV[6] (not ""): then the event ARGV[7] (if not "") goes to the stream KEYS[4]
# (a changed container state also counts in the containers' generation KEYS[5])
# (capped near ARGV[8] entries) and {1, v} is returned; else {0, v, config}, and the caller
# appends the event itself. ``v`` is the stamp after this call ("" if the hash has none).
_SET_EXEC_STATE = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  return false
end
local v = redis.call('HGET', KEYS[1], 'v')
local known = ARGV[6] ~= '' and v == ARGV[6]
if redis.call('HGET', KEYS[1], 'state') ~= ARGV[1] then
  redis.call('HSET', KEYS[1], 'state', ARGV[1], 'v', ARGV[2])
  redis.call('INCR', KEYS[5])
  v = ARGV[2]
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('HSET', KEYS[2], 'state', ARGV[3])
  if ARGV[4] ~= '' then
    redis.call('EXPIRE', KEYS[2], tonumber(ARGV[4]))
  end
end
if ARGV[4] ~= '' then
  redis.call('SREM', KEYS[3], ARGV[5])
end
if not known then
  return {0, v or '', redis.call('HGET', KEYS[1], 'config') or ''}
end
if ARGV[7] ~= '' then
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[8], '*', 'e', ARGV[7])
end
return {1, v or ''}
"""
# An exec's record outlives its exit this long (moby forgets exited execs after 5-10 minutes).
EXEC_RECORD_TTL = 600


# Containers whose actor attributes the sink keeps (by their ``v`` stamp) for exec events.
MAX_KNOWN_ACTORS = 4096


def _dataclass_json(value: ContainerState | ExecState) -> str:
    """Compact JSON of a state, as ``json.dumps(asdict(value), separators=(",", ":"))`` writes it
    (orjson is ten times faster; the stdlib escapes non-ASCII, so such text goes through it)."""
    raw = orjson.dumps(value)
    if raw.isascii():
        return raw.decode()
    return json.dumps(asdict(value), separators=(",", ":"))


def state_json(state: ContainerState) -> str:
    return _dataclass_json(state)


def exec_state_json(state: ExecState) -> str:
    return _dataclass_json(state)


def _config(config_json: str | bytes) -> dict[str, Any]:
    try:
        config: Any = json.loads(config_json) if config_json else {}
    except ValueError:
        config = {}
    return config if isinstance(config, dict) else {}


def _auto_removed(config: dict[str, Any]) -> bool:
    host = config.get("HostConfig")
    return isinstance(host, dict) and bool(host.get("AutoRemove"))


def actor_attributes(config_json: str | bytes | dict[str, Any]) -> dict[str, str]:
    """Docker's container actor attributes from the apiserver's ``config`` record."""
    config = config_json if isinstance(config_json, dict) else _config(config_json)
    inner: dict[str, Any] = config["Config"] if isinstance(config.get("Config"), dict) else {}
    attributes: dict[str, str] = {}
    labels = inner.get("Labels")
    if isinstance(labels, dict):
        attributes.update({str(k): str(v) for k, v in labels.items()})
    if isinstance(inner.get("Image"), str):
        attributes["image"] = inner["Image"]
    if isinstance(config.get("Name"), str):
        attributes["name"] = config["Name"].lstrip("/")
    return attributes


def _exec_die_json(run: ExecState, attributes: dict[str, str]) -> str:
    """The ``exec_die`` event of ``run``, as :func:`common.events.append_event` encodes events."""
    message = event_message("container", "exec_die", run.container_id,
                            {**attributes, "execID": run.exec_id, "exitCode": str(run.exit_code)})
    return json.dumps(message, separators=(",", ":"))


class RedisStateSink:
    def __init__(self, redis: aioredis.Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys
        # Every transition and every exec writes with these: the cheap way (common/fastredis.py).
        self._set_state = fast_script(redis, _SET_STATE)
        self._set_exec_state = fast_script(redis, _SET_EXEC_STATE)
        self._set_state_pipelined = redis.register_script(_SET_STATE)  # sync(): many in one pipeline
        # container id → (``v`` stamp, actor attributes): what exec events need of its config
        self._actors: dict[str, tuple[str, dict[str, str]]] = {}

    async def record(self, event: TaskEvent) -> None:
        if event.type is EventType.DELETE:
            self._actors.pop(event.state.id, None)
            return  # the apiserver removes the record and reports "destroy"
        state = event.state
        run = event.exec
        if event.type in (EventType.EXEC_START, EventType.EXEC_EXIT) and run is not None:
            await self._record_exec(event.type, state, run)
            return
        config = await self._set_state(keys=[self._keys.container(state.id), self._keys.containers_generation],
                                       args=[state_json(state), version_stamp()])
        if config is None:
            log.debug("state_for_unknown_container", container=state.id[:12])
            return
        parsed = _config(config)
        attributes = actor_attributes(parsed)
        if event.type in (EventType.HEALTH_CHECK, EventType.HEALTH_STATUS):
            await self._record_probe(event, attributes)
            return
        if event.type is EventType.UPDATE:
            return  # a state change Docker reports no event for
        if event.type is EventType.EXIT:
            attributes["exitCode"] = str(state.exit_code)
            # A failed start ran nothing: its started_at is the previous run's, if any.
            if not state.error and state.started_at_ns and state.finished_at_ns >= state.started_at_ns:
                attributes["execDuration"] = str((state.finished_at_ns - state.started_at_ns) // 1_000_000_000)
            await self._forget_unstarted_execs(state.id)
        await append_event(self._redis, self._keys, "container", _ACTIONS[event.type], state.id, attributes)
        if event.type is EventType.EXIT and _auto_removed(parsed):
            await self._redis.rpush(self._keys.autoremove_queue, state.id)  # after "die": waiters see it first

    async def _record_exec(self, type: EventType, state: ContainerState, run: ExecState) -> None:
        """The container's state, the exec's and, once it exited, its ``exec_die`` event: one
        script call (two when the container's attributes are not known at its current stamp)."""
        exited = type is EventType.EXEC_EXIT
        known = self._actors.get(state.id)
        event = ""
        if exited and known is not None:
            event = _exec_die_json(run, known[1])
        keys = [self._keys.container(state.id), self._keys.exec(run.exec_id),
                self._keys.container_execs(run.container_id), self._keys.events, self._keys.containers_generation]
        reply = await self._set_exec_state(
            keys=keys, args=[state_json(state), version_stamp(), exec_state_json(run),
                             str(EXEC_RECORD_TTL) if exited else "", run.exec_id, known[0] if known else "",
                             event, EVENTS_MAXLEN])
        if reply is None:
            self._actors.pop(state.id, None)
            log.debug("state_for_unknown_container", container=state.id[:12])
            return
        stamp = text(reply[1])
        if reply[0] == 1 and known is not None:
            self._actors[state.id] = (stamp, known[1])  # the stamp moved with this call's write only
            return
        attributes = actor_attributes(reply[2])
        if stamp:
            if len(self._actors) >= MAX_KNOWN_ACTORS:
                self._actors.clear()
            self._actors[state.id] = (stamp, attributes)
        if exited:
            await self._redis.xadd(self._keys.events, {"e": _exec_die_json(run, attributes)},
                                   maxlen=EVENTS_MAXLEN, approximate=True)

    async def _record_probe(self, event: TaskEvent, attributes: dict[str, str]) -> None:
        """A health probe is an exec to Docker: exec_create, exec_start and exec_die events, then
        ``health_status: <status>`` when the status changed."""
        run, state = event.exec, event.state
        if run is not None:
            command = " ".join(run.args)
            with_id = {**attributes, "execID": run.exec_id}
            for action in (f"exec_create: {command}", f"exec_start: {command}"):
                await append_event(self._redis, self._keys, "container", action, state.id, with_id)
            await append_event(self._redis, self._keys, "container", "exec_die", state.id,
                               {**with_id, "exitCode": str(run.exit_code)})
        if event.type is EventType.HEALTH_STATUS and state.health is not None:
            await append_event(self._redis, self._keys, "container", f"health_status: {state.health.status.value}",
                               state.id, attributes)

    async def _forget_unstarted_execs(self, container_id: str) -> None:
        """moby unregisters a container's execs when it stops: the ones never started go."""
        key = self._keys.container_execs(container_id)
        ids = [text(i) for i in await self._redis.smembers(key)]
        if not ids:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for exec_id in ids:
                pipe.hexists(self._keys.exec(exec_id), "state")
            started = await pipe.execute()
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            for exec_id, has_state in zip(ids, started, strict=True):
                if not has_state:
                    pipe.delete(self._keys.exec(exec_id))
            await pipe.execute()

    async def sync(self, states: Sequence[ContainerState]) -> None:
        """Write the current state of every container (after a restart of the shim)."""
        if not states:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for state in states:
                await self._set_state_pipelined(keys=[self._keys.container(state.id), self._keys.containers_generation],
                                                args=[state_json(state), version_stamp()], client=pipe)
            await pipe.execute()
