"""Both freezers of :class:`ContainerCgroup` on this host's kernel: the v1 freezer hierarchy (what
the runtime tests use here) and cgroup v2's ``cgroup.freeze`` (a layout limited to the v2
hierarchy this hybrid host mounts at /sys/fs/cgroup/unified)."""

from __future__ import annotations

import os
import select
import subprocess
import time
from collections.abc import Iterator

import pytest

from shim.api import Resources
from shim.supervisor.cgroups import ContainerCgroup, Layout


def _layouts() -> list[tuple[str, Layout]]:
    full = Layout.detect()
    out = []
    v1 = tuple(h for h in full.hierarchies if not h.v2 and "freezer" in h.controllers)
    if v1:
        out.append(("v1", Layout(v1)))
    v2 = tuple(h for h in full.hierarchies if h.v2)
    if v2:
        out.append(("v2", Layout(v2)))
    return out


@pytest.fixture(params=_layouts(), ids=lambda p: p[0])
def cgroup(request: pytest.FixtureRequest, cgroup_parent: str) -> Iterator[ContainerCgroup]:
    _, layout = request.param
    for h in layout.hierarchies:
        os.makedirs(os.path.join(h.mount, cgroup_parent), exist_ok=True)
    cg = ContainerCgroup(layout, cgroup_parent, f"freezer-{os.getpid()}")
    cg.create(Resources(), privileged=False)
    try:
        yield cg
    finally:
        cg.set_frozen(False)
        for _ in range(100):
            if cg.remove():
                break
            time.sleep(0.02)


def _drain(fd: int, wait: float) -> int:
    total = 0
    deadline = time.monotonic() + wait
    while (left := deadline - time.monotonic()) > 0:
        if select.select([fd], [], [], left)[0]:
            total += len(os.read(fd, 65536))
    return total


def test_freeze_and_thaw(cgroup: ContainerCgroup) -> None:
    proc = subprocess.Popen(["/bin/busybox", "sh", "-c", "while true; do echo tick; usleep 10000; done"],
                            stdout=subprocess.PIPE)
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    try:
        for path in cgroup.procs_files:
            with open(path, "w") as f:
                f.write(str(proc.pid))
        assert _drain(fd, 0.2) > 0
        cgroup.set_frozen(True)
        deadline = time.monotonic() + 10
        while not cgroup.frozen():
            assert time.monotonic() < deadline, "never frozen"
            time.sleep(0.005)
        _drain(fd, 0.05)  # what was written before it froze
        assert _drain(fd, 0.3) == 0  # thirty ticks, had it run
        cgroup.set_frozen(False)
        assert not cgroup.frozen()
        assert _drain(fd, 0.3) > 0
    finally:
        cgroup.set_frozen(False)
        proc.kill()
        proc.wait()
