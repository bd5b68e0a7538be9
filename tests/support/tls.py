"""A throwaway CA, server and client certificates made with the openssl CLI (for --tlsverify)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TLSFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path
    rogue_key: Path


def _run(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_tls(root: Path) -> TLSFiles:
    root.mkdir(parents=True, exist_ok=True)
    _run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=berth-test-ca",
         "-keyout", "ca-key.pem", "-out", "ca.pem", cwd=root)
    (root / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    (root / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name, ext in (("server", "server.ext"), ("client", "client.ext")):
        _run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}-key.pem",
             "-out", f"{name}.csr", cwd=root)
        _run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem", "-CAcreateserial",
             "-days", "2", "-extfile", ext, "-out", f"{name}.pem", cwd=root)
    # A self-signed client certificate that the daemon's CA never signed.
    _run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=rogue",
         "-keyout", "rogue-key.pem", "-out", "rogue.pem", cwd=root)
    return TLSFiles(ca=root / "ca.pem", server_cert=root / "server.pem", server_key=root / "server-key.pem",
                    client_cert=root / "client.pem", client_key=root / "client-key.pem",
                    rogue_cert=root / "rogue.pem", rogue_key=root / "rogue-key.pem")
