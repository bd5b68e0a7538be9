"""The hosts of the cluster as the API server uses them: node records from Redis, a connection to
each node's shim and snapshotter, and placement of new containers (spread, like classic Swarm).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import redis.asyncio as aioredis
import structlog

from common import nodes
from common.keys import Keys
from common.nodes import NodeRecord
from protos.errors import InvalidArgument, Unavailable
from shim.api import Runtime
from shim.network.api import Networks
from shim.storage.api import ContainerFiles, Volumes
from snapshotter.api import ContentStore, Images, Snapshotter

log = structlog.get_logger()


@dataclass(slots=True)
class HostServices:
    """One node's services behind their Protocols (remote proxies in production)."""

    node: NodeRecord
    runtime: Runtime
    snapshots: Snapshotter
    content: ContentStore
    images: Images
    close: Callable[[], Awaitable[None]]
    networks: Networks
    files: ContainerFiles  # running containers' files (docker cp)
    volumes: Volumes  # the local volume driver's data on this node


Connector = Callable[[NodeRecord], Awaitable[HostServices]]


class NodeDirectory:
    def __init__(self, redis: aioredis.Redis, keys: Keys, connect: Connector) -> None:
        self._redis = redis
        self._keys = keys
        self._connect = connect
        self._hosts: dict[str, HostServices] = {}
        self._lock = asyncio.Lock()

    async def records(self) -> list[NodeRecord]:
        return await nodes.get_nodes(self._redis, self._keys)

    async def record(self, node_id: str) -> NodeRecord:
        raw = await self._redis.hget(self._keys.nodes, node_id)
        if raw is None:
            raise Unavailable(f"node {node_id} is not known to the cluster")
        return NodeRecord.from_json(raw)

    async def is_up(self, node_id: str) -> bool:
        return await nodes.node_is_up(self._redis, self._keys, node_id, ("shim", "snapshotter"))

    async def host(self, node_id: str) -> HostServices:
        """Services of ``node_id``; reconnects when the node re-registered at new addresses."""
        return await self.host_of(await self.record(node_id))

    async def host_of(self, record: NodeRecord) -> HostServices:
        """:meth:`host` for a node record the caller just read (with what it read anyway)."""
        node_id = record.id
        async with self._lock:
            cached = self._hosts.get(node_id)
            if cached is not None and _addresses(cached.node) == _addresses(record):
                return cached
            if cached is not None:
                await cached.close()
            if not record.shim_address or not record.snapshotter_address:
                raise Unavailable(f"node {record.hostname or node_id} has no running shim or snapshotter")
            host = await self._connect(record)
            self._hosts[node_id] = host
            return host

    async def up_nodes(self) -> list[NodeRecord]:
        records = await self.records()
        up = []
        for record in records:
            if record.availability == "active" and await self.is_up(record.id):
                up.append(record)
        return up

    async def place(self, *, candidates: set[str] | None,
                    load: Counter[str] | Callable[[], Awaitable[Counter[str]]],
                    constraints: list[str] = (),  # type: ignore[assignment]
                    prefer: set[str] | frozenset[str] = frozenset()) -> NodeRecord:
        """Pick the up node with the fewest containers among ``candidates`` (None = any) that
        satisfies every ``constraint`` (``node==name``, ``node!=name``, ``label==v``); between
        equally loaded nodes, one in ``prefer`` (those that hold the image already). ``load``
        may be a function that counts, called only when there is a choice to make."""
        eligible = [n for n in await self.up_nodes() if candidates is None or n.id in candidates]
        for constraint in constraints:
            eligible = [n for n in eligible if _satisfies(n, constraint)]
        if not eligible:
            raise Unavailable("no suitable node (node down, or constraints unsatisfiable)")
        if len(eligible) == 1:
            return eligible[0]
        counts = load if isinstance(load, Counter) else await load()
        return min(eligible, key=lambda n: (counts[n.id], n.id not in prefer, n.hostname, n.id))

    async def close(self) -> None:
        async with self._lock:
            for host in self._hosts.values():
                await host.close()
            self._hosts.clear()


def _addresses(record: NodeRecord) -> tuple[str, str, str]:
    """Where a node's services are: another one, and the node's host services are connected anew."""
    return record.shim_address, record.snapshotter_address, record.exec_socket_id


def _satisfies(node: NodeRecord, constraint: str) -> bool:
    negate = "!=" in constraint
    key, _, value = constraint.partition("!=" if negate else "==")
    key, value = key.strip(), value.strip()
    if not key or not value:
        raise InvalidArgument(f"invalid constraint: {constraint}")
    if key in ("node", "node.hostname"):
        actual = {node.hostname, node.id}
        match = value in actual
    elif key == "node.id":
        match = value == node.id
    else:
        label = key.removeprefix("node.labels.").removeprefix("engine.labels.")
        match = node.labels.get(label) == value
    return match != negate
