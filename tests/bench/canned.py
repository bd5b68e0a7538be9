"""A canned Engine API on a unix socket: what the docker CLI costs against a server that does
no work at all.

It answers the five requests ``docker exec <c> true`` makes (ping, container inspect, exec
create, the hijacked start, exec inspect) at once, with fixed bodies, so the CLI's wall time
against it is the client's own floor (its start-up, configuration, connections and the hijack).
The rest of a real ``docker exec`` is the engine's share.
"""

from __future__ import annotations

import json
import socketserver
import threading
from pathlib import Path
from types import TracebackType

API_VERSION = "1.43"
CONTAINER_ID = "c" * 64
_EXEC_ID = "e" * 64
_HEADERS = f"Api-Version: {API_VERSION}\r\nOstype: linux\r\nDocker-Experimental: false\r\n"
_UPGRADE = ("HTTP/1.1 101 UPGRADED\r\nContent-Type: application/vnd.docker.multiplexed-stream\r\n"
            f"Connection: Upgrade\r\nUpgrade: tcp\r\n{_HEADERS}\r\n").encode()


def _response(status: str, body: bytes, content_type: str = "application/json") -> bytes:
    head = f"HTTP/1.1 {status}\r\n{_HEADERS}Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


def _answer(method: str, path: str) -> bytes:
    if path.endswith("/_ping"):
        return _response("200 OK", b"" if method == "HEAD" else b"OK", "text/plain; charset=utf-8")
    if path.startswith(("/exec/", f"/v{API_VERSION}/exec/")) and path.endswith("/json"):
        return _response("200 OK", json.dumps({"ID": _EXEC_ID, "Running": False, "ExitCode": 0,
                                               "ContainerID": CONTAINER_ID, "Pid": 0}).encode())
    if path.endswith("/exec"):
        return _response("201 Created", json.dumps({"Id": _EXEC_ID}).encode())
    if path.endswith("/json"):
        return _response("200 OK", json.dumps({"Id": CONTAINER_ID, "Config": {"Tty": False},
                                               "State": {"Status": "running", "Running": True}}).encode())
    return _response("404 Not Found", b'{"message":"page not found"}')


class _Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        while request_line := self.rfile.readline():
            method, path, _ = request_line.decode("latin-1").split(" ", 2)
            length = 0
            while (line := self.rfile.readline()) not in (b"\r\n", b"\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if length:
                self.rfile.read(length)
            if path.endswith("/start"):  # hijacked, then the exec's stream ends at once
                self.wfile.write(_UPGRADE)
                return
            self.wfile.write(_answer(method, path))


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class CannedEngine:
    """``with CannedEngine(path) as canned:`` serves on ``canned.host`` until the block ends."""

    def __init__(self, socket: Path) -> None:
        self.socket = socket
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    def __enter__(self) -> CannedEngine:
        self.socket.unlink(missing_ok=True)
        self._server = _Server(str(self.socket), _Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="canned-engine", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        assert self._server is not None and self._thread is not None
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
        self.socket.unlink(missing_ok=True)
