"""Fixtures of the snapshotter tests: a local stack (overlay snapshotter, content store, images)
on a fresh root and Redis namespace, the same stack served over gRPC on a unix socket, and the
remote proxies talking to it. Every mount a test makes under ``session_root`` is undone by the
test itself (``mounted``) and, should that fail, by the session teardown.

Registries: Debian's ``docker-registry`` in its three modes, one of each for the session. A
stack trusts no registry by default — a test adds the hosts it talks to over plain HTTP to
``stack.insecure`` and CA/client certificates under ``stack.certs_dir`` (as an operator would
with ``--insecure-registry`` and ``certs.d``)."""

from __future__ import annotations

import contextlib
import gc
import secrets
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import redis.asyncio as aioredis

from common.keys import Keys
from common.mounts import Mount, mount_all, unmount
from protos import rpc
from snapshotter.api import ContentStore, Images, Snapshotter
from snapshotter.client import RemoteContentStore, RemoteImages, RemoteSnapshotter
from snapshotter.content import LocalContentStore
from snapshotter.distribution import RegistryOptions
from snapshotter.images import LocalImages
from snapshotter.overlay import OverlaySnapshotter
from snapshotter.service import add_servicers
from tests.support.registry import Registry

NODE = "node-test"


@dataclass
class Stack:
    """One host's snapshotter as a test sees it; ``root`` is the state directory on disk."""

    snapshotter: Snapshotter
    content: ContentStore
    images: Images
    root: Path
    keys: Keys
    insecure: set[str]
    certs_dir: Path


def _unmount_below(root: Path) -> None:
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    for point in sorted((p for p in points if p.startswith(str(root) + "/")), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)


@pytest.fixture(scope="session", autouse=True)
def _finalize_garbage() -> Iterator[None]:
    """Run leftover finalizers (event loops, sockets, tasks in reference cycles) when the tests
    are done. Left to a later collection, they can fire while pytest compiles a plugin module at
    the end of the session, which CPython 3.11.7's AST recursion-depth check turns into a
    ``SystemError`` (seen with the hypothesis plugin's terminal summary)."""
    yield
    gc.collect()


@pytest.fixture
def scratch(session_root: Path) -> Iterator[Path]:
    """A fresh directory for one test, unmounted and deleted afterwards."""
    path = session_root / f"t-{secrets.token_hex(4)}"
    path.mkdir()
    yield path
    _unmount_below(path)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def snapshot_redis(redis_process: Path, redis_client: aioredis.Redis) -> AsyncIterator[aioredis.Redis]:
    """A client with a blocking pool, as the snapshotter process uses (``redis_client`` deletes
    the test's keys afterwards)."""
    pool = aioredis.BlockingConnectionPool(connection_class=aioredis.UnixDomainSocketConnection,
                                           path=str(redis_process), max_connections=32, timeout=10)
    client = aioredis.Redis(connection_pool=pool)
    yield client
    await client.aclose()
    await pool.disconnect()


@pytest.fixture
async def local_stack(scratch: Path, snapshot_redis: aioredis.Redis, keys: Keys) -> AsyncIterator[Stack]:
    root = scratch / "root"
    overlay = await OverlaySnapshotter.open(root=root, redis=snapshot_redis, keys=keys, node=NODE)
    content = await LocalContentStore.open(root=root / "content")
    insecure: set[str] = set()
    certs_dir = scratch / "certs.d"
    options = RegistryOptions(insecure=insecure.__contains__, certs_dir=certs_dir, retry_delay=0.01)
    images = LocalImages(snapshotter=overlay, content=content, spool_dir=root / "tmp", registry=options)
    yield Stack(snapshotter=overlay, content=content, images=images, root=root, keys=keys, insecure=insecure,
                certs_dir=certs_dir)
    await images.aclose()
    await overlay.settle()


def _registry(factory: pytest.TempPathFactory, mode: str) -> Iterator[Registry]:
    reg = Registry(factory.mktemp(f"registry-{mode}"), mode).start()
    try:
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="session")
def plain_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    yield from _registry(tmp_path_factory, "plain")


@pytest.fixture(scope="session")
def basic_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    yield from _registry(tmp_path_factory, "basic")


@pytest.fixture(scope="session")
def token_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    yield from _registry(tmp_path_factory, "token")


@pytest.fixture
async def grpc_address(local_stack: Stack, scratch: Path) -> AsyncIterator[str]:
    """The local stack served in-process on a unix socket."""
    server = grpc.aio.server(options=rpc.CHANNEL_OPTIONS)
    add_servicers(server, snapshotter=local_stack.snapshotter, content=local_stack.content,
                  images=local_stack.images)
    address = f"unix:{scratch / 'snapshotter.sock'}"
    assert server.add_insecure_port(address) != 0
    await server.start()
    try:
        yield address
    finally:
        await server.stop(None)


@pytest.fixture
async def remote_stack(local_stack: Stack, grpc_address: str) -> AsyncIterator[Stack]:
    channel = rpc.insecure_channel(grpc_address)
    await channel.channel_ready()
    try:
        yield Stack(snapshotter=RemoteSnapshotter(channel), content=RemoteContentStore(channel),
                    images=RemoteImages(channel), root=local_stack.root, keys=local_stack.keys,
                    insecure=local_stack.insecure, certs_dir=local_stack.certs_dir)
    finally:
        await channel.close()


@contextlib.contextmanager
def mounted(mounts: Sequence[Mount], target: Path) -> Iterator[Path]:
    """Mount ``mounts`` on ``target`` for the block; always unmounted afterwards."""
    target.mkdir(parents=True, exist_ok=True)
    mount_all(mounts, str(target))
    try:
        yield target
    finally:
        unmount(str(target), lazy=True)
