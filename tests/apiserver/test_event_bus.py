"""The API server's event bus and the ``--rm`` queue against a real redis-server: the bus follows
the stream only while someone subscribes, a subscriber sees every event appended after its
``subscribe`` returned, and the shim's sink queues the exits of ``--rm`` containers (after
their ``die`` event) for one API server to pop."""

from __future__ import annotations

import asyncio
import contextlib

import redis.asyncio as aioredis

from apiserver.events import EventBus
from common.events import append_event
from common.keys import Keys
from shim.api import ContainerState, EventType, Status, TaskEvent
from shim.redis_sink import RedisStateSink


async def test_follows_only_while_subscribed(redis_client: aioredis.Redis, keys: Keys) -> None:
    bus = EventBus(redis_client, keys)
    owner = asyncio.create_task(bus.run())
    try:
        await append_event(redis_client, keys, "container", "create", "a" * 64, {})
        assert bus._follower is None  # nobody listens: nothing reads the stream
        async with bus.subscribe(lambda e: e.action == "start") as sub:
            await append_event(redis_client, keys, "container", "create", "b" * 64, {})
            await append_event(redis_client, keys, "container", "start", "b" * 64, {})
            event = await asyncio.wait_for(sub.get(), 5)
            assert (event.action, event.actor_id) == ("start", "b" * 64)  # not the earlier ones
            assert sub.queue.empty()
        follower = bus._follower
        assert follower is not None and not follower.done()
        await append_event(redis_client, keys, "container", "die", "b" * 64, {})  # wakes it: nobody left
        await asyncio.wait_for(follower, 5)
        async with bus.subscribe() as sub:  # a new follower, positioned after everything so far
            assert bus._follower is not follower
            await append_event(redis_client, keys, "container", "destroy", "b" * 64, {})
            assert (await asyncio.wait_for(sub.get(), 5)).action == "destroy"
    finally:
        owner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await owner
    assert bus._follower is not None and bus._follower.done()


async def test_the_sink_queues_the_exits_of_rm_containers(redis_client: aioredis.Redis, keys: Keys) -> None:
    sink = RedisStateSink(redis_client, keys)
    for id, auto_remove in (("c" * 64, True), ("d" * 64, False)):
        await redis_client.hset(keys.container(id), mapping={
            "config": f'{{"Name": "/x", "Config": {{}}, "HostConfig": {{"AutoRemove": {str(auto_remove).lower()}}}}}'})
        for type, status in ((EventType.START, Status.RUNNING), (EventType.EXIT, Status.STOPPED)):
            await sink.record(TaskEvent(type, ContainerState(id=id, status=status, pid=5, log_path="/x")))
    assert await redis_client.lrange(keys.autoremove_queue, 0, -1) == [b"c" * 64]
    actions = [f[b"e"] for _, f in await redis_client.xrange(keys.events)]
    assert sum(b'"die"' in a for a in actions) == 2
