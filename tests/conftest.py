"""Session-wide fixtures: a private state root under /tmp, a real redis-server, cleanup checks.

Every process a fixture starts is stopped by PID in its teardown, which runs even when the test
fails. Names that reach the host (cgroups, bridges) carry the session's unique token so parallel
sessions and other tools never collide.
"""

from __future__ import annotations

import common.grpc_env  # noqa: F401  # first: the gRPC settings of Berth's processes, in the tests' own too

# isort: split

import secrets
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from common import fastredis, redis_server
from common.keys import Keys


@pytest.fixture(scope="session")
def session_token() -> str:
    return secrets.token_hex(3)


@pytest.fixture(scope="session")
def session_root(session_token: str) -> Iterator[Path]:
    root = Path(f"/tmp/berth-test-{session_token}")
    root.mkdir(mode=0o700)
    yield root
    _unmount_below(root)
    shutil.rmtree(root, ignore_errors=True)


def _unmount_below(root: Path) -> None:
    """Lazily unmount anything a failed test left mounted under ``root`` (deepest first)."""
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    for point in sorted((p for p in points if p.startswith(str(root))), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)


@pytest.fixture(scope="session")
def redis_process(session_root: Path) -> Iterator[Path]:
    """One redis-server for the whole session; tests isolate themselves with key namespaces."""
    cfg = redis_server.RedisConfig(dir=session_root / "redis", socket=session_root / "redis.sock",
                                   appendonly=False)
    proc = redis_server.spawn(cfg)
    try:
        import asyncio

        asyncio.run(redis_server.wait_ready(cfg.socket, proc=proc))
        yield cfg.socket
    finally:
        redis_server.stop(proc)


@pytest.fixture
def keys() -> Keys:
    """A fresh key namespace per test, so tests sharing the session's Redis never meet."""
    return Keys(ns=f"t{secrets.token_hex(4)}")


@pytest.fixture
async def redis_client(redis_process: Path, keys: Keys) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis(unix_socket_path=str(redis_process))
    yield client
    async for key in client.scan_iter(match=f"{keys.ns}:*", count=1000):
        await client.delete(key)
    fastredis.close(client)
    await client.aclose()
