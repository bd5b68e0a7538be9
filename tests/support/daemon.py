"""Run a real ``berthd`` for tests: private data/exec roots, socket and cgroup parent; stop it by
PID and make sure nothing it started outlives the test (processes, mounts, cgroups)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _http_ping(sock: str, timeout: float = 1.0) -> bool:
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect(sock)
        s.sendall(b"GET /_ping HTTP/1.1\r\nHost: berth\r\nConnection: close\r\n\r\n")
        data = s.recv(4096)
        s.close()
        return data.startswith(b"HTTP/1.1 200")
    except OSError:
        return False


@dataclass
class Berthd:
    root: Path
    cgroup_parent: str
    extra_args: Sequence[str] = ()
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.log_path = self.root / "berthd.log"

    @property
    def socket(self) -> str:
        return str(self.root / "berth.sock")

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    @property
    def data_root(self) -> Path:
        return self.root / "data"

    @property
    def exec_root(self) -> Path:
        return self.root / "run"

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "apiserver", "-H", self.host, "--data-root", str(self.data_root),
                "--exec-root", str(self.exec_root), "--cgroup-parent", self.cgroup_parent,
                "--config-file", str(self.root / "daemon.json"), "--shutdown-timeout", "5",
                *self.extra_args]

    def start(self, timeout: float = 60.0) -> None:
        cfg = self.root / "daemon.json"
        if not cfg.exists():
            cfg.write_text("{}")
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                     cwd=REPO, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"berthd exited with {self.proc.returncode}:\n{self.log_tail()}")
            if _http_ping(self.socket):
                return
            time.sleep(0.05)
        raise RuntimeError(f"berthd not ready after {timeout}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        out = "\n".join(text[-lines:])
        for name in ("shim", "snapshotter"):
            p = self.data_root / "logs" / f"{name}.log"
            if p.exists():
                out += f"\n--- {name}.log ---\n" + "\n".join(p.read_text(errors="replace").splitlines()[-lines:])
        return out

    def kill(self) -> None:
        """SIGKILL berthd alone: its services live in their own sessions and keep running."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def service_pids(self) -> dict[str, int]:
        pids = {}
        for name in ("redis", "shim", "snapshotter"):
            try:
                pids[name] = int((self.exec_root / f"{name}.pid").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                pass
        sup = self.exec_root / "shim" / "supervisor.pid"
        try:
            pids["supervisor"] = int(sup.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass
        return pids

    def cleanup(self) -> None:
        """Last-resort teardown: kill leftovers by PID, unmount, remove cgroups."""
        pids = self.service_pids()
        self.stop()
        for pid in pids.values():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        remove_cgroups(self.cgroup_parent)
        unmount_below(self.root)


def remove_cgroups(parent: str) -> None:
    """Kill whatever is left in the test's cgroups and remove them, deepest first."""
    base = Path("/sys/fs/cgroup")
    for hierarchy in [p for p in base.iterdir() if p.is_dir() and not p.is_symlink()]:
        top = hierarchy / parent
        if not top.exists():
            continue
        dirs = sorted((d for d in top.rglob("*") if d.is_dir()), key=lambda d: len(d.parts), reverse=True)
        for d in [*dirs, top]:
            procs = d / "cgroup.procs"
            try:
                for pid in procs.read_text().split():
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            except OSError:
                pass
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except OSError:
                    time.sleep(0.02)


def unmount_below(root: Path) -> None:
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    for point in sorted((p for p in points if p.startswith(str(root))), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)


def docker(host: str, *args: str, input: bytes | str | None = None, timeout: float = 120,
           env: dict[str, str] | None = None, config_dir: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real docker CLI against ``host``."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    full_env["DOCKER_HOST"] = host
    if config_dir is not None:
        full_env["DOCKER_CONFIG"] = str(config_dir)
    full_env.update(env or {})
    data = input.encode() if isinstance(input, str) else input
    proc = subprocess.run(["docker", *args], input=data, capture_output=True, timeout=timeout, env=full_env)
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(errors="replace"),
                                       proc.stderr.decode(errors="replace"))


def inspect(host: str, ref: str, config_dir: Path | None = None) -> dict[str, object]:
    out = docker(host, "inspect", ref, config_dir=config_dir)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert isinstance(doc, list) and doc
    first = doc[0]
    assert isinstance(first, dict)
    return first
