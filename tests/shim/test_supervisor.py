"""What only the supervisor guarantees: transitions that happen while no shim is connected are
replayed to the next one, a second supervisor cannot take over a running one's directory, and a
new supervisor after a crash reports (and kills) the containers the dead one left running."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from common import linux
from protos.errors import Unavailable
from shim.api import ContainerState, EventType, Status
from shim.linux import LinuxRuntime
from shim.supervisor.cgroups import Layout, remove_tree
from shim.supervisor.client import SupervisorPaths, spawn
from tests.shim.conftest import Containers, Recorder, eventually, stop_supervisor


def record_file(paths: SupervisorPaths, id: str) -> Path:
    return paths.root / "containers" / id / "state.json"


def recorded_status(paths: SupervisorPaths, id: str) -> str:
    return str(json.loads(record_file(paths, id).read_text())["status"])


async def test_transitions_while_disconnected_are_replayed_then_resynced(
        supervisor: SupervisorPaths, containers: Containers) -> None:
    first = Recorder()
    runtime = await LinuxRuntime.connect(supervisor.socket, first)
    spec = containers.spec("sleep", "1000")
    try:
        await runtime.create(spec)
        started = await runtime.start(spec.id)
    finally:
        await runtime.close()
    os.kill(started.pid, signal.SIGKILL)  # dies while nobody listens
    await eventually(lambda: recorded_status(supervisor, spec.id) == "stopped")

    second = Recorder()
    synced: list[ContainerState] = []

    async def resync(states: Sequence[ContainerState]) -> None:
        synced.extend(states)

    runtime = await LinuxRuntime.connect(supervisor.socket, second, on_resync=resync)
    try:
        assert [(e.type, e.state.exit_code) for e in second.of(spec.id)] == [(EventType.EXIT, 137)]
        (mine,) = [s for s in synced if s.id == spec.id]
        assert (mine.status, mine.exit_code) == (Status.STOPPED, 137)
        assert await runtime.state(spec.id) == mine
    finally:
        await containers.cleanup(runtime)
        await runtime.close()
    assert [e.type for e in first.of(spec.id)] == [EventType.START]


def test_a_second_supervisor_is_refused(supervisor: SupervisorPaths, cgroup_parent: str) -> None:
    with pytest.raises(Unavailable, match="exited during startup"):
        spawn(supervisor, cgroup_parent=cgroup_parent)


@pytest.fixture
def own_supervisor(shim_dir: Path, cgroup_parent: str) -> Iterator[tuple[SupervisorPaths, str]]:
    parent = f"{cgroup_parent}/recover"
    paths = SupervisorPaths(root=shim_dir / "recover" / "root", exec_root=shim_dir / "recover" / "run")
    try:
        yield paths, parent
    finally:
        remove_tree(Layout.detect(), parent)
        try:
            os.kill(int((paths.exec_root / "supervisor.pid").read_text()), signal.SIGKILL)
        except (OSError, ValueError):
            pass


async def test_new_supervisor_reports_orphans_of_a_dead_one(
        own_supervisor: tuple[SupervisorPaths, str], containers: Containers) -> None:
    paths, parent = own_supervisor
    proc = spawn(paths, cgroup_parent=parent)
    runtime = await LinuxRuntime.connect(paths.socket, Recorder())
    spec = containers.spec("sleep", "1000")
    try:
        await runtime.create(spec)
        started = await runtime.start(spec.id)
    finally:
        await runtime.close()
    # The orphan is reparented to us rather than to the host's init, so the test can reap it.
    linux.prctl(linux.PR_SET_CHILD_SUBREAPER, 1)
    try:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        os.kill(started.pid, 0)  # the container outlived its supervisor...

        proc = spawn(paths, cgroup_parent=parent)
        recorder = Recorder()
        runtime = await LinuxRuntime.connect(paths.socket, recorder)
        try:
            (exit_event,) = recorder.of(spec.id)
            assert exit_event.type == EventType.EXIT
            assert (exit_event.state.status, exit_event.state.exit_code) == (Status.STOPPED, 137)
            assert "supervisor" in exit_event.state.error
            await eventually(lambda: not _alive(started.pid))  # ...but not the new one's recovery
            await runtime.delete(spec.id)
            assert not record_file(paths, spec.id).exists()
        finally:
            await runtime.close()
            stop_supervisor(proc, parent)
    finally:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(started.pid, 0)  # noqa: ASYNC222 - already dead: reaping a zombie does not block
        linux.prctl(linux.PR_SET_CHILD_SUBREAPER, 0)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False
