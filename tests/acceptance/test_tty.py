"""Terminals as a person uses them: the docker CLI runs inside tmux (a real pty), keys are typed
with send-keys and the screen is read with capture-pane. Covers `docker run -it`, Ctrl-P Ctrl-Q
detach, `docker attach` (no replay of old output), `docker exec -it`, window resize and
`--detach-keys`."""

from __future__ import annotations

import secrets
import shlex
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.acceptance.conftest import Docker
from tests.support.daemon import Berthd, kill_quietly

pytestmark = pytest.mark.acceptance


class Tmux:
    """A private tmux server (its own socket) whose windows run docker commands."""

    def __init__(self, host: str, config: Path) -> None:
        self.socket = f"berth-{secrets.token_hex(4)}"
        self.env = f"env DOCKER_HOST={shlex.quote(host)} DOCKER_CONFIG={shlex.quote(str(config))}"

    def _tmux(self, *args: str) -> str:
        out = subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=30)
        return out.stdout

    def start(self, name: str, command: str, width: int = 120, height: int = 40) -> None:
        # The shell keeps the window after the CLI exits, to read its exit status.
        script = f"{self.env} {command}; echo CLI-EXIT=$?; sleep 600"
        self._tmux("new-session", "-d", "-s", name, "-x", str(width), "-y", str(height), script)

    def keys(self, name: str, *keys: str) -> None:
        self._tmux("send-keys", "-t", name, *keys)

    def type(self, name: str, text: str) -> None:
        self._tmux("send-keys", "-t", name, "-l", text)
        self._tmux("send-keys", "-t", name, "Enter")

    def screen(self, name: str) -> str:
        return self._tmux("capture-pane", "-p", "-t", name)

    def resize(self, name: str, width: int, height: int) -> None:
        self._tmux("resize-window", "-t", name, "-x", str(width), "-y", str(height))

    def wait_for(self, name: str, text: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen(name)
            if text in screen:
                return screen
            assert time.monotonic() < deadline, f"{text!r} never appeared on:\n{screen}"
            time.sleep(0.05)

    def close(self) -> None:
        pid = self._tmux("display-message", "-p", "#{pid}").strip()
        self._tmux("kill-server")
        if pid.isdigit():  # make sure our tmux server is gone even if kill-server failed
            kill_quietly(int(pid))


@pytest.fixture
def tmux(berthd: Berthd, cli_config: Path, loaded: str) -> Iterator[Tmux]:
    t = Tmux(berthd.host, cli_config)
    try:
        yield t
    finally:
        t.close()


def test_run_it_detach_and_reattach(tmux: Tmux, dkr: Docker) -> None:
    name = f"tty-{secrets.token_hex(3)}"
    try:
        tmux.start("run", f"docker run -it --name {name} busybox sh")
        tmux.wait_for("run", "/ #")
        tmux.type("run", "echo before-$((6*7))")
        tmux.wait_for("run", "before-42")
        tmux.type("run", "stty size")
        tmux.wait_for("run", "40 120")
        tmux.keys("run", "C-p", "C-q")
        tmux.wait_for("run", "CLI-EXIT=0")
        assert dkr("inspect", "-f", "{{.State.Status}}", name).stdout.strip() == "running"

        tmux.start("attach", f"docker attach {name}", width=100, height=30)
        tmux.type("attach", "echo after-$((6*7)); stty size")
        screen = tmux.wait_for("attach", "30 100")
        assert "after-42" in screen and "before-42" not in screen  # live output only, no replay
        tmux.type("attach", "exit 3")
        tmux.wait_for("attach", "CLI-EXIT=3")
        assert dkr("inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", name).stdout.strip() == "exited 3"
        assert "before-42" in dkr("logs", name).stdout  # everything is in the log all the same
    finally:
        dkr("rm", "-f", name)


def test_exec_it_and_resize(tmux: Tmux, dkr: Docker) -> None:
    cid = dkr("run", "-d", "busybox", "sleep", "1000").stdout.strip()
    try:
        tmux.start("exec", f"docker exec -it {cid} sh", width=120, height=40)
        tmux.wait_for("exec", "/ #")
        tmux.type("exec", "stty size; tty; echo $TERM")
        screen = tmux.wait_for("exec", "xterm")
        assert "40 120" in screen and "/dev/pts/" in screen
        tmux.resize("exec", 90, 25)
        tmux.type("exec", "clear; stty size")
        tmux.wait_for("exec", "25 90")
        tmux.type("exec", "exit 6")
        tmux.wait_for("exec", "CLI-EXIT=6")
        assert dkr("inspect", "-f", "{{.State.Running}}", cid).stdout.strip() == "true"  # only the exec ended
    finally:
        dkr("rm", "-f", cid)


def test_custom_detach_keys(tmux: Tmux, dkr: Docker) -> None:
    name = f"tty-{secrets.token_hex(3)}"
    try:
        tmux.start("run", f"docker run -it --detach-keys ctrl-x,x --name {name} busybox sh")
        tmux.wait_for("run", "/ #")
        tmux.keys("run", "C-p", "C-q")  # not the detach keys any more: passed to the shell
        tmux.type("run", "echo still-here")
        tmux.wait_for("run", "still-here")
        tmux.keys("run", "C-x", "x")
        tmux.wait_for("run", "CLI-EXIT=0")
        assert dkr("inspect", "-f", "{{.State.Running}}", name).stdout.strip() == "true"
    finally:
        dkr("rm", "-f", name)
