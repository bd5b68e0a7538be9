"""``LinuxRuntime``: the :class:`shim.api.Runtime` of this host, over the supervisor.

The supervisor (:mod:`shim.supervisor.server`) owns processes, stdio, logs and exit codes; this
class is its client inside the shim's RPC process. Every transition the supervisor reports is
recorded through the ``StateSink`` by one dispatcher task, strictly in the supervisor's order,
before the call that caused it returns and before any ``wait``/``stop`` is released; the
supervisor forgets an event only once it has been recorded (acknowledged), so a shim that dies
in between gets it again on restart.

The state cache (``state``, ``list``, ``wait``) is what has been recorded; after a (re)connect it
starts from the supervisor's snapshot. Logs are read straight from the json-file on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import os
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import structlog

from common import linux
from protos.errors import (
    ContainerNotFound,
    ContainerNotRunning,
    FailedPrecondition,
    NotModified,
    Unavailable,
)
from shim import jsonlog, top, wire
from shim.api import (
    AttachInput,
    AttachOptions,
    ContainerSpec,
    ContainerState,
    ContainerStats,
    EventType,
    ExecSpec,
    ExecState,
    LogBatch,
    LogEntry,
    LogsOptions,
    Output,
    Resources,
    RestartPolicy,
    StateSink,
    Status,
    Stream,
    TaskEvent,
    TopResult,
)
from shim.supervisor.client import AttachStream, Control
from shim.supervisor.exec_stream import ExecStream

log = structlog.get_logger()

Resync = Callable[[Sequence[ContainerState]], Awaitable[None]]

# Give up recording one event after this many tries (exponential backoff from 0.1 s, ~6 s).
RECORD_ATTEMPTS = 7
# A follower re-reads its log at least this often even without an inotify wake-up.
FOLLOW_POLL = 1.0
# Statuses in which a container counts as running for stop/kill/delete/wait (Docker's State.Running).
LIVE = frozenset({Status.RUNNING, Status.PAUSED, Status.RESTARTING})


class LinuxRuntime:
    """The containers of this host. Build with :meth:`connect`; :meth:`close` when done."""

    def __init__(self, socket_path: Path, sink: StateSink, *, on_resync: Resync | None = None) -> None:
        self._socket = socket_path
        self._sink = sink
        self._on_resync = on_resync
        self._control: Control | None = None
        self._states: dict[str, ContainerState] = {}
        self._snapshot_seq = 0
        self._recorded_seq = 0
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._dispatcher: asyncio.Task[None] | None = None
        self._synced = asyncio.Event()
        self._lost = asyncio.Event()
        self._seq_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._exit_waiters: dict[str, list[asyncio.Future[ContainerState]]] = {}
        self._subscribers: set[asyncio.Queue[TaskEvent | None]] = set()
        self._pending_attach: set[tuple[str, asyncio.Future[AttachStream]]] = set()
        self._followers: dict[str, set[asyncio.Event]] = {}
        self._watcher: _LogWatcher | None = None

    @classmethod
    async def connect(cls, socket_path: Path, sink: StateSink, *, on_resync: Resync | None = None) -> LinuxRuntime:
        """Connect to the supervisor at ``socket_path``, record what happened while nobody was
        connected, then (``on_resync``) hand over the current states; returns when in sync."""
        runtime = cls(socket_path, sink, on_resync=on_resync)
        try:
            await runtime._start()
        except BaseException:
            await runtime.close()
            raise
        return runtime

    async def _start(self) -> None:
        self._control = await Control.connect(self._socket, self._queue.put_nowait, self._on_lost)
        await self._control.request("hello")
        snapshot = await self._control.request("subscribe")
        self._snapshot_seq = self._recorded_seq = int(snapshot["seq"])
        self._states = {s.id: s for s in (wire.decode(ContainerState, raw) for raw in snapshot["states"])}
        self._dispatcher = asyncio.get_running_loop().create_task(self._dispatch())
        self._watcher = _LogWatcher.create()
        await self._synced.wait()
        if self._lost.is_set():
            raise Unavailable("supervisor connection lost")

    async def close(self) -> None:
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._dispatcher
        if self._control is not None:
            await self._control.close()
        if self._watcher is not None:
            self._watcher.close()
        for queue in self._subscribers:
            queue.put_nowait(None)
        self._fail_waiters(Unavailable("runtime closed"))

    @property
    def lost(self) -> asyncio.Event:
        """Set when the supervisor connection broke (the supervisor died)."""
        return self._lost

    def _on_lost(self) -> None:
        self._lost.set()
        self._synced.set()
        self._fail_waiters(Unavailable("supervisor connection lost"))

    def _fail_waiters(self, error: Exception) -> None:
        for _, fut in self._seq_waiters:
            if not fut.done():
                fut.set_exception(error)
        self._seq_waiters.clear()
        for futures in self._exit_waiters.values():
            for f in futures:
                if not f.done():
                    f.set_exception(error)
        self._exit_waiters.clear()
        for events in self._followers.values():
            for event in events:
                event.set()

    def _ctl(self) -> Control:
        if self._control is None or self._control.lost:
            raise Unavailable("supervisor connection lost")
        return self._control

    # Recording --------------------------------------------------------------------------------

    async def _dispatch(self) -> None:
        while True:
            message = await self._queue.get()
            if "replayed" in message:
                if self._on_resync is not None:
                    try:
                        await self._on_resync(list(self._states.values()))
                    except Exception as exc:  # Redis trouble must not stop the shim: log, go on
                        log.error("state_resync_failed", error=str(exc))
                self._synced.set()
                continue
            seq = int(message["seq"])
            try:
                raw = message["event"]
                event = TaskEvent(EventType(raw["type"]), wire.decode(ContainerState, raw["state"]),
                                  wire.decode(ExecState, raw["exec"]) if raw.get("exec") else None)
            except (KeyError, TypeError, ValueError, wire.ProtocolError) as exc:
                log.error("event_unreadable", seq=seq, error=str(exc))  # skipped, never wedges the queue
                self._recorded_seq = seq
                self._release_seq_waiters()
                continue
            await self._record(event)
            live = seq > self._snapshot_seq
            if live:
                self._apply(event)
            self._recorded_seq = seq
            if self._control is not None:
                self._control.send("ack", seq=seq)
            self._release_seq_waiters()
            if live:
                for queue in self._subscribers:
                    queue.put_nowait(event)

    async def _record(self, event: TaskEvent) -> None:
        delay = 0.1
        for attempt in range(1, RECORD_ATTEMPTS + 1):
            try:
                await self._sink.record(event)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("state_record_failed", container=event.state.id[:12], event=event.type.value,
                            attempt=attempt, error=str(exc))
                if attempt < RECORD_ATTEMPTS:
                    await asyncio.sleep(delay)
                    delay *= 2
        log.error("state_record_dropped", container=event.state.id[:12], event=event.type.value)

    def _apply(self, event: TaskEvent) -> None:
        state = event.state
        if event.type is EventType.DELETE:
            self._states.pop(state.id, None)
        else:
            self._states[state.id] = state
        if state.status not in LIVE or event.type is EventType.DELETE:
            for fut in self._exit_waiters.pop(state.id, []):
                if not fut.done():
                    fut.set_result(state)
        for follower in self._followers.get(state.id, ()):
            follower.set()

    def _release_seq_waiters(self) -> None:
        keep = []
        for seq, fut in self._seq_waiters:
            if seq <= self._recorded_seq:
                if not fut.done():
                    fut.set_result(None)
            else:
                keep.append((seq, fut))
        self._seq_waiters = keep

    async def _recorded(self, seq: int) -> None:
        """Return once the event ``seq`` has been recorded."""
        if seq <= self._recorded_seq:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._seq_waiters.append((seq, fut))
        await fut

    def _state(self, id: str) -> ContainerState:
        state = self._states.get(id)
        if state is None:
            raise ContainerNotFound(f"No such container: {id}")
        return state

    def _exit_future(self, id: str) -> asyncio.Future[ContainerState]:
        fut: asyncio.Future[ContainerState] = asyncio.get_running_loop().create_future()
        self._exit_waiters.setdefault(id, []).append(fut)
        return fut

    # Runtime ----------------------------------------------------------------------------------

    async def create(self, spec: ContainerSpec) -> ContainerState:
        raw = await self._ctl().request("create", spec=wire.encode(spec))
        state = wire.decode(ContainerState, raw)
        self._states[state.id] = state
        return state

    async def start(self, id: str) -> ContainerState:
        self._state(id)
        # An attach() made before this start() must be in place before the process runs.
        pending = [fut for key, fut in self._pending_attach if key == id]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        result, error = await self._ctl().call("start", cid=id)
        seq = int(result.get("seq", 0)) if isinstance(result, dict) else 0
        await self._recorded(seq)
        if error is not None:
            raise error
        return wire.decode(ContainerState, result["state"])

    async def kill(self, id: str, signal: int = 15, all: bool = False, *, manual: bool = False,
                   cancel_restart: bool = False) -> None:
        if self._state(id).status not in LIVE:
            raise ContainerNotRunning(f"container {id} is not running")
        await self._kill(id, signal, all=all, manual=manual, cancel_restart=cancel_restart)

    async def _kill(self, id: str, signal: int, **options: bool) -> None:
        result = await self._ctl().request("kill", cid=id, signal=signal, **options)
        if isinstance(result, dict) and result.get("seq"):
            await self._recorded(int(result["seq"]))  # a cancelled restart or a thaw: recorded first

    async def stop(self, id: str, signal: int = 15, timeout: float = 10.0, *,
                   manual: bool = True) -> ContainerState:
        if self._state(id).status not in LIVE:
            raise NotModified("container is already stopped")
        exited = self._exit_future(id)
        try:
            await self._kill(id, signal, manual=manual, cancel_restart=True)
        except ContainerNotRunning:
            pass  # exiting already; the exit is on its way
        if timeout >= 0:
            try:
                return await asyncio.wait_for(asyncio.shield(exited), timeout)
            except TimeoutError:
                log.info("stop_timeout_killing", container=id[:12], timeout=timeout)
                with contextlib.suppress(ContainerNotRunning):
                    await self._kill(id, 9, manual=manual, cancel_restart=True)
        return await exited

    async def delete(self, id: str, force: bool = False) -> ContainerState:
        status = self._state(id).status
        if status in LIVE:
            if not force:
                raise FailedPrecondition(
                    f"container {id} is {'restarting' if status == Status.RESTARTING else 'running'}: stop the "
                    "container before removing or force remove")
            exited = self._exit_future(id)
            with contextlib.suppress(ContainerNotRunning):
                await self._kill(id, 9, cancel_restart=True)
            await exited
        result = await self._ctl().request("delete", cid=id)
        await self._recorded(int(result["seq"]))
        return wire.decode(ContainerState, result["state"])

    async def state(self, id: str) -> ContainerState:
        return self._state(id)

    async def list(self) -> list[ContainerState]:
        return list(self._states.values())

    async def wait(self, id: str) -> ContainerState:
        state = self._state(id)
        if state.status not in LIVE:
            return state
        return await self._exit_future(id)

    def attach(self, id: str, options: AttachOptions, stdin: AsyncIterator[AttachInput]) -> AsyncIterator[Output]:
        # Registered now, not at the first iteration: a start() that follows finds it in place.
        opening = asyncio.ensure_future(AttachStream.open(
            self._socket, id, stdin=options.stdin, stdout=options.stdout, stderr=options.stderr))
        entry = (id, opening)
        self._pending_attach.add(entry)

        def done(fut: asyncio.Future[AttachStream]) -> None:
            self._pending_attach.discard(entry)
            if not fut.cancelled():
                fut.exception()  # retrieved here too: the caller may never iterate the stream

        opening.add_done_callback(done)
        return self._attach_stream(opening, options, stdin)

    async def _attach_stream(self, opening: asyncio.Future[AttachStream], options: AttachOptions,
                             stdin: AsyncIterator[AttachInput]) -> AsyncIterator[Output]:
        stream = await opening
        async with contextlib.aclosing(stream.outputs(stdin if options.stdin else None)) as outputs:
            async for output in outputs:
                yield output

    async def logs(self, id: str, options: LogsOptions) -> AsyncIterator[LogEntry]:
        async with contextlib.aclosing(self.log_batches(id, options)) as batches:
            async for batch in batches:
                for entry in batch.entries():
                    yield entry

    async def log_batches(self, id: str, options: LogsOptions) -> AsyncGenerator[LogBatch, None]:
        state = self._state(id)
        wake = asyncio.Event()
        followers = self._followers.setdefault(id, set())
        followers.add(wake)
        watch = None
        try:
            try:
                reader = await asyncio.to_thread(jsonlog.LogFileReader, state.log_path)
            except FileNotFoundError:
                return
            try:
                if options.tail >= 0:
                    await asyncio.to_thread(reader.seek_tail, options.tail)
                follow = options.follow
                if follow and self._watcher is not None:
                    watch = self._watcher.watch(state.log_path, wake)
                while True:
                    wake.clear()
                    running = self._states.get(id, state).status == Status.RUNNING
                    batch = await asyncio.to_thread(reader.read_batch)
                    if batch is not None:
                        selected, past_until = select_entries(batch, options)
                        if selected:
                            yield selected
                        if past_until:
                            return
                        continue
                    # At the end of the file. The supervisor writes every line before it reports the
                    # exit, so once the container was seen stopped, this read was the last.
                    if not follow or not running or self._lost.is_set():
                        return
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(wake.wait(), FOLLOW_POLL)
            finally:
                await asyncio.to_thread(reader.close)
        finally:
            followers.discard(wake)
            if not followers:
                self._followers.pop(id, None)
            if watch is not None and self._watcher is not None:
                self._watcher.unwatch(watch, wake)

    async def resize(self, id: str, height: int, width: int) -> None:
        self._state(id)
        await self._ctl().request("resize", cid=id, height=height, width=width)

    async def close_stdin(self, id: str) -> None:
        self._state(id)
        await self._ctl().request("close_stdin", cid=id)

    def events(self) -> AsyncIterator[TaskEvent]:
        queue: asyncio.Queue[TaskEvent | None] = asyncio.Queue()
        self._subscribers.add(queue)  # now, so nothing between this call and the first read is lost
        return self._events(queue)

    async def _events(self, queue: asyncio.Queue[TaskEvent | None]) -> AsyncIterator[TaskEvent]:
        try:
            while (event := await queue.get()) is not None:
                yield event
        finally:
            self._subscribers.discard(queue)

    async def pause(self, id: str) -> ContainerState:
        return await self._transition("pause", id)

    async def resume(self, id: str) -> ContainerState:
        return await self._transition("resume", id)

    async def update(self, id: str, resources: Resources, restart_policy: RestartPolicy) -> ContainerState:
        return await self._transition("update", id, resources=wire.encode(resources),
                                      restart_policy=wire.encode(restart_policy))

    async def _transition(self, op: str, id: str, **fields: Any) -> ContainerState:
        """An op that changes the container's state: returns once that change is recorded."""
        self._state(id)
        result = await self._ctl().request(op, cid=id, **fields)
        await self._recorded(int(result["seq"]))
        return wire.decode(ContainerState, result["state"])

    async def stats(self, id: str) -> ContainerStats:
        self._state(id)
        return wire.decode(ContainerStats, await self._ctl().request("stats", cid=id))

    async def top(self, id: str, ps_args: str) -> TopResult:
        self._state(id)
        pids = await self._ctl().request("pids", cid=id)
        return await top.top(ps_args, [int(p) for p in pids])

    async def exec(self, id: str, spec: ExecSpec,
                   stdin: AsyncIterator[AttachInput]) -> tuple[ExecState, AsyncIterator[Output]]:
        self._state(id)
        if spec.detach:
            result, error = await self._ctl().call("exec", cid=id, spec=wire.encode(spec))
        else:
            stream, result, error = await ExecStream.open(self._socket, id, spec, idle=self._ctl().idle)
        seq = int(result.get("seq", 0)) if isinstance(result, dict) else 0
        if error is not None or spec.detach:
            await self._recorded(seq)  # its failed start, or a detached one, is in the state store
        # An attached exec's output flows at once; its start is recorded meanwhile, and its end
        # waits for its exit's record, which comes after (events are recorded in order).
        if error is not None:
            raise error
        state = wire.decode(ExecState, result["state"])
        if spec.detach:
            return state, _nothing()
        assert stream is not None
        return state, stream.outputs(stdin if spec.process.open_stdin else None,
                                     ended=functools.partial(self._exit_recorded, stream))

    async def _exit_recorded(self, stream: ExecStream) -> None:
        if stream.end.get("seq"):
            await self._recorded(int(stream.end["seq"]))  # the exit code is readable when we end

    async def resize_exec(self, id: str, exec_id: str, height: int, width: int) -> None:
        self._state(id)
        await self._ctl().request("resize", cid=id, exec_id=exec_id, height=height, width=width)

    async def check_user(self, id: str, user: str) -> None:
        self._state(id)
        await self._ctl().request("check_user", cid=id, user=user)

    async def take_boot_restarts(self) -> tuple[str, ...]:
        """Containers a new supervisor found that their restart policy brings back at a (daemon
        or host) start; handed out to one caller, who starts them (see :mod:`shim.restart`)."""
        return tuple(str(id) for id in await self._ctl().request("boot_restarts"))

    async def shutdown_supervisor(self, *, force: bool = False) -> bool:
        """Ask the supervisor to exit: only when no container runs, unless ``force`` (then it
        stops them all first). Returns whether it is exiting."""
        result = await self._ctl().request("shutdown", force=force)
        return bool(result["exiting"])


def select_entries(batch: LogBatch, options: LogsOptions) -> tuple[LogBatch, bool]:
    """The entries of ``batch`` that ``options`` asks for (streams, ``since``), up to the first
    one after ``until``; and whether there was one (the read ends there)."""
    times = batch.times_ns
    count = len(times)
    stop = count
    if options.until_ns:
        stop = next((i for i, t in enumerate(times) if t > options.until_ns), count)
    wanted = {s for s, on in ((Stream.STDOUT, options.stdout), (Stream.STDERR, options.stderr)) if on}
    every_stream = all(s in wanted for s in set(batch.streams))
    if stop == count and every_stream and (not options.since_ns or min(times, default=0) >= options.since_ns):
        return batch, False
    data, ends = batch.data, batch.ends
    keep = [i for i in range(stop) if times[i] >= options.since_ns and batch.streams[i] in wanted]
    pieces = [data[ends[i - 1] if i else 0:ends[i]] for i in keep]
    return LogBatch(streams=bytes(batch.streams[i] for i in keep), times_ns=tuple(times[i] for i in keep),
                    data=b"".join(pieces), ends=tuple(itertools.accumulate(map(len, pieces)))), stop < count


async def _nothing() -> AsyncIterator[Output]:
    return
    yield  # an async generator that ends at once


class _LogWatcher:
    """One inotify instance for every followed log: a write to a file wakes its followers."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._by_wd: dict[int, set[asyncio.Event]] = {}
        self._by_path: dict[str, int] = {}
        asyncio.get_running_loop().add_reader(fd, self._read)

    @classmethod
    def create(cls) -> _LogWatcher | None:
        try:
            return cls(linux.inotify_init1())
        except OSError as exc:  # out of inotify instances: followers fall back to polling
            log.warning("inotify_unavailable", error=str(exc))
            return None

    def watch(self, path: str, wake: asyncio.Event) -> int | None:
        try:
            wd = linux.inotify_add_watch(self._fd, path, linux.IN_MODIFY | linux.IN_DELETE_SELF)
        except OSError:
            return None
        self._by_path[path] = wd
        self._by_wd.setdefault(wd, set()).add(wake)
        return wd

    def unwatch(self, wd: int, wake: asyncio.Event) -> None:
        events = self._by_wd.get(wd)
        if events is None:
            return
        events.discard(wake)
        if not events:
            del self._by_wd[wd]
            for path, known in list(self._by_path.items()):
                if known == wd:
                    del self._by_path[path]
            with contextlib.suppress(OSError):
                linux.inotify_rm_watch(self._fd, wd)

    def _read(self) -> None:
        try:
            data = os.read(self._fd, 65536)
        except BlockingIOError:
            return
        # struct inotify_event: int wd, u32 mask, u32 cookie, u32 len, char name[len]
        pos = 0
        while pos + 16 <= len(data):
            wd = int.from_bytes(data[pos:pos + 4], "little", signed=True)
            length = int.from_bytes(data[pos + 12:pos + 16], "little")
            for event in self._by_wd.get(wd, ()):
                event.set()
            pos += 16 + length

    def close(self) -> None:
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(self._fd)
        os.close(self._fd)

