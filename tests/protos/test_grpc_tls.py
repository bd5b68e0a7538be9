"""Mutual TLS between hosts (common/grpc_tls.py): which addresses need it, the credentials both
sides build from ``deploy/gen-tls.sh``'s files, and the shim's and snapshotter's refusal to serve
plain TCP beyond loopback. Traffic goes to 127.0.0.1 only: refusals happen before any bind or
connection, and the non-loopback addresses here are never dialled."""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from common.grpc_tls import NO_TLS, TLSFiles, add_port, check_listener, check_target, host_of, is_loopback, is_tcp
from protos import rpc
from shim.__main__ import _listen as shim_listen
from shim.__main__ import parse_args as shim_args
from snapshotter.__main__ import parse_address
from snapshotter.__main__ import parse_args as snapshotter_args
from tests.support.grpc_certs import REPO, ClusterCerts, make_cluster_certs

ELSEWHERE = "10.0.0.11:7011"  # never dialled, never bound


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> ClusterCerts:
    return make_cluster_certs(tmp_path_factory.mktemp("grpc-tls"))


def test_address_kinds() -> None:
    assert not is_tcp("unix:/run/berth/shim.sock") and not is_tcp("/run/berth/shim.sock")
    assert is_tcp("127.0.0.1:7011") and is_tcp("node1.lab:7011")
    assert [host_of(a) for a in ("10.0.0.1:1", "[::1]:2", "[fe80::1]:3", "node1.lab:4", "node1.lab", "::1:80")] == \
        ["10.0.0.1", "::1", "fe80::1", "node1.lab", "node1.lab", "::1:80"]
    for loopback in ("127.0.0.1:7011", "127.8.9.10:1", "[::1]:7011", "localhost:7011"):
        assert is_loopback(loopback), loopback
    # Names other than localhost may resolve anywhere; "::1:80" is an IPv6 address (no port), not ::1.
    for other in ("10.0.0.1:7011", "0.0.0.0:7011", "[::]:7011", "node1.lab:7011", "localhost.evil:1", "::1:80",
                  ":7011"):
        assert not is_loopback(other), other


def test_listener_policy(certs: ClusterCerts) -> None:
    for fine in ("unix:/run/x.sock", "/run/x.sock", "127.0.0.1:7011", "[::1]:7011", "localhost:7011"):
        check_listener(fine, NO_TLS)
    for address in (ELSEWHERE, "0.0.0.0:7011", "node1.lab:7011"):
        with pytest.raises(ValueError, match="refusing to serve without TLS on non-loopback address"):
            check_listener(address, NO_TLS)
        check_listener(address, certs.node)
    with pytest.raises(ValueError, match="--tlscacert, --tlscert and --tlskey"):
        check_listener(ELSEWHERE, TLSFiles(cacert=str(certs.ca)))  # partial is not TLS


def test_target_policy() -> None:
    for fine in ("unix:/run/x.sock", "/run/x.sock", "127.0.0.1:7011", "localhost:7011"):
        check_target(fine, tls_enabled=False)
    check_target(ELSEWHERE, tls_enabled=True)
    refusal = f"refusing to connect without TLS to non-loopback address {ELSEWHERE}"
    with pytest.raises(ValueError, match=re.escape(refusal)):
        check_target(ELSEWHERE, tls_enabled=False)


def test_tls_files_all_or_none(certs: ClusterCerts, tmp_path: Path) -> None:
    NO_TLS.check()
    certs.node.check()
    assert certs.node.enabled and not NO_TLS.enabled
    partial = TLSFiles(cacert=certs.node.cacert, cert=certs.node.cert)
    assert not partial.enabled
    with pytest.raises(ValueError, match=r"^--node-tlscacert, --node-tlscert and --node-tlskey go together"):
        partial.check(flag_prefix="--node-")
    with pytest.raises(ValueError, match="TLS file not found"):
        TLSFiles(certs.node.cacert, certs.node.cert, str(tmp_path / "missing.pem")).check()


class _RecordingServer:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def add_insecure_port(self, address: str) -> int:
        self.calls.append(address)
        return 1

    def add_secure_port(self, address: str, credentials: Any) -> int:
        self.calls.append(address)
        return 1


def test_add_port_refuses_before_binding() -> None:
    server = _RecordingServer()
    with pytest.raises(ValueError, match="refusing to serve without TLS"):
        add_port(server, ELSEWHERE, NO_TLS)
    assert server.calls == []


def test_secure_channel_keeps_the_channel_options(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[tuple[str, Any, Any]] = []
    monkeypatch.setattr(grpc.aio, "secure_channel",
                        lambda target, creds, options: made.append((target, creds, options)))
    credentials = grpc.ssl_channel_credentials()
    rpc.secure_channel("127.0.0.1:7011", credentials)
    assert made == [("127.0.0.1:7011", credentials, rpc.CHANNEL_OPTIONS)]


# -- credentials end to end, in process: a raw unary method on 127.0.0.1 ----------------------

async def _pong(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return b"pong:" + request


@pytest.fixture
async def serve_with() -> AsyncIterator[Any]:
    servers: list[grpc.aio.Server] = []

    async def start(tls: TLSFiles) -> int:
        server = grpc.aio.server(options=rpc.SERVER_OPTIONS)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "berth.test.v1.Echo", {"Ping": grpc.unary_unary_rpc_method_handler(_pong)}),))
        port = add_port(server, "127.0.0.1:0", tls)
        assert port
        await server.start()
        servers.append(server)
        return port

    yield start
    for server in servers:
        await server.stop(None)


async def _ping(address: str, credentials: grpc.ChannelCredentials) -> bytes:
    async with rpc.secure_channel(address, credentials) as channel:
        async with asyncio.timeout(20):
            reply: bytes = await channel.unary_unary("/berth.test.v1.Echo/Ping")(b"hi")
            return reply


async def test_node_certificate_names_the_dialled_host(certs: ClusterCerts, serve_with: Any) -> None:
    port = await serve_with(certs.node)  # node.pem: DNS:localhost, IP:127.0.0.1
    for client in (certs.berthd, certs.client):
        assert await _ping(f"127.0.0.1:{port}", client.channel_credentials()) == b"pong:hi"
        assert await _ping(f"localhost:{port}", client.channel_credentials()) == b"pong:hi"
    other = await serve_with(certs.elsewhere)  # right CA, but made for node7.lab / 10.9.9.9
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _ping(f"127.0.0.1:{other}", certs.berthd.channel_credentials())
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


# -- the services' flags and their refusal at start ------------------------------------------

def test_shim_flags(certs: ClusterCerts, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--root", str(tmp_path / "shim"), "--redis-url", "redis://x", "--node-id", "n"]
    node = certs.node
    cfg = shim_args([*base, "--address", ELSEWHERE, "--tlscacert", node.cacert, "--tlscert", node.cert,
                     "--tlskey", node.key])
    assert cfg.tls == node
    assert shim_args([*base, "--address", "127.0.0.1:7011"]).tls == NO_TLS
    for bad, message in ((["--address", ELSEWHERE], "refusing to serve without TLS"),
                         (["--address", ELSEWHERE, "--tlscacert", node.cacert], "go together"),
                         (["--address", "127.0.0.1:7011", "--tlskey", node.key], "go together")):
        with pytest.raises(SystemExit) as exited:
            shim_args([*base, *bad])
        assert exited.value.code == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "shim").exists()  # refused before anything was created


def test_snapshotter_flags(certs: ClusterCerts, tmp_path: Path) -> None:
    node = certs.node
    tls_flags = ["--tlscacert", node.cacert, "--tlscert", node.cert, "--tlskey", node.key]
    cfg = snapshotter_args(["--root", str(tmp_path), "--redis-url", "redis://x", "--node-id", "n",
                            "--address", ELSEWHERE, *tls_flags])
    assert cfg.tls == node
    assert parse_address(ELSEWHERE, node).socket is None
    assert parse_address("unix:/run/x.sock", node).target == "unix:/run/x.sock"  # unix stays plain
    for bad in ("nonsense", ":7012"):
        with pytest.raises(ValueError, match="invalid address"):
            parse_address(bad, node)


async def test_shim_listener_requires_client_certificates(certs: ClusterCerts) -> None:
    """The shim's own binding (its full process needs a supervisor; the snapshotter's process test
    covers a whole service): mutual TLS on TCP, and the refusal without it beyond loopback."""
    with pytest.raises(ValueError, match="refusing to serve without TLS"):
        shim_listen(_RecordingServer(), ELSEWHERE, NO_TLS)
    server = grpc.aio.server(options=rpc.SERVER_OPTIONS)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    assert shim_listen(server, address, certs.node) == address
    await server.start()
    try:
        with pytest.raises(grpc.aio.AioRpcError) as served:
            await _ping(address, certs.berthd.channel_credentials())
        assert served.value.code() == grpc.StatusCode.UNIMPLEMENTED  # through the handshake, no such method
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _ping(address, grpc.ssl_channel_credentials(root_certificates=certs.ca.read_bytes()))
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE  # no client certificate
    finally:
        await server.stop(None)


@pytest.mark.parametrize("program", ["shim", "snapshotter"])
def test_process_refuses_plain_tcp_beyond_loopback(program: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", program, "--root", str(tmp_path / "root"), "--node-id", "n",
         "--redis-url", "redis://127.0.0.1:1", "--address", ELSEWHERE],
        cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert f"refusing to serve without TLS on non-loopback address {ELSEWHERE}" in proc.stderr
    assert not (tmp_path / "root").exists()
