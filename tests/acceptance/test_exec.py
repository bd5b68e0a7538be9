"""`docker exec` through the real CLI and docker-py: output, exit codes, options, the
namespaces and cgroups it joins, exec inspect, ExecIDs and events."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
from collections.abc import Iterator

import docker as docker_sdk
import pytest

from tests.acceptance.conftest import Docker
from tests.support.daemon import Berthd
from tests.support.waiting import eventually

pytestmark = pytest.mark.acceptance


@pytest.fixture
def box(dkr: Docker, loaded: str) -> Iterator[str]:
    """A running container to exec into."""
    out = dkr("run", "-d", "--label", "berth.test=exec", "busybox", "sleep", "1000")
    assert out.returncode == 0, out.stderr
    cid = out.stdout.strip()
    try:
        yield cid
    finally:
        dkr("rm", "-f", cid)


def test_exec_output_and_exit_codes(dkr: Docker, box: str) -> None:
    out = dkr("exec", box, "sh", "-c", "echo to-out; echo to-err >&2; exit 3")
    assert (out.returncode, out.stdout, out.stderr) == (3, "to-out\n", "to-err\n")
    missing = dkr("exec", box, "no-such-command")
    assert missing.returncode == 127
    assert 'exec: "no-such-command": executable file not found in $PATH' in missing.stdout
    denied = dkr("exec", box, "/etc/passwd")
    assert denied.returncode == 126 and "permission denied" in denied.stdout


def test_exec_options(dkr: Docker, box: str) -> None:
    out = dkr("exec", "-e", "GREETING=ahoy", "-w", "/tmp", "-u", "nobody", box, "sh", "-c",
              'echo "$GREETING|$(pwd)|$(id -u):$(id -g)|$HOSTNAME"')
    assert out.returncode == 0, out.stderr
    greeting, cwd, ids, hostname = out.stdout.strip().split("|")
    assert (greeting, cwd, ids, hostname) == ("ahoy", "/tmp", "65534:65534", box[:12])
    piped = dkr("exec", "-i", box, "sh", "-c", "cat; echo done", input="line one\nline two\n")
    assert piped.stdout == "line one\nline two\ndone\n"
    caps = dkr("exec", box, "grep", "CapEff", "/proc/self/status").stdout.split()[1]
    privileged = dkr("exec", "--privileged", box, "grep", "CapEff", "/proc/self/status").stdout.split()[1]
    assert int(caps, 16) == 0xA80425FB  # Docker's 14 default capabilities
    assert int(privileged, 16) > int(caps, 16) and int(privileged, 16) & 1 << 21  # CAP_SYS_ADMIN
    ghost = dkr("exec", "-u", "ghost", box, "true")
    assert ghost.returncode == 1
    assert "unable to find user ghost: no matching entries in passwd file" in ghost.stderr
    tty = dkr("exec", "-t", box, "sh", "-c", "tty; echo $TERM")
    assert tty.stdout.replace("\r", "").split("\n")[1] == "xterm" and tty.stdout.startswith("/dev/pts/")


def test_exec_joins_the_container(dkr: Docker, box: str) -> None:
    script = ("echo $$; cat /proc/1/cmdline | tr '\\0' ' '; echo; for n in ipc mnt net pid uts; do"
              " [ $(readlink /proc/self/ns/$n) = $(readlink /proc/1/ns/$n) ] && echo same-$n; done;"
              " grep -c . /proc/self/cgroup; grep memory /proc/self/cgroup")
    out = dkr("exec", box, "sh", "-c", script)
    lines = out.stdout.split("\n")
    assert 1 < int(lines[0]) < 100  # a PID of the container's namespace
    assert lines[1] == "sleep 1000 "
    assert lines[2:7] == ["same-ipc", "same-mnt", "same-net", "same-pid", "same-uts"]
    assert lines[8].endswith(box)  # the container's memory cgroup


def test_detached_exec_exec_ids_and_inspect(dkr: Docker, client: docker_sdk.DockerClient, box: str) -> None:
    out = dkr("exec", "-d", box, "sh", "-c", "sleep 0.5; touch /tmp/marker; sleep 600")
    assert out.returncode == 0 and out.stdout == ""
    exec_ids = json.loads(dkr("inspect", "-f", "{{json .ExecIDs}}", box).stdout)
    assert isinstance(exec_ids, list) and len(exec_ids) == 1
    info = client.api.exec_inspect(exec_ids[0])
    assert info["Running"] is True and info["Pid"] > 0 and info["ExitCode"] is None
    assert info["ProcessConfig"]["entrypoint"] == "sh" and info["ContainerID"] == box
    eventually(lambda: dkr("exec", box, "test", "-e", "/tmp/marker").returncode == 0, what="the detached exec")
    # A finished exec is inspectable but no longer listed.
    finished = client.api.exec_create(box, ["sh", "-c", "exit 7"])
    assert client.api.exec_start(finished["Id"]) == b""
    info = client.api.exec_inspect(finished["Id"])
    assert (info["Running"], info["ExitCode"]) == (False, 7)
    assert finished["Id"] not in (json.loads(dkr("inspect", "-f", "{{json .ExecIDs}}", box).stdout) or [])


def _start_attached(socket_path: str, exec_id: str) -> bytes:
    """POST /exec/{id}/start hijacked, as the CLI sends it; everything the daemon writes until it
    closes (docker-py's reader can drop bytes that arrive together with the 101)."""
    body = b'{"Detach":false,"Tty":false}'
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(socket_path)
        s.sendall(b"POST /v1.50/exec/%s/start HTTP/1.1\r\nHost: api\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n"
                  b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                  % (exec_id.encode(), len(body), body))
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def test_an_exec_whose_client_leaves_at_once_runs_on(client: docker_sdk.DockerClient, berthd: Berthd,
                                                      box: str) -> None:
    """The client sends the start and closes before the 101 (moby runs the exec regardless): it
    runs, with output nobody reads, and its exit is recorded."""
    exec_id = client.api.exec_create(box, ["sh", "-c", "seq 1 200000; exit 7"])["Id"]
    body = b'{"Detach":false,"Tty":false}'
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(berthd.socket)
        s.sendall(b"POST /v1.50/exec/%s/start HTTP/1.1\r\nHost: api\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n"
                  b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                  % (exec_id.encode(), len(body), body))
    eventually(lambda: client.api.exec_inspect(exec_id)["ExitCode"] == 7, what="the exec to end with 7")


def test_exec_with_docker_py(client: docker_sdk.DockerClient, berthd: Berthd, box: str) -> None:
    container = client.containers.get(box)
    result = container.exec_run(["sh", "-c", "echo out; echo err >&2; exit 2"], demux=True)
    assert result.exit_code == 2 and result.output == (b"out\n", b"err\n")
    streamed = container.exec_run(["sh", "-c", "for i in 1 2 3; do echo $i; done"], stream=True)
    assert b"".join(streamed.output) == b"1\n2\n3\n"
    exec_id = client.api.exec_create(box, ["true"])["Id"]
    client.api.exec_start(exec_id, detach=True)
    eventually(lambda: client.api.exec_inspect(exec_id)["ExitCode"] == 0, what="the exec to finish")
    with pytest.raises(docker_sdk.errors.APIError) as started_twice:  # detached: the error is a response
        client.api.exec_start(exec_id, detach=True)
    assert started_twice.value.status_code == 409
    assert f"exec command {exec_id} has already run" in str(started_twice.value)
    again = _start_attached(berthd.socket, exec_id)  # attached: moby writes the error onto the hijacked stream
    assert again.startswith(b"HTTP/1.1 101")
    assert f"exec command {exec_id} has already run".encode() in again
    with pytest.raises(docker_sdk.errors.NotFound, match="No such exec instance: nope"):
        client.api.exec_inspect("nope")
    with pytest.raises(docker_sdk.errors.APIError, match="No exec command specified"):
        client.api.exec_create(box, [])


def test_exec_refused_when_paused_or_stopped(dkr: Docker, box: str) -> None:
    assert dkr("pause", box).returncode == 0
    try:
        out = dkr("exec", box, "true")
        assert out.returncode == 1
        assert f"Container {box} is paused, unpause the container before exec" in out.stderr
    finally:
        assert dkr("unpause", box).returncode == 0
    stopped = dkr("run", "-d", "busybox", "true").stdout.strip()
    try:
        dkr("wait", stopped)
        out = dkr("exec", stopped, "true")
        assert out.returncode == 1 and f"container {stopped} is not running" in out.stderr
    finally:
        dkr("rm", "-f", stopped)


def test_exec_events(dkr: Docker, box: str) -> None:
    since = f"{time.time() - 1:.3f}"
    assert dkr("exec", box, "sh", "-c", "exit 4").returncode == 4
    until = f"{time.time() + 1:.3f}"
    out = dkr("events", "--since", since, "--until", until, "--filter", f"container={box}",
              "--format", "{{.Action}} {{.Actor.Attributes.execID}} {{.Actor.Attributes.exitCode}}", timeout=30)
    lines = [line for line in out.stdout.splitlines() if line.startswith("exec_")]
    assert [line.split(" ")[0] for line in lines] == ["exec_create:", "exec_start:", "exec_die"]
    assert lines[0].startswith("exec_create: sh -c exit 4 ") and lines[-1].endswith(" 4")
    assert len({re.search(r"[0-9a-f]{64}", line).group() for line in lines}) == 1  # type: ignore[union-attr]


def test_exec_goes_straight_to_the_supervisor(dkr: Docker, berthd: Berthd, box: str) -> None:
    """berthd runs on the node: an attached exec goes over the supervisor's socket, not through
    the shim (shim.supervisor.direct), and its exit code is recorded by the time the CLI asks."""
    for code in range(3):
        assert dkr("exec", box, "sh", "-c", f"exit {code}").returncode == code
    assert berthd.proc is not None
    supervisor = berthd.service_pids()["supervisor"]
    assert _unix_peers(supervisor, berthd.proc.pid), "berthd holds no connection to the supervisor"


def _unix_peers(server_pid: int, client_pid: int) -> set[int]:
    """Inodes of ``client_pid``'s unix sockets connected to one of ``server_pid``'s (``ss``)."""
    owner: dict[int, int] = {}
    peer: dict[int, int] = {}
    for line in subprocess.run(["ss", "-xpH"], capture_output=True, text=True, check=True).stdout.splitlines():
        fields = line.split()
        pids = [int(p) for p in re.findall(r"pid=(\d+)", line)]
        if len(fields) >= 8 and pids and fields[5].isdigit() and fields[7].isdigit():
            owner[int(fields[5])] = pids[0]
            peer[int(fields[5])] = int(fields[7])
    return {ino for ino, pid in owner.items() if pid == client_pid and owner.get(peer[ino]) == server_pid}
