"""berthd's event loop (common/eventloop.py)."""

from __future__ import annotations

import asyncio

import uvloop

from common import eventloop


def test_runs_on_uvloop_and_returns_the_result() -> None:
    async def main() -> bool:
        await asyncio.sleep(0)
        return isinstance(asyncio.get_running_loop(), uvloop.Loop)

    assert eventloop.run(main()) is True
