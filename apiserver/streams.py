"""Helpers for long-lived responses: stop when the client leaves, parse Docker's time params."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, TypeVar

from apiserver.containers.views import parse_rfc3339
from protos.errors import InvalidArgument

T = TypeVar("T")


async def until_disconnected(transport: asyncio.BaseTransport | None, poll: float = 0.5) -> None:
    """Return once the client connection is closing. aiohttp does not cancel handlers when the
    client leaves (and must not for mutating requests), so long waits poll for it."""
    while transport is not None and not transport.is_closing():
        await asyncio.sleep(poll)


async def until(items: AsyncIterator[T], stop: asyncio.Future[Any] | None) -> AsyncIterator[T]:
    """Iterate ``items`` until it ends or ``stop`` completes; closes ``items`` either way."""
    iterator = aiter(items)
    try:
        while True:
            step = asyncio.ensure_future(anext(iterator))
            waiting: set[asyncio.Future[Any]] = {step}
            if stop is not None:
                waiting.add(stop)
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if step not in done:
                step.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await step
                return
            try:
                yield step.result()
            except StopAsyncIteration:
                return
    finally:
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()


def unix_ns(raw: str | None) -> int:
    """``since``/``until`` as moby's ``timetypes.ParseTimestamps``: ``sec[.nsec]`` or RFC3339."""
    if not raw:
        return 0
    try:
        sec, _, frac = raw.partition(".")
        return int(sec) * 1_000_000_000 + int(frac.ljust(9, "0")[:9] or 0)
    except ValueError:
        try:
            return parse_rfc3339(raw)
        except ValueError:
            raise InvalidArgument(f"invalid timestamp: {raw!r}") from None
