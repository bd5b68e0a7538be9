"""pause/unpause, top, stats, rename, update and container prune through the docker CLI and
docker-py."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import docker as docker_sdk
import pytest

from apiserver.containers.views import parse_rfc3339
from tests.acceptance.conftest import Docker
from tests.support.daemon import Berthd
from tests.support.waiting import eventually

pytestmark = pytest.mark.acceptance


@pytest.fixture
def counter(dkr: Docker, loaded: str) -> Iterator[str]:
    """A container that prints a growing count every 50 ms."""
    cid = dkr("run", "-d", "busybox", "sh", "-c",
              "i=0; while true; do i=$((i+1)); echo $i; usleep 50000; done").stdout.strip()
    try:
        yield cid
    finally:
        dkr("rm", "-f", cid)


def _count(dkr: Docker, cid: str) -> int:
    lines = dkr("logs", cid).stdout.split()
    return int(lines[-1]) if lines else 0


def test_pause_and_unpause(dkr: Docker, counter: str) -> None:
    eventually(lambda: _count(dkr, counter) >= 3)
    assert dkr("pause", counter).stdout.strip() == counter
    state = json.loads(dkr("inspect", "-f", "{{json .State}}", counter).stdout)
    assert (state["Status"], state["Paused"], state["Running"]) == ("paused", True, True)
    status = dkr("ps", "--filter", f"id={counter}", "--format", "{{.Status}}").stdout.strip()
    assert status.startswith("Up ") and status.endswith("(Paused)")
    frozen = _count(dkr, counter)
    time.sleep(0.5)  # ten ticks of the counter, were it running
    assert _count(dkr, counter) <= frozen + 1
    again = dkr("pause", counter)
    assert again.returncode == 1 and f"Container {counter} is already paused" in again.stderr
    assert dkr("unpause", counter).returncode == 0
    eventually(lambda: _count(dkr, counter) > frozen + 5, what="the counter to go on")
    not_paused = dkr("unpause", counter)
    assert not_paused.returncode == 1 and f"Container {counter} is not paused" in not_paused.stderr
    # stop of a paused container thaws it to let it die
    assert dkr("pause", counter).returncode == 0
    assert dkr("stop", "-t", "1", counter).returncode == 0
    assert dkr("inspect", "-f", "{{.State.Status}}", counter).stdout.strip() == "exited"


def test_pause_events(dkr: Docker, counter: str) -> None:
    since = f"{time.time() - 1:.3f}"
    dkr("pause", counter)
    dkr("unpause", counter)
    out = dkr("events", "--since", since, "--until", f"{time.time() + 1:.3f}", "--filter", f"container={counter}",
              "--filter", "event=pause", "--filter", "event=unpause", "--format", "{{.Action}}", timeout=30)
    assert out.stdout.split() == ["pause", "unpause"]


def test_top(dkr: Docker, loaded: str) -> None:
    cid = dkr("run", "-d", "busybox", "sh", "-c", "sleep 1001 & sleep 1002 & wait").stdout.strip()
    try:
        eventually(lambda: len(dkr("top", cid).stdout.splitlines()) == 4)  # titles and three processes
        lines = dkr("top", cid).stdout.splitlines()
        assert lines[0].split() == ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"]
        commands = sorted(line.split(None, 7)[7] for line in lines[1:])
        assert commands == ["sh -c sleep 1001 & sleep 1002 & wait", "sleep 1001", "sleep 1002"]
        custom = dkr("top", cid, "-o", "pid,args").stdout.splitlines()
        assert custom[0].split() == ["PID", "COMMAND"] and len(custom) == 4
        dkr("kill", cid)
        dkr("wait", cid)
        stopped = dkr("top", cid)
        assert stopped.returncode == 1 and f"container {cid} is not running" in stopped.stderr
    finally:
        dkr("rm", "-f", cid)


def test_stats_no_stream_and_docker_py(dkr: Docker, client: docker_sdk.DockerClient, loaded: str) -> None:
    cid = dkr("run", "-d", "--name", f"stats-{secrets.token_hex(3)}", "-m", "64m", "--pids-limit", "40", "busybox",
              "sh", "-c", "while true; do :; done").stdout.strip()
    try:
        out = dkr("stats", "--no-stream", "--format", "{{.ID}} {{.CPUPerc}} {{.MemUsage}} {{.PIDs}}", cid)
        assert out.returncode == 0, out.stderr
        short, cpu, _, _, limit, pids = out.stdout.split()
        assert short == cid[:12] and float(cpu.rstrip("%")) > 5  # a busy loop on one CPU
        assert limit == "64MiB" and pids == "1"
        one = client.api.stats(cid, stream=False)
        assert one["id"] == cid and one["name"].startswith("/stats-")
        assert one["precpu_stats"]["cpu_usage"]["total_usage"] < one["cpu_stats"]["cpu_usage"]["total_usage"]
        assert one["precpu_stats"]["system_cpu_usage"] < one["cpu_stats"]["system_cpu_usage"]
        assert one["cpu_stats"]["online_cpus"] >= 1 and parse_rfc3339(one["preread"]) < parse_rfc3339(one["read"])
        assert one["memory_stats"]["limit"] == 64 << 20 and "total_rss" in one["memory_stats"]["stats"]
        assert one["pids_stats"] == {"current": 1, "limit": 40} and one["num_procs"] == 0
        assert set(one["blkio_stats"]) >= {"io_service_bytes_recursive", "io_serviced_recursive"}
        shot = client.api.stats(cid, stream=False, one_shot=True)
        assert shot["preread"] == "0001-01-01T00:00:00Z" and "system_cpu_usage" not in shot["precpu_stats"]
        stream = client.api.stats(cid, stream=True, decode=True)
        first, second = next(stream), next(stream)
        stream.close()
        assert second["preread"] == first["read"]
        assert second["precpu_stats"]["cpu_usage"] == first["cpu_stats"]["cpu_usage"]
    finally:
        dkr("rm", "-f", cid)
    with pytest.raises(docker_sdk.errors.NotFound):
        client.api.stats(cid, stream=False)


def test_rename(dkr: Docker, loaded: str) -> None:
    old, new, taken = (f"{p}-{secrets.token_hex(3)}" for p in ("old", "new", "taken"))
    cid = dkr("run", "-d", "--name", old, "busybox", "sleep", "1000").stdout.strip()
    other = dkr("create", "--name", taken, "busybox", "true").stdout.strip()
    try:
        since = f"{time.time() - 1:.3f}"
        assert dkr("rename", old, new).returncode == 0
        assert dkr("inspect", "-f", "{{.Name}}", cid).stdout.strip() == f"/{new}"
        assert dkr("inspect", old).returncode != 0
        conflict = dkr("rename", new, taken)
        assert conflict.returncode == 1
        assert (f'Error when allocating new name: Conflict. The container name "/{taken}" is already in use by '
                f'container "{other}"') in conflict.stderr
        same = dkr("rename", new, new)
        assert "Renaming a container with the same name as its current name" in same.stderr
        bad = dkr("rename", new, "bad/name")
        assert "Invalid container name (bad/name)" in bad.stderr
        assert dkr("inspect", "-f", "{{.Name}}", cid).stdout.strip() == f"/{new}"  # nothing changed
        reused = dkr("create", "--name", old, "busybox", "true")  # the old name is free again
        assert reused.returncode == 0
        dkr("rm", reused.stdout.strip())
        out = dkr("events", "--since", since, "--until", f"{time.time() + 1:.3f}", "--filter", "event=rename",
                  "--filter", f"container={cid}", "--format",
                  "{{.Actor.Attributes.oldName}} {{.Actor.Attributes.name}}", timeout=30)
        assert out.stdout.split("\n")[0] == f"/{old} {new}"
    finally:
        dkr("rm", "-f", cid, other)


def _cgroup(berthd: Berthd, controller: str, cid: str, name: str) -> str:
    return (Path("/sys/fs/cgroup") / controller / berthd.cgroup_parent / cid / name).read_text().strip()


def test_update_a_running_container(dkr: Docker, berthd: Berthd, loaded: str) -> None:
    cid = dkr("run", "-d", "-m", "64m", "busybox", "sleep", "1000").stdout.strip()
    try:
        swap = dkr("inspect", "-f", "{{.HostConfig.MemorySwap}}", cid).stdout.strip()
        assert swap == str(128 << 20)  # twice the memory, as dockerd sets it
        out = dkr("update", "-m", "256m", "--memory-swap", "512m", "--memory-reservation", "100m", "--cpus", "0.5",
                  "--cpu-shares", "512", "--pids-limit", "30", "--restart", "on-failure:2", cid)
        assert out.returncode == 0 and out.stdout.strip() == cid, out.stderr
        host = json.loads(dkr("inspect", "-f", "{{json .HostConfig}}", cid).stdout)
        assert (host["Memory"], host["MemorySwap"], host["MemoryReservation"]) == (256 << 20, 512 << 20, 100 << 20)
        assert (host["NanoCpus"], host["CpuShares"], host["PidsLimit"]) == (500_000_000, 512, 30)
        assert host["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 2}
        assert _cgroup(berthd, "memory", cid, "memory.limit_in_bytes") == str(256 << 20)
        assert _cgroup(berthd, "memory", cid, "memory.memsw.limit_in_bytes") == str(512 << 20)
        assert _cgroup(berthd, "cpu", cid, "cpu.cfs_quota_us") == "50000"
        assert _cgroup(berthd, "cpu", cid, "cpu.shares") == "512"
        assert _cgroup(berthd, "pids", cid, "pids.max") == "30"
        inside = dkr("exec", cid, "cat", "/sys/fs/cgroup/memory/memory.limit_in_bytes").stdout.strip()
        assert inside == str(256 << 20)
        # moby's refusals, and nothing changes
        too_big = dkr("update", "-m", "1g", cid)
        assert too_big.returncode == 1 and ("Memory limit should be smaller than already set memoryswap limit, "
                                            "update the memoryswap at the same time") in too_big.stderr
        period = dkr("update", "--cpu-period", "50000", cid)
        assert "Conflicting options: CPU Period cannot be updated as NanoCPUs has already been set" in period.stderr
        tiny = dkr("update", "-m", "1m", "--memory-swap", "2m", cid)
        assert "Minimum memory limit allowed is 6MB" in tiny.stderr
        assert _cgroup(berthd, "memory", cid, "memory.limit_in_bytes") == str(256 << 20)
        assert dkr("inspect", "-f", "{{.HostConfig.Memory}}", cid).stdout.strip() == str(256 << 20)
    finally:
        dkr("rm", "-f", cid)


def test_container_prune(dkr: Docker, client: docker_sdk.DockerClient, loaded: str) -> None:
    tag = secrets.token_hex(3)
    keep_running = dkr("run", "-d", "--label", f"prune={tag}", "busybox", "sleep", "1000").stdout.strip()
    stopped = [dkr("run", "-d", "--label", f"prune={tag}", "busybox", "sh", "-c", "echo x > /junk").stdout.strip()
               for _ in range(2)]
    other_label = dkr("run", "-d", "--label", f"prune={tag}", "--label", "keep=1", "busybox", "true").stdout.strip()
    try:
        for cid in [*stopped, other_label]:
            dkr("wait", cid)
        out = dkr("container", "prune", "-f", "--filter", f"label=prune={tag}", "--filter", "label!=keep")
        assert out.returncode == 0, out.stderr
        assert sorted(out.stdout.split("\n")[1:3]) == sorted(stopped)
        assert "Total reclaimed space:" in out.stdout
        remaining = set(dkr("ps", "-aq", "--no-trunc", "--filter", f"label=prune={tag}").stdout.split())
        assert remaining == {keep_running, other_label}
        report = client.api.prune_containers(filters={"label": [f"prune={tag}"], "until": "1h"})
        assert report == {"ContainersDeleted": None, "SpaceReclaimed": 0}  # created less than an hour ago
        report = client.api.prune_containers(filters={"label": [f"prune={tag}"]})
        assert report["ContainersDeleted"] == [other_label]
        with pytest.raises(docker_sdk.errors.APIError, match="invalid filter 'bogus'"):
            client.api.prune_containers(filters={"bogus": ["1"]})
    finally:
        dkr("rm", "-f", keep_running, *stopped, other_label)
