"""`docker run` resource and process options through the real CLI (and docker-py where the CLI
checks a value itself): cgroup limits as the container sees them, OOM kills, ulimits, sysctls,
--group-add, --init, naming, labels, env files, stop signal/timeout, --rm, and dockerd's answers
to bad values (which change nothing)."""

from __future__ import annotations

import json
import os
import re
import resource
import secrets
import signal
import subprocess
import time
from pathlib import Path

import docker as docker_sdk
import pytest

from tests.acceptance.conftest import Docker
from tests.support.daemon import Berthd
from tests.support.waiting import eventually

pytestmark = pytest.mark.acceptance


def test_limits_inside_the_container(dkr: Docker, loaded: str) -> None:
    script = ("cd /sys/fs/cgroup; cat memory/memory.limit_in_bytes memory/memory.memsw.limit_in_bytes"
              " memory/memory.soft_limit_in_bytes cpu/cpu.cfs_quota_us cpu/cpu.cfs_period_us cpu/cpu.shares"
              " cpuset/cpuset.cpus pids/pids.max; df -k /dev/shm | tail -1")
    out = dkr("run", "--rm", "-m", "96m", "--memory-swap", "192m", "--memory-reservation", "64m", "--cpu-quota",
              "25000", "--cpu-period", "50000", "--cpu-shares", "256", "--cpuset-cpus", "0", "--pids-limit", "42",
              "--shm-size", "16m", "busybox", "sh", "-c", script)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[:8] == [str(96 << 20), str(192 << 20), str(64 << 20), "25000", "50000", "256", "0", "42"]
    assert lines[8].split()[1] == str(16 * 1024)
    cpus = dkr("run", "--rm", "--cpus", "1.5", "busybox", "cat", "/sys/fs/cgroup/cpu/cpu.cfs_quota_us",
               "/sys/fs/cgroup/cpu/cpu.cfs_period_us")
    assert cpus.stdout.split() == ["150000", "100000"]


def test_oom_kill_is_reported(dkr: Docker, loaded: str) -> None:
    since = f"{time.time() - 1:.3f}"
    out = dkr("run", "-d", "-m", "16m", "--memory-swap", "16m", "busybox", "tail", "/dev/zero")
    cid = out.stdout.strip()
    try:
        assert dkr("wait", cid).stdout.strip() == "137"
        state = json.loads(dkr("inspect", "-f", "{{json .State}}", cid).stdout)
        assert (state["ExitCode"], state["OOMKilled"]) == (137, True)
        events = dkr("events", "--since", since, "--until", f"{time.time() + 1:.3f}", "--filter", f"container={cid}",
                     "--format", "{{.Action}}", timeout=30).stdout.split()
        assert events.index("oom") < events.index("die")
    finally:
        dkr("rm", "-f", cid)


def test_oom_kill_disable(dkr: Docker, berthd: Berthd, loaded: str) -> None:
    out = dkr("run", "-d", "-m", "32m", "--oom-kill-disable", "busybox", "sleep", "1000")
    cid = out.stdout.strip()
    try:
        assert dkr("inspect", "-f", "{{.HostConfig.OomKillDisable}}", cid).stdout.strip() == "true"
        control = Path("/sys/fs/cgroup/memory", berthd.cgroup_parent, cid, "memory.oom_control").read_text()
        assert "oom_kill_disable 1" in control
    finally:
        dkr("rm", "-f", cid)
    warned = dkr("run", "--rm", "--oom-kill-disable", "busybox", "true")
    assert ("WARNING: OOM killer is disabled for the container, but no memory limit is set, this can result in "
            "the system running out of resources.") in warned.stderr


def test_ulimits(dkr: Docker, loaded: str) -> None:
    out = dkr("run", "--rm", "--ulimit", "nofile=100:200", "--ulimit", "nproc=50:60", "busybox", "sh", "-c",
              "ulimit -n; ulimit -Hn; ulimit -u")
    assert out.stdout.split() == ["100", "200", "50"]
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    name = f"ulimit-{secrets.token_hex(3)}"
    try:
        above = dkr("run", "--name", name, "--ulimit", f"nofile={hard + 1}:{hard + 1}", "busybox", "true")
        assert above.returncode == 125
        assert "error setting rlimits for ready process: error setting rlimit type 7: operation not permitted" \
            in above.stderr
        assert dkr("inspect", "-f", "{{.State.Status}}", name).stdout.strip() == "exited"
    finally:
        dkr("rm", "-f", name)


def test_sysctls(dkr: Docker, client: docker_sdk.DockerClient, loaded: str) -> None:
    out = dkr("run", "--rm", "--sysctl", "net.ipv4.ip_forward=1", "--sysctl", "kernel.shmmni=2048", "busybox",
              "cat", "/proc/sys/net/ipv4/ip_forward", "/proc/sys/kernel/shmmni")
    assert out.stdout.split() == ["1", "2048"]
    assert open("/proc/sys/kernel/shmmni").read().strip() != "2048"  # only the container's IPC namespace
    refused = dkr("run", "--rm", "--sysctl", "vm.swappiness=1", "busybox", "true")
    assert refused.returncode == 125 and "sysctl 'vm.swappiness=1' is not allowed" in refused.stderr  # the CLI
    host_ipc = dkr("run", "--rm", "--ipc", "host", "--sysctl", "kernel.shmmni=2048", "busybox", "true")
    assert 'sysctl "kernel.shmmni" is not allowed in the hosts ipc namespace' in host_ipc.stderr
    name = f"sysctl-{secrets.token_hex(3)}"
    try:
        with pytest.raises(docker_sdk.errors.APIError,
                           match=re.escape('sysctl "kernel.panic" is not in a separate kernel namespace')):
            client.containers.run("busybox", "true", name=name, sysctls={"kernel.panic": "1"})
    finally:
        dkr("rm", "-f", name)


def test_group_add_user_and_init(dkr: Docker, loaded: str) -> None:
    out = dkr("run", "--rm", "-u", "nobody", "--group-add", "www-data", "--group-add", "4242", "busybox",
              "id", "-G")
    assert out.stdout.split() == ["65534", "33", "4242"]
    unknown = dkr("run", "--rm", "--group-add", "no-such-group", "busybox", "true")
    assert unknown.returncode == 125 and "Unable to find group no-such-group" in unknown.stderr
    numeric = dkr("run", "--rm", "-u", "1234:5678", "busybox", "sh", "-c", "id -u; id -g")
    assert numeric.stdout.split() == ["1234", "5678"]
    cid = dkr("run", "-d", "--init", "busybox", "sh", "-c", "(sleep 0.3 &); exec sleep 1000").stdout.strip()
    try:
        assert dkr("exec", cid, "cat", "/proc/1/cmdline").stdout.split("\0")[:3] == ["/sbin/docker-init", "--", "sh"]
        assert dkr("inspect", "-f", "{{.HostConfig.Init}}", cid).stdout.strip() == "true"

        def reaped() -> bool:  # the orphaned sleep exited and its reaping PID 1 collected it
            rows = [line.split(None, 1) for line in dkr("exec", cid, "ps", "-o", "stat,args").stdout.splitlines()]
            return all(len(r) == 2 and r[1] != "sleep 0.3" and not r[0].startswith("Z") for r in rows[1:])

        eventually(reaped, what="the orphan to be reaped")
    finally:
        dkr("rm", "-f", cid)


def test_naming_labels_env_file_and_workdir(dkr: Docker, loaded: str, tmp_path: Path) -> None:
    env_file = tmp_path / "env"
    env_file.write_text("# comment\nFROM_FILE=yes\nSPACED=a b\n")
    name = f"opts-{secrets.token_hex(3)}"
    out = dkr("run", "--name", name, "--hostname", "berth-host", "--domainname", "example.org", "-w", "/work/here",
              "--label", "team=berth", "--label", "tier", "--env-file", str(env_file), "busybox", "sh", "-c",
              'hostname; cat /proc/sys/kernel/domainname; pwd; echo "$FROM_FILE|$SPACED"')
    try:
        assert out.stdout.splitlines() == ["berth-host", "example.org", "/work/here", "yes|a b"]
        config = json.loads(dkr("inspect", "-f", "{{json .Config}}", name).stdout)
        assert config["Labels"] == {"team": "berth", "tier": ""}
        assert "FROM_FILE=yes" in config["Env"] and config["Hostname"] == "berth-host"
    finally:
        dkr("rm", "-f", name)


def test_stop_signal_and_timeout(dkr: Docker, loaded: str) -> None:
    cid = dkr("run", "-d", "--stop-signal", "USR1", "--stop-timeout", "1", "busybox", "sh", "-c",
              "trap 'echo got-usr1; exit 9' USR1; echo ready; while true; do usleep 50000; done").stdout.strip()
    stubborn = dkr("run", "-d", "--stop-signal", "USR1", "--stop-timeout", "1", "busybox", "sh", "-c",
                   "trap '' USR1; echo ready; while true; do usleep 50000; done").stdout.strip()
    try:
        config = json.loads(dkr("inspect", "-f", "{{json .Config}}", cid).stdout)
        assert (config["StopSignal"], config["StopTimeout"]) == ("USR1", 1)
        for c in (cid, stubborn):
            eventually(lambda c=c: "ready" in dkr("logs", c).stdout)  # type: ignore[misc]
        assert dkr("stop", cid).returncode == 0
        assert dkr("inspect", "-f", "{{.State.ExitCode}}", cid).stdout.strip() == "9"
        assert "got-usr1" in dkr("logs", cid).stdout
        assert dkr("stop", stubborn).returncode == 0  # its 1 s is up: SIGKILL
        assert dkr("inspect", "-f", "{{.State.ExitCode}}", stubborn).stdout.strip() == "137"
    finally:
        dkr("rm", "-f", cid, stubborn)


def test_rm_when_the_client_is_killed(dkr: Docker, berthd: Berthd, cli_config: Path, loaded: str) -> None:
    name = f"rm-{secrets.token_hex(3)}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env.update(DOCKER_HOST=berthd.host, DOCKER_CONFIG=str(cli_config))
    cli = subprocess.Popen(["docker", "run", "--rm", "--name", name, "busybox", "sh", "-c", "echo up; sleep 1"],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    try:
        assert cli.stdout is not None and cli.stdout.readline() == b"up\n"
        cli.send_signal(signal.SIGKILL)  # the CLI dies; the container runs on, and dockerd removes it at its exit
        cli.wait()
        eventually(lambda: dkr("inspect", name).returncode != 0, what="the --rm container to be removed")
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
        dkr("rm", "-f", name)


@pytest.mark.parametrize(("args", "message"), [
    (("-m", "1m"), "Minimum memory limit allowed is 6MB"),
    (("-m", "10m", "--memory-swap", "8m"), "Minimum memoryswap limit should be larger than memory limit, see usage"),
    (("--memory-reservation", "1m"), "Minimum memory reservation allowed is 6MB"),
    (("-m", "10m", "--memory-reservation", "20m"),
     "Minimum memory limit can not be less than memory reservation limit, see usage"),
    (("--cpus", "64"), f"range of CPUs is from 0.01 to {os.cpu_count()}.00, as there are only {os.cpu_count()} CPUs"),
    (("--cpu-period", "500"), "CPU cfs period can not be less than 1ms (i.e. 1000) or larger than 1s (i.e. 1000000)"),
    (("--cpu-quota", "500"), "CPU cfs quota can not be less than 1ms (i.e. 1000)"),
    (("--cpuset-cpus", "64"), "Requested CPUs are not available - requested 64, available: 0-"),
    (("--restart", "bogus"), "invalid restart policy: unknown policy 'bogus'; use one of 'no', 'always', "
                             "'on-failure', or 'unless-stopped'"),
    (("--restart", "always:3"), "invalid restart policy: maximum retry count can only be used with 'on-failure'"),
    (("--cap-add", "BOGUS"), 'invalid CapAdd: unknown capability: "CAP_BOGUS"'),
    (("--cap-drop", "cap_nope"), 'invalid CapDrop: unknown capability: "CAP_NOPE"'),
    (("--security-opt", "bogus"), 'Invalid --security-opt: "bogus"'),  # the CLI's own check
    (("--health-interval", "1us", "--health-cmd", "true"), "Interval in Healthcheck cannot be less than 1ms"),
])
def test_bad_values_are_refused_and_change_nothing(dkr: Docker, loaded: str, args: tuple[str, ...],
                                                   message: str) -> None:
    name = f"bad-{secrets.token_hex(3)}"
    out = dkr("run", "--name", name, *args, "busybox", "true")
    assert out.returncode == 125
    assert message in out.stderr
    assert dkr("ps", "-aq", "--filter", f"name={name}").stdout == ""
