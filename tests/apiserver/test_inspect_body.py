"""The kept inspect bodies against a real redis-server: byte for byte what the view gives, built
again after every kind of write to the record (another API server's, the shim's state and
network), and not before."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import redis.asyncio as aioredis

from apiserver.containers import inspect_body, views
from apiserver.containers.inspect_body import InspectBodies, split_body
from apiserver.containers.store import ContainerRecord, ContainerStore
from apiserver.fastjson import dumps
from common.keys import Keys
from protos.errors import ContainerNotFound
from shim.api import ContainerState, EventType, Status, TaskEvent
from shim.network.api import NetworkState
from shim.network.redis_state import RedisNetStateSink
from shim.redis_sink import RedisStateSink


@pytest.mark.parametrize("view", [
    {"Id": "x", "ExecIDs": None, "Config": {"A": [1, "\"ExecIDs\":"]}},
    {"ExecIDs": None, "B": 2},
    {"A": 1, "ExecIDs": None},
    {"ExecIDs": None},
])
def test_halves_around_the_exec_ids(view: dict[str, Any]) -> None:
    head, tail = split_body(view)
    for ids in (None, ["e1"], ["e1", "e2"]):
        assert head + dumps(ids) + tail == dumps({**view, "ExecIDs": ids})


def _record(n: int) -> ContainerRecord:
    return ContainerRecord(id=f"{n:064x}", state={}, node="n1", config={
        "Name": f"/c{n}", "Created": "2026-11-24T00:00:00Z", "Path": "sleep", "Args": ["1"], "Image": "sha256:1",
        "Config": {"Image": "busybox", "Labels": {"a": "1"}}, "HostConfig": {"NetworkMode": "default"}})


async def test_a_body_per_version_of_the_record(redis_client: aioredis.Redis, keys: Keys,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    store, other_server = ContainerStore(redis_client, keys), ContainerStore(redis_client, keys)
    first = _record(0x1A)
    await store.reserve_name(first.name, first.id)
    await store.put(first, 1)
    bodies = InspectBodies()
    built = 0

    def counted_view(record: ContainerRecord, **kwargs: Any) -> dict[str, Any]:
        nonlocal built
        built += 1
        return views.inspect_view(record, **kwargs)

    monkeypatch.setattr(inspect_body, "views", SimpleNamespace(inspect_view=counted_view))

    async def inspect() -> bytes:
        id, raw, execs = await store.resolve_raw("c26")
        body = bodies.body("c26", id, raw, execs)
        record, exec_ids = await store.resolve_with_execs("c26")
        assert body == dumps(views.inspect_view(record, exec_ids=exec_ids)) + b"\n"
        return body

    await inspect()
    await inspect()
    assert built == 1
    await redis_client.sadd(keys.container_execs(first.id), "e2", "e1")
    assert b'"ExecIDs":["e1","e2"]' in await inspect()
    assert built == 1  # exec ids go between the kept halves

    sink = RedisStateSink(redis_client, keys)
    await sink.record(TaskEvent(EventType.START, ContainerState(id=first.id, status=Status.RUNNING, pid=5,
                                                                log_path="/x")))
    assert b'"Running":true' in await inspect()
    await RedisNetStateSink(redis_client, keys).record(first.id, NetworkState(sandbox_key="/run/netns/x"))
    assert b"/run/netns/x" in await inspect()
    assert built == 3
    await other_server.rename(first.id, "renamed")
    with pytest.raises(ContainerNotFound):
        await store.resolve_raw("c26")
    id, raw, execs = await store.resolve_raw("renamed")
    assert b'"Name":"/renamed"' in bodies.body("renamed", id, raw, execs)
    assert built == 4
