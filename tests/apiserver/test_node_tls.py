"""berthd's side of the mutual TLS to the nodes: ``--node-tlscacert/--node-tlscert/--node-tlskey``
(flags or daemon.json, never both), and the connect path, which refuses plaintext to a node
beyond loopback before any channel exists. Nothing here opens a connection."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest

from apiserver import remote
from apiserver.config import ConfigError, load
from common.grpc_tls import NO_TLS, TLSFiles
from common.nodes import NodeRecord
from protos.errors import Unavailable
from tests.support.grpc_certs import REPO

SHIM, SNAPSHOTTER = "10.0.0.11:7011", "10.0.0.11:7012"  # never dialled


@pytest.fixture
def pem(tmp_path: Path) -> dict[str, str]:
    """Three files standing in for PEMs (the config checks presence; grpc reads them later)."""
    files = {}
    for name in ("ca", "cert", "key"):
        path = tmp_path / f"{name}.pem"
        path.write_text("not checked here\n")
        files[name] = str(path)
    return files


def _config_file(tmp_path: Path, values: dict[str, Any]) -> list[str]:
    path = tmp_path / "daemon.json"
    path.write_text(json.dumps(values))
    return ["--config-file", str(path)]


def test_node_tls_from_flags_or_file(tmp_path: Path, pem: dict[str, str]) -> None:
    expected = TLSFiles(cacert=pem["ca"], cert=pem["cert"], key=pem["key"])
    cfg, _ = load([*_config_file(tmp_path, {}), "--node-tlscacert", pem["ca"], "--node-tlscert", pem["cert"],
                   "--node-tlskey", pem["key"]])
    assert cfg.node_tls == expected
    cfg, _ = load(_config_file(tmp_path, {"node-tlscacert": pem["ca"], "node-tlscert": pem["cert"],
                                          "node-tlskey": pem["key"]}))
    assert cfg.node_tls == expected
    cfg, _ = load(_config_file(tmp_path, {}))
    assert cfg.node_tls == NO_TLS
    # The API's own TLS files are another matter: --tlscert does not configure the node side.
    cfg, _ = load([*_config_file(tmp_path, {}), "--tlsverify", "--tlscacert", pem["ca"], "--tlscert", pem["cert"],
                   "--tlskey", pem["key"]])
    assert cfg.node_tls == NO_TLS and cfg.tls.verify


def test_node_tls_mistakes(tmp_path: Path, pem: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="specified both as a flag and in the configuration file: node-tlscert"):
        load([*_config_file(tmp_path, {"node-tlscert": pem["cert"]}), "--node-tlscert", pem["cert"]])
    with pytest.raises(ConfigError, match="--node-tlscacert, --node-tlscert and --node-tlskey go together"):
        load([*_config_file(tmp_path, {}), "--node-tlscacert", pem["ca"], "--node-tlscert", pem["cert"]])
    with pytest.raises(ConfigError, match="--node-tlscacert, --node-tlscert and --node-tlskey go together"):
        load(_config_file(tmp_path, {"node-tlskey": pem["key"]}))
    with pytest.raises(ConfigError, match="TLS file not found"):
        load([*_config_file(tmp_path, {}), "--node-tlscacert", pem["ca"], "--node-tlscert", pem["cert"],
              "--node-tlskey", str(tmp_path / "missing.pem")])


def test_berthd_exits_on_partial_node_tls(tmp_path: Path, pem: dict[str, str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "apiserver", *_config_file(tmp_path, {}), "--node-tlscert", pem["cert"]],
        cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "--node-tlscacert, --node-tlscert and --node-tlskey go together" in proc.stderr


@pytest.fixture
def channels(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Every channel ``apiserver.remote`` makes, as (kind, address); no channel is really opened."""
    made: list[tuple[str, str]] = []

    class _Channel:
        """Stands in for a channel: stubs take their methods from it; nothing is ever dialled."""

        def __getattr__(self, name: str) -> Any:  # unary_unary, unary_stream, ...
            return lambda *args, **kwargs: None

        async def close(self) -> None:
            pass

    def insecure(address: str) -> _Channel:
        made.append(("plain", address))
        return _Channel()

    def secure(address: str, credentials: grpc.ChannelCredentials) -> _Channel:
        assert isinstance(credentials, grpc.ChannelCredentials)
        made.append(("tls", address))
        return _Channel()

    monkeypatch.setattr(remote, "insecure_channel", insecure)
    monkeypatch.setattr(remote, "secure_channel", secure)
    return made


async def test_plaintext_to_a_node_beyond_loopback_is_refused(channels: list[tuple[str, str]]) -> None:
    record = NodeRecord(id="n1", hostname="node1", shim_address=SHIM, snapshotter_address=SNAPSHOTTER)
    with pytest.raises(Unavailable, match=re.escape("node node1: refusing to connect without TLS to non-loopback "
                                                    "address 10.0.0.11:7011: configure --node-tlscacert")):
        await remote.connect_remote(record)
    with pytest.raises(Unavailable, match="refusing to connect without TLS"):
        await remote.node_connector(NO_TLS)(record)
    # One address beyond loopback is enough to refuse the node, before the other gets a channel.
    with pytest.raises(Unavailable, match=re.escape(SNAPSHOTTER)):
        await remote.connect_remote(NodeRecord(id="n2", hostname="", shim_address="unix:/run/berth/shim.sock",
                                               snapshotter_address=SNAPSHOTTER))
    assert channels == []


async def test_channels_by_address_kind(channels: list[tuple[str, str]]) -> None:
    local = NodeRecord(id="n0", hostname="here", shim_address="/run/berth/shim.sock",
                       snapshotter_address="127.0.0.1:7012")
    await (await remote.connect_remote(local)).close()
    assert channels == [("plain", "/run/berth/shim.sock"), ("plain", "127.0.0.1:7012")]
    channels.clear()
    credentials = grpc.ssl_channel_credentials()
    far = NodeRecord(id="n1", hostname="node1", shim_address=SHIM, snapshotter_address=SNAPSHOTTER)
    await (await remote.connect_remote(far, credentials)).close()
    await (await remote.connect_remote(local, credentials)).close()  # unix stays plain, TCP takes TLS
    assert channels == [("tls", SHIM), ("tls", SNAPSHOTTER), ("plain", "/run/berth/shim.sock"),
                        ("tls", "127.0.0.1:7012")]


def test_unreadable_node_tls_files_fail_at_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="could not load the node TLS material"):
        remote.node_connector(TLSFiles(str(tmp_path / "ca.pem"), str(tmp_path / "c.pem"), str(tmp_path / "k.pem")))
