"""Exec sessions: created by the API server (record ``exec:<id>`` with its ``config`` and the
container's id ``cid``, listed in the container's ``ctr:<id>:execs``), run by the shim of the
container's node, which writes the record's ``state`` (running, pid, exit code) and the
``exec_die`` event; ``exec_create`` and ``exec_start`` come from here, as dockerd emits them.

An exec costs few Redis round trips, each one script: the record and its event are written
together, usually in the same call that looks the container up (the exec is made from the record
this server read last under that reference, and written only if the container's ``v`` stamp says
it is unchanged: ``docker exec`` inspects the container just before); at its start the record is
read together with its container's and node's, and the start claimed if the container runs, in
one call; ``exec_start`` is appended while the shim is asked.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
import structlog

from apiserver.containers import create as create_mod
from apiserver.containers.store import RESOLVE_LUA, ContainerRecord, ContainerStore
from apiserver.fastjson import dumps, loads
from apiserver.hijack import parse_detach_keys
from apiserver.nodes import NodeDirectory
from common.events import EVENTS_MAXLEN, append_event, event_message
from common.fastredis import fast_script
from common.keys import Keys, text
from common.nodes import NodeRecord
from protos.errors import Conflict, ContainerNotFound, ContainerNotRunning, InvalidArgument, NotFound
from shim.api import AttachInput, ExecSpec, ExecState, Output, ProcessSpec, Runtime

log = structlog.get_logger()

# A new exec: its record KEYS[1] (``config`` ARGV[1], container id ARGV[2]), listed in the
# container's set KEYS[2] (as ARGV[3]), and its ``exec_create`` event ARGV[4] appended to the
# stream KEYS[3] (capped near ARGV[5] entries). One script: half the client's work of a MULTI.
_CREATE = """
redis.call('HSET', KEYS[1], 'config', ARGV[1], 'cid', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], '*', 'e', ARGV[4])
return 1
"""

# The same for the container a reference names (RESOLVE_LUA: KEYS[1], KEYS[2], ARGV[1..3]), if
# it is still the container ARGV[4] with the ``v`` stamp ARGV[5] that the exec's config and event
# were made from: the record KEYS[4] (config ARGV[6]), the container's set KEYS[5] (ARGV[7]) and
# the event ARGV[8] in the stream KEYS[3] (near ARGV[9] entries); returns {"created"}. Else
# nothing is written and the reply is RESOLVE_LUA's, to make them anew.
_CREATE_RESOLVED = RESOLVE_LUA + """
local id, why = find_container(ARGV[1], ARGV[2], ARGV[3], KEYS[1], KEYS[2])
if id and id == ARGV[4] and redis.call('HGET', ARGV[3] .. id, 'v') == ARGV[5] then
  redis.call('HSET', KEYS[4], 'config', ARGV[6], 'cid', id)
  redis.call('SADD', KEYS[5], ARGV[7])
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[9], '*', 'e', ARGV[8])
  return {'created'}
end
return resolved_reply(id, why, ARGV[3])
"""

# An exec record (KEYS[1]) and its container's: the exec's config, state ("" when absent),
# started ("1" or ""), container id; then the container's config, state, node and that node's
# record in the hash KEYS[2] ("" when absent) if ARGV[2] is "1", else whether its record exists
# ("1" or ""). False if the exec is unknown. ARGV[1] is the container key without the id.
# Records written before ``cid`` existed name the container only in their config.
# With ARGV[3] = "1" the start is claimed too, once per exec and only while the container runs:
# out[9] is "claimed", "started" (someone claimed it before) or "" (not running, or no record).
_READ = """
local exec = redis.call('HMGET', KEYS[1], 'config', 'state', 'started', 'cid')
if not exec[1] then
  return false
end
local cid = exec[4] or cjson.decode(exec[1])['ContainerID']
local out = {exec[1], exec[2] or '', exec[3] and '1' or '', cid}
local key = ARGV[1] .. cid
if ARGV[2] == '1' then
  local c = redis.call('HMGET', key, 'config', 'state', 'node')
  out[5], out[6], out[7] = c[1] or '', c[2] or '', c[3] or ''
  out[8] = c[3] and redis.call('HGET', KEYS[2], c[3]) or ''
  out[9] = ''
  if ARGV[3] == '1' and c[1] and c[2] and cjson.decode(c[2])['status'] == 'running' then
    out[9] = redis.call('HSETNX', KEYS[1], 'started', '1') == 1 and 'claimed' or 'started'
  end
else
  out[5] = redis.call('HEXISTS', key, 'config') == 1 and '1' or ''
end
return out
"""

# The ``exec_start`` event ARGV[1], appended to the stream KEYS[1] (capped near ARGV[2] entries).
_APPEND_EVENT = """
return redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'e', ARGV[1])
"""


class ExecNotFound(NotFound):
    pass


@dataclass(frozen=True, slots=True)
class ExecRecord:
    id: str
    config: dict[str, Any]
    state: dict[str, Any]
    started: bool
    container: ContainerRecord | None = None  # its container's record, when read with it
    node: NodeRecord | None = None  # and its container's node, if that is registered
    claimed: bool = False  # this server claimed its start (check_startable)
    conflict: Conflict | None = None  # why it may not start: raised by start(), after the hijack

    @property
    def container_id(self) -> str:
        return str(self.config["ContainerID"])

    @property
    def command(self) -> str:
        return " ".join([self.config["Entrypoint"], *self.config["Args"]])


def _replace_or_append(base: list[str], extra: list[str]) -> list[str]:
    """moby's ReplaceOrAppendEnvValues (a bare ``NAME`` removes NAME)."""
    out = list(base)
    for item in extra:
        key = item.split("=", 1)[0]
        out = [e for e in out if e.split("=", 1)[0] != key]
        if "=" in item:
            out.append(item)
    return out


def _attributes(record: ContainerRecord, **extra: str) -> dict[str, str]:
    """The actor attributes of a container event, as dockerd gives them."""
    return {"image": record.config["Config"].get("Image", ""), "name": record.name,
            **(record.config["Config"].get("Labels") or {}), **extra}


def _log_failure(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("exec_event_lost", error=str(task.exception()))


def _runnable(status: str, id: str, name: str) -> None:
    if status == "paused":
        raise Conflict(f"Container {name} is paused, unpause the container before exec")
    if status == "restarting":
        raise Conflict(f"Container {id} is restarting, wait until the container is running")
    if status != "running":
        raise ContainerNotRunning(f"container {id} is not running")


def _valid_keys(keys: str) -> bool:
    try:
        parse_detach_keys(keys)
    except InvalidArgument:
        return False
    return True


def _new_exec(record: ContainerRecord, cmd: list[Any], body: dict[str, Any], keys: str) -> tuple[str, bytes, bytes]:
    """A new exec of ``record``'s container: its id, and its config and ``exec_create`` event as JSON."""
    config = record.config["Config"]
    tty = bool(body.get("Tty"))
    env = _replace_or_append(create_mod.runtime_env({**config, "Tty": tty}), [str(e) for e in body.get("Env") or ()])
    exec_id = secrets.token_hex(32)
    exec_config: dict[str, Any] = {
        "ID": exec_id, "ContainerID": record.id, "Entrypoint": str(cmd[0]), "Args": [str(a) for a in cmd[1:]],
        "Tty": tty, "Privileged": bool(body.get("Privileged")),
        "User": body.get("User") or config.get("User") or "",
        "WorkingDir": body.get("WorkingDir") or config.get("WorkingDir") or "", "Env": env,
        "OpenStdin": bool(body.get("AttachStdin")), "OpenStdout": bool(body.get("AttachStdout")),
        "OpenStderr": bool(body.get("AttachStderr")), "DetachKeys": keys,
        "ConsoleSize": body.get("ConsoleSize") or None,
    }
    command = " ".join([exec_config["Entrypoint"], *exec_config["Args"]])
    event = event_message("container", f"exec_create: {command}", record.id, _attributes(record, execID=exec_id))
    return exec_id, dumps(exec_config), dumps(event)


class ExecBackend:
    def __init__(self, *, redis: aioredis.Redis, keys: Keys, containers: ContainerStore, nodes: NodeDirectory) -> None:
        self._redis = redis
        self._keys = keys
        self._containers = containers
        self._nodes = nodes
        # Every docker exec runs these: the cheap way (common/fastredis.py).
        self._create_script = fast_script(redis, _CREATE)
        self._create_resolved = fast_script(redis, _CREATE_RESOLVED)
        self._read_script = fast_script(redis, _READ)
        self._append_event = fast_script(redis, _APPEND_EVENT)

    async def create(self, ref: str, body: Any) -> str:
        if not isinstance(body, dict):
            raise InvalidArgument("invalid JSON: expected an object")
        cmd = body.get("Cmd")
        if isinstance(cmd, str):
            cmd = [cmd]
        if not cmd:
            raise InvalidArgument("No exec command specified")
        keys = str(body.get("DetachKeys") or "")
        keys_valid = _valid_keys(keys)
        # The container this server last saw under ``ref``, if it ran: the exec is made from it
        # and written in the same call that checks it is still that one, unchanged (docker exec
        # inspects the container first, so usually it is). Else, or if it changed, two calls.
        guess = self._containers.recent(ref) if not body.get("User") and keys_valid else None
        if guess is not None and guess[0].status == "running":  # what _runnable lets through
            record, stamp = guess
            exec_id, config_json, event_json = _new_exec(record, cmd, body, keys)
            resolve_keys, resolve_args = self._containers.resolve_keys_args(ref)
            reply = await self._create_resolved(
                keys=[*resolve_keys, self._keys.events, self._keys.exec(exec_id),
                      self._keys.container_execs(record.id)],
                args=[*resolve_args, record.id, stamp, config_json, exec_id, event_json, EVENTS_MAXLEN])
            if reply[0] == b"created":
                return exec_id
            record = self._containers.parse_resolved(ref, reply)
        else:
            record = await self._containers.resolve(ref)
        _runnable(record.status, record.id, ref)
        if body.get("User"):  # looked up before the exec exists, as dockerd does
            await (await self._runtime(record)).check_user(record.id, str(body["User"]))
        if not keys_valid:
            raise InvalidArgument(f"Invalid escape keys ({keys}) provided")
        exec_id, config_json, event_json = _new_exec(record, cmd, body, keys)
        await self._create_script(
            keys=[self._keys.exec(exec_id), self._keys.container_execs(record.id), self._keys.events],
            args=[config_json, record.id, exec_id, event_json, EVENTS_MAXLEN])
        return exec_id

    async def _read(self, exec_id: str, *, container: bool, claim: bool = False) -> ExecRecord:
        """The exec and (``container``) its container's record, in one call; ExecNotFound if
        either is gone. ``claim``: and the claim of its start (see _READ)."""
        reply = await self._read_script(keys=[self._keys.exec(exec_id), self._keys.nodes],
                                        args=[self._keys.container(""), "1" if container else "",
                                              "1" if claim else ""])
        if not reply:
            raise ExecNotFound(f"No such exec instance: {exec_id}")
        config, state, started, cid = reply[:4]
        ctr: ContainerRecord | None = None
        node_record: NodeRecord | None = None
        if container:
            ctr_config, ctr_state, node, raw_node = reply[4:8]
            if raw_node:
                node_record = NodeRecord.from_json(raw_node)
            if not ctr_config:
                raise ExecNotFound(f"No such exec instance: {exec_id}")
            ctr = ContainerRecord(id=text(cid), config=loads(ctr_config), state=loads(ctr_state) if ctr_state else {},
                                  node=text(node))
        elif not reply[4]:
            raise ExecNotFound(f"No such exec instance: {exec_id}")
        exec_state = loads(state) if state else {}
        conflict: Conflict | None = None
        if container and reply[8] == b"started":
            ran = bool(exec_state) and not exec_state.get("running")
            conflict = Conflict(f"exec command {exec_id} {'has already run' if ran else 'is already running'}")
        return ExecRecord(id=exec_id, config=loads(config), state=exec_state, started=bool(started), container=ctr,
                          node=node_record, claimed=container and reply[8] == b"claimed", conflict=conflict)

    async def get(self, exec_id: str) -> ExecRecord:
        return await self._read(exec_id, container=False)

    async def _runtime(self, container: ContainerRecord) -> Runtime:
        return (await self._nodes.host(container.node)).runtime

    async def check_startable(self, exec_id: str) -> ExecRecord:
        """moby's ExecExists: the exec, its container running (before the connection is hijacked);
        and, in the same call, the claim of its start, once per exec whichever API server asks
        first. The record returned carries its container's; a start claimed before is its
        ``conflict`` (moby reports that on the hijacked stream). A caller that cannot go on (the
        hijack failed) gives the claim back with :meth:`unclaim`."""
        record = await self._read(exec_id, container=True, claim=True)
        assert record.container is not None
        _runnable(record.container.status, record.container.id, record.container.id)
        return record

    async def unclaim(self, record: ExecRecord) -> None:
        if record.claimed:
            await self._redis.hdel(self._keys.exec(record.id), "started")

    async def start(self, record: ExecRecord, *, detach: bool, console_size: list[int] | None,
                    stdin: AsyncIterator[AttachInput]) -> tuple[ExecState, AsyncIterator[Output]]:
        """Start an exec that :meth:`check_startable` returned."""
        container = record.container
        assert container is not None
        event = event_message("container", f"exec_start: {record.command}", container.id,
                              _attributes(container, execID=record.id))
        if record.conflict is not None:
            raise record.conflict
        # Written before the shim is asked (this task runs first), so it precedes the shim's
        # exec_die; nobody waits for it.
        appended = asyncio.ensure_future(self._append_event(keys=[self._keys.events],
                                                            args=[dumps(event), EVENTS_MAXLEN]))
        appended.add_done_callback(_log_failure)
        node = record.node
        host = await (self._nodes.host_of(node) if node is not None and node.id == container.node
                      else self._nodes.host(container.node))
        c = record.config
        size = console_size or c.get("ConsoleSize") or [0, 0]
        tty = bool(c.get("Tty"))
        spec = ExecSpec(
            exec_id=record.id,
            process=ProcessSpec(args=(c["Entrypoint"], *c["Args"]), env=tuple(c.get("Env") or ()),
                                cwd=c.get("WorkingDir") or "/", user=c.get("User") or "", terminal=tty,
                                open_stdin=bool(c.get("OpenStdin")) and not detach, stdin_once=True,
                                console_height=int(size[0] or 0) if tty else 0,
                                console_width=int(size[1] or 0) if tty else 0),
            privileged=bool(c.get("Privileged")), detach=detach)
        return await host.runtime.exec(container.id, spec, stdin)

    async def detached(self, record: ExecRecord) -> None:
        try:
            container = await self._containers.get(record.container_id)
        except ContainerNotFound:
            raise ExecNotFound(f"No such exec instance: {record.id}") from None
        await append_event(self._redis, self._keys, "container", "exec_detach", container.id,
                           _attributes(container, execID=record.id))

    async def resize(self, exec_id: str, height: int, width: int) -> None:
        record = await self._read(exec_id, container=True)
        container = record.container
        assert container is not None
        if not container.running:
            raise ContainerNotRunning(f"container {container.id} is not running")
        await (await self._runtime(container)).resize_exec(container.id, exec_id, height, width)

    async def inspect(self, exec_id: str) -> dict[str, Any]:
        record = await self._read(exec_id, container=False)
        c, state = record.config, record.state
        exited = bool(state) and not state.get("running")
        keys = parse_detach_keys(c["DetachKeys"]) if c.get("DetachKeys") else b""
        return {
            "ID": record.id,
            "Running": bool(state.get("running")),
            "ExitCode": int(state.get("exit_code", 0)) if exited else None,
            "ProcessConfig": {"tty": bool(c.get("Tty")), "entrypoint": c["Entrypoint"], "arguments": c["Args"],
                              "privileged": bool(c.get("Privileged")),
                              **({"user": c["User"]} if c.get("User") else {})},
            "OpenStdin": bool(c.get("OpenStdin")),
            "OpenStderr": bool(c.get("OpenStderr")),
            "OpenStdout": bool(c.get("OpenStdout")),
            "CanRemove": False,
            "ContainerID": record.container_id,
            "DetachKeys": base64.b64encode(keys).decode(),
            "Pid": int(state.get("pid", 0)),
        }

    async def ids(self, container_id: str) -> list[str]:
        return sorted(text(i) for i in await self._redis.smembers(self._keys.container_execs(container_id)))
