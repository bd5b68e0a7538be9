"""The network state the shim reports, in Redis: the ``net`` field of a container's hash
(written only while the hash exists, so a removed container is never resurrected), and the
cluster's network records (to garbage-collect bridges of networks removed meanwhile)."""

from __future__ import annotations

import json

import redis.asyncio as aioredis

from common.keys import Keys
from shim import wire
from shim.network.api import NetworkState

# ``net`` of the container hash KEYS[1] (ARGV[1]) while the hash exists; a change counts in the
# containers' generation KEYS[2].
_SET_NET = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
if redis.call('HGET', KEYS[1], 'net') ~= ARGV[1] then
  redis.call('HSET', KEYS[1], 'net', ARGV[1])
  redis.call('INCR', KEYS[2])
end
return 1
"""


class RedisNetStateSink:
    def __init__(self, redis: aioredis.Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys
        self._set = redis.register_script(_SET_NET)

    async def record(self, container: str, state: NetworkState) -> None:
        await self._set(keys=[self._keys.container(container), self._keys.containers_generation],
                        args=[json.dumps(wire.encode(state), separators=(",", ":"))])

    async def network_exists(self, network_id: str) -> bool:
        return bool(await self._redis.exists(self._keys.network(network_id)))
