"""What only the local overlay snapshotter can show: atomicity under concurrency, the Redis
layout, the directory layout, cancellation, and Redis outages."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from common.keys import Keys
from protos.errors import AlreadyExists, FailedPrecondition, NotFound, Unavailable
from snapshotter.overlay import OverlaySnapshotter
from snapshotter.unpack import upper_dir
from tests.snapshotter.conftest import NODE, Stack
from tests.snapshotter.contract import commit_layer, keys_of


def snapshot_dirs(stack: Stack) -> set[str]:
    return set(os.listdir(stack.root / "snapshots"))


async def test_concurrent_prepares_of_one_key(local_stack: Stack) -> None:
    results = await asyncio.gather(*(local_stack.snapshotter.prepare("same") for _ in range(20)),
                                   return_exceptions=True)
    winners = [r for r in results if isinstance(r, list)]
    assert len(winners) == 1
    assert all(isinstance(r, AlreadyExists) for r in results if not isinstance(r, list))
    assert len(snapshot_dirs(local_stack)) == 1  # the losers left no directory behind


async def test_remove_of_a_parent_races_a_new_child(local_stack: Stack, redis_client: aioredis.Redis) -> None:
    s = local_stack.snapshotter
    keys = local_stack.keys
    for round_ in range(15):
        parent, child = f"p{round_}", f"c{round_}"
        await commit_layer(local_stack, parent)
        removed, prepared = await asyncio.gather(s.remove(parent), s.prepare(child, parent),
                                                 return_exceptions=True)
        if removed is None:
            assert isinstance(prepared, NotFound)
            assert await keys_of(local_stack, f"name=={child}") == set()
        else:
            assert isinstance(removed, FailedPrecondition) and isinstance(prepared, list)
            assert await redis_client.smembers(keys.snapshot_children(NODE, parent)) == {child.encode()}
            await s.remove(child)
            await s.remove(parent)
    assert await keys_of(local_stack) == set()
    assert not any(d.isdigit() for d in snapshot_dirs(local_stack))  # removed at once, emptied after
    await s.settle()
    assert len(snapshot_dirs(local_stack)) == 0


async def test_records_in_redis(local_stack: Stack, redis_client: aioredis.Redis) -> None:
    keys = local_stack.keys
    await commit_layer(local_stack, "a")
    await commit_layer(local_stack, "b", "a")
    await local_stack.snapshotter.prepare("c", "b")
    raw = await redis_client.hgetall(keys.snapshot(NODE, "c"))
    rec = {k.decode(): v.decode() for k, v in raw.items() if isinstance(k, bytes) and isinstance(v, bytes)}
    assert (rec["kind"], rec["parent"], rec["chain"], rec["depth"]) == ("active", "b", "2,1", "2")
    assert await redis_client.smembers(keys.snapshot_index(NODE)) == {b"a", b"b", b"c"}
    assert await redis_client.smembers(keys.snapshot_children(NODE, "a")) == {b"b"}
    assert await redis_client.get(keys.snapshot_seq(NODE)) == b"3"
    assert not await redis_client.exists(keys.snapshot(NODE, "build-b"))  # renamed on commit


async def test_commit_keeps_the_directory(local_stack: Stack) -> None:
    mounts = await local_stack.snapshotter.prepare("k")
    fs = upper_dir(mounts)[0]
    await local_stack.snapshotter.commit("n", "k")
    child = await local_stack.snapshotter.prepare("child", "n")
    assert upper_dir(child)[1] == [fs]


async def test_directory_layout_and_modes(local_stack: Stack) -> None:
    assert stat.S_IMODE(os.stat(local_stack.root).st_mode) == 0o700
    active = Path(upper_dir(await local_stack.snapshotter.prepare("a"))[0])
    assert stat.S_IMODE(os.stat(active).st_mode) == 0o755
    assert (active.parent / "work").is_dir()
    view = Path((await local_stack.snapshotter.view("v"))[0].source)
    assert not (view.parent / "work").exists()
    assert active.parent.name.isdigit() and view.parent.name.isdigit()


async def test_child_upper_is_owned_like_the_parent_root(local_stack: Stack) -> None:
    mounts = await local_stack.snapshotter.prepare("remapped")
    os.chown(upper_dir(mounts)[0], 100000, 100000)
    await local_stack.snapshotter.commit("base", "remapped")
    child = Path(upper_dir(await local_stack.snapshotter.prepare("ctr", "base"))[0])
    st = os.stat(child)
    assert (st.st_uid, st.st_gid) == (100000, 100000)


async def test_nodes_do_not_see_each_other(local_stack: Stack, snapshot_redis: aioredis.Redis,
                                           scratch: Path) -> None:
    await local_stack.snapshotter.prepare("mine")
    other = await OverlaySnapshotter.open(root=scratch / "other", redis=snapshot_redis, keys=local_stack.keys,
                                          node="another-node")
    assert [i async for i in other.list()] == []
    await other.prepare("mine")  # same key, other node: no conflict


async def test_cancelled_creates_are_all_or_nothing(local_stack: Stack) -> None:
    s = local_stack.snapshotter
    for i in range(30):
        task = asyncio.create_task(s.prepare(f"k{i}"))
        for _ in range(i % 6):
            await asyncio.sleep(0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    recorded = {info.name async for info in s.list()}
    assert len(recorded) == len(snapshot_dirs(local_stack))  # every record has its directory, no more
    assert await s.cleanup() == 0


async def test_redis_outage_is_unavailable(scratch: Path) -> None:
    # No retries: redis-py's default backoff would only make the test slow.
    dead = aioredis.Redis(unix_socket_path=str(scratch / "no-redis.sock"), retry=Retry(NoBackoff(), 0))
    s = await OverlaySnapshotter.open(root=scratch / "r", redis=dead, keys=Keys("x"), node="n")
    with pytest.raises(Unavailable):
        await s.prepare("k")
    with pytest.raises(Unavailable):
        await s.stat("k")
    assert os.listdir(scratch / "r" / "snapshots") == []
    await dead.aclose()
