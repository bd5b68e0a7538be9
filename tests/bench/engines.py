"""The two engines under test, each on private sockets and roots, and the docker CLI that drives them.

* Berth: ``tests.support.daemon.Berthd`` (its own socket, data/exec roots and cgroup parent).
* dockerd: Debian's ``docker.io`` started by us (:class:`PrivateDockerd`) or one named by
  ``BENCH_DOCKER_HOST`` (``unix:///path``; left running, only our containers are removed).

Our dockerd is fenced off from everything else on the host: its own ``--data-root``,
``--exec-root``, socket, pidfile, cgroup parent, a containerd of its own (dockerd 20.10 would
adopt a system containerd at /run/containerd/containerd.sock if one ran, so we start one and pass
``--containerd``), and a bridge of its own (created and deleted by us, on a /24 no route uses).
dockerd 20.10 never removes its iptables rules, and with ``--ip-forward`` it flips
``net.ipv4.ip_forward`` and the FORWARD policy host-wide, so it runs with ``--iptables=false
--ip-forward=false --ip-masq=false``: containers still get a veth on the bridge (what ``run`` pays
for), and the host's netfilter state is not touched — which :class:`HostState` verifies after it
stops.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import random
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.bench import api
from tests.support.daemon import Berthd, kill_quietly, remove_cgroups, unmount_below

# Paths outside its roots that dockerd/containerd 20.10/1.6 create on their own; removed after
# the run when they did not exist before and are empty (``key.json`` is moved by daemon.json).
_HOST_PATHS = ("/run/docker/plugins", "/run/docker", "/run/containerd/s", "/run/containerd/runc",
               "/run/containerd", "/etc/docker/key.json", "/var/lib/docker", "/var/lib/containerd",
               "/opt/containerd/bin", "/opt/containerd/lib", "/opt/containerd", "/run/netns")
_SYSCTLS = ("/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding",
            "/proc/sys/net/bridge/bridge-nf-call-iptables")


class CLI:
    """The real docker CLI (``BENCH_DOCKER_CLI`` or ``docker`` on PATH) with an empty config dir."""

    def __init__(self, config_dir: Path) -> None:
        self.binary = os.environ.get("BENCH_DOCKER_CLI") or shutil.which("docker") or "docker"
        config_dir.mkdir(parents=True, exist_ok=True)
        (config_dir / "config.json").write_text("{}")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        self.env["DOCKER_CONFIG"] = str(config_dir)
        self.env["DOCKER_BUILDKIT"] = "0"  # no buildx plugin on Debian; both engines get /build

    def run(self, host: str, *args: str, timeout: float = 120, check: bool = True,
            capture: bool = True) -> subprocess.CompletedProcess[str]:
        env = {**self.env, "DOCKER_HOST": host}
        out = subprocess.PIPE if capture else subprocess.DEVNULL
        proc = subprocess.run([self.binary, *args], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.PIPE,
                              timeout=timeout, env=env, text=True)
        if check and proc.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args)} ({host}) -> {proc.returncode}: {proc.stderr.strip()[:400]}")
        return proc

    def timed(self, host: str, *args: str, timeout: float = 120) -> float:
        """Wall-clock seconds of one whole CLI command (output discarded), as a user feels it."""
        t0 = time.perf_counter()
        self.run(host, *args, timeout=timeout, capture=False)
        return time.perf_counter() - t0

    def version(self) -> str:
        proc = subprocess.run([self.binary, "--version"], capture_output=True, text=True, timeout=30)
        return proc.stdout.strip()


@dataclass
class Engine:
    """What a scenario needs of an engine: where it listens, and its processes (for memory/CPU)."""

    name: str
    socket: str
    version: str = ""

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    def client(self, timeout: float = 120.0) -> api.Client:
        return api.Client(self.socket, timeout)

    def processes(self) -> dict[str, list[int]]:
        """Engine processes by role (never container processes)."""
        raise NotImplementedError

    def python_pids(self) -> dict[str, int]:
        """Processes py-spy can profile (Berth only)."""
        return {}

    def stop(self) -> list[str]:
        """Stop and clean up; return what could not be cleaned (empty when the host is clean)."""
        raise NotImplementedError


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _in_cgroup(pid: int, parent: str) -> bool:
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            return f"/{parent}/" in f.read()
    except OSError:
        return False


@dataclass
class BerthEngine(Engine):
    daemon: Berthd | None = None

    @classmethod
    def start(cls, root: Path, token: str) -> BerthEngine:
        # Host-visible network names (bridge, veths, nft table) carry our token where Berthd takes one.
        takes_token = "net_token" in {f.name for f in dataclasses.fields(Berthd)}
        named: dict[str, Any] = {"net_token": token} if takes_token else {}
        daemon = Berthd(root=root, cgroup_parent=f"berth-bench-{token}", **named)
        engine = cls(name="berth", socket=daemon.socket, daemon=daemon)
        try:
            daemon.start()
        except BaseException:
            daemon.cleanup()
            raise
        with engine.client() as c:
            engine.version = str(c.json("GET", "/version").get("Version", ""))
        return engine

    def processes(self) -> dict[str, list[int]]:
        assert self.daemon is not None and self.daemon.proc is not None
        roles = {"berthd": [self.daemon.proc.pid]}
        for role, pid in self.daemon.service_pids().items():
            roles[role] = [pid]
        # Helpers forked by a service (not containers: those live in the cgroup parent).
        known = {p for pids in roles.values() for p in pids}
        for role, pids in list(roles.items()):
            for pid in list(pids):
                for child in _children(pid):
                    if child not in known and not _in_cgroup(child, self.daemon.cgroup_parent):
                        roles.setdefault(f"{role}-child", []).append(child)
                        known.add(child)
        return roles

    def python_pids(self) -> dict[str, int]:
        return {role: pids[0] for role, pids in self.processes().items()
                if role in ("berthd", "shim", "supervisor", "snapshotter")}

    def stop(self) -> list[str]:
        assert self.daemon is not None
        self.daemon.cleanup()
        left = _leftovers(self.daemon.root, self.daemon.cgroup_parent)
        net = getattr(self.daemon, "net", None)  # Berth's bridges, veths and nft table, once it has them
        if net is not None:
            left += [f"link {name}" for name in net.links()]
            if net.table_exists():
                left.append(f"nft table ip {net.table}")
        shutil.rmtree(self.daemon.root, ignore_errors=True)
        return left


def _leftovers(root: Path, cgroup_parent: str) -> list[str]:
    left = []
    with open("/proc/self/mountinfo") as f:
        left += [f"mount {line.split()[4]}" for line in f if line.split()[4].startswith(str(root))]
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        if (hierarchy / cgroup_parent).exists():
            left.append(f"cgroup {hierarchy / cgroup_parent}")
    for pid in _all_pids():
        if any(str(root) in arg for arg in _cmdline(pid)):
            left.append(f"process {pid} {' '.join(_cmdline(pid))[:120]}")
    return left


@dataclass
class HostState:
    """What dockerd might change outside its roots, captured before it starts and compared after."""

    iptables: dict[str, str] = field(default_factory=dict)
    sysctls: dict[str, str] = field(default_factory=dict)
    paths: set[str] = field(default_factory=set)
    links: set[str] = field(default_factory=set)

    @classmethod
    def capture(cls) -> HostState:
        state = cls()
        for tool in ("iptables-save", "ip6tables-save"):
            try:
                out = subprocess.run([tool], capture_output=True, text=True, timeout=30).stdout
            except (OSError, subprocess.TimeoutExpired):
                out = ""
            # Drop comments and packet counters: only rules and chains matter.
            lines = [ln.split(" [", 1)[0] for ln in out.splitlines() if ln and not ln.startswith("#")]
            state.iptables[tool] = "\n".join(lines)
        for path in _SYSCTLS:
            try:
                state.sysctls[path] = Path(path).read_text().strip()
            except OSError:
                pass
        state.paths = {p for p in _HOST_PATHS if os.path.lexists(p)}
        state.links = set(os.listdir("/sys/class/net"))
        return state

    def diff(self, after: HostState) -> list[str]:
        out = []
        for tool, rules in self.iptables.items():
            if after.iptables.get(tool) != rules:
                new = set(after.iptables.get(tool, "").splitlines()) - set(rules.splitlines())
                gone = set(rules.splitlines()) - set(after.iptables.get(tool, "").splitlines())
                out.append(f"{tool} changed: +{sorted(new)} -{sorted(gone)}")
        for path, value in self.sysctls.items():
            if after.sysctls.get(path) != value:
                out.append(f"{path}: {value} -> {after.sysctls.get(path)}")
        out += [f"path left: {p}" for p in sorted(after.paths - self.paths)]
        return out


def _routes_in_use() -> list[ipaddress.IPv4Network]:
    nets: list[ipaddress.IPv4Network] = []
    for cmd in (["ip", "-4", "-j", "route", "show", "table", "all"], ["ip", "-4", "-j", "addr"]):
        try:
            doc = json.loads(subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout or "[]")
        except (OSError, ValueError, subprocess.TimeoutExpired):
            continue
        for item in doc:
            dst = item.get("dst")
            if dst and dst != "default":
                nets.append(ipaddress.IPv4Network(dst if "/" in dst else dst + "/32", strict=False))
            for addr in item.get("addr_info", []):
                nets.append(ipaddress.IPv4Network(f"{addr['local']}/{addr['prefixlen']}", strict=False))
    return nets


def pick_subnet(rng: random.Random) -> ipaddress.IPv4Network:
    """A /24 in 10.250.0.0-10.254.255.255 that no route or address on the host overlaps: never
    docker0's 172.17.0.0/16, and outside the 10.100-10.249 /16s the test daemons give Berth."""
    used = _routes_in_use()
    for _ in range(200):
        net = ipaddress.IPv4Network(f"10.{rng.randint(250, 254)}.{rng.randint(0, 255)}.0/24")
        if not any(net.overlaps(u) for u in used if u.prefixlen > 0):
            return net
    raise RuntimeError("no free /24 for dockerd's bridge")


@dataclass
class PrivateDockerd(Engine):
    """A dockerd of our own; see the module docstring for how it is fenced off."""

    root: Path = Path()
    bridge: str = ""
    subnet: str = ""
    cgroup_parent: str = ""
    proc: subprocess.Popen[bytes] | None = None
    containerd: subprocess.Popen[bytes] | None = None
    before: HostState | None = None

    @classmethod
    def start(cls, root: Path, token: str, timeout: float = 60.0) -> PrivateDockerd:
        root.mkdir(parents=True, exist_ok=True)
        net = pick_subnet(random.Random(token))
        engine = cls(name="dockerd", socket=str(root / "docker.sock"), root=root, bridge=f"bbd{token}"[:15],
                     subnet=str(net), cgroup_parent=f"berth-bench-docker-{token}", before=HostState.capture())
        try:
            engine._start(net, timeout)
        except BaseException:
            engine.stop()
            raise
        return engine

    def _start(self, net: ipaddress.IPv4Network, timeout: float) -> None:
        gateway = f"{next(net.hosts())}/{net.prefixlen}"
        for cmd in (["ip", "link", "add", self.bridge, "type", "bridge"],
                    ["ip", "addr", "add", gateway, "dev", self.bridge],
                    ["ip", "link", "set", self.bridge, "up"]):
            subprocess.run(cmd, check=True, capture_output=True, timeout=10)
        deadline = time.monotonic() + timeout
        self._start_containerd(deadline)
        config = self.root / "daemon.json"
        config.write_text(json.dumps({"deprecated-key-path": str(self.root / "key.json")}))
        argv = ["dockerd", "--config-file", str(config), "--containerd", self._containerd_sock(),
                "--data-root", str(self.root / "data"),
                "--exec-root", str(self.root / "run"), "-H", self.host, "--pidfile", str(self.root / "docker.pid"),
                "--bridge", self.bridge, "--iptables=false", "--ip-forward=false", "--ip-masq=false",
                "--cgroup-parent", self.cgroup_parent, "--storage-driver", "overlay2", "--log-level", "warn"]
        with open(self.root / "dockerd.log", "ab") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         start_new_session=True)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dockerd exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                with self.client(5) as c:
                    self.version = str(c.json("GET", "/version")["Version"])
                return
            except (OSError, api.APIError):
                time.sleep(0.1)
        raise RuntimeError(f"dockerd not ready after {timeout}s: {self.log_tail()}")

    def _start_containerd(self, deadline: float) -> None:
        base = self.root / "containerd"
        base.mkdir(parents=True, exist_ok=True)
        config = base / "config.toml"
        config.write_text("\n".join([
            "version = 2", f'root = "{base / "root"}"', f'state = "{base / "state"}"',
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]',
            "[grpc]", f'  address = "{self._containerd_sock()}"',
            "[ttrpc]", f'  address = "{self._containerd_sock()}.ttrpc"',
            "[debug]", '  level = "warn"',
            '[plugins."io.containerd.internal.v1.opt"]', f'  path = "{base / "opt"}"', ""]))
        with open(self.root / "containerd.log", "ab") as log:
            self.containerd = subprocess.Popen(["containerd", "--config", str(config)], stdin=subprocess.DEVNULL,
                                               stdout=log, stderr=log, start_new_session=True)
        while not os.path.exists(self._containerd_sock()):
            if self.containerd.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"containerd did not start: {self.log_tail('containerd.log')}")
            time.sleep(0.05)

    def log_tail(self, name: str = "dockerd.log") -> str:
        try:
            return (self.root / name).read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def _containerd_sock(self) -> str:
        return str(self.root / "containerd" / "containerd.sock")

    def processes(self) -> dict[str, list[int]]:
        assert self.proc is not None
        assert self.containerd is not None
        roles = {"dockerd": [self.proc.pid], "containerd": [self.containerd.pid], "containerd-shim": self._shims()}
        return roles

    def _shims(self) -> list[int]:
        sock = self._containerd_sock()
        return [pid for pid in _all_pids()
                if (cmd := _cmdline(pid)) and cmd[0].endswith("containerd-shim-runc-v2") and sock in cmd]

    def stop(self) -> list[str]:
        for proc in (self.proc, self.containerd):  # dockerd first: it still talks to containerd
            if proc is not None and proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait()
        # Shims exit with their containers; anything of ours still running is killed by PID.
        for pid in _all_pids():
            if any(str(self.root) in arg for arg in _cmdline(pid)):
                kill_quietly(pid)
        remove_cgroups(self.cgroup_parent)
        unmount_below(self.root)
        if self.bridge and self.bridge in os.listdir("/sys/class/net"):
            subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, timeout=10)
        left = _leftovers(self.root, self.cgroup_parent)
        if self.before is not None:
            for path in _HOST_PATHS:  # deepest first, only what we created, only if empty
                if path not in self.before.paths and os.path.lexists(path):
                    try:
                        os.unlink(path) if path.endswith(".json") else os.rmdir(path)
                    except OSError:
                        pass
            after = HostState.capture()
            left += self.before.diff(after)
            veths = {n for n in after.links - self.before.links if n.startswith(("veth", self.bridge))}
            left += [f"link left: {n}" for n in sorted(veths)]
        shutil.rmtree(self.root, ignore_errors=True)
        return left


@dataclass
class ExternalDockerd(Engine):
    """A dockerd someone else runs (``BENCH_DOCKER_HOST``): we only remove our own containers."""

    @classmethod
    def connect(cls, host: str) -> ExternalDockerd:
        if not host.startswith("unix://"):
            raise ValueError("BENCH_DOCKER_HOST must be unix:///path/to/docker.sock")
        engine = cls(name="dockerd", socket=host.removeprefix("unix://"))
        with engine.client(10) as c:
            engine.version = str(c.json("GET", "/version")["Version"])
        return engine

    def processes(self) -> dict[str, list[int]]:
        roles: dict[str, list[int]] = {}
        for pid in _all_pids():
            cmd = _cmdline(pid)
            if not cmd:
                continue
            base = os.path.basename(cmd[0])
            if base in ("dockerd", "containerd", "containerd-shim-runc-v2"):
                roles.setdefault(base.replace("-runc-v2", ""), []).append(pid)
        return roles

    def stop(self) -> list[str]:
        return []
