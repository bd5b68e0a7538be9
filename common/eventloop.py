"""berthd's event loop: uvloop's, whose loop and transports are C (asyncio's own runs Python
for every read, write and callback; per ``docker exec`` berthd spends ~16% less CPU on uvloop).

The supervisor stays on asyncio's loop: uvloop keeps SIGCHLD for itself, and the supervisor
reaps every container. The shim and the snapshotter serve gRPC, whose asyncio integration is
what they are tested with.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import uvloop

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)
