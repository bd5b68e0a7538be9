"""RedisStateSink against a real redis-server: state only into existing container records,
Docker-shaped events with dockerd's attributes."""

from __future__ import annotations

import json
from dataclasses import asdict

import redis.asyncio as aioredis

from common.keys import Keys
from shim.api import ContainerState, EventType, ExecState, Status, TaskEvent
from shim.redis_sink import RedisStateSink

ID = "a" * 64


def state(status: Status, **kw: object) -> ContainerState:
    return ContainerState(id=ID, status=status, log_path="/x", **kw)  # type: ignore[arg-type]


async def stream(redis: aioredis.Redis, keys: Keys) -> list[dict[str, object]]:
    return [json.loads(fields[b"e"]) for _, fields in await redis.xrange(keys.events) or [] if fields]


async def stored(redis: aioredis.Redis, keys: Keys, id: str) -> dict[str, object]:
    raw = await redis.hget(keys.container(id), "state")
    assert raw is not None
    return dict(json.loads(raw))


async def test_records_state_and_docker_events(redis_client: aioredis.Redis, keys: Keys) -> None:
    config = {"Name": "/web", "Config": {"Image": "busybox:latest", "Labels": {"com.example": "1", "tier": "x"}}}
    await redis_client.hset(keys.container(ID), mapping={"config": json.dumps(config), "node": "n1"})
    sink = RedisStateSink(redis_client, keys)

    running = state(Status.RUNNING, pid=42, started_at_ns=1_000_000_000)
    await sink.record(TaskEvent(EventType.START, running))
    assert await stored(redis_client, keys, ID) == asdict(running)

    oom = state(Status.RUNNING, pid=42, started_at_ns=1_000_000_000, oom_killed=True)
    await sink.record(TaskEvent(EventType.OOM, oom))
    stopped = state(Status.STOPPED, exit_code=137, oom_killed=True, started_at_ns=1_000_000_000,
                    finished_at_ns=4_500_000_000)
    await sink.record(TaskEvent(EventType.EXIT, stopped))
    assert await stored(redis_client, keys, ID) == asdict(stopped)
    assert await redis_client.hget(keys.container(ID), "node") == b"n1"  # other fields untouched

    events = await stream(redis_client, keys)
    assert [(e["Type"], e["Action"], e["status"], e["id"], e["from"]) for e in events] == [
        ("container", "start", "start", ID, "busybox:latest"),
        ("container", "oom", "oom", ID, "busybox:latest"),
        ("container", "die", "die", ID, "busybox:latest")]
    base = {"name": "web", "image": "busybox:latest", "com.example": "1", "tier": "x"}
    assert [e["Actor"]["Attributes"] for e in events] == [  # type: ignore[index]
        base, base, {**base, "exitCode": "137", "execDuration": "3"}]

    await sink.record(TaskEvent(EventType.DELETE, stopped))  # the apiserver owns removal and "destroy"
    assert len(await stream(redis_client, keys)) == 3


async def test_never_creates_a_record(redis_client: aioredis.Redis, keys: Keys) -> None:
    sink = RedisStateSink(redis_client, keys)
    await sink.record(TaskEvent(EventType.EXIT, state(Status.STOPPED, exit_code=1)))
    await sink.sync([state(Status.STOPPED)])
    assert not await redis_client.exists(keys.container(ID))
    assert await stream(redis_client, keys) == []


async def test_sync_writes_current_states(redis_client: aioredis.Redis, keys: Keys) -> None:
    other = "b" * 64
    for id in (ID, other):
        await redis_client.hset(keys.container(id), mapping={"config": "{}"})
    sink = RedisStateSink(redis_client, keys)
    await sink.sync([state(Status.RUNNING, pid=7), ContainerState(id=other, status=Status.CREATED)])
    assert (await stored(redis_client, keys, ID))["pid"] == 7
    assert (await stored(redis_client, keys, other))["status"] == "created"
    await sink.record(TaskEvent(EventType.START, ContainerState(id=other, status=Status.RUNNING)))
    (event,) = await stream(redis_client, keys)
    assert event["Actor"] == {"ID": other, "Attributes": {}}  # a config without name/image/labels


async def test_exec_transitions_and_their_events(redis_client: aioredis.Redis, keys: Keys) -> None:
    """exec_die carries the container's current attributes: the sink keeps them by the record's
    ``v`` stamp, so a rename (a new stamp) is seen, and a removed container gets no writes."""
    def config(name: str) -> str:
        return json.dumps({"Name": f"/{name}", "Config": {"Image": "busybox", "Labels": {"tier": "x"}}})

    await redis_client.hset(keys.container(ID), mapping={"config": config("first"), "v": "s0"})
    sink = RedisStateSink(redis_client, keys)
    running = state(Status.RUNNING, pid=7)
    for n, name in enumerate(["first", "first", "renamed"]):
        if name == "renamed":  # as the apiserver's rename writes: config and a new stamp
            await redis_client.hset(keys.container(ID), mapping={"config": config("renamed"), "v": "s-renamed"})
        exec_id = f"e{n}"
        await redis_client.hset(keys.exec(exec_id), "config", "{}")
        await redis_client.sadd(keys.container_execs(ID), exec_id)
        started = ExecState(exec_id=exec_id, container_id=ID, pid=100 + n, running=True)
        await sink.record(TaskEvent(EventType.EXEC_START, running, exec=started))
        assert json.loads(await redis_client.hget(keys.exec(exec_id), "state"))["running"] is True
        done = ExecState(exec_id=exec_id, container_id=ID, pid=100 + n, exit_code=n)
        await sink.record(TaskEvent(EventType.EXEC_EXIT, running, exec=done))
        assert json.loads(await redis_client.hget(keys.exec(exec_id), "state"))["exit_code"] == n
        assert 0 < await redis_client.ttl(keys.exec(exec_id)) <= 600
        assert not await redis_client.sismember(keys.container_execs(ID), exec_id)
    dies = [e for e in await stream(redis_client, keys) if e["Action"] == "exec_die"]
    assert [(e["Actor"]["Attributes"]["name"], e["Actor"]["Attributes"]["execID"],  # type: ignore[index]
             e["Actor"]["Attributes"]["exitCode"]) for e in dies] == [  # type: ignore[index]
        ("first", "e0", "0"), ("first", "e1", "1"), ("renamed", "e2", "2")]
    assert all(e["Actor"]["Attributes"]["tier"] == "x" for e in dies)  # type: ignore[index]

    await redis_client.delete(keys.container(ID))  # removed meanwhile: nothing is written back
    late = ExecState(exec_id="e9", container_id=ID, pid=9, exit_code=0)
    await sink.record(TaskEvent(EventType.EXEC_EXIT, running, exec=late))
    assert not await redis_client.exists(keys.container(ID))
    assert len([e for e in await stream(redis_client, keys) if e["Action"] == "exec_die"]) == 3
