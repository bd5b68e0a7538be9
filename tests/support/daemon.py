"""Run a real ``berthd`` for tests: private data/exec roots, socket and cgroup parent; stop it by
PID and make sure nothing it started outlives the test (processes, mounts, cgroups)."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
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
    # Names and addresses Berth puts on the host carry this token (random unless given), so
    # daemons of concurrent sessions never share a bridge, veth name, subnet or nft table.
    net_token: str = ""
    net: NetNames = field(init=False)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.certs_dir.mkdir(exist_ok=True)
        self.log_path = self.root / "berthd.log"
        self.net = NetNames.for_token(self.net_token or secrets.token_hex(3))

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
                "--registry-certs-dir", str(self.certs_dir), *self.net.args(), *self.extra_args]

    @property
    def certs_dir(self) -> Path:
        """certs.d for registries: a test drops ``<host:port>/ca.crt`` here (read per operation)."""
        return self.root / "certs.d"

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
            kill_quietly(pid)
        remove_cgroups(self.cgroup_parent)
        unmount_below(self.root)
        self.net.cleanup()


@dataclass(frozen=True)
class NetNames:
    """A daemon's host-visible network names: default bridge, user bridges' and veths' name
    prefixes, nft table, and a /16 of 10.0.0.0/8 that no route of the host touches."""

    token: str
    bridge: str
    bridge_prefix: str
    veth_prefix: str
    table: str
    base: str  # "10.N"

    @classmethod
    def for_token(cls, token: str) -> NetNames:
        taken = host_route_networks()
        start = int(token, 16)
        for i in range(150):
            base = f"10.{100 + (start + i) % 150}"
            net = ipaddress.IPv4Network(f"{base}.0.0/16")
            if not any(net.overlaps(t) for t in taken):
                break
        return cls(token=token, bridge=f"bt{token}", bridge_prefix=f"b{token}-", veth_prefix=f"v{token}",
                   table=f"berth_{token}", base=base)

    def args(self) -> list[str]:
        return ["--bridge", self.bridge, "--bip", f"{self.base}.0.1/24",
                "--default-address-pool", f"base={self.base}.0.0/16,size=24", "--bridge-prefix", self.bridge_prefix,
                "--veth-prefix", self.veth_prefix, "--nft-table", self.table]

    def links(self) -> list[str]:
        out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=False).stdout
        names = [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if line.count(":") >= 2]
        return [n for n in names if n == self.bridge or n.startswith((self.bridge_prefix, self.veth_prefix))]

    def table_exists(self) -> bool:
        out = subprocess.run(["nft", "list", "tables", "ip"], capture_output=True, text=True, check=False).stdout
        return f"table ip {self.table}" in out.splitlines()

    def cleanup(self) -> None:
        """Remove whatever the daemon left: veths first (their peers go with them), bridges, table."""
        for name in sorted(self.links(), key=lambda n: not n.startswith(self.veth_prefix)):
            subprocess.run(["ip", "link", "delete", name], capture_output=True, check=False)
        subprocess.run(["nft", "delete", "table", "ip", self.table], capture_output=True, check=False)


def host_route_networks() -> list[ipaddress.IPv4Network]:
    found = []
    for line in Path("/proc/net/route").read_text().splitlines()[1:]:
        fields = line.split()
        dest = ipaddress.IPv4Address(int(fields[1], 16).to_bytes(4, "little"))
        mask = ipaddress.IPv4Address(int(fields[7], 16).to_bytes(4, "little"))
        net = ipaddress.IPv4Network(f"{dest}/{mask}", strict=False)
        if net.prefixlen:
            found.append(net)
    return found


def kill_quietly(pid: int) -> None:
    """SIGKILL ``pid`` (one of ours, by PID); gone already is fine."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


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
                    kill_quietly(int(pid))
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
    # Never inherit a terminal: after a 401 the CLI would prompt for credentials and wait.
    stdin = subprocess.DEVNULL if data is None else None
    proc = subprocess.run(["docker", *args], input=data, stdin=stdin, capture_output=True, timeout=timeout,
                          env=full_env)
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
