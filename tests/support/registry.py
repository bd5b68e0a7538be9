"""Debian's ``docker-registry`` (distribution 2.8) on 127.0.0.1 for tests, in three flavours:
plain HTTP, htpasswd Basic auth behind TLS, and Bearer token auth with our own token server."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.tls import TLSFiles, make_tls

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port}")


def htpasswd_line(user: str, password: str) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt

        return f"{user}:{crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH))}"


@dataclass
class Registry:
    root: Path
    mode: str = "plain"  # plain | basic | token
    users: dict[str, str] = field(default_factory=lambda: {"berth": "s3cret"})
    port: int = 0
    tls: TLSFiles | None = None
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    token_port: int = 0

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def scheme(self) -> str:
        return "https" if self.mode == "basic" else "http"

    def start(self) -> Registry:
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        lines = ["version: 0.1", "log:", "  level: warn", "storage:", "  filesystem:",
                 f"    rootdirectory: {self.root / 'data'}", "  delete:", "    enabled: true",
                 "http:", f"  addr: 127.0.0.1:{self.port}", "  secret: berth-test-secret"]
        if self.mode == "basic":
            self.tls = make_tls(self.root / "tls")
            lines += ["  tls:", f"    certificate: {self.tls.server_cert}", f"    key: {self.tls.server_key}"]
            htpasswd = self.root / "htpasswd"
            htpasswd.write_text("\n".join(htpasswd_line(u, p) for u, p in self.users.items()) + "\n")
            lines += ["auth:", "  htpasswd:", "    realm: berth-basic", f"    path: {htpasswd}"]
        elif self.mode == "token":
            key, cert = self._signing_key()
            self.token_port = free_port()
            users = self.root / "users.json"
            users.write_text(json.dumps(self.users))
            log = self.root / "token.log"
            with open(log, "ab") as out:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "tests.support.token_server", "--port", str(self.token_port),
                     "--key", str(key), "--cert", str(cert), "--users", str(users)],
                    cwd=REPO, stdout=out, stderr=out, start_new_session=True)
            self.procs.append(proc)
            _wait_port(self.token_port, proc, log)
            lines += ["auth:", "  token:", f"    realm: http://127.0.0.1:{self.token_port}/token",
                      "    service: berth-registry", "    issuer: berth-test-issuer",
                      f"    rootcertbundle: {cert}"]
        config = self.root / "config.yml"
        config.write_text("\n".join(lines) + "\n")
        log = self.root / "registry.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=out, stderr=out,
                                    start_new_session=True, env={**os.environ, "OTEL_TRACES_EXPORTER": "none"})
        self.procs.append(proc)
        _wait_port(self.port, proc, log)
        return self

    def _signing_key(self) -> tuple[Path, Path]:
        key, cert = self.root / "token-key.pem", self.root / "token-cert.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                        "-subj", "/CN=berth-token-issuer", "-keyout", str(key), "-out", str(cert)],
                       check=True, capture_output=True)
        return key, cert

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.procs.clear()

    def basic_auth(self, user: str = "berth") -> str:
        return "Basic " + base64.b64encode(f"{user}:{self.users[user]}".encode()).decode()
