"""Progress lines: throttled at the source, coalesced for slow readers, closed with the work."""

from __future__ import annotations

import asyncio

import pytest

from protos.errors import NotFound
from snapshotter.api import Progress
from snapshotter.progress import ProgressChannel, Throttle, run_with_progress


async def test_pending_counts_are_replaced_not_queued() -> None:
    channel = ProgressChannel()
    channel.put(Progress("a", "Pulling fs layer"))
    for n in range(1, 1000):
        channel.put(Progress("a", "Downloading", n, 1000))
    channel.put(Progress("b", "Downloading", 5, 10))
    channel.put(Progress("a", "Download complete"))
    channel.put(Progress("a", "Extracting", 1, 10))
    channel.put(Progress("a", "Extracting", 2, 10))
    channel.close()
    got = []
    while (line := await channel.get()) is not None:
        got.append(line)
    assert got == [Progress("a", "Pulling fs layer"), Progress("a", "Downloading", 999, 1000),
                   Progress("b", "Downloading", 5, 10), Progress("a", "Download complete"),
                   Progress("a", "Extracting", 2, 10)]


async def test_throttle_sends_the_first_the_last_and_little_between() -> None:
    sent: list[Progress] = []
    throttle = Throttle(sent.append, "x", "Pushing", 10_000)
    for n in range(1, 10_001):
        throttle.update(n)
    assert sent[0].current == 1 and sent[-1].current == 10_000 and len(sent) <= 3
    throttle.finish(10_000)
    assert len(sent) <= 3  # already said
    throttle.finish(10_001)
    assert sent[-1].current == 10_001


async def test_result_comes_last_and_errors_surface() -> None:
    async def work(channel: ProgressChannel) -> str:
        channel.put(Progress("a", "Preparing"))
        await asyncio.sleep(0)
        return "done"

    assert [e async for e in run_with_progress(work)] == [Progress("a", "Preparing"), "done"]

    async def failing(channel: ProgressChannel) -> str:
        raise NotFound("no such image")

    with pytest.raises(NotFound, match="no such image"):
        async for _ in run_with_progress(failing):
            pass


async def test_closing_the_stream_cancels_the_work() -> None:
    stopped = asyncio.Event()

    async def work(channel: ProgressChannel) -> str:
        channel.put(Progress("a", "Downloading", 1, 2))
        try:
            await asyncio.sleep(60)
        finally:
            stopped.set()
        return "never"

    events = run_with_progress(work)
    assert await anext(events) == Progress("a", "Downloading", 1, 2)
    await events.aclose()
    assert stopped.is_set()  # the work was cancelled and waited for before aclose returned
