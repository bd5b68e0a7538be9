"""Network records, endpoints and IPAM in Redis (key layout in :mod:`common.keys`).

* A network is ``net:<id>`` (``config``: Docker's JSON plus Berth's ``Berth`` section), listed
  in ``nets``/``nets:lex``, named in ``netnames`` and its subnet in ``subnets``. Creation is one
  WATCH/MULTI transaction over the name and subnet indexes, so two API servers can neither
  create two networks of one name nor two overlapping subnets.
* An endpoint (a container on a network) is an entry of ``net:<id>:eps`` and owns one address
  of ``net:<id>:ipam`` (address as an integer → ``"<container id> <unix ns>"``). Attaching is
  one Lua script (network exists, container not yet attached, address free: allocate, record
  the endpoint), so concurrent API servers never hand out one address twice, and a network
  being removed (WATCH on its endpoints) cannot gain an endpoint unnoticed. Addresses are
  allocated round-robin from a cursor, as Docker's IPAM does, so a released address is not
  reused at once.
* Allocations survive restarts (they are Redis state); an allocation whose container never
  got its record (a crash in between) is released by :meth:`NetworkStore.collect_orphans`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError, WatchError

from common.keys import Keys, text
from protos.errors import Conflict, InvalidArgument, NotFound, PermissionDenied

_ATTACH = """
if redis.call('EXISTS', KEYS[1]) == 0 then return redis.error_reply('NOTFOUND') end
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return redis.error_reply('EXISTS') end
local addr
if ARGV[3] ~= '' then
  if redis.call('HSETNX', KEYS[3], ARGV[3], ARGV[6]) == 0 then return redis.error_reply('INUSE') end
  addr = tonumber(ARGV[3])
else
  local first, last = tonumber(ARGV[4]), tonumber(ARGV[5])
  local n = last - first + 1
  local cur = tonumber(redis.call('GET', KEYS[4]) or ARGV[4])
  if cur < first or cur > last then cur = first end
  for i = 0, n - 1 do
    local a = first + ((cur - first + i) % n)
    if redis.call('HSETNX', KEYS[3], string.format('%d', a), ARGV[6]) == 1 then
      addr = a
      redis.call('SET', KEYS[4], string.format('%d', a + 1))
      break
    end
  end
  if not addr then return redis.error_reply('FULL') end
end
local ep = cjson.decode(ARGV[2])
ep['Address'] = string.format('%d', addr)
redis.call('HSET', KEYS[2], ARGV[1], cjson.encode(ep))
return string.format('%d', addr)
"""

_DETACH = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 0 end
local ep = cjson.decode(raw)
local addr = ep['Address']
if addr then
  local owner = redis.call('HGET', KEYS[2], addr)
  if owner and string.sub(owner, 1, string.len(ARGV[1])) == ARGV[1] then
    redis.call('HDEL', KEYS[2], addr)
  end
end
redis.call('HDEL', KEYS[1], ARGV[1])
return 1
"""

_RELEASE = """
local owner = redis.call('HGET', KEYS[1], ARGV[1])
if owner == ARGV[2] then return redis.call('HDEL', KEYS[1], ARGV[1]) end
return 0
"""

GATEWAY_OWNER = "gateway"


@dataclass(slots=True)
class NetworkRecord:
    """``config`` is Docker's network JSON plus a ``Berth`` section (bridge device, whether the
    subnet was the user's, predefined)."""

    id: str
    config: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.config["Name"])

    @property
    def driver(self) -> str:
        return str(self.config.get("Driver", "bridge"))

    @property
    def berth(self) -> dict[str, Any]:
        value = self.config.get("Berth") or {}
        return value if isinstance(value, dict) else {}

    @property
    def predefined(self) -> bool:
        return bool(self.berth.get("Predefined"))

    @property
    def subnet(self) -> str:
        configs = (self.config.get("IPAM") or {}).get("Config") or []
        return str(configs[0].get("Subnet", "")) if configs else ""


def _decode(id: str, raw: Any) -> NetworkRecord | None:
    if not raw:
        return None
    return NetworkRecord(id=id, config=json.loads(raw))


class NetworkStore:
    def __init__(self, redis: aioredis.Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys
        self._attach = redis.register_script(_ATTACH)
        self._detach = redis.register_script(_DETACH)
        self._release = redis.register_script(_RELEASE)

    # Records ------------------------------------------------------------------------------------

    async def get(self, id: str) -> NetworkRecord:
        record = _decode(id, await self._redis.hget(self._keys.network(id), "config"))
        if record is None:
            raise NotFound(f"network {id} not found")
        return record

    async def find(self, ref: str) -> NetworkRecord | None:
        try:
            return await self.resolve(ref)
        except NotFound:
            return None

    async def resolve(self, ref: str) -> NetworkRecord:
        """Full id, then name, then unique id prefix (moby's order)."""
        if not ref:
            raise NotFound("network  not found")
        if len(ref) == 64:
            record = _decode(ref, await self._redis.hget(self._keys.network(ref), "config"))
            if record is not None:
                return record
        owner = await self._redis.hget(self._keys.network_names, ref)
        if owner is not None:
            return await self.get(text(owner))
        if all(c in "0123456789abcdef" for c in ref):
            ids = await self._redis.zrangebylex(self._keys.networks_lex, f"[{ref}", f"[{ref}\xff", start=0, num=3)
            if len(ids) > 1:
                raise InvalidArgument(f"network {ref} is ambiguous ({len(ids)} matches found based on ID prefix)")
            if ids:
                return await self.get(text(ids[0]))
        raise NotFound(f"network {ref} not found")

    async def all(self) -> list[NetworkRecord]:
        ids = [text(i) for i in await self._redis.zrange(self._keys.networks, 0, -1)]
        if not ids:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for id in ids:
                pipe.hget(self._keys.network(id), "config")
            raws = await pipe.execute()
        return [r for id, raw in zip(ids, raws, strict=True) if (r := _decode(id, raw)) is not None]

    async def subnets(self) -> dict[str, str]:
        raw = await self._redis.hgetall(self._keys.subnets)
        return {text(k): text(v) for k, v in raw.items()}

    async def create(self, record: NetworkRecord, *, created_ns: int, choose: Any = None,
                     gateway_of: Any = None) -> NetworkRecord:
        """Store a new network atomically with its name and subnet. ``choose(used subnets)``
        picks the subnet when the record has none; ``gateway_of(record)`` returns the gateway
        address (an int) reserved in its IPAM."""
        keys = self._keys
        while True:
            async with self._redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(keys.network_names, keys.subnets)
                    if await pipe.hexists(keys.network_names, record.name):
                        raise Conflict(f"network with name {record.name} already exists")
                    used = {text(k): text(v) for k, v in (await pipe.hgetall(keys.subnets)).items()}
                    if choose is not None:
                        record = choose(record, used)
                    subnet = record.subnet
                    pipe.multi()  # type: ignore[no-untyped-call]
                    pipe.hset(keys.network(record.id), "config", json.dumps(record.config))
                    pipe.zadd(keys.networks, {record.id: created_ns})
                    pipe.zadd(keys.networks_lex, {record.id: 0})
                    pipe.hset(keys.network_names, record.name, record.id)
                    if subnet:
                        pipe.hset(keys.subnets, subnet, record.id)
                    if gateway_of is not None:
                        gateway = gateway_of(record)
                        if gateway is not None:
                            pipe.hset(keys.ipam(record.id), str(gateway), GATEWAY_OWNER)
                    await pipe.execute()
                    return record
                except WatchError:
                    continue

    async def save(self, record: NetworkRecord) -> None:
        await self._redis.hset(self._keys.network(record.id), "config", json.dumps(record.config))

    async def delete(self, record: NetworkRecord, *, in_use: Any) -> None:
        """Remove the network unless it has endpoints (``in_use(endpoints)`` raises then)."""
        keys = self._keys
        while True:
            async with self._redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(keys.network_endpoints(record.id))
                    raw = await pipe.hgetall(keys.network_endpoints(record.id))
                    if raw:
                        in_use({text(k): json.loads(v) for k, v in raw.items()})
                    pipe.multi()  # type: ignore[no-untyped-call]
                    pipe.delete(keys.network(record.id), keys.network_endpoints(record.id), keys.ipam(record.id),
                                keys.ipam_cursor(record.id))
                    pipe.zrem(keys.networks, record.id)
                    pipe.zrem(keys.networks_lex, record.id)
                    pipe.hdel(keys.network_names, record.name)
                    if record.subnet:
                        pipe.hdel(keys.subnets, record.subnet)
                    await pipe.execute()
                    return
                except WatchError:
                    continue

    # Endpoints and IPAM ---------------------------------------------------------------------------

    async def attach(self, network_id: str, container_id: str, endpoint: dict[str, Any], *,
                     requested: int | None, first: int, last: int) -> int:
        """Allocate an address (``requested`` or the next free one in [first, last]) and record
        the endpoint; returns the address as an integer."""
        keys = self._keys
        try:
            result = await self._attach(
                keys=[keys.network(network_id), keys.network_endpoints(network_id), keys.ipam(network_id),
                      keys.ipam_cursor(network_id)],
                args=[container_id, json.dumps(endpoint), "" if requested is None else str(requested),
                      str(first), str(last), f"{container_id} {time.time_ns()}"])
        except ResponseError as exc:
            reason = str(exc)
            if "NOTFOUND" in reason:
                raise NotFound(f"network {network_id} not found") from None
            if "EXISTS" in reason:
                raise PermissionDenied(f"endpoint with name {endpoint.get('Name', container_id)} already "
                                       f"exists in network {endpoint.get('Network', network_id)}") from None
            if "INUSE" in reason:
                raise Conflict("Address already in use") from None
            if "FULL" in reason:
                raise Conflict("no available IPv4 addresses on this network's address pools") from None
            raise
        return int(text(result))

    async def detach(self, network_id: str, container_id: str) -> bool:
        keys = self._keys
        return bool(await self._detach(keys=[keys.network_endpoints(network_id), keys.ipam(network_id)],
                                       args=[container_id]))

    async def endpoints(self, network_id: str) -> dict[str, dict[str, Any]]:
        raw = await self._redis.hgetall(self._keys.network_endpoints(network_id))
        return {text(k): json.loads(v) for k, v in raw.items()}

    async def endpoint(self, network_id: str, container_id: str) -> dict[str, Any] | None:
        raw = await self._redis.hget(self._keys.network_endpoints(network_id), container_id)
        return json.loads(raw) if raw else None

    async def allocations(self, network_id: str) -> dict[int, str]:
        raw = await self._redis.hgetall(self._keys.ipam(network_id))
        return {int(text(k)): text(v) for k, v in raw.items()}

    async def collect_orphans(self, network_id: str, *, container_exists: Any, grace_ns: int) -> int:
        """Release allocations and endpoints whose container has no record (older than the
        grace period, so a create in progress elsewhere is left alone)."""
        released = 0
        now = time.time_ns()
        endpoints = await self.endpoints(network_id)
        for address, owner in (await self.allocations(network_id)).items():
            if owner == GATEWAY_OWNER:
                continue
            container, _, stamp = owner.partition(" ")
            if now - int(stamp or 0) < grace_ns or await container_exists(container):
                continue
            await self._release(keys=[self._keys.ipam(network_id)], args=[str(address), owner])
            released += 1
        for container in endpoints:
            if not await container_exists(container):
                await self.detach(network_id, container)
                released += 1
        return released
