"""Volume records in Redis (see common/keys.py): which volumes exist, on which node, and which
containers use them. The bytes live on the node (the shim's ``<root>/volumes/<name>/_data``).

Creating a volume that exists returns the existing one (Docker's behaviour, also when two API
servers race); removal and "in use" are decided in one script, so a volume a container just
started using is never removed under it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from common.keys import Keys, text

# KEYS: volume, volumes index, refs; ARGV: name, record JSON, node, score, ref ("" = none)
_CREATE = """
local existing = redis.call('HGET', KEYS[1], 'record')
if not existing then
  redis.call('HSET', KEYS[1], 'record', ARGV[2], 'node', ARGV[3])
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
end
if ARGV[5] ~= '' then redis.call('SADD', KEYS[3], ARGV[5]) end
if existing then return {0, existing, redis.call('HGET', KEYS[1], 'node')} end
return {1, ARGV[2], ARGV[3]}
"""

# KEYS: volume, volumes index, refs; ARGV: name
_REMOVE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'notfound'} end
local refs = redis.call('SMEMBERS', KEYS[3])
if #refs > 0 then return {'inuse', unpack(refs)} end
redis.call('DEL', KEYS[1], KEYS[3])
redis.call('ZREM', KEYS[2], ARGV[1])
return {'ok'}
"""

# KEYS: volume, refs; ARGV: ref
_ADD_REF = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('SADD', KEYS[2], ARGV[1])
return 1
"""


@dataclass(slots=True)
class VolumeRecord:
    """A volume in Docker's ``Volume`` shape (``doc``), its node and its users."""

    name: str
    doc: dict[str, Any]
    node: str
    refs: set[str] = field(default_factory=set)

    @property
    def options(self) -> dict[str, str]:
        return dict(self.doc.get("Options") or {})

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.doc.get("Labels") or {})


class InUse(Exception):
    def __init__(self, refs: list[str]) -> None:
        super().__init__("volume is in use")
        self.refs = refs


class VolumeStore:
    def __init__(self, redis: aioredis.Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys
        self._create = redis.register_script(_CREATE)
        self._remove = redis.register_script(_REMOVE)
        self._add_ref = redis.register_script(_ADD_REF)

    async def create(self, name: str, doc: dict[str, Any], node: str, created_ns: int,
                     ref: str = "") -> tuple[VolumeRecord, bool]:
        """Record ``name`` unless it exists; returns the record and whether it is new."""
        result = await self._create(
            keys=[self._keys.volume(name), self._keys.volumes, self._keys.volume_refs(name)],
            args=[name, json.dumps(doc), node, created_ns, ref])
        created = int(result[0]) == 1
        record = VolumeRecord(name=name, doc=json.loads(text(result[1])), node=text(result[2]))
        return record, created

    async def get(self, name: str) -> VolumeRecord | None:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self._keys.volume(name))
            pipe.smembers(self._keys.volume_refs(name))
            raw, refs = await pipe.execute()
        if not raw or b"record" not in raw:
            return None
        return VolumeRecord(name=name, doc=json.loads(raw[b"record"]), node=text(raw.get(b"node", b"")),
                            refs={text(r) for r in refs})

    async def all(self) -> list[VolumeRecord]:
        names = [text(n) for n in await self._redis.zrange(self._keys.volumes, 0, -1)]
        if not names:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hgetall(self._keys.volume(name))
                pipe.smembers(self._keys.volume_refs(name))
            rows = await pipe.execute()
        out = []
        for i, name in enumerate(names):
            raw, refs = rows[2 * i], rows[2 * i + 1]
            if raw and b"record" in raw:
                out.append(VolumeRecord(name=name, doc=json.loads(raw[b"record"]), node=text(raw.get(b"node", b"")),
                                        refs={text(r) for r in refs}))
        return out

    async def add_ref(self, name: str, ref: str) -> bool:
        """Mark ``ref`` (a container id) as a user; False if the volume is gone."""
        return bool(await self._add_ref(keys=[self._keys.volume(name), self._keys.volume_refs(name)], args=[ref]))

    async def remove_ref(self, name: str, ref: str) -> None:
        await self._redis.srem(self._keys.volume_refs(name), ref)

    async def remove(self, name: str) -> bool:
        """Drop the record of an unused volume; False if absent; :class:`InUse` if used."""
        result = await self._remove(keys=[self._keys.volume(name), self._keys.volumes, self._keys.volume_refs(name)],
                                    args=[name])
        status = text(result[0])
        if status == "notfound":
            return False
        if status == "inuse":
            raise InUse(sorted(text(r) for r in result[1:]))
        return True
