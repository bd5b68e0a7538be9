"""The protocol between the shim's RPC side and its supervisor, over a unix socket.

Every message is a frame: a 5-byte header (``kind`` byte, big-endian ``uint32`` length) and a
payload. ``JSON`` frames carry control messages; the other kinds carry raw stdio bytes, so a log
or attach stream never goes through JSON.

A connection starts with one JSON request. Two shapes of connection exist:

* **control** — requests ``{"id": n, "op": …}`` answered by ``{"id": n, "ok": true, "result": …}``
  or ``{"id": n, "ok": false, "error": {"class": "ContainerNotFound", "message": …}}``, in any
  order. After ``subscribe`` the supervisor also pushes ``{"event": …, "seq": n}`` messages, in
  the order the transitions happened, until the client acknowledges them with ``ack``.
* **attach** — the first request is ``{"op": "attach", …}``; after the answer the client sends
  ``STDIN``/``CLOSE_STDIN`` frames and the supervisor sends ``STDOUT``/``STDERR`` frames, then one
  ``END`` frame once the attached process has exited and its output is drained.

This module is imported by the supervisor, so it must stay free of grpc and protobuf.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import struct
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import orjson

HEADER = struct.Struct(">BI")
# A frame bigger than this is a protocol error (stdio chunks are at most 64 KiB, specs are small).
MAX_FRAME = 16 * 1024 * 1024
PROTOCOL_VERSION = 1


@dataclasses.dataclass(frozen=True, slots=True)
class SupervisorPaths:
    """Where a supervisor keeps container records and logs (``root``, persistent) and its
    runtime files (``exec_root``: socket, pid file, lock)."""

    root: Path
    exec_root: Path

    @property
    def socket(self) -> Path:
        return self.exec_root / "supervisor.sock"

    @property
    def pid_file(self) -> Path:
        return self.exec_root / "supervisor.pid"

    @property
    def lock_file(self) -> Path:
        return self.exec_root / "supervisor.lock"

    @property
    def containers(self) -> Path:
        return self.root / "containers"

    @property
    def removed(self) -> Path:
        """Directories of deleted containers, moved here to be emptied after the reply."""
        return self.root / "containers.removed"


class Kind(enum.IntEnum):
    STDIN = 0
    STDOUT = 1
    STDERR = 2
    CLOSE_STDIN = 3
    END = 4
    JSON = 0x4A


class ProtocolError(Exception):
    """The peer sent something that is not a frame of this protocol."""


def frame(kind: int, payload: bytes) -> bytes:
    return HEADER.pack(kind, len(payload)) + payload


def json_frame(message: Mapping[str, Any]) -> bytes:
    return frame(Kind.JSON, json.dumps(message, separators=(",", ":")).encode())


class FrameParser:
    """Incremental decoder for a byte stream of frames."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self._buf += data
        frames: list[tuple[int, bytes]] = []
        view = self._buf
        pos = 0
        while len(view) - pos >= HEADER.size:
            kind, length = HEADER.unpack_from(view, pos)
            if length > MAX_FRAME:
                raise ProtocolError(f"frame of {length} bytes")
            end = pos + HEADER.size + length
            if end > len(view):
                break
            frames.append((kind, bytes(view[pos + HEADER.size:end])))
            pos = end
        if pos:
            del self._buf[:pos]
        return frames


# Dataclasses travel as plain JSON objects: ``encode`` on the way out, ``decode`` on the way in.
# Field copying is generic (driven by the annotations), so there is nothing to keep in sync.

T = TypeVar("T")


def encode(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple | list):
        return [encode(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): encode(v) for k, v in value.items()}
    return value


def decode(cls: type[T], data: Any) -> T:
    """Build ``cls`` (a dataclass) from JSON data; unknown keys are ignored (a newer peer)."""
    return typing.cast(T, _decode(cls, data))


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    return hints


def _decode(tp: Any, data: Any) -> Any:
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(data, Mapping):
            raise ProtocolError(f"expected an object for {tp.__name__}")
        hints = _hints(tp)
        kwargs = {f.name: _decode(hints[f.name], data[f.name])
                  for f in dataclasses.fields(tp) if f.name in data}
        return tp(**kwargs)
    origin = typing.get_origin(tp)
    if origin is tuple:
        args = typing.get_args(tp)
        return tuple(_decode(args[0], v) for v in data)
    if origin in (Mapping, dict) or tp in (Mapping, dict):
        args = typing.get_args(tp)
        if not args:
            return dict(data)
        return {k: _decode(args[1], v) for k, v in data.items()}
    if origin is typing.Union or origin is types.UnionType:
        # ``X | None``: a dataclass member is built, anything else is passed through.
        if data is None:
            return None
        for arg in typing.get_args(tp):
            if dataclasses.is_dataclass(arg) and isinstance(data, Mapping):
                return _decode(arg, data)
        return data
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return tp(data)
    return data


def error_payload(cls_name: str, message: str) -> dict[str, str]:
    return {"class": cls_name, "message": message}


def compact_json(value: Any) -> bytes:
    """``value`` as compact JSON, dataclasses and enums as :func:`encode` gives them, for the
    messages every exec sends (events, the exec's reply and END: states and numbers, no floats).
    orjson does it ten times faster than the stdlib does both steps, with non-ASCII text as UTF-8
    instead of escapes (the same JSON to any reader); what it refuses (lone surrogates) goes the
    stdlib's way."""
    try:
        return orjson.dumps(value)
    except TypeError:  # orjson.JSONEncodeError
        return json.dumps(encode(value), separators=(",", ":")).encode()
