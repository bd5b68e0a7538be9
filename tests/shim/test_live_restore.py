"""Live restore: the shim's gRPC side is SIGKILLed while a container runs and prints, and is
started again. The supervisor keeps the container, every log line and the exit code; the new shim
reports what happened meanwhile and what happens next, to Redis, through the real sink.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
import redis.asyncio as aioredis

from common import linux, redis_server
from common.keys import Keys
from protos.errors import NotFound, Unavailable
from protos.rpc import insecure_channel
from shim.api import ExecSpec, LogsOptions, ProcessSpec, Status
from shim.client import RemoteRuntime
from shim.supervisor.cgroups import Layout, remove_tree
from tests.shim.conftest import Containers, collect, eventually
from tests.shim.contract import inputs
from tests.support.busybox import PATH_ENV

PROJECT = str(Path(__file__).resolve().parents[2])
LINES = 300


@dataclass
class ShimProcess:
    args: list[str]
    log: Path
    address: Path
    exec_root: Path
    root: Path
    proc: subprocess.Popen[bytes] | None = None
    supervisors: set[int] = field(default_factory=set)

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": PROJECT}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "shim", *self.args], stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=log, env=env, start_new_session=True)

    async def ready(self) -> RemoteRuntime:
        """Poll the socket with a real RPC until it answers (or the process died)."""
        async def answers() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.log.read_text()[-3000:]
            if not self.address.exists():
                return False
            channel = insecure_channel(str(self.address))
            try:
                await asyncio.wait_for(RemoteRuntime(channel).list(), 2)
            except (Unavailable, TimeoutError, grpc.aio.AioRpcError):
                await channel.close()
                return False
            self.channel = channel
            return True

        await eventually(answers, what="the shim to serve")
        pid = self.supervisor_pid()
        if pid is not None:
            self.supervisors.add(pid)
        return RemoteRuntime(self.channel)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            self.proc.wait(30)

    def supervisor_pid(self) -> int | None:
        try:
            return int((self.exec_root / "supervisor.pid").read_text())
        except (OSError, ValueError):
            return None


@pytest.fixture
def shim(shim_dir: Path, redis_process: Path, keys: Keys, cgroup_parent: str) -> Iterator[ShimProcess]:
    name = f"live-{secrets.token_hex(3)}"  # one per test: the shim directory is the session's
    base = shim_dir / name
    base.mkdir()
    shim = ShimProcess(
        args=["--root", str(base / "root"), "--exec-root", str(base / "run"), "--address", str(base / "shim.sock"),
              "--redis-url", redis_server.redis_url(redis_process), "--redis-namespace", keys.ns,
              "--cgroup-parent", f"{cgroup_parent}/{name}", "--log-level", "debug"],
        log=base / "shim.log", address=base / "shim.sock", exec_root=base / "run", root=base / "root")
    # The supervisor outlives the first shim (its parent): as subreaper the test inherits and reaps it.
    linux.prctl(linux.PR_SET_CHILD_SUBREAPER, 1)
    try:
        yield shim
    finally:
        shim.kill()
        remove_tree(Layout.detect(), f"{cgroup_parent}/{name}")  # container processes, by cgroup
        pid = shim.supervisor_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for _ in range(100):
            if not remove_tree(Layout.detect(), f"{cgroup_parent}/{name}"):
                break
            time.sleep(0.05)
        for pid in shim.supervisors:  # reap the supervisor, handed to us when the first shim died
            with contextlib.suppress(ChildProcessError):
                for _ in range(100):
                    if os.waitpid(pid, os.WNOHANG)[0]:
                        break
                    time.sleep(0.05)
        linux.prctl(linux.PR_SET_CHILD_SUBREAPER, 0)


async def register(redis: aioredis.Redis, keys: Keys, id: str, name: str) -> None:
    """What the apiserver does before it asks the shim to create a container."""
    config = {"Name": f"/{name}", "Config": {"Image": "busybox:latest", "Labels": {"team": "berth"}}}
    await redis.hset(keys.container(id), mapping={"config": json.dumps(config), "state": "{}"})


async def events(redis: aioredis.Redis, keys: Keys, id: str) -> list[dict[str, object]]:
    found = []
    for _, fields in await redis.xrange(keys.events) or []:
        assert fields is not None
        event = json.loads(fields[b"e"])
        if event["Actor"]["ID"] == id:
            found.append(event)
    return found


async def test_shim_restart_keeps_containers_logs_and_exit_codes(
        shim: ShimProcess, containers: Containers, redis_client: aioredis.Redis, keys: Keys) -> None:
    redis = redis_client
    shim.start()
    runtime = await shim.ready()
    printer = containers.spec("sh", "-c", f"i=0; while [ $i -lt {LINES} ]; do echo line-$i; i=$((i+1)); "
                                          "usleep 5000; done; exit 7")
    quick = containers.spec("sh", "-c", "read x; exit 5", open_stdin=True)
    for spec, name in ((printer, "printer"), (quick, "quick")):
        await register(redis, keys, spec.id, name)
        await runtime.create(spec)
        await runtime.start(spec.id)
    async def printing() -> bool:
        return len(await collect(runtime.logs(printer.id, LogsOptions()))) >= 20

    await eventually(printing)
    supervisor = shim.supervisor_pid()
    assert supervisor is not None

    shim.kill(signal.SIGKILL)  # the gRPC side dies; the supervisor must not notice beyond a closed socket
    await shim.channel.close()
    os.kill(supervisor, 0)
    # While no shim runs, "quick" dies: the supervisor keeps the exit for the next shim.
    quick_record = shim.root / "containers" / quick.id / "state.json"
    os.kill(int(json.loads(quick_record.read_text())["pid"]), signal.SIGKILL)
    await eventually(lambda: json.loads(quick_record.read_text())["status"] == "stopped")
    printed_meanwhile = len((shim.root / "containers" / printer.id / f"{printer.id}-json.log").read_bytes()
                            .splitlines())

    shim.start()
    runtime = await shim.ready()
    assert shim.supervisor_pid() == supervisor  # adopted, not replaced
    assert (await runtime.state(printer.id)).status == Status.RUNNING
    quick_state = await runtime.state(quick.id)
    assert (quick_state.status, quick_state.exit_code) == (Status.STOPPED, 137)

    final = await asyncio.wait_for(runtime.wait(printer.id), 60)
    assert (final.status, final.exit_code) == (Status.STOPPED, 7)
    lines = [e.data for e in await collect(runtime.logs(printer.id, LogsOptions()))]
    assert lines == [f"line-{i}\n".encode() for i in range(LINES)]
    assert printed_meanwhile < LINES  # the container really was printing across the restart

    # The sink wrote both exits to Redis: the one during the outage (replayed) and the later one.
    for spec, code in ((printer, 7), (quick, 137)):
        state = json.loads(await redis.hget(keys.container(spec.id), "state") or "{}")
        assert (state["status"], state["exit_code"]) == ("stopped", code)
        history = await events(redis, keys, spec.id)
        assert [e["Action"] for e in history] == ["start", "die"]
        die = history[1]["Actor"]["Attributes"]  # type: ignore[index]
        assert die["exitCode"] == str(code) and die["image"] == "busybox:latest" and die["team"] == "berth"
    assert history[0]["Actor"]["Attributes"]["name"] == "quick"  # type: ignore[index]

    for spec in (printer, quick):
        await runtime.delete(spec.id)
        try:
            await runtime.state(spec.id)
            raise AssertionError("deleted container still known")
        except NotFound:
            pass
    await shim.channel.close()
    shim.kill(signal.SIGTERM)  # no container runs: the supervisor exits with the shim
    assert shim.proc is not None and shim.proc.returncode == 0
    await eventually(lambda: not (shim.exec_root / "supervisor.pid").exists(), 10, "the idle supervisor to exit")


async def test_shim_stops_promptly_after_execs(shim: ShimProcess, containers: Containers,
                                               redis_client: aioredis.Redis, keys: Keys) -> None:
    """SIGTERM drains the shim's RPCs for up to its grace period (5 s): nothing a client left
    open after its execs (a call opened ahead, a stream not closed) may hold that up."""
    shim.start()
    runtime = await shim.ready()
    spec = containers.spec("sleep", "1000")
    await register(redis_client, keys, spec.id, "stopper")
    await runtime.create(spec)
    await runtime.start(spec.id)
    for _ in range(3):
        exec_spec = ExecSpec(exec_id=secrets.token_hex(32),
                             process=ProcessSpec(args=("true",), env=(PATH_ENV,)))
        _, outputs = await runtime.exec(spec.id, exec_spec, inputs([]))
        await collect(outputs)
    await asyncio.sleep(0.2)  # past anything a client does after an exec
    started = time.monotonic()
    shim.kill(signal.SIGTERM)
    assert time.monotonic() - started < 3, shim.log.read_text()[-2000:]
