"""Snapshot metadata in Redis, containerd's bolt metastore mapped onto hashes and sets.

Per node (``common.keys.Keys``):

* ``snap:<node>:s:<key>`` — hash: ``id`` (decimal, from the sequence), ``kind``, ``parent``,
  ``chain`` (the parent ids, nearest first, comma separated: overlay's ``lowerdir`` order, so
  building mounts is one read), ``depth`` (ids in ``chain``), ``labels`` (JSON), ``created`` and
  ``updated`` (ns), ``size`` and ``inodes`` (recorded at commit).
* ``snap:<node>:keys`` — set of every key and name: one key space for active, view and committed.
* ``snap:<node>:children:<key>`` — set of the keys whose parent is ``key``; a non-empty set
  blocks ``remove``.
* ``snap:<node>:seq`` — INCR counter for the short numeric directory ids.

Every transition that checks and writes is one Lua script, so "key exists", "parent is
committed" and "parent has children" hold across concurrent callers and across processes.
Scripts name every key they touch in KEYS; where a key depends on stored data (the parent's
children set) the caller reads the parent first and the script re-checks it, returning
``retry`` if it changed in between.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis.asyncio as aioredis
import redis.exceptions

from common.keys import Keys
from protos.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    SnapshotNotFound,
    Unavailable,
)
from snapshotter.api import MAX_DEPTH, Info, Kind

T = TypeVar("T")

# containerd's limit for one label (key + value), from the snapshots API comments.
MAX_LABEL_BYTES = 4096
MAX_KEY_BYTES = 4096

_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return {'exists'} end
local chain, depth = '', 0
if ARGV[2] ~= '' then
  local p = redis.call('HMGET', KEYS[3], 'id', 'kind', 'chain', 'depth')
  if not p[1] then return {'noparent'} end
  if p[2] ~= 'committed' then return {'parentkind', p[2]} end
  depth = tonumber(p[4]) + 1
  if depth > tonumber(ARGV[7]) then return {'depth', tostring(depth)} end
  if p[3] == '' then chain = p[1] else chain = p[1] .. ',' .. p[3] end
  redis.call('SADD', KEYS[4], ARGV[1])
end
redis.call('HSET', KEYS[1], 'id', ARGV[4], 'kind', ARGV[3], 'parent', ARGV[2], 'chain', chain,
           'depth', depth, 'labels', ARGV[5], 'created', ARGV[6], 'updated', ARGV[6],
           'size', 0, 'inodes', 0)
redis.call('SADD', KEYS[2], ARGV[1])
return {'ok'}
"""

# KEYS: snap(key), snap(name), index, children(parent) [if parent]
# ARGV: key, name, parent, labels JSON to merge, size, inodes, now
_COMMIT = """
local s = redis.call('HMGET', KEYS[1], 'kind', 'parent', 'labels')
if not s[1] then return {'notfound'} end
if s[2] ~= ARGV[3] then return {'retry'} end
if s[1] ~= 'active' then return {'kind', s[1]} end
if redis.call('EXISTS', KEYS[2]) == 1 then return {'exists'} end
local labels = cjson.decode(s[3])
for k, v in pairs(cjson.decode(ARGV[4])) do labels[k] = v end
redis.call('RENAME', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[2], 'kind', 'committed', 'labels', cjson.encode(labels),
           'size', ARGV[5], 'inodes', ARGV[6], 'updated', ARGV[7])
redis.call('SREM', KEYS[3], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[2])
if ARGV[3] ~= '' then
  redis.call('SREM', KEYS[4], ARGV[1])
  redis.call('SADD', KEYS[4], ARGV[2])
end
return {'ok'}
"""

# KEYS: snap(key), index, children(key), children(parent) [if parent]
# ARGV: key, parent
_REMOVE = """
local s = redis.call('HMGET', KEYS[1], 'id', 'parent')
if not s[1] then return {'notfound'} end
if s[2] ~= ARGV[2] then return {'retry'} end
if redis.call('SCARD', KEYS[3]) > 0 then return {'children'} end
redis.call('DEL', KEYS[1], KEYS[3])
redis.call('SREM', KEYS[2], ARGV[1])
if ARGV[2] ~= '' then redis.call('SREM', KEYS[4], ARGV[1]) end
return {'ok', s[1]}
"""

# KEYS: snap(key); ARGV: labels JSON, now
_UPDATE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'notfound'} end
redis.call('HSET', KEYS[1], 'labels', ARGV[1], 'updated', ARGV[2])
return {'ok'}
"""


@dataclass(frozen=True, slots=True)
class SnapshotRecord:
    """One snapshot as stored; ``chain`` holds the parents' directory ids, nearest first."""

    key: str
    id: str
    kind: Kind
    parent: str
    chain: tuple[str, ...]
    created_ns: int
    updated_ns: int
    labels: Mapping[str, str] = field(default_factory=dict)
    size: int = 0
    inodes: int = 0

    def info(self) -> Info:
        return Info(name=self.key, parent=self.parent, kind=self.kind, created_at_ns=self.created_ns,
                    updated_at_ns=self.updated_ns, labels=dict(self.labels))


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


def _record(key: str, raw: Mapping[Any, Any]) -> SnapshotRecord:
    data = {_text(k): _text(v) for k, v in raw.items()}
    chain = data.get("chain", "")
    return SnapshotRecord(
        key=key, id=data["id"], kind=Kind(data["kind"]), parent=data.get("parent", ""),
        chain=tuple(chain.split(",")) if chain else (), created_ns=int(data.get("created", 0)),
        updated_ns=int(data.get("updated", 0)), labels=json.loads(data.get("labels") or "{}"),
        size=int(data.get("size", 0)), inodes=int(data.get("inodes", 0)))


def validate_key(key: str, what: str = "key") -> None:
    if not key:
        raise InvalidArgument(f"snapshot {what} must not be empty")
    if len(key.encode("utf-8", "surrogateescape")) > MAX_KEY_BYTES:
        raise InvalidArgument(f"snapshot {what} longer than {MAX_KEY_BYTES} bytes")


def labels_json(labels: Mapping[str, str] | None) -> str:
    """Validated labels as stored; containerd caps each key+value pair at 4096 bytes."""
    clean: dict[str, str] = {}
    for k, v in (labels or {}).items():
        if not isinstance(k, str) or not isinstance(v, str) or not k:
            raise InvalidArgument("snapshot labels must be non-empty string keys with string values")
        if len(k.encode()) + len(v.encode()) > MAX_LABEL_BYTES:
            raise InvalidArgument(f"label key and value length ({len(k) + len(v)} bytes) greater than "
                                  f"maximum size ({MAX_LABEL_BYTES} bytes), key: {k[:64]}")
        clean[k] = v
    return json.dumps(clean, sort_keys=True, separators=(",", ":"))


@asynccontextmanager
async def _redis_errors() -> AsyncIterator[None]:
    try:
        yield
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        raise Unavailable(f"snapshot metadata unavailable: {exc}") from exc


class MetaStore:
    """The snapshot records of one node. Raises the classified errors of ``snapshotter.api``."""

    def __init__(self, *, redis: aioredis.Redis, keys: Keys, node: str) -> None:
        self._redis = redis
        self._keys = keys
        self._node = node
        self._create = redis.register_script(_CREATE)
        self._commit = redis.register_script(_COMMIT)
        self._remove = redis.register_script(_REMOVE)
        self._update = redis.register_script(_UPDATE)

    def _k(self, key: str) -> str:
        return self._keys.snapshot(self._node, key)

    def _children(self, key: str) -> str:
        return self._keys.snapshot_children(self._node, key)

    async def _call(self, awaitable: Awaitable[T]) -> T:
        async with _redis_errors():
            return await awaitable

    async def next_id(self) -> str:
        return str(await self._call(self._redis.incr(self._keys.snapshot_seq(self._node))))

    async def exists(self, key: str) -> bool:
        return bool(await self._call(self._redis.exists(self._k(key))))

    async def get(self, key: str) -> SnapshotRecord:
        raw = await self._call(self._redis.hgetall(self._k(key)))
        if not raw:
            raise SnapshotNotFound(f"snapshot {key} does not exist")
        return _record(key, raw)

    async def create(self, key: str, *, id: str, kind: Kind, parent: str, labels: str) -> SnapshotRecord:
        keys = [self._k(key), self._keys.snapshot_index(self._node)]
        if parent:
            keys += [self._k(parent), self._children(parent)]
        result = await self._call(self._create(
            keys=keys, args=[key, parent, kind.value, id, labels, time.time_ns(), MAX_DEPTH]))
        status = _text(result[0])
        if status == "exists":
            raise AlreadyExists(f"snapshot {key}: already exists")
        if status == "noparent":
            raise SnapshotNotFound(f"parent snapshot {parent} does not exist")
        if status == "parentkind":
            raise InvalidArgument(f"parent {parent} is not a committed snapshot ({_text(result[1])})")
        if status == "depth":
            raise InvalidArgument(f"max depth exceeded: {_text(result[1])} layers, at most {MAX_DEPTH}")
        return await self.get(key)

    async def commit(self, key: str, name: str, *, labels: str, size: int, inodes: int) -> SnapshotRecord:
        for _ in range(8):
            current = await self.get(key)
            keys = [self._k(key), self._k(name), self._keys.snapshot_index(self._node)]
            if current.parent:
                keys.append(self._children(current.parent))
            result = await self._call(self._commit(
                keys=keys, args=[key, name, current.parent, labels, size, inodes, time.time_ns()]))
            status = _text(result[0])
            if status == "retry":
                continue
            if status == "notfound":
                raise SnapshotNotFound(f"snapshot {key} does not exist")
            if status == "kind":
                raise FailedPrecondition(f"snapshot {key} is not active ({_text(result[1])})")
            if status == "exists":
                raise AlreadyExists(f"snapshot {name}: already exists")
            return await self.get(name)
        raise Unavailable(f"snapshot {key} kept changing during commit")

    async def remove(self, key: str) -> SnapshotRecord:
        """Drop the record of a snapshot without children; returns what was removed."""
        for _ in range(8):
            current = await self.get(key)
            keys = [self._k(key), self._keys.snapshot_index(self._node), self._children(key)]
            if current.parent:
                keys.append(self._children(current.parent))
            result = await self._call(self._remove(keys=keys, args=[key, current.parent]))
            status = _text(result[0])
            if status == "retry":
                continue
            if status == "notfound":
                raise SnapshotNotFound(f"snapshot {key} does not exist")
            if status == "children":
                raise FailedPrecondition(f"cannot remove snapshot {key} with child")
            return current
        raise Unavailable(f"snapshot {key} kept changing during remove")

    async def update_labels(self, key: str, labels: str) -> SnapshotRecord:
        result = await self._call(self._update(keys=[self._k(key)], args=[labels, time.time_ns()]))
        if _text(result[0]) == "notfound":
            raise SnapshotNotFound(f"snapshot {key} does not exist")
        return await self.get(key)

    async def walk(self, batch: int = 200) -> AsyncIterator[SnapshotRecord]:
        """Every record, read in pipelined batches (a key removed meanwhile is skipped)."""
        async with _redis_errors():
            raw_members = await self._redis.smembers(self._keys.snapshot_index(self._node))
        members = sorted(_text(m) for m in raw_members)
        for start in range(0, len(members), batch):
            names = members[start:start + batch]
            async with _redis_errors():
                pipe = self._redis.pipeline(transaction=False)
                for name in names:
                    pipe.hgetall(self._k(name))
                rows = await pipe.execute()
            for name, raw in zip(names, rows, strict=True):
                if raw:
                    yield _record(name, raw)

    async def ids(self) -> set[str]:
        return {record.id async for record in self.walk()}
