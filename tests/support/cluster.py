"""A Berth cluster on one machine for tests: one Redis, host nodes (a standalone ``berth-shim`` and
``berth-snapshotter`` each, with their own roots, node id, cgroup parent, veth prefix and nft
table) and API servers joining through ``--redis-url``. Everything is stopped by PID."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from common import redis_server
from common.keys import Keys
from tests.support.daemon import REPO, Berthd, NetNames, kill_quietly, remove_cgroups, unmount_below


@dataclass
class Node:
    root: Path
    node_id: str
    redis_url: str
    namespace: str
    cgroup_parent: str
    token: str
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def veth_prefix(self) -> str:
        return f"n{self.token}"

    @property
    def table(self) -> str:
        return f"berth_n{self.token}"

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        common = ["--redis-url", self.redis_url, "--redis-namespace", self.namespace, "--node-id", self.node_id]
        argvs = {
            "shim": [sys.executable, "-m", "shim", "--root", str(self.root / "shim"),
                     "--exec-root", str(self.root / "run" / "shim"), "--address", str(self.root / "shim.sock"),
                     "--cgroup-parent", self.cgroup_parent, "--network-table", self.table,
                     "--veth-prefix", self.veth_prefix, *common],
            "snapshotter": [sys.executable, "-m", "snapshotter", "--root", str(self.root / "snapshotter"),
                            "--address", str(self.root / "snapshotter.sock"), *common],
        }
        for name, argv in argvs.items():
            with open(self.root / f"{name}.log", "ab") as log:
                self.procs[name] = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                                    cwd=REPO, start_new_session=True)

    def stop(self, timeout: float = 30.0) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def supervisor_pid(self) -> int | None:
        try:
            return int((self.root / "run" / "shim" / "supervisor.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def log_tail(self, lines: int = 40) -> str:
        out = ""
        for name in self.procs:
            path = self.root / f"{name}.log"
            if path.exists():
                out += f"\n--- {self.node_id} {name} ---\n" + "\n".join(
                    path.read_text(errors="replace").splitlines()[-lines:])
        return out

    def cleanup(self) -> None:
        supervisor = self.supervisor_pid()
        self.stop()
        if supervisor is not None:
            kill_quietly(supervisor)
        remove_cgroups(self.cgroup_parent)
        unmount_below(self.root)
        subprocess.run(["nft", "delete", "table", "ip", self.table], capture_output=True, check=False)


@dataclass
class Cluster:
    root: Path
    token: str
    namespace: str = "berthc"
    nodes: list[Node] = field(default_factory=list)
    apis: list[Berthd] = field(default_factory=list)
    redis_proc: subprocess.Popen[bytes] | None = None

    @property
    def redis_socket(self) -> Path:
        return self.root / "redis.sock"

    @property
    def redis_url(self) -> str:
        return redis_server.redis_url(self.redis_socket)

    def redis(self) -> redis.Redis:
        return redis.Redis(unix_socket_path=str(self.redis_socket))

    def start(self, *, nodes: int, apis: int, timeout: float = 60.0) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        cfg = redis_server.RedisConfig(dir=self.root / "redis", socket=self.redis_socket, appendonly=False)
        self.redis_proc = redis_server.spawn(cfg)
        self._wait(lambda: self.redis().ping(), timeout, "redis")
        for i in range(nodes):
            node = Node(root=self.root / f"node{i}", node_id=f"node{i}-{self.token}", redis_url=self.redis_url,
                        namespace=self.namespace, cgroup_parent=f"berth-test-{self.token}-n{i}",
                        token=f"{self.token}{i}")
            self.nodes.append(node)
            node.start()
        self._wait(self._all_registered, timeout, "node registration")
        net = NetNames.for_token(self.token)  # the cluster's default bridge settings, shared
        for i in range(apis):
            api = Berthd(root=self.root / f"api{i}", cgroup_parent=f"berth-test-{self.token}-a{i}",
                         net_token=self.token,
                         extra_args=("--redis-url", self.redis_url, "--redis-namespace", self.namespace))
            api.net = net
            self.apis.append(api)
            api.start(timeout)

    def _all_registered(self) -> bool:
        client = self.redis()
        try:
            keys = Keys(self.namespace)
            return all(client.exists(keys.heartbeat(n.node_id, part)) for n in self.nodes
                       for part in ("shim", "snapshotter"))
        finally:
            client.close()

    def _wait(self, ready: object, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if ready():  # type: ignore[operator]
                    return
            except (OSError, redis.RedisError):
                pass
            for node in self.nodes:
                for name, proc in node.procs.items():
                    if proc.poll() is not None:
                        raise RuntimeError(f"{node.node_id} {name} exited with {proc.returncode}:{node.log_tail()}")
            time.sleep(0.05)
        raise RuntimeError(f"{what} not ready after {timeout}s:" + "".join(n.log_tail() for n in self.nodes))

    def cleanup(self) -> None:
        for api in self.apis:
            api.cleanup()
        for node in self.nodes:
            node.cleanup()
        if self.redis_proc is not None:
            redis_server.stop(self.redis_proc)
        for api in self.apis:
            api.net.cleanup()
