"""ExecBackend.create against a real redis-server: the exec is made from the container this
server resolved last under the same reference, in one call that checks it is still that one and
unchanged, and from a fresh read whenever it is not."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis

from apiserver.containers.store import ContainerRecord, ContainerStore
from apiserver.exec.backend import ExecBackend
from apiserver.fastjson import loads
from apiserver.nodes import NodeDirectory
from common.keys import Keys
from protos.errors import ContainerNotFound, ContainerNotRunning, InvalidArgument
from shim.api import ContainerState, EventType, Status, TaskEvent
from shim.redis_sink import RedisStateSink


def _record(n: int, workdir: str = "/w") -> ContainerRecord:
    return ContainerRecord(id=f"{n:064x}", state={}, node="n1", config={
        "Name": f"/c{n}", "Config": {"Image": "busybox", "WorkingDir": workdir, "Env": ["A=1"]}, "HostConfig": {}})


async def _running(redis_client: aioredis.Redis, keys: Keys, store: ContainerStore, record: ContainerRecord) -> None:
    await store.reserve_name(record.name, record.id)
    await store.put(record, 1)
    await RedisStateSink(redis_client, keys).record(
        TaskEvent(EventType.START, ContainerState(id=record.id, status=Status.RUNNING, pid=5, log_path="/x")))


async def _script_calls(redis_client: aioredis.Redis) -> int:
    """Scripts the server ran so far (a first EVALSHA refused with NOSCRIPT, then EVAL, counts
    once): the exec create makes no other call, one round trip each."""
    stats = await redis_client.info("commandstats")
    evalsha, eval_ = (stats.get(k, {}) for k in ("cmdstat_evalsha", "cmdstat_eval"))
    return int(evalsha.get("calls", 0)) - int(evalsha.get("failed_calls", 0)) + int(eval_.get("calls", 0))


def _backend(redis_client: aioredis.Redis, keys: Keys, store: ContainerStore) -> ExecBackend:
    async def no_connect(*_: Any) -> Any:
        raise AssertionError("no node is asked")

    return ExecBackend(redis=redis_client, keys=keys, containers=store,
                       nodes=NodeDirectory(redis_client, keys, no_connect))


async def _config(redis_client: aioredis.Redis, keys: Keys, exec_id: str) -> dict[str, Any]:
    raw = await redis_client.hget(keys.exec(exec_id), "config")
    assert raw is not None
    return dict(loads(raw))


async def test_exec_from_the_last_resolved_container(redis_client: aioredis.Redis, keys: Keys) -> None:
    store = ContainerStore(redis_client, keys)
    first = _record(0x1A)
    await _running(redis_client, keys, store, first)
    backend = _backend(redis_client, keys, store)
    assert store.recent("c26") is None
    await store.resolve("c26")  # docker exec inspects the container first
    guess = store.recent("c26")
    assert guess is not None and guess[0].id == first.id and guess[1]

    exec_id = await backend.create("c26", {"Cmd": ["true"], "Env": ["B=2"]})
    config = await _config(redis_client, keys, exec_id)
    assert (config["ContainerID"], config["WorkingDir"], config["Entrypoint"]) == (first.id, "/w", "true")
    assert "A=1" in config["Env"] and "B=2" in config["Env"]
    assert exec_id in await backend.ids(first.id)
    events = [loads(fields[b"e"]) for _, fields in await redis_client.xrange(keys.events) or () if fields]
    assert [e["Action"] for e in events if e["Actor"]["Attributes"].get("execID") == exec_id] == \
        ["exec_create: true"]


async def test_one_call_when_the_guess_holds(redis_client: aioredis.Redis, keys: Keys) -> None:
    store = ContainerStore(redis_client, keys)
    await _running(redis_client, keys, store, _record(0x2B))
    backend = _backend(redis_client, keys, store)
    await store.resolve("c43")
    before = await _script_calls(redis_client)
    await backend.create("c43", {"Cmd": ["true"]})
    await backend.create("c43", {"Cmd": ["true"], "DetachKeys": "ctrl-a,b"})
    assert await _script_calls(redis_client) - before == 2
    fresh = _backend(redis_client, keys, ContainerStore(redis_client, keys))  # a server that never resolved it
    before = await _script_calls(redis_client)
    await fresh.create("c43", {"Cmd": ["true"]})
    assert await _script_calls(redis_client) - before == 2


async def test_a_changed_container_is_read_again(redis_client: aioredis.Redis, keys: Keys) -> None:
    store, other_server = ContainerStore(redis_client, keys), ContainerStore(redis_client, keys)
    first = _record(0x3C)
    await _running(redis_client, keys, store, first)
    backend = _backend(redis_client, keys, store)
    await store.resolve("c60")
    changed = await other_server.get(first.id)
    changed.config["Config"]["WorkingDir"] = "/elsewhere"
    await other_server.save_config(changed)  # another API server updates it meanwhile

    exec_id = await backend.create("c60", {"Cmd": ["true"]})
    assert (await _config(redis_client, keys, exec_id))["WorkingDir"] == "/elsewhere"
    assert await redis_client.scard(keys.container_execs(first.id)) == 1  # written once


async def test_a_reference_that_names_another_container_now(redis_client: aioredis.Redis, keys: Keys) -> None:
    store = ContainerStore(redis_client, keys)
    first, second = _record(0x4D), _record(0x5E)
    await _running(redis_client, keys, store, first)
    await _running(redis_client, keys, store, second)
    backend = _backend(redis_client, keys, store)
    await store.resolve("c77")
    await store.rename(first.id, "gone")  # docker rename c77 gone; docker rename c94 c77
    await store.rename(second.id, "c77")

    exec_id = await backend.create("c77", {"Cmd": ["true"]})
    assert (await _config(redis_client, keys, exec_id))["ContainerID"] == second.id
    assert await backend.ids(first.id) == []


async def test_a_guess_never_hides_the_containers_errors(redis_client: aioredis.Redis, keys: Keys) -> None:
    store = ContainerStore(redis_client, keys)
    first = _record(0x6F)
    await _running(redis_client, keys, store, first)
    backend = _backend(redis_client, keys, store)
    await store.resolve("c111")
    await RedisStateSink(redis_client, keys).record(
        TaskEvent(EventType.EXIT, ContainerState(id=first.id, status=Status.STOPPED, exit_code=0, log_path="/x")))
    with pytest.raises(ContainerNotRunning, match=f"container {first.id} is not running"):
        await backend.create("c111", {"Cmd": ["true"]})

    await _running(redis_client, keys, store, _record(0x71))
    await store.resolve("c113")
    await store.delete(await store.get(_record(0x71).id))
    with pytest.raises(ContainerNotFound, match="No such container: c113"):
        await backend.create("c113", {"Cmd": ["true"]})
    with pytest.raises(InvalidArgument, match=r"Invalid escape keys \(nonsense\) provided"):
        second = _record(0x70)
        await _running(redis_client, keys, store, second)
        await store.resolve("c112")
        await backend.create("c112", {"Cmd": ["true"], "DetachKeys": "nonsense"})
    assert await redis_client.keys(keys.exec("*")) == []
