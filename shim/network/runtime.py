"""``NetworkedRuntime``: any :class:`shim.api.Runtime` with container networking around it.

``create`` records the container's network and hands the runtime a spec that joins its
namespace and mounts its files; ``start`` wires the network before the process is forked (a
failure is a start error worded as Docker words it); every exit releases published ports and
resolver names (an exit the runtime reports on its own, e.g. a restart policy's, too: a watcher
follows the runtime's events); ``delete`` removes everything. Every other call goes straight
to the wrapped runtime.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog

from protos.errors import BerthError, StartFailed
from shim.api import ContainerSpec, ContainerState, EventType, Runtime, Status
from shim.network.manager import NetworkManager

log = structlog.get_logger()


class NetworkedRuntime:
    def __init__(self, inner: Runtime, manager: NetworkManager) -> None:
        self.inner = inner
        self.manager = manager
        self._watcher: asyncio.Task[None] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def watch(self) -> None:
        """Follow the runtime's events from now on (call before serving)."""
        events = self.inner.events()
        self._watcher = asyncio.get_running_loop().create_task(self._watch(events))

    async def _watch(self, events: Any) -> None:
        async for event in events:
            state = event.state
            try:
                if event.type is EventType.EXIT:
                    await self.manager.stopped(state.id, state.finished_at_ns)
                elif event.type is EventType.START and self.manager.manages(state.id):
                    # A start the runtime made by itself (restart policy): wire what is missing.
                    await self.manager.started(state.id, self._pid_of)
            except Exception as exc:  # one container's trouble must not stop the watcher
                log.warning("network_event_failed", container=state.id[:12], event=event.type.value,
                            error=str(exc))

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher

    async def _pid_of(self, id: str) -> int:
        state = await self.inner.state(id)
        return state.pid if state.status in (Status.RUNNING, Status.PAUSED) else 0

    async def create(self, spec: ContainerSpec) -> ContainerState:
        if not spec.networking.mode:
            return await self.inner.create(spec)
        wired = await self.manager.prepare(spec)
        try:
            return await self.inner.create(wired)
        except BaseException:
            await self.manager.forget(spec.id)
            raise

    async def start(self, id: str) -> ContainerState:
        if self.manager.manages(id):
            await self.inner.state(id)  # unknown ids fail as the runtime says, before any wiring
            try:
                await self.manager.setup(id, self._pid_of)
            except BerthError as exc:
                raise type(exc)(f"failed to set up container networking: {exc.message}") from None
            except OSError as exc:
                raise StartFailed(f"failed to set up container networking: {exc}") from None
        try:
            return await self.inner.start(id)
        except BaseException:
            if self.manager.manages(id):
                with contextlib.suppress(Exception):
                    await self.manager.stopped(id)
            raise

    async def delete(self, id: str, force: bool = False) -> ContainerState:
        state = await self.inner.delete(id, force)
        if self.manager.manages(id):
            self.manager.remove_soon(id)
        return state


async def networked(inner: Runtime, manager: NetworkManager) -> NetworkedRuntime:
    """Start ``manager``, reconcile it with the runtime's containers, and wrap the runtime.
    The event watcher is in place before reconciling, so no exit falls in between."""
    await manager.start()
    wrapped = NetworkedRuntime(inner, manager)
    await wrapped.watch()
    states = await inner.list()
    await manager.reconcile(running=[s.id for s in states if s.status in (Status.RUNNING, Status.PAUSED)],
                            known=[s.id for s in states], pid_of=wrapped._pid_of)
    return wrapped
