"""A minimal Engine API client over a unix socket (stdlib ``http.client``), so the raw-HTTP
scenarios time the engine and not a client library. Every request carries an explicit API version
(``/v1.41``, the highest both Berth and Debian's dockerd 20.10 speak) and a timeout."""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

API = "/v1.41"


class APIError(RuntimeError):
    def __init__(self, method: str, path: str, status: int, body: bytes) -> None:
        super().__init__(f"{method} {path} -> {status}: {body[:300].decode(errors='replace')}")
        self.status = status


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


class Client:
    """One keep-alive connection; not thread-safe (give each worker thread its own)."""

    def __init__(self, socket_path: str, timeout: float = 120.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self._conn = _UnixConnection(socket_path, timeout)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
             headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
        """Send a request and return the response with its headers read (body still unread)."""
        hdrs = dict(headers or {})
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
            hdrs["Content-Type"] = "application/json"
        for attempt in (0, 1):
            try:
                self._conn.request(method, API + path, body=data, headers=hdrs)
                return self._conn.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                # The server closed an idle keep-alive connection: reconnect once.
                self._conn.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def call(self, method: str, path: str, body: Any = None, *, ok: tuple[int, ...] = (200, 201, 204, 304),
             raw: bytes | None = None, headers: dict[str, str] | None = None) -> bytes:
        resp = self.send(method, path, body, raw=raw, headers=headers)
        data = resp.read()
        if resp.status not in ok:
            raise APIError(method, path, resp.status, data)
        return data

    def json(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        data = self.call(method, path, body, **kw)
        return json.loads(data) if data else None

    # The handful of calls the scenarios and the set-up need.

    def create(self, image: str, cmd: list[str], *, network: str = "default", auto_remove: bool = False,
               name: str = "", labels: dict[str, str] | None = None) -> str:
        body = {"Image": image, "Cmd": cmd, "Labels": labels or {},
                "HostConfig": {"NetworkMode": network, "AutoRemove": auto_remove}}
        path = "/containers/create" + (f"?name={name}" if name else "")
        return str(self.json("POST", path, body)["Id"])

    def start(self, cid: str) -> None:
        self.call("POST", f"/containers/{cid}/start")

    def remove(self, cid: str, force: bool = False) -> None:
        self.call("DELETE", f"/containers/{cid}" + ("?force=1" if force else ""), ok=(204, 404))

    def wait(self, cid: str, condition: str = "not-running") -> int:
        return int(self.json("POST", f"/containers/{cid}/wait?condition={condition}")["StatusCode"])

    def inspect(self, cid: str) -> dict[str, Any]:
        doc = self.json("GET", f"/containers/{cid}/json")
        assert isinstance(doc, dict)
        return doc

    def ids(self, label: str = "") -> list[str]:
        query = "?all=1"
        if label:
            query += "&filters=" + quote(json.dumps({"label": [label]}))
        return [c["Id"] for c in self.json("GET", "/containers/json" + query)]

    def logs(self, cid: str) -> bytes:
        return self.call("GET", f"/containers/{cid}/logs?stdout=1&stderr=1")

    def wait_for_log(self, cid: str, text: bytes, within: float = 20.0) -> None:
        deadline = time.monotonic() + within
        while text not in self.logs(cid):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{cid[:12]} never printed {text!r}")
            time.sleep(0.01)

    @contextmanager
    def pending(self, method: str, path: str) -> Iterator[http.client.HTTPResponse]:
        """A request whose headers are read but whose body is read later (``wait``): on its own
        connection, closed afterwards."""
        other = Client(self.socket_path, self.timeout)
        try:
            yield other.send(method, path)
        finally:
            other.close()
