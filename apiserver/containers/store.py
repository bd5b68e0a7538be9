"""Container records in Redis (see common/keys.py for the layout and who writes what).

Names are reserved with HSETNX so two API servers can never hand out the same name; a record and
its indexes are written and removed in one MULTI/EXEC.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from common.keys import Keys, text
from protos.errors import ContainerNotFound, InvalidArgument, NameConflict


@dataclass(slots=True)
class ContainerRecord:
    """``config`` is the Docker-shaped configuration the API server owns; ``state`` is the shim's
    ``ContainerState`` as a dict ({} until the shim first reports); ``net`` the shim's network
    state (files, namespace, port bindings in force)."""

    id: str
    config: dict[str, Any]
    state: dict[str, Any]
    node: str
    net: dict[str, Any] = field(default_factory=dict)  # the shim's NetworkState (shim/network/api.py)

    @property
    def name(self) -> str:
        return str(self.config.get("Name", "")).lstrip("/")

    @property
    def status(self) -> str:
        return str(self.state.get("status", "created"))

    @property
    def running(self) -> bool:
        """Docker's State.Running: also while paused or waiting to be restarted by its policy."""
        return self.status in ("running", "paused", "restarting")


def _decode(id: str, raw: Any) -> ContainerRecord | None:
    if b"config" not in raw:
        return None
    state = json.loads(raw[b"state"]) if b"state" in raw else {}
    net = json.loads(raw[b"net"]) if b"net" in raw else {}
    return ContainerRecord(id=id, config=json.loads(raw[b"config"]), state=state,
                           node=raw.get(b"node", b"").decode(), net=net)


_RELEASE_NAME = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"""


class ContainerStore:
    def __init__(self, redis: aioredis.Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys

    async def reserve_name(self, name: str, id: str) -> None:
        if not await self._redis.hsetnx(self._keys.names, name, id):
            owner = await self._redis.hget(self._keys.names, name)
            owner_id = text(owner) if owner else "unknown"
            raise NameConflict(
                f'Conflict. The container name "/{name}" is already in use by container "{owner_id}". '
                "You have to remove (or rename) that container to be able to reuse that name.")

    async def release_name(self, name: str, id: str) -> None:
        await self._redis.eval(_RELEASE_NAME, 1, self._keys.names, name, id)

    async def put(self, record: ContainerRecord, created_ns: int) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._keys.container(record.id),
                      mapping={"config": json.dumps(record.config), "node": record.node})
            pipe.zadd(self._keys.containers, {record.id: created_ns})
            pipe.zadd(self._keys.containers_lex, {record.id: 0})
            await pipe.execute()

    async def save_config(self, record: ContainerRecord) -> None:
        await self._redis.hset(self._keys.container(record.id), "config", json.dumps(record.config))

    async def rename(self, id: str, new_name: str) -> ContainerRecord:
        """Move the container to ``new_name`` in the name index and its record in one
        transaction (WATCH on both, retried if either changes meanwhile)."""
        key = self._keys.container(id)
        while True:
            async with self._redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(self._keys.names, key)
                    owner = await pipe.hget(self._keys.names, new_name)
                    if owner is not None:
                        raise NameConflict(
                            f'Conflict. The container name "/{new_name}" is already in use by container '
                            f'"{text(owner)}". You have to remove (or rename) that container to be able to reuse '
                            "that name.")
                    record = _decode(id, await pipe.hgetall(key))
                    if record is None:
                        raise ContainerNotFound(f"No such container: {id}")
                    old_name = record.name
                    record.config["Name"] = "/" + new_name
                    pipe.multi()  # type: ignore[no-untyped-call]
                    pipe.hset(self._keys.names, new_name, id)
                    pipe.hdel(self._keys.names, old_name)
                    pipe.hset(key, "config", json.dumps(record.config))
                    await pipe.execute()
                    return record
                except aioredis.WatchError:
                    continue

    async def update_host_config(self, id: str, host_config: dict[str, Any]) -> ContainerRecord:
        """Replace the record's HostConfig (WATCH-guarded against a concurrent config write)."""
        key = self._keys.container(id)
        while True:
            async with self._redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(key)
                    record = _decode(id, await pipe.hgetall(key))
                    if record is None:
                        raise ContainerNotFound(f"No such container: {id}")
                    record.config["HostConfig"] = host_config
                    pipe.multi()  # type: ignore[no-untyped-call]
                    pipe.hset(key, "config", json.dumps(record.config))
                    await pipe.execute()
                    return record
                except aioredis.WatchError:
                    continue

    async def get(self, id: str) -> ContainerRecord:
        record = _decode(id, await self._redis.hgetall(self._keys.container(id)))
        if record is None:
            raise ContainerNotFound(f"No such container: {id}")
        return record

    async def resolve(self, ref: str) -> ContainerRecord:
        """Full id, then name (with or without the leading slash), then unique id prefix."""
        if not ref:
            raise ContainerNotFound("No such container: ")
        ref_name = ref.lstrip("/")
        if len(ref) == 64:
            record = _decode(ref, await self._redis.hgetall(self._keys.container(ref)))
            if record is not None:
                return record
        owner = await self._redis.hget(self._keys.names, ref_name)
        if owner is not None:
            return await self.get(text(owner))
        if all(c in "0123456789abcdef" for c in ref):
            ids = await self._redis.zrangebylex(self._keys.containers_lex, f"[{ref}", f"[{ref}\xff", start=0, num=2)
            if len(ids) > 1:
                raise InvalidArgument(f"multiple IDs found with provided prefix: {ref}")
            if ids:
                return await self.get(text(ids[0]))
        raise ContainerNotFound(f"No such container: {ref}")

    async def all(self) -> list[ContainerRecord]:
        """Every container, newest first."""
        ids = [text(i) for i in await self._redis.zrevrange(self._keys.containers, 0, -1)]
        if not ids:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for id in ids:
                pipe.hgetall(self._keys.container(id))
            raws = await pipe.execute()
        return [r for id, raw in zip(ids, raws, strict=True) if (r := _decode(id, raw)) is not None]

    async def delete(self, record: ContainerRecord) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._keys.container(record.id))
            pipe.delete(self._keys.autoremove_claim(record.id))
            pipe.delete(self._keys.container_execs(record.id))
            pipe.zrem(self._keys.containers, record.id)
            pipe.zrem(self._keys.containers_lex, record.id)
            await pipe.execute()
        await self.release_name(record.name, record.id)

    async def claim_autoremove(self, id: str) -> bool:
        """True for exactly one caller per exit (many API servers may share Redis)."""
        return bool(await self._redis.set(self._keys.autoremove_claim(id), "1", nx=True, ex=300))
