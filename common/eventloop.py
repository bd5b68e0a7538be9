"""berthd's event loop: uvloop's, whose loop and transports are C (asyncio's own runs Python
for every read, write and callback; per ``docker exec`` berthd spends ~16% less CPU on uvloop).

The supervisor stays on asyncio's loop: uvloop keeps SIGCHLD for itself, and the supervisor
reaps every container. So does the shim: its netlink sockets (pyroute2) are datagram endpoints
of a family uvloop does not open. The snapshotter is not on any hot path of the API.
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
