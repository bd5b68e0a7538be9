"""Certificates for the gRPC mutual TLS between berthd and the nodes, made by ``deploy/gen-tls.sh``
itself (so the operator's path is what the tests prove), with 2048-bit keys to keep it quick."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from common.grpc_tls import TLSFiles

REPO = Path(__file__).resolve().parents[2]
GEN_TLS = REPO / "deploy" / "gen-tls.sh"


@dataclass(frozen=True, slots=True)
class ClusterCerts:
    node: TLSFiles  # the node's shim/snapshotter: node.pem names localhost and 127.0.0.1
    berthd: TLSFiles  # berthd's side: server.pem (serverAuth, clientAuth), as deploy/ uses it
    client: TLSFiles  # cert.pem: the docker CLI's clientAuth-only certificate, same CA
    stranger: TLSFiles  # a client certificate of another CA, trusting the nodes' CA
    elsewhere: TLSFiles  # a node certificate of the right CA for node7.lab / 10.9.9.9 only
    ca: Path


def gen_tls(*args: str) -> None:
    subprocess.run([str(GEN_TLS), *args], check=True, capture_output=True, timeout=120,
                   env={**os.environ, "BERTH_TLS_BITS": "2048"})


def make_cluster_certs(root: Path) -> ClusterCerts:
    ours, theirs = root / "ca", root / "other-ca"
    gen_tls(str(ours), "berth-api")
    gen_tls("--node", str(ours), "localhost", "127.0.0.1")
    gen_tls("--node", str(ours), "node7.lab", "10.9.9.9")
    gen_tls(str(theirs), "elsewhere")
    node, node7 = ours / "nodes" / "localhost", ours / "nodes" / "node7.lab"
    ca = str(ours / "ca.pem")
    return ClusterCerts(
        node=TLSFiles(str(node / "ca.pem"), str(node / "node.pem"), str(node / "node-key.pem")),
        berthd=TLSFiles(ca, str(ours / "server.pem"), str(ours / "server-key.pem")),
        client=TLSFiles(ca, str(ours / "cert.pem"), str(ours / "key.pem")),
        stranger=TLSFiles(ca, str(theirs / "cert.pem"), str(theirs / "key.pem")),
        elsewhere=TLSFiles(ca, str(node7 / "node.pem"), str(node7 / "node-key.pem")),
        ca=ours / "ca.pem")
