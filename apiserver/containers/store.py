"""Container records in Redis (see common/keys.py for the layout and who writes what).

Names are reserved with HSETNX so two API servers can never hand out the same name; a record and
its indexes are written and removed in one MULTI/EXEC. Every write of ``config`` sets a new
``v`` stamp in the same command, as the shim does with ``state``.

Listing keeps the records it read in process (:class:`CachedRecord`), and trusts one only while
Redis still holds the same ``v`` stamp and ``net`` for it: a list costs one script call that
returns every id with those two fields, then fetches only the records that changed. Other API
servers sharing the Redis write their own stamps, so their changes are seen on the next list.
Before that, one GET of the containers' generation (``Keys.containers_generation``, counted by
every writer in the same atomic step) tells whether anything changed at all since the last list.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from apiserver.fastjson import dumps, loads
from common.bounded import remember
from common.fastredis import fast_script
from common.keys import Keys, text, version_stamp
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
        return self.status in _RUNNING


_RUNNING = ("running", "paused", "restarting")


def decode_resolved(ref: str, id: str, raw: dict[bytes, bytes]) -> ContainerRecord:
    """The record of a resolve of ``ref``; a hash without its config is being written or removed."""
    record = _decode(id, raw)
    if record is None:
        raise ContainerNotFound(f"No such container: {ref}")
    return record


def _decode(id: str, raw: Any) -> ContainerRecord | None:
    if b"config" not in raw:
        return None
    state = loads(raw[b"state"]) if b"state" in raw else {}
    net = loads(raw[b"net"]) if b"net" in raw else {}
    return ContainerRecord(id=id, config=loads(raw[b"config"]), state=state,
                           node=raw.get(b"node", b"").decode(), net=net)


@dataclass(slots=True, eq=False)
class CachedRecord:
    """A container hash as one read saw it, kept raw (compact) and decoded on demand.

    ``version`` is its ``v`` stamp (b"" for a record written before stamps existed: never kept).
    ``derived`` is for what a reader computes from this version of the record (the list's summary
    JSON): it goes with it."""

    id: str
    version: bytes
    node: str
    config: bytes
    state: bytes | None
    net: bytes | None
    running: bool  # ContainerRecord.running
    derived: Any = None

    def record(self) -> ContainerRecord:
        """A new :class:`ContainerRecord` (the caller may change it)."""
        return ContainerRecord(id=self.id, config=loads(self.config),
                               state=loads(self.state) if self.state is not None else {},
                               node=self.node, net=loads(self.net) if self.net is not None else {})


# Field values travel joined by NUL, which valid JSON text, hex ids and stamps never contain.
_SEP = b"\0"
_UNREAD = b"?"  # in place of a ``net`` the list script did not read (not JSON, so never a value)

# Every container, newest first: how many, then the id, ``v`` stamp and ``net`` ("" when absent)
# of each. ``net`` is written by the shim without a stamp, so the caller compares it too, but only
# where it matters: ARGV[2] is "*" for every one, else ARGV[3…] are the ids whose ``net`` to read.
_LIST_STAMPS = """
local ids = redis.call('ZREVRANGE', KEYS[1], 0, -1)
local every = ARGV[2] == '*'
local wanted = {}
for i = 3, #ARGV do
  wanted[ARGV[i]] = true
end
local out = {}
for i, id in ipairs(ids) do
  out[#out + 1] = id
  if every or wanted[id] then
    local fields = redis.call('HMGET', ARGV[1] .. id, 'v', 'net')
    out[#out + 1] = fields[1] or ''
    out[#out + 1] = fields[2] or ''
  else
    out[#out + 1] = redis.call('HGET', ARGV[1] .. id, 'v') or ''
    out[#out + 1] = '?'
  end
end
return {#ids, table.concat(out, '\\0')}
"""

_FIELDS = ("v", "node", "config", "state", "net")

# The records in KEYS: for each, the fields above, "" when absent (a removed record has no config).
_FETCH = """
local out = {}
for i, key in ipairs(KEYS) do
  local fields = redis.call('HMGET', key, 'v', 'node', 'config', 'state', 'net')
  for j = 1, 5 do
    out[#out + 1] = fields[j] or ''
  end
end
return table.concat(out, '\\0')
"""


_RELEASE_NAME = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"""

# Lua: the container a reference names, as ``resolve`` orders the lookups: a full id, then a
# name (in the hash ``names``; leading slashes dropped), then a unique prefix of ids (the lex set
# ``lex``, up to ``upper``). ``prefix`` is the container key without the id. Returns the id, or
# false and "multiple" or "missing".
RESOLVE_LUA = """
local function find_container(ref, upper, prefix, names, lex)
  if #ref == 64 and redis.call('HEXISTS', prefix .. ref, 'config') == 1 then
    return ref
  end
  local id = redis.call('HGET', names, (string.gsub(ref, '^/+', '')))
  if not id and string.match(ref, '^[0-9a-f]+$') then
    local ids = redis.call('ZRANGEBYLEX', lex, '[' .. ref, '[' .. upper, 'LIMIT', 0, 2)
    if #ids > 1 then
      return false, 'multiple'
    end
    id = ids[1]
  end
  if not id then
    return false, 'missing'
  end
  return id
end
-- find_container's outcome for the reply: {"ok", id, <HGETALL as a flat list>}, {"multiple"},
-- {"gone", id} (a name whose record is gone) or {"missing"}.
local function resolved_reply(id, why, prefix)
  if not id then
    return {why}
  end
  local fields = redis.call('HGETALL', prefix .. id)
  if #fields == 0 then
    return {'gone', id}
  end
  return {'ok', id, fields}
end
"""

# A reference (ARGV[1]) to one container, in one call (RESOLVE_LUA with KEYS[1] the names, KEYS[2]
# the lex set, ARGV[2] the prefix's upper bound, ARGV[3] the key prefix), and the execs' set
# as a fourth item if ARGV[4] is "1".
_RESOLVE = RESOLVE_LUA + """
local id, why = find_container(ARGV[1], ARGV[2], ARGV[3], KEYS[1], KEYS[2])
local out = resolved_reply(id, why, ARGV[3])
if out[1] == 'ok' and ARGV[4] == '1' then
  out[4] = redis.call('SMEMBERS', ARGV[3] .. id .. ':execs')
end
return out
"""

_RECENT = 64  # references whose records resolve() keeps as guesses (see recent())


class ContainerStore:
    def __init__(self, redis: aioredis.Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys
        self._list_stamps = redis.register_script(_LIST_STAMPS)
        self._fetch = redis.register_script(_FETCH)
        self._resolve = fast_script(redis, _RESOLVE)  # on every container route: the cheap way
        self._cache: dict[bytes, CachedRecord] = {}  # id → the record the last list read
        # ref → (id, v stamp, raw hash) of its last resolve, oldest first (see recent())
        self._recent: dict[str, tuple[str, bytes, dict[bytes, bytes]]] = {}
        # The last list, by ``net``, with the containers' generation read before it was made.
        self._memo: dict[bool, tuple[bytes | str, list[CachedRecord]]] = {}

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
                      mapping={"config": dumps(record.config), "node": record.node, "v": version_stamp()})
            pipe.zadd(self._keys.containers, {record.id: created_ns})
            pipe.zadd(self._keys.containers_lex, {record.id: 0})
            pipe.incr(self._keys.containers_generation)
            await pipe.execute()

    async def save_config(self, record: ContainerRecord) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._keys.container(record.id), mapping={"config": dumps(record.config), "v": version_stamp()})
            pipe.incr(self._keys.containers_generation)
            await pipe.execute()

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
                    pipe.hset(key, mapping={"config": dumps(record.config), "v": version_stamp()})
                    pipe.incr(self._keys.containers_generation)
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
                    pipe.hset(key, mapping={"config": dumps(record.config), "v": version_stamp()})
                    pipe.incr(self._keys.containers_generation)
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
        return (await self.resolve_with_execs(ref, execs=False))[0]

    async def resolve_with_execs(self, ref: str, *, execs: bool = True) -> tuple[ContainerRecord, list[str]]:
        """:meth:`resolve`, and (``execs``) the ids of the container's execs, in one round trip."""
        id, raw, exec_ids = await self.resolve_raw(ref, execs=execs)
        return decode_resolved(ref, id, raw), exec_ids

    async def resolve_raw(self, ref: str, *, execs: bool = True) -> tuple[str, dict[bytes, bytes], list[str]]:
        """:meth:`resolve_with_execs` with the record as Redis holds it (field → value), not decoded."""
        keys, args = self.resolve_keys_args(ref)
        reply = await self._resolve(keys=keys, args=[*args, "1" if execs else ""])
        id, raw = self._parse(ref, reply)
        return id, raw, sorted(text(i) for i in reply[3]) if execs else []

    def resolve_keys_args(self, ref: str) -> tuple[list[str], list[str | bytes]]:
        """KEYS and the first three ARGV of a script built on RESOLVE_LUA, for ``ref``."""
        if not ref:
            raise ContainerNotFound("No such container: ")
        return [self._keys.names, self._keys.containers_lex], [ref, ref.encode() + b"\xff", self._keys.container("")]

    def parse_resolved(self, ref: str, reply: Any) -> ContainerRecord:
        """The record of a ``resolved_reply`` (RESOLVE_LUA), or the error it means."""
        return decode_resolved(ref, *self._parse(ref, reply))

    def _parse(self, ref: str, reply: Any) -> tuple[str, dict[bytes, bytes]]:
        """A ``resolved_reply``'s id and fields. A record with a ``v`` stamp is kept as
        :meth:`recent`'s guess for ``ref``."""
        outcome = reply[0]
        if outcome == b"multiple":
            raise InvalidArgument(f"multiple IDs found with provided prefix: {ref}")
        if outcome == b"gone":
            raise ContainerNotFound(f"No such container: {text(reply[1])}")
        if outcome != b"ok":
            raise ContainerNotFound(f"No such container: {ref}")
        id, flat = text(reply[1]), reply[2]
        raw = dict(zip(flat[::2], flat[1::2], strict=True))
        stamp = raw.get(b"v")
        if stamp and b"config" in raw:
            remember(self._recent, ref, (id, stamp, raw), _RECENT)
        return id, raw

    def recent(self, ref: str) -> tuple[ContainerRecord, bytes] | None:
        """The record ``ref`` named when this server last resolved it, and its ``v`` stamp: a
        guess, for a script that acts only if the reference still names that container with
        that stamp (any write to the record changes it), as the exec create does."""
        entry = self._recent.get(ref)
        if entry is None:
            return None
        id, stamp, raw = entry
        record = _decode(id, raw)
        return (record, stamp) if record is not None else None

    async def all(self) -> list[ContainerRecord]:
        """Every container, newest first."""
        return [c.record() for c in await self.cached(net=True)]

    async def cached(self, *, net: bool = False) -> list[CachedRecord]:
        """Every container, newest first, as :class:`CachedRecord` (shared with other callers:
        read them, don't change them). Records unchanged since the last call are not read again.

        ``net`` is current for the containers that run (the only ones whose ports a list shows),
        and for all of them with ``net=True``."""
        generation = await self._redis.get(self._keys.containers_generation)
        memo = self._memo.get(net)
        if generation is not None and memo is not None and memo[0] == generation:
            return list(memo[1])  # no container changed since that list
        listed = await self._validated(net)
        if generation is not None:  # read before the validation: a write meanwhile shows next time
            self._memo = {net: (generation, listed)}
        return list(listed)

    async def _validated(self, net: bool) -> list[CachedRecord]:
        """:meth:`cached` by each record's stamp."""
        cache = self._cache
        args: list[str | bytes] = [self._keys.container(""), "*" if net else ""]
        if not net:
            args += [id for id, c in cache.items() if c.running]
        count, joined = await self._list_stamps(keys=[self._keys.containers], args=args)
        parts = joined.split(_SEP) if count else []
        if len(parts) != 3 * count:  # not in the expected shape: read everything
            ids = await self._redis.zrevrange(self._keys.containers, 0, -1)
            parts = [p for id in ids for p in (id, b"", b"")]
        kept: dict[bytes, CachedRecord] = {}  # the next cache: removed containers go
        found: list[CachedRecord | None] = []
        stale: list[tuple[int, bytes]] = []
        for i in range(0, len(parts), 3):
            id, version, net_now = parts[i], parts[i + 1], parts[i + 2]
            hit = cache.get(id)
            if hit is not None and version and hit.version == version and (
                    net_now == _UNREAD or net_now == (hit.net or b"")):
                found.append(hit)
                kept[id] = hit
            else:
                stale.append((len(found), id))
                found.append(None)
        if stale:
            for (index, id), record in zip(stale, await self._read([id for _, id in stale]), strict=True):
                found[index] = record
                if record is not None and record.version:
                    kept[id] = record
        self._cache = kept
        return [c for c in found if c is not None]

    async def _read(self, ids: list[bytes]) -> list[CachedRecord | None]:
        reply = await self._fetch(keys=[self._keys.container(text(id)) for id in ids])
        parts = reply.split(_SEP) if reply else []
        width = len(_FIELDS)
        if len(parts) != width * len(ids):  # not in the expected shape: read field by field
            async with self._redis.pipeline(transaction=False) as pipe:
                for id in ids:
                    pipe.hmget(self._keys.container(text(id)), *_FIELDS)
                rows = await pipe.execute()
            parts = [value or b"" for row in rows for value in row]
        out: list[CachedRecord | None] = []
        for n, id in enumerate(ids):
            version, node, config, state, net = parts[n * width:(n + 1) * width]
            if not config:
                out.append(None)
                continue
            status = loads(state).get("status", "created") if state else "created"
            out.append(CachedRecord(id=id.decode(), version=version, node=node.decode(), config=config,
                                    state=state or None, net=net or None, running=status in _RUNNING))
        return out

    async def delete(self, record: ContainerRecord) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._keys.container(record.id))
            pipe.delete(self._keys.autoremove_claim(record.id))
            pipe.delete(self._keys.container_execs(record.id))
            pipe.zrem(self._keys.containers, record.id)
            pipe.zrem(self._keys.containers_lex, record.id)
            pipe.incr(self._keys.containers_generation)
            await pipe.execute()
        await self.release_name(record.name, record.id)

    async def claim_autoremove(self, id: str) -> bool:
        """True for exactly one caller per exit (many API servers may share Redis)."""
        return bool(await self._redis.set(self._keys.autoremove_claim(id), "1", nx=True, ex=300))
