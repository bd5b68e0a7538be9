"""The content store's ingest (a write that readers follow while it grows) and blob labels."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest

from protos.errors import BlobNotFound, DigestMismatch
from snapshotter.content import LocalContentStore
from tests.snapshotter.layers import chunks_of, collect


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
async def store(scratch: Path) -> LocalContentStore:
    return await LocalContentStore.open(root=scratch / "content")


async def test_followers_read_while_it_grows_and_end_at_commit(store: LocalContentStore) -> None:
    data = os.urandom(3 << 20)
    ingest = await store.ingest(digest(data), len(data))
    early = asyncio.ensure_future(collect(ingest.follow()))
    got_first = asyncio.Event()

    async def watch() -> bytes:
        out = b""
        async for chunk in ingest.follow():
            out += chunk
            got_first.set()
        return out

    watcher = asyncio.ensure_future(watch())
    await ingest.write(data[:1 << 20])
    await asyncio.wait_for(got_first.wait(), 5)  # bytes reach followers before the blob is complete
    assert not early.done() and not watcher.done()
    await ingest.write(data[1 << 20:])
    await asyncio.sleep(0.05)
    assert not watcher.done(), "a follower must not end before the blob is verified"
    await ingest.commit()
    assert await early == data and await watcher == data
    assert await collect(store.read(digest(data))) == data
    late = await collect(ingest.follow(1000))  # after the commit: read from the store
    assert late == data[1000:]


async def test_a_mismatch_fails_followers_and_stores_nothing(store: LocalContentStore, scratch: Path) -> None:
    data = b"x" * 100_000
    ingest = await store.ingest(digest(b"something else"), len(data), mismatch="verification failed for X")
    follower = asyncio.ensure_future(collect(ingest.follow()))
    await ingest.write(data)
    with pytest.raises(DigestMismatch, match=r"^verification failed for X$"):
        await ingest.commit()
    with pytest.raises(DigestMismatch, match=r"^verification failed for X$"):
        await follower
    assert [b async for b in store.list()] == [] and os.listdir(scratch / "content" / "ingest") == []


async def test_too_many_bytes_fail_at_once(store: LocalContentStore, scratch: Path) -> None:
    ingest = await store.ingest(digest(b"abc"), 3, mismatch="too long")
    follower = asyncio.ensure_future(collect(ingest.follow()))
    with pytest.raises(DigestMismatch, match="too long"):
        await ingest.write(b"abcd")
    with pytest.raises(DigestMismatch, match="too long"):
        await follower
    assert os.listdir(scratch / "content" / "ingest") == []


async def test_write_still_verifies(store: LocalContentStore) -> None:
    data = b"hello"
    assert (await store.write(chunks_of(data), digest(data), 5)).digest == digest(data)
    with pytest.raises(DigestMismatch):
        await store.write(chunks_of(b"other"), digest(b"nope"))


async def test_labels_live_and_die_with_their_blob(store: LocalContentStore, scratch: Path) -> None:
    data = b"labelled"
    blob = (await store.write(chunks_of(data))).digest
    with pytest.raises(BlobNotFound):
        await store.labels(digest(b"absent"))
    assert await store.labels(blob) == {}
    assert await store.update_labels(blob, {"a": "1", "b": "2"}) == {"a": "1", "b": "2"}
    assert await store.update_labels(blob, {"a": "", "c": "3"}) == {"b": "2", "c": "3"}
    await asyncio.gather(*(store.update_labels(blob, {f"k{i}": "v"}) for i in range(20)))
    assert len(await store.labels(blob)) == 22  # concurrent updates lose nothing
    await store.delete(blob)
    assert os.listdir(scratch / "content" / "labels") == []
    (scratch / "content" / "labels" / digest(b"gone")[7:]).write_text("{}")  # left by a crash
    await store.cleanup()
    assert os.listdir(scratch / "content" / "labels") == []
