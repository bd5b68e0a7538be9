"""Restart policies through the CLI: counts and back-off, the `restarting` state, `docker stop`
cancelling restarts, `unless-stopped`, containers coming back when berthd restarts, and live
restore (shim and berthd SIGKILLed) of restart policies and exec sessions."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.acceptance.conftest import Docker
from tests.support import waiting
from tests.support.daemon import Berthd, docker

pytestmark = pytest.mark.acceptance


def eventually(check: Callable[[], bool], what: str = "") -> None:
    waiting.eventually(check, timeout=60, what=what)  # restarts back off: a longer wait


def state(run: Docker, cid: str) -> dict[str, object]:
    doc = json.loads(run("inspect", cid).stdout)[0]
    return {**doc["State"], "RestartCount": doc["RestartCount"]}


def test_on_failure_with_a_maximum(dkr: Docker, loaded: str) -> None:
    since = f"{time.time() - 1:.3f}"
    cid = dkr("run", "-d", "--restart", "on-failure:2", "busybox", "sh", "-c", "echo ran; exit 3").stdout.strip()
    try:
        eventually(lambda: state(dkr, cid)["RestartCount"] == 2 and state(dkr, cid)["Status"] == "exited")
        final = state(dkr, cid)
        assert final["ExitCode"] == 3 and final["Restarting"] is False
        assert dkr("logs", cid).stdout == "ran\n" * 3
        events = dkr("events", "--since", since, "--until", f"{time.time() + 1:.3f}", "--filter", f"container={cid}",
                     "--format", "{{.Action}}", timeout=30).stdout.split()
        assert [e for e in events if e in ("start", "die")] == ["start", "die"] * 3
        # a clean exit is not a failure
        ok = dkr("run", "-d", "--restart", "on-failure", "busybox", "true").stdout.strip()
        assert dkr("wait", ok).stdout.strip() == "0"
        assert state(dkr, ok)["RestartCount"] == 0
        dkr("rm", ok)
    finally:
        dkr("rm", "-f", cid)


def test_always_restarts_until_stopped(dkr: Docker, berthd: Berthd, cli_config: Path, loaded: str) -> None:
    cid = dkr("run", "-d", "--restart", "always", "busybox", "sh", "-c", "exit 1").stdout.strip()
    try:
        # 100 ms, 200, 400, 800, 1.6 s…: the back-off soon leaves it visibly restarting
        eventually(lambda: dkr("ps", "--filter", f"id={cid}", "--format", "{{.Status}}").stdout.startswith(
            "Restarting (1) "), what="a restarting status")
        restarting = state(dkr, cid)
        assert restarting["Restarting"] is True and restarting["Running"] is True and restarting["Pid"] == 0
        removal = dkr("rm", cid)  # restarting or, between two back-offs, running: either way refused
        assert removal.returncode == 1
        assert any(f"container is {s}: stop the container before removing or force remove" in removal.stderr
                   for s in ("restarting", "running"))
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        env.update(DOCKER_HOST=berthd.host, DOCKER_CONFIG=str(cli_config))
        waiter = subprocess.Popen(["docker", "wait", cid], stdout=subprocess.PIPE, text=True, env=env)
        try:
            assert dkr("stop", cid).returncode == 0
            # `docker wait` outlasts restarts and ends with the stop (which cancels the pending restart)
            assert waiter.communicate(timeout=60)[0].strip() == "1"
        finally:
            if waiter.poll() is None:
                waiter.kill()
                waiter.wait()
        stopped = state(dkr, cid)
        assert stopped["Status"] == "exited" and stopped["Restarting"] is False
        count = stopped["RestartCount"]
        time.sleep(2)  # longer than its next back-off: no restart may come
        assert state(dkr, cid)["RestartCount"] == count and state(dkr, cid)["Status"] == "exited"
        assert dkr("start", cid).returncode == 0  # a start by hand resets the count
        eventually(lambda: state(dkr, cid)["RestartCount"] in (1, 2, 3))
    finally:
        dkr("rm", "-f", cid)


def test_unless_stopped_stays_down_after_kill(dkr: Docker, loaded: str) -> None:
    cid = dkr("run", "-d", "--restart", "unless-stopped", "busybox", "sleep", "1000").stdout.strip()
    try:
        assert dkr("kill", cid).returncode == 0
        assert dkr("wait", cid).stdout.strip() == "137"
        time.sleep(0.5)  # past the first back-off
        assert state(dkr, cid)["Status"] == "exited" and state(dkr, cid)["RestartCount"] == 0
    finally:
        dkr("rm", "-f", cid)


@pytest.fixture
def own_daemon(session_root: Path, session_token: str, cli_config: Path,
               image_tar: Path) -> Iterator[tuple[Berthd, Docker]]:
    daemon = Berthd(root=session_root / "berthd-restart", cgroup_parent=f"berth-test-{session_token}-r")
    try:
        daemon.start()

        def run(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
            return docker(daemon.host, *args, config_dir=cli_config, **kwargs)  # type: ignore[arg-type]

        assert run("load", "-i", str(image_tar)).returncode == 0
        yield daemon, run
    finally:
        daemon.cleanup()


def test_policies_after_a_daemon_restart_and_live_restore(own_daemon: tuple[Berthd, Docker]) -> None:
    daemon, run = own_daemon
    ids = {}
    for name, policy in (("always", "always"), ("always-stopped", "always"), ("unless", "unless-stopped"),
                         ("unless-stopped", "unless-stopped"), ("none", "no")):
        ids[name] = run("run", "-d", "--name", name, "--restart", policy, "busybox", "sleep", "1000").stdout.strip()
    assert run("stop", "-t", "0", "always-stopped", "unless-stopped").returncode == 0
    started = {name: state(run, cid)["StartedAt"] for name, cid in ids.items()}

    code = daemon.stop(timeout=120)  # stops every container, as dockerd without live-restore
    assert code == 0, daemon.log_tail(200)
    daemon.start()
    running = {name: state(run, cid)["Running"] for name, cid in ids.items()}
    assert running == {"always": True, "always-stopped": True, "unless": True, "unless-stopped": False,
                       "none": False}
    assert state(run, ids["always"])["StartedAt"] != started["always"]

    # Live restore: the shim's gRPC side and berthd die; the supervisor keeps restarting and
    # running execs, and everything that happened meanwhile is reported afterwards.
    flapping = run("run", "-d", "--restart", "always", "busybox", "sh", "-c", "sleep 0.3; exit 1").stdout.strip()
    exec_id = json.loads(subprocess.run(
        ["curl", "-s", "--unix-socket", daemon.socket, "-X", "POST", "-H", "Content-Type: application/json",
         "-d", json.dumps({"Cmd": ["sh", "-c", "sleep 1; exit 5"]}),
         f"http://berth/v1.50/containers/{ids['always']}/exec"], capture_output=True, text=True).stdout)["Id"]
    assert subprocess.run(["curl", "-s", "--unix-socket", daemon.socket, "-X", "POST", "-H",
                           "Content-Type: application/json", "-d", '{"Detach": true}',
                           f"http://berth/v1.50/exec/{exec_id}/start"], capture_output=True).returncode == 0
    before = state(run, flapping)["RestartCount"]
    assert isinstance(before, int)
    shim = daemon.service_pids()["shim"]
    daemon.kill()
    os.kill(shim, signal.SIGKILL)
    time.sleep(2)  # the exec ends and the container restarts while nobody listens
    daemon.start()
    eventually(lambda: state(run, flapping)["RestartCount"] > before + 1, what="restarts recorded meanwhile")
    inspected = json.loads(subprocess.run(["curl", "-s", "--unix-socket", daemon.socket,
                                           f"http://berth/v1.50/exec/{exec_id}/json"],
                                          capture_output=True, text=True).stdout)
    assert (inspected["Running"], inspected["ExitCode"]) == (False, 5)
    assert run("stop", "-t", "0", flapping).returncode == 0
