"""`docker run` and the container lifecycle through the real docker CLI."""

from __future__ import annotations

import json
import os
import time

import pytest

from tests.acceptance.conftest import Docker

pytestmark = pytest.mark.acceptance


def test_run_echo_hello(dkr: Docker, loaded: str) -> None:
    out = dkr("run", "--rm", "busybox", "echo", "hello")
    assert out.returncode == 0, out.stderr
    assert out.stdout == "hello\n"


def test_exit_code_propagates(dkr: Docker, loaded: str) -> None:
    out = dkr("run", "--rm", "busybox", "sh", "-c", "exit 3")
    assert out.returncode == 3


def test_stdin_piped_through_cat(dkr: Docker, loaded: str) -> None:
    out = dkr("run", "--rm", "-i", "busybox", "cat", input="line one\nline two\n")
    assert out.returncode == 0, out.stderr
    assert out.stdout == "line one\nline two\n"


def test_stdout_and_stderr_kept_apart(dkr: Docker, loaded: str) -> None:
    out = dkr("run", "--rm", "busybox", "sh", "-c", "echo to-out; echo to-err >&2")
    assert out.returncode == 0
    assert out.stdout == "to-out\n"
    assert out.stderr == "to-err\n"


def test_env_workdir_user_entrypoint_name(dkr: Docker, loaded: str) -> None:
    out = dkr("run", "--rm", "--name", "berth-opts", "-e", "GREETING=ahoy", "-w", "/tmp", "-u", "nobody",
              "--entrypoint", "sh", "busybox", "-c", 'echo "$GREETING $(pwd) $(id -u):$(id -g) $0"')
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["ahoy /tmp 65534:65534 sh"]


def test_large_output_arrives_complete(dkr: Docker, loaded: str) -> None:
    out = dkr("run", "--rm", "busybox", "seq", "200000", timeout=180)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 200000
    assert lines[0] == "1" and lines[-1] == "200000"
    assert lines == [str(i) for i in range(1, 200001)]


def test_missing_executable_is_127(dkr: Docker, loaded: str) -> None:
    out = dkr("run", "--rm", "busybox", "no-such-binary")
    assert out.returncode == 127
    assert "executable file not found" in out.stderr


def test_not_executable_is_126(dkr: Docker, loaded: str) -> None:
    out = dkr("run", "--rm", "busybox", "/etc/passwd")
    assert out.returncode == 126
    assert "permission denied" in out.stderr


def test_name_conflict(dkr: Docker, loaded: str) -> None:
    first = dkr("create", "--name", "berth-dup", "busybox", "true")
    assert first.returncode == 0, first.stderr
    try:
        second = dkr("run", "--name", "berth-dup", "busybox", "true")
        assert second.returncode == 125
        assert 'Conflict. The container name "/berth-dup" is already in use by container' in second.stderr
    finally:
        dkr("rm", "-f", "berth-dup")


def test_unknown_image(dkr: Docker, loaded: str) -> None:
    out = dkr("create", "--pull", "never", "no-such-image:1.0")
    assert out.returncode != 0
    assert "No such image: no-such-image:1.0" in out.stderr


def test_isolation_inside(dkr: Docker, loaded: str) -> None:
    script = ("echo pid=$$; echo procs=$(ls -d /proc/[0-9]* | wc -l); hostname; "
              "readlink /proc/self/ns/ipc; readlink /proc/self/ns/mnt; awk '$2==\"/\"{print $3}' /proc/mounts")
    out = dkr("run", "-d", "busybox", "sh", "-c", script + "; sleep 30")
    assert out.returncode == 0, out.stderr
    cid = out.stdout.strip()
    try:
        lines = _wait_log_lines(dkr, cid, 6)
        assert lines[0] == "pid=1"
        # sh, its ls and wc (or fewer if they already exited): nothing from the host
        assert int(lines[1].split("=")[1]) <= 4
        assert lines[2] == cid[:12]
        assert lines[3] != os.readlink("/proc/self/ns/ipc")
        assert lines[4] != os.readlink("/proc/self/ns/mnt")
        assert lines[5] == "overlay"
    finally:
        dkr("rm", "-f", cid)


def _wait_log_lines(dkr: Docker, cid: str, n: int, timeout: float = 20) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        lines = dkr("logs", cid).stdout.splitlines()
        if len(lines) >= n or time.monotonic() > deadline:
            return lines
        time.sleep(0.1)


def test_writes_never_reach_the_image(dkr: Docker, loaded: str) -> None:
    assert dkr("run", "--rm", "busybox", "sh", "-c", "echo x > /etc/berth-marker && rm /bin/ls").returncode == 0
    out = dkr("run", "--rm", "busybox", "sh", "-c", "test ! -e /etc/berth-marker && test -e /bin/ls && echo clean")
    assert out.stdout == "clean\n", out.stderr


def test_detached_lifecycle(dkr: Docker, loaded: str) -> None:
    out = dkr("run", "-d", "--name", "berth-life", "busybox", "sh", "-c",
              "trap 'echo got-term; exit 0' TERM; i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.2; done")
    assert out.returncode == 0, out.stderr
    cid = out.stdout.strip()
    assert len(cid) == 64
    try:
        ps = dkr("ps", "--no-trunc", "--format", "{{.ID}} {{.Names}} {{.Status}}")
        assert any(line.startswith(cid) and "berth-life" in line and "Up" in line for line in ps.stdout.splitlines())
        lines = _wait_log_lines(dkr, "berth-life", 3)
        assert lines[:2] == ["tick 1", "tick 2"]
        tail = dkr("logs", "--tail", "1", "berth-life").stdout.splitlines()
        assert len(tail) == 1 and tail[0].startswith("tick ")
        stamped = dkr("logs", "-t", "--tail", "2", "berth-life").stdout.splitlines()
        assert all(len(line.split(" ", 1)[0]) == 30 and line.split(" ", 1)[0].endswith("Z") for line in stamped)
        info = json.loads(dkr("inspect", "berth-life").stdout)[0]
        assert info["State"]["Running"] is True and info["State"]["Pid"] > 0
        assert info["Name"] == "/berth-life" and info["Config"]["Image"] == "busybox"
        stop = dkr("stop", "berth-life")
        assert stop.returncode == 0 and stop.stdout.strip() == "berth-life"
        info = json.loads(dkr("inspect", "berth-life").stdout)[0]
        assert info["State"]["Status"] == "exited" and info["State"]["ExitCode"] == 0
        assert "got-term" in dkr("logs", "berth-life").stdout
        assert dkr("start", "berth-life").returncode == 0
        assert json.loads(dkr("inspect", "berth-life").stdout)[0]["State"]["Running"] is True
        assert dkr("kill", "berth-life").returncode == 0
        waited = dkr("wait", "berth-life")
        assert waited.stdout.strip() == "137"
        ps_all = dkr("ps", "-a", "--filter", "name=berth-life", "--format", "{{.Status}}").stdout
        assert ps_all.startswith("Exited (137)")
    finally:
        assert dkr("rm", "-f", "berth-life").returncode == 0
    assert dkr("inspect", "berth-life").returncode != 0


def test_stop_times_out_then_kills(dkr: Docker, loaded: str) -> None:
    cid = dkr("run", "-d", "busybox", "sh", "-c", "trap '' TERM; while true; do sleep 0.1; done").stdout.strip()
    try:
        start = time.monotonic()
        assert dkr("stop", "-t", "1", cid).returncode == 0
        elapsed = time.monotonic() - start
        assert 0.9 <= elapsed < 10
        state = json.loads(dkr("inspect", cid).stdout)[0]["State"]
        assert state["ExitCode"] == 137
    finally:
        dkr("rm", "-f", cid)


def test_logs_follow_until_exit(dkr: Docker, loaded: str) -> None:
    cid = dkr("run", "-d", "busybox", "sh", "-c", "for i in 1 2 3; do echo n$i; sleep 0.3; done").stdout.strip()
    try:
        out = dkr("logs", "-f", cid, timeout=30)
        assert out.stdout.splitlines() == ["n1", "n2", "n3"]
    finally:
        dkr("rm", "-f", cid)


def test_rm_running_needs_force(dkr: Docker, loaded: str) -> None:
    cid = dkr("run", "-d", "busybox", "sleep", "30").stdout.strip()
    try:
        out = dkr("rm", cid)
        assert out.returncode == 1
        assert "container is running: stop the container before removing or force remove" in out.stderr
    finally:
        assert dkr("rm", "-f", cid).returncode == 0


def test_start_of_running_container_is_not_an_error(dkr: Docker, loaded: str) -> None:
    cid = dkr("run", "-d", "busybox", "sleep", "30").stdout.strip()
    try:
        again = dkr("start", cid)
        assert again.returncode == 0
    finally:
        dkr("rm", "-f", cid)


def test_ps_filters_and_all(dkr: Docker, loaded: str) -> None:
    running = dkr("run", "-d", "--label", "berth.test=ps", "busybox", "sleep", "30").stdout.strip()
    exited = dkr("run", "-d", "--label", "berth.test=ps", "busybox", "true").stdout.strip()
    try:
        dkr("wait", exited)
        only_running = dkr("ps", "-q", "--no-trunc", "--filter", "label=berth.test=ps").stdout.split()
        assert only_running == [running]
        everything = dkr("ps", "-aq", "--no-trunc", "--filter", "label=berth.test=ps").stdout.split()
        assert set(everything) == {running, exited}
        assert everything[0] == exited  # newest first
        status = dkr("ps", "-aq", "--no-trunc", "--filter", "status=exited", "--filter",
                     "label=berth.test=ps").stdout.split()
        assert status == [exited]
    finally:
        dkr("rm", "-f", running, exited)


def test_daemon_side_environment(dkr: Docker, loaded: str) -> None:
    out = dkr("run", "--rm", "busybox", "sh", "-c", 'echo "$HOSTNAME|$PATH|${TERM:-unset}"')
    hostname, path, term = out.stdout.strip().split("|")
    assert len(hostname) == 12 and path == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert term == "unset"
    tty = dkr("run", "--rm", "-t", "-e", "PATH=/bin", "busybox", "sh", "-c", 'echo "$TERM|$PATH"')
    assert tty.stdout == "xterm|/bin\r\n"
