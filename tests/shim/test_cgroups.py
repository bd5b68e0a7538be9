"""cgroup layouts this host does not have (pure v1, pure v2) and the v2 translation of Docker's
limits, on synthetic trees; the hybrid layout of this host is exercised by the runtime tests."""

from __future__ import annotations

from pathlib import Path

from shim.api import Resources
from shim.supervisor.cgroups import ContainerCgroup, Hierarchy, Layout

HYBRID = """\
30 23 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
32 30 0:28 / /sys/fs/cgroup/systemd rw,nosuid shared:11 - cgroup cgroup rw,xattr,name=systemd
33 30 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:12 - cgroup cgroup rw,cpu,cpuacct
34 30 0:30 / /sys/fs/cgroup/memory rw,nosuid shared:13 - cgroup cgroup rw,memory
35 23 0:30 / /mnt/memory-again rw,nosuid shared:14 - cgroup cgroup rw,memory
36 23 0:29 /docker/abc /mnt/delegated rw,nosuid shared:15 - cgroup cgroup rw,cpu,cpuacct
"""
V2 = "30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate\n"


def test_detect_hybrid(tmp_path: Path) -> None:
    (tmp_path / "mountinfo").write_text(HYBRID)
    layout = Layout.detect(str(tmp_path / "mountinfo"))
    assert layout.mode == "hybrid"
    names = {h.name: h for h in layout.hierarchies}
    assert set(names) == {"unified", "systemd", "cpu,cpuacct", "memory"}  # duplicates and subtrees skipped
    assert names["memory"].mount == "/sys/fs/cgroup/memory"
    assert names["cpu,cpuacct"].controllers == {"cpu", "cpuacct"}
    assert names["systemd"].controllers == {"name=systemd"}  # xattr is an option, not a controller
    assert layout.owner("memory") == names["memory"]
    assert layout.owner("pids") is None


def test_detect_v2(tmp_path: Path) -> None:
    (tmp_path / "mountinfo").write_text(V2)
    layout = Layout.detect(str(tmp_path / "mountinfo"))
    assert layout.mode == "v2"
    assert [(h.mount, h.name, h.v2) for h in layout.hierarchies] == [("/sys/fs/cgroup", "", True)]


def test_v2_limits(tmp_path: Path) -> None:
    """Docker's HostConfig values written as runc writes them on cgroup v2."""
    root = Hierarchy(str(tmp_path), frozenset({"cpu", "cpuset", "io", "memory", "pids"}), True, "")
    cgroup = ContainerCgroup(Layout((root,)), "berth", "c1")
    directory = tmp_path / "berth" / "c1"
    directory.mkdir(parents=True)
    files = ("memory.max", "memory.swap.max", "memory.low", "cpu.max", "cpu.weight", "cpuset.cpus",
             "cpuset.mems", "pids.max", "memory.events")
    for name in files:
        (directory / name).write_text("")
    cgroup.create(Resources(memory=256 << 20, memory_swap=384 << 20, memory_reservation=64 << 20,
                            nano_cpus=1_500_000_000, cpu_shares=1024, cpuset_cpus="0", cpuset_mems="0",
                            pids_limit=50), privileged=False)
    written = {name: (directory / name).read_text() for name in files}
    assert written == {
        "memory.max": str(256 << 20), "memory.swap.max": str(128 << 20), "memory.low": str(64 << 20),
        "cpu.max": "150000 100000", "cpu.weight": "39", "cpuset.cpus": "0", "cpuset.mems": "0",
        "pids.max": "50", "memory.events": ""}
    assert cgroup.procs_files == (str(directory / "cgroup.procs"),)
    (directory / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 2\noom_kill 2\noom_group_kill 0\n")
    assert cgroup.oom_kills() == 2
    assert cgroup.oom_notifier() is None  # v2: OOM kills are counted at exit


def test_v2_unlimited_swap_and_default_swap(tmp_path: Path) -> None:
    root = Hierarchy(str(tmp_path), frozenset({"memory"}), True, "")
    for name, swap, expected in (("a", -1, "max"), ("b", 0, str(100 << 20))):
        directory = tmp_path / "berth" / name
        directory.mkdir(parents=True)
        for f in ("memory.max", "memory.swap.max"):
            (directory / f).write_text("")
        ContainerCgroup(Layout((root,)), "berth", name).create(
            Resources(memory=100 << 20, memory_swap=swap), privileged=False)
        assert (directory / "memory.swap.max").read_text() == expected
