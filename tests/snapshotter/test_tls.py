"""A real ``berth-snapshotter`` over TCP with mutual TLS, on 127.0.0.1: clients with a certificate
of the cluster CA are served (directly, and through berthd's node connector); clients without a
certificate, with one of another CA, or in plaintext are refused."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import redis.asyncio as aioredis

from apiserver.remote import node_connector
from common.grpc_tls import NO_TLS
from common.keys import Keys
from common.nodes import NodeRecord
from protos import rpc
from protos.errors import Unavailable
from snapshotter.client import RemoteSnapshotter
from tests.support.grpc_certs import REPO, ClusterCerts, make_cluster_certs


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> ClusterCerts:
    return make_cluster_certs(tmp_path_factory.mktemp("snapshotter-tls"))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Served:
    address: str
    proc: subprocess.Popen[bytes]
    log: Path


def _start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "snapshotter", *args], cwd=REPO, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT)


async def _snapshot_list(channel: grpc.aio.Channel) -> list[str]:
    async with asyncio.timeout(20):
        return [info.name async for info in RemoteSnapshotter(channel, timeout=10).list()]


@pytest.fixture
async def tls_snapshotter(scratch: Path, redis_process: Path, keys: Keys, redis_client: aioredis.Redis,
                          certs: ClusterCerts) -> AsyncIterator[Served]:
    address, node, log = f"127.0.0.1:{_free_port()}", certs.node, scratch / "snapshotter.log"
    proc = _start(["--root", str(scratch / "state"), "--address", address,
                   "--tlscacert", node.cacert, "--tlscert", node.cert, "--tlskey", node.key,
                   "--redis-url", f"unix://{redis_process}", "--redis-namespace", keys.ns, "--node-id", "tls-node"],
                  log)
    try:
        # Ready when a client with a good certificate gets an answer (the process may still be starting).
        async with asyncio.timeout(30):
            while True:
                assert proc.poll() is None, log.read_text()
                async with rpc.secure_channel(address, certs.berthd.channel_credentials()) as channel:
                    try:
                        async with asyncio.timeout(1):
                            await channel.channel_ready()
                        break
                    except TimeoutError:
                        pass
        yield Served(address=address, proc=proc, log=log)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(proc.wait, 30)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait, 10)


async def test_serves_only_clients_of_the_cluster_ca(tls_snapshotter: Served, certs: ClusterCerts, keys: Keys,
                                                     redis_client: aioredis.Redis) -> None:
    address = tls_snapshotter.address
    raw = await redis_client.hget(keys.nodes, "tls-node")
    assert raw is not None and json.loads(raw)["snapshotter_address"] == address

    for good in (certs.berthd, certs.client):  # serverAuth+clientAuth, and a clientAuth-only certificate
        async with rpc.secure_channel(address, good.channel_credentials()) as channel:
            assert await _snapshot_list(channel) == []

    refused: dict[str, grpc.aio.Channel] = {
        "no client certificate": rpc.secure_channel(
            address, grpc.ssl_channel_credentials(root_certificates=certs.ca.read_bytes())),
        "client certificate of another CA": rpc.secure_channel(address, certs.stranger.channel_credentials()),
        "plaintext": rpc.insecure_channel(address),
    }
    for what, channel in refused.items():
        async with channel:
            with pytest.raises(Unavailable):
                await _snapshot_list(channel)
                pytest.fail(f"served a client with {what}")

    assert tls_snapshotter.proc.poll() is None  # refused handshakes do not hurt the server
    tls_snapshotter.proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(tls_snapshotter.proc.wait, 30) == 0
    log = tls_snapshotter.log.read_text()
    assert '"mtls": true' in log or "mtls=True" in log, log


async def test_berthd_reaches_the_node_over_mutual_tls(tls_snapshotter: Served, certs: ClusterCerts) -> None:
    address = tls_snapshotter.address
    # The shim's address is never dialled here: channels connect on the first call.
    record = NodeRecord(id="tls-node", hostname="localhost", shim_address=address, snapshotter_address=address)
    host = await node_connector(certs.berthd)(record)
    try:
        assert isinstance(host.snapshots, RemoteSnapshotter)
        async with asyncio.timeout(20):
            assert [info.name async for info in host.snapshots.list()] == []
    finally:
        await host.close()
    # Without node TLS berthd talks plaintext to loopback only; this node wants TLS, so that fails.
    plain = await node_connector(NO_TLS)(record)
    try:
        with pytest.raises(Unavailable):
            async with asyncio.timeout(20):
                [info async for info in plain.snapshots.list()]
    finally:
        await plain.close()
