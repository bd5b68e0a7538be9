"""``python -m snapshotter``: flags, readiness, node registration, heartbeat, clean shutdown."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from common.keys import Keys
from protos import rpc
from snapshotter.__main__ import DEFAULT_CERTS_DIR, parse_address, parse_args
from snapshotter.api import PullResult, RegistryAuth
from snapshotter.client import RemoteImages, RemoteSnapshotter
from tests.snapshotter.registries import build, publish
from tests.support import busybox
from tests.support.registry import Registry

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def spawn(scratch: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts; killed by PID afterwards if still running."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def start(procs: list[subprocess.Popen[bytes]], *args: str, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "snapshotter", *args], cwd=REPO, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT)
    procs.append(proc)
    return proc


async def test_serves_registers_and_stops_cleanly(scratch: Path, redis_process: Path, keys: Keys,
                                                  redis_client: aioredis.Redis,
                                                  spawn: list[subprocess.Popen[bytes]]) -> None:
    root, sock = scratch / "state", scratch / "run" / "snap.sock"
    (root / "snapshots" / "4242").mkdir(parents=True)  # an orphan from a "crash"
    proc = start(spawn, "--root", str(root), "--address", f"unix:{sock}", "--redis-url",
                 f"unix://{redis_process}", "--redis-namespace", keys.ns, "--node-id", "proc-node",
                 "--log-level", "debug", log=scratch / "log")
    channel = rpc.insecure_channel(str(sock))
    try:
        async with asyncio.timeout(30):
            await channel.channel_ready()
        assert proc.poll() is None
        assert stat.S_IMODE(os.stat(sock.parent).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
        raw = await redis_client.hget(keys.nodes, "proc-node")
        assert raw is not None
        record = json.loads(raw)
        assert record["snapshotter_address"] == f"unix:{sock}" and record["hostname"]
        assert await redis_client.exists(keys.heartbeat("proc-node", "snapshotter"))
        assert not (root / "snapshots" / "4242").exists()  # cleaned up at startup

        mounts = await RemoteSnapshotter(channel).prepare("hello")
        assert mounts[0].source.startswith(str(root / "snapshots"))
    finally:
        await channel.close()

    proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.wait, 30) == 0
    assert not sock.exists()
    assert not await redis_client.exists(keys.heartbeat("proc-node", "snapshotter"))
    log = (scratch / "log").read_text()
    assert "snapshotter_ready" in log and "snapshotter_stopped" in log and '"rpc"' in log.replace("'", '"')


async def test_refuses_plain_tcp_beyond_loopback(scratch: Path, spawn: list[subprocess.Popen[bytes]]) -> None:
    proc = start(spawn, "--root", str(scratch / "s"), "--address", "0.0.0.0:7777", "--redis-url", "redis://x",
                 log=scratch / "log")
    assert await asyncio.to_thread(proc.wait, 30) == 2
    assert "refusing to serve without TLS" in (scratch / "log").read_text()


def test_addresses() -> None:
    assert parse_address("/run/x.sock").target == "unix:/run/x.sock"
    assert parse_address("unix:/run/x.sock").socket == Path("/run/x.sock")
    assert parse_address("127.0.0.1:9000").socket is None
    assert parse_address("[::1]:9000").target == "[::1]:9000"
    assert parse_address("localhost:9000").socket is None
    for bad in ("10.0.0.1:9000", "example.com:80", "nonsense", "unix:relative.sock"):
        with pytest.raises(ValueError):
            parse_address(bad)


def test_registry_flags(tmp_path: Path) -> None:
    base = ["--root", str(tmp_path), "--redis-url", "redis://x", "--node-id", "n"]
    config = parse_args([*base, "--insecure-registry", "10.1.0.0/16", "--insecure-registry", "myreg:5000",
                         "--registry-certs-dir", str(tmp_path / "certs"), "--max-concurrent-downloads", "7"])
    options = config.registry_options()
    assert (options.certs_dir, options.max_concurrent_downloads, options.max_concurrent_uploads) == \
        (tmp_path / "certs", 7, 5)
    for host in ("127.0.0.1:5000", "[::1]:443", "10.1.2.3:5000", "myreg:5000"):
        assert options.insecure(host), host  # loopback is always insecure, as in dockerd
    for host in ("myreg:5001", "registry-1.docker.io", "10.2.0.1:5000"):
        assert not options.insecure(host), host
    defaults = parse_args(base).registry_options()
    assert (defaults.certs_dir, defaults.max_concurrent_downloads, defaults.max_concurrent_uploads) == \
        (DEFAULT_CERTS_DIR, 3, 5)
    for bad in (["--insecure-registry", "https://myreg"], ["--max-concurrent-uploads", "0"]):
        with pytest.raises(SystemExit):
            parse_args([*base, *bad])


async def test_pulls_through_the_process(scratch: Path, redis_process: Path, keys: Keys,
                                         plain_registry: Registry, spawn: list[subprocess.Popen[bytes]]) -> None:
    image = busybox.Image(layers=[b"".join([busybox.layer_tar([busybox.Entry("hello", data=os.urandom(64))])])])
    await publish(plain_registry.host, "berth/process", "v1", build(image))
    sock = scratch / "run" / "snap.sock"
    proc = start(spawn, "--root", str(scratch / "state"), "--address", f"unix:{sock}", "--redis-url",
                 f"unix://{redis_process}", "--redis-namespace", keys.ns, "--node-id", "pull-node",
                 "--registry-certs-dir", str(scratch / "certs.d"), "--max-concurrent-downloads", "2",
                 log=scratch / "log")
    channel = rpc.insecure_channel(str(sock))
    try:
        async with asyncio.timeout(30):
            await channel.channel_ready()
        events = [e async for e in RemoteImages(channel).pull(f"{plain_registry.host}/berth/process:v1",
                                                              RegistryAuth())]
        assert isinstance(events[-1], PullResult) and events[-1].image.id == image.id
    finally:
        await channel.close()
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.wait, 30) == 0  # registry connections closed on the way out
