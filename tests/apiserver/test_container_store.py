"""ContainerStore's cached listing against a real redis-server: two stores (two API servers) and
the shim's sinks share one Redis, and every change any of them makes shows in the other's next
list — through the records' stamps and the containers' generation."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from apiserver.containers.store import ContainerRecord, ContainerStore
from common.keys import Keys
from protos.errors import ContainerNotFound, InvalidArgument
from shim.api import ContainerState, EventType, Status, TaskEvent
from shim.network.api import NetworkState
from shim.network.redis_state import RedisNetStateSink
from shim.redis_sink import RedisStateSink


def record(n: int) -> ContainerRecord:
    id = f"{n:064x}"
    return ContainerRecord(id=id, config={"Name": f"/c{n}", "Config": {"Image": "busybox"}, "HostConfig": {}},
                           state={}, node="n1")


async def listed(store: ContainerStore, *, net: bool = False) -> dict[str, tuple[str, str, object]]:
    out = {}
    for c in await store.cached(net=net):
        r = c.record()
        out[r.id] = (r.name, r.status, r.net)
    return out


async def test_every_writer_shows_in_the_other_servers_list(redis_client: aioredis.Redis, keys: Keys) -> None:
    a, b = ContainerStore(redis_client, keys), ContainerStore(redis_client, keys)
    first, second = record(1), record(2)
    await a.put(first, 1)
    await a.put(second, 2)
    assert {v[0] for v in (await listed(b)).values()} == {"c1", "c2"}
    assert await listed(b) == await listed(b)  # unchanged: served from the memo

    await a.rename(first.id, "renamed")
    assert (await listed(b))[first.id][0] == "renamed"

    sink = RedisStateSink(redis_client, keys)
    await sink.record(TaskEvent(EventType.START, ContainerState(id=second.id, status=Status.RUNNING, pid=5,
                                                                log_path="/x")))
    assert (await listed(b))[second.id][1] == "running"

    net = RedisNetStateSink(redis_client, keys)
    await net.record(second.id, NetworkState(sandbox_key="/run/netns/x"))
    assert (await listed(b, net=True))[second.id][2] != {}
    assert (await listed(b))[second.id][2] == (await listed(b, net=True))[second.id][2]

    first.config["Labels"] = {"x": "1"}
    await a.save_config(first)
    assert (await b.cached())[1].record().config.get("Labels") == {"x": "1"}  # newest first: c2, c1

    await a.delete(second)
    assert set(await listed(b)) == {first.id}
    generation = await redis_client.get(keys.containers_generation)
    assert int(generation or 0) >= 7  # every write above counted


async def test_resolve_in_one_round_trip(redis_client: aioredis.Redis, keys: Keys) -> None:
    store = ContainerStore(redis_client, keys)
    first, second = record(0x1abc), record(0x2abc)
    for n, r in enumerate((first, second)):
        await store.reserve_name(r.name, r.id)
        await store.put(r, n)
    await redis_client.sadd(keys.container_execs(first.id), "e2", "e1")
    for ref in (first.id, "c6844", "/c6844", first.id[:-3]):
        resolved, execs = await store.resolve_with_execs(ref)
        assert (resolved.id, resolved.name, execs) == (first.id, "c6844", ["e1", "e2"]), ref
    assert (await store.resolve(second.id[:-2])).id == second.id
    with pytest.raises(InvalidArgument, match=f"multiple IDs found with provided prefix: {first.id[:60]}"):
        await store.resolve(first.id[:60])
    for ref in ("nope", "abc", "f" * 64, "0" * 70):
        with pytest.raises(ContainerNotFound, match=f"No such container: {ref}"):
            await store.resolve(ref)
    await redis_client.hset(keys.names, "dangling", "d" * 64)  # a name whose record went
    with pytest.raises(ContainerNotFound, match="No such container: " + "d" * 64):
        await store.resolve("dangling")
