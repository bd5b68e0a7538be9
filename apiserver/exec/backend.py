"""Exec sessions: created by the API server (record ``exec:<id>`` with its ``config``, listed in
the container's ``ctr:<id>:execs``), run by the shim of the container's node, which writes the
record's ``state`` (running, pid, exit code) and the ``exec_die`` event; ``exec_create`` and
``exec_start`` come from here, as dockerd emits them.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from apiserver.containers import create as create_mod
from apiserver.containers.store import ContainerRecord, ContainerStore
from apiserver.hijack import parse_detach_keys
from apiserver.nodes import NodeDirectory
from common.events import append_event
from common.keys import Keys, text
from protos.errors import Conflict, ContainerNotFound, ContainerNotRunning, InvalidArgument, NotFound
from shim.api import AttachInput, ExecSpec, ExecState, Output, ProcessSpec, Runtime


class ExecNotFound(NotFound):
    pass


@dataclass(frozen=True, slots=True)
class ExecRecord:
    id: str
    config: dict[str, Any]
    state: dict[str, Any]
    started: bool

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


class ExecBackend:
    def __init__(self, *, redis: aioredis.Redis, keys: Keys, containers: ContainerStore, nodes: NodeDirectory) -> None:
        self._redis = redis
        self._keys = keys
        self._containers = containers
        self._nodes = nodes

    async def _event(self, record: ContainerRecord, action: str, **extra: str) -> None:
        attrs = {"image": record.config["Config"].get("Image", ""), "name": record.name,
                 **(record.config["Config"].get("Labels") or {}), **extra}
        await append_event(self._redis, self._keys, "container", action, record.id, attrs)

    @staticmethod
    def _runnable(record: ContainerRecord, name: str) -> None:
        if record.status == "paused":
            raise Conflict(f"Container {name} is paused, unpause the container before exec")
        if record.status == "restarting":
            raise Conflict(f"Container {record.id} is restarting, wait until the container is running")
        if not record.running:
            raise ContainerNotRunning(f"container {record.id} is not running")

    async def create(self, ref: str, body: Any) -> str:
        if not isinstance(body, dict):
            raise InvalidArgument("invalid JSON: expected an object")
        cmd = body.get("Cmd")
        if isinstance(cmd, str):
            cmd = [cmd]
        if not cmd:
            raise InvalidArgument("No exec command specified")
        record = await self._containers.resolve(ref)
        self._runnable(record, ref)
        if body.get("User"):  # looked up before the exec exists, as dockerd does
            await (await self._runtime(record)).check_user(record.id, str(body["User"]))
        keys = str(body.get("DetachKeys") or "")
        if keys:
            try:
                parse_detach_keys(keys)
            except InvalidArgument:
                raise InvalidArgument(f"Invalid escape keys ({keys}) provided") from None
        config = record.config["Config"]
        tty = bool(body.get("Tty"))
        env = _replace_or_append(create_mod.runtime_env({**config, "Tty": tty}),
                                 [str(e) for e in body.get("Env") or ()])
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
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._keys.exec(exec_id), "config", json.dumps(exec_config))
            pipe.sadd(self._keys.container_execs(record.id), exec_id)
            await pipe.execute()
        await self._event(record, f"exec_create: {' '.join([exec_config['Entrypoint'], *exec_config['Args']])}",
                          execID=exec_id)
        return exec_id

    async def get(self, exec_id: str) -> ExecRecord:
        raw = await self._redis.hgetall(self._keys.exec(exec_id))
        if b"config" not in raw:
            raise ExecNotFound(f"No such exec instance: {exec_id}")
        state = json.loads(raw[b"state"]) if b"state" in raw else {}
        return ExecRecord(id=exec_id, config=json.loads(raw[b"config"]), state=state, started=b"started" in raw)

    async def _container(self, record: ExecRecord) -> ContainerRecord:
        try:
            return await self._containers.get(record.container_id)
        except ContainerNotFound:
            raise ExecNotFound(f"No such exec instance: {record.id}") from None

    async def _runtime(self, container: ContainerRecord) -> Runtime:
        return (await self._nodes.host(container.node)).runtime

    async def check_startable(self, exec_id: str) -> ExecRecord:
        """moby's ExecExists: the exec, its container running (before the connection is hijacked)."""
        record = await self.get(exec_id)
        container = await self._container(record)
        self._runnable(container, container.id)
        return record

    async def start(self, record: ExecRecord, *, detach: bool, console_size: list[int] | None,
                    stdin: AsyncIterator[AttachInput]) -> tuple[ExecState, AsyncIterator[Output]]:
        container = await self._container(record)
        self._runnable(container, container.id)
        # Once per exec, whichever API server asks first.
        if not await self._redis.hsetnx(self._keys.exec(record.id), "started", "1"):
            current = await self.get(record.id)
            if current.state and not current.state.get("running"):
                raise Conflict(f"exec command {record.id} has already run")
            raise Conflict(f"exec command {record.id} is already running")
        await self._event(container, f"exec_start: {record.command}", execID=record.id)
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
        runtime = await self._runtime(container)
        return await runtime.exec(container.id, spec, stdin)

    async def detached(self, record: ExecRecord) -> None:
        await self._event(await self._container(record), "exec_detach", execID=record.id)

    async def resize(self, exec_id: str, height: int, width: int) -> None:
        record = await self.get(exec_id)
        container = await self._container(record)
        if not container.running:
            raise ContainerNotRunning(f"container {container.id} is not running")
        await (await self._runtime(container)).resize_exec(container.id, exec_id, height, width)

    async def inspect(self, exec_id: str) -> dict[str, Any]:
        record = await self.get(exec_id)
        await self._container(record)
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
