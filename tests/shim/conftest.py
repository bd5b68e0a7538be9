"""Fixtures for the shim: a busybox rootfs used as the overlay lower layer of every container (a
per-container upper/work, so no snapshotter is needed), a unique cgroup parent, one supervisor
for the session, and runtimes built on it.

Teardown order matters and runs even when a test fails: containers are force-deleted by the
runtime that made them; at the end of the session everything under the cgroup parent is
SIGKILLed, the supervisor is stopped by PID, and the cgroup parent is removed.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from common.mounts import Mount
from common.nodes import file_identity
from protos.errors import NotFound
from protos.rpc import SERVER_OPTIONS, insecure_channel
from protos.shim.v1 import shim_pb2_grpc
from shim.api import ContainerSpec, ProcessSpec, Runtime, TaskEvent
from shim.client import RemoteRuntime
from shim.linux import LinuxRuntime
from shim.service import TasksServicer
from shim.supervisor.cgroups import Layout, remove_tree
from shim.supervisor.client import SupervisorPaths, spawn
from shim.supervisor.direct import DirectExecs
from tests.support.busybox import PATH_ENV, populate_rootfs


@dataclass
class Recorder:
    """A StateSink that keeps what it is given."""

    events: list[TaskEvent] = field(default_factory=list)

    async def record(self, event: TaskEvent) -> None:
        self.events.append(event)

    def of(self, id: str) -> list[TaskEvent]:
        return [e for e in self.events if e.state.id == id]


@pytest.fixture(scope="session")
def cgroup_parent(session_token: str) -> Iterator[str]:
    parent = f"berth-test-{session_token}"
    yield parent
    layout = Layout.detect()
    for _ in range(50):  # processes killed by remove_tree take a moment to leave their cgroups
        if not remove_tree(layout, parent):
            break
        time.sleep(0.1)
    left = [h.mount for h in layout.hierarchies if os.path.exists(os.path.join(h.mount, parent))]
    assert not left, f"cgroup parent {parent} left in {left}"


@pytest.fixture(scope="session")
def shim_dir(session_root: Path) -> Path:
    path = session_root / "shim"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="session")
def lowerdir(shim_dir: Path) -> Path:
    lower = shim_dir / "lower"
    lower.mkdir()
    populate_rootfs(lower)
    (lower / "bin" / "notexec").write_text("#!/bin/sh\necho no\n")
    return lower


@pytest.fixture(scope="session")
def supervisor(shim_dir: Path, cgroup_parent: str) -> Iterator[SupervisorPaths]:
    """One supervisor for the session, as the shim would start it."""
    paths = SupervisorPaths(root=shim_dir / "state", exec_root=shim_dir / "run")
    log = open(shim_dir / "supervisor.log", "ab")  # closed in teardown
    proc = spawn(paths, cgroup_parent=cgroup_parent, log_level="debug", stderr=log.fileno())
    try:
        yield paths
    finally:
        stop_supervisor(proc, cgroup_parent)
        log.close()


def stop_supervisor(proc: subprocess.Popen[bytes], cgroup_parent: str) -> None:
    """Kill every container process first (by cgroup), then the supervisor, by PID."""
    remove_tree(Layout.detect(), cgroup_parent)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


class Containers:
    """Builds specs whose rootfs is an overlay over the session's busybox lower dir, and cleans
    up the containers (force delete) and their upper dirs after the test."""

    def __init__(self, base: Path, lowerdir: Path) -> None:
        self.base = base
        self.lowerdir = lowerdir
        self.ids: list[str] = []

    def upper(self, id: str) -> Path:
        return self.base / id[:16] / "fs"

    def spec(self, *args: str, id: str = "", terminal: bool = False, open_stdin: bool = False,
             stdin_once: bool = False, user: str = "", cwd: str = "/", env: tuple[str, ...] = (),
             console: tuple[int, int] = (0, 0), **kwargs: Any) -> ContainerSpec:
        id = id or secrets.token_hex(32)
        snap = self.base / id[:16]
        (snap / "fs").mkdir(parents=True)
        (snap / "work").mkdir()
        rootfs = Mount("overlay", "overlay", (f"lowerdir={self.lowerdir}", f"upperdir={snap / 'fs'}",
                                               f"workdir={snap / 'work'}", "index=off"))
        process = ProcessSpec(args=args, env=(PATH_ENV, *env), cwd=cwd, user=user, terminal=terminal,
                              open_stdin=open_stdin, stdin_once=stdin_once,
                              console_height=console[0], console_width=console[1])
        self.ids.append(id)
        return ContainerSpec(id=id, rootfs=(rootfs,), process=process, **kwargs)

    async def cleanup(self, runtime: Runtime) -> None:
        """Force-delete every container made here; all are tried, the first failure is raised."""
        failure: BaseException | None = None
        for id in self.ids:
            try:
                await asyncio.wait_for(runtime.delete(id, force=True), 20)
            except NotFound:
                pass
            except Exception as exc:
                failure = failure or exc
        shutil.rmtree(self.base, ignore_errors=True)
        if failure is not None:
            raise failure


@pytest.fixture
def containers(shim_dir: Path, lowerdir: Path) -> Containers:
    return Containers(shim_dir / "snapshots" / secrets.token_hex(4), lowerdir)


def no_container_cgroups(cgroup_parent: str) -> list[str]:
    """Container cgroups still present under the parent (there should be none between tests)."""
    left = []
    for h in Layout.detect().hierarchies:
        top = os.path.join(h.mount, cgroup_parent)
        if os.path.isdir(top):
            left += [os.path.join(top, d) for d in os.listdir(top)
                     if len(d) == 64 and os.path.isdir(os.path.join(top, d))]  # not nested parents
    return left


@pytest.fixture
def cleanup_check(cgroup_parent: str) -> Callable[[], list[str]]:
    return lambda: no_container_cgroups(cgroup_parent)


async def collect(stream: AsyncIterator[Any]) -> list[Any]:
    return [item async for item in stream]


async def eventually(check: Callable[[], Awaitable[bool] | bool], within: float = 30, what: str = "") -> None:
    """Poll ``check`` until it holds (a readiness condition, never a fixed sleep)."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, f"timed out waiting for {what or check}"
        await asyncio.sleep(0.02)


@pytest.fixture
async def linux_runtime(supervisor: SupervisorPaths, recorder: Recorder) -> AsyncIterator[LinuxRuntime]:
    runtime = await LinuxRuntime.connect(supervisor.socket, recorder)
    yield runtime
    await runtime.close()


@pytest.fixture
async def local_runtime(linux_runtime: LinuxRuntime, containers: Containers,
                        cleanup_check: Callable[[], list[str]]) -> AsyncIterator[Runtime]:
    """``LinuxRuntime`` itself; its containers removed and nothing left behind afterwards."""
    yield linux_runtime
    await containers.cleanup(linux_runtime)
    assert cleanup_check() == []


@pytest.fixture
async def remote_runtime(linux_runtime: LinuxRuntime, containers: Containers, shim_dir: Path,
                         cleanup_check: Callable[[], list[str]]) -> AsyncIterator[Runtime]:
    """``RemoteRuntime`` through a live gRPC server on a unix socket, ``LinuxRuntime`` behind it."""
    async for runtime in _remote(linux_runtime, containers, shim_dir, cleanup_check, direct=None):
        yield runtime


@pytest.fixture
async def direct_runtime(linux_runtime: LinuxRuntime, containers: Containers, shim_dir: Path,
                         supervisor: SupervisorPaths,
                         cleanup_check: Callable[[], list[str]]) -> AsyncIterator[Runtime]:
    """``remote_runtime`` as an API server on the node has it: attached execs go straight to the
    supervisor (shim.supervisor.direct), the rest through gRPC."""
    direct = DirectExecs(supervisor.socket, file_identity(supervisor.socket))
    async for runtime in _remote(linux_runtime, containers, shim_dir, cleanup_check, direct=direct):
        yield runtime


async def _remote(linux_runtime: LinuxRuntime, containers: Containers, shim_dir: Path,
                  cleanup_check: Callable[[], list[str]], *, direct: DirectExecs | None) -> AsyncIterator[Runtime]:
    server = grpc.aio.server(options=SERVER_OPTIONS)
    shim_pb2_grpc.add_TasksServicer_to_server(TasksServicer(linux_runtime), server)  # type: ignore[no-untyped-call]
    socket_path = shim_dir / f"grpc-{secrets.token_hex(3)}.sock"
    server.add_insecure_port(f"unix:{socket_path}")
    await server.start()
    channel = insecure_channel(str(socket_path))
    runtime = RemoteRuntime(channel, direct=direct)
    try:
        yield runtime
    finally:
        await containers.cleanup(linux_runtime)
        await runtime.close()
        await channel.close()
        await server.stop(None)
    assert cleanup_check() == []
