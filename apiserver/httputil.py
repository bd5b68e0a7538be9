"""HTTP conventions of the Docker Engine API, in one place.

* JSON bodies go out with ``Content-Type: application/json`` exactly: the Go client compares the
  header string, and aiohttp's ``json_response`` would append ``; charset=utf-8``.
* Query booleans follow moby's ``BoolValue``: false iff the trimmed, lower-cased value is one of
  ``""``, ``0``, ``no``, ``false``, ``none`` (docker-py sends ``True``/``False``).
* Filters arrive as JSON, either ``{"k": {"v": true}}`` or ``{"k": ["v"]}``.
* Streaming responses are chunked (docker-py only streams chunked bodies), one message per write.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from aiohttp import web

from apiserver import fastjson
from protos.errors import InvalidArgument

JSON_TYPE = "application/json"
_FALSE = frozenset({"", "0", "no", "false", "none"})


def dumps(value: Any) -> bytes:
    """Compact JSON, non-ASCII as UTF-8."""
    return fastjson.dumps(value)


def json_response(value: Any, status: int = 200) -> web.Response:
    return json_body_response(dumps(value) + b"\n", status)


def json_body_response(body: bytes, status: int = 200) -> web.Response:
    """A JSON response whose body is encoded already (ending with a newline, as moby's)."""
    return web.Response(body=body, status=status, content_type=JSON_TYPE)


def error_response(status: int, message: str) -> web.Response:
    return web.Response(body=dumps({"message": message}) + b"\n", status=status, content_type=JSON_TYPE)


def bool_value(request: web.Request, name: str, default: bool = False) -> bool:
    raw = request.query.get(name)
    if raw is None:
        return default
    return raw.strip().lower() not in _FALSE


def int_value(request: web.Request, name: str, default: int = 0) -> int:
    raw = request.query.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise InvalidArgument(f"invalid value for {name}: {raw!r}") from None


def float_value(request: web.Request, name: str, default: float | None = None) -> float | None:
    raw = request.query.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise InvalidArgument(f"invalid value for {name}: {raw!r}") from None


Filters = dict[str, list[str]]


def parse_filters(raw: str | None, allowed: Iterable[str]) -> Filters:
    """Parse a ``filters`` query value; unknown keys are rejected as moby does."""
    if not raw:
        return {}
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"invalid filter: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidArgument("invalid filter: expected a JSON object")
    allowed_set = set(allowed)
    out: Filters = {}
    for key, value in doc.items():
        if key not in allowed_set:
            raise InvalidArgument(f"invalid filter '{key}'")
        if isinstance(value, dict):
            out[key] = [k for k, enabled in value.items() if enabled]
        elif isinstance(value, list):
            out[key] = [str(v) for v in value]
        elif isinstance(value, str):
            out[key] = [value]
        else:
            raise InvalidArgument(f"invalid filter '{key}'")
    return out


async def read_json(request: web.Request, *, required: bool = True, limit: int = 16 * 1024 * 1024) -> Any:
    """Read a JSON request body (empty or ``application/json`` content type, as moby accepts)."""
    ctype = request.headers.get("Content-Type", "")
    if ctype and not ctype.split(";", 1)[0].strip().lower().endswith("json"):
        raise InvalidArgument(f"unsupported Content-Type header ({ctype}): must be 'application/json'")
    raw = await request.content.read(limit + 1)
    if len(raw) > limit:
        raise InvalidArgument("request body too large")
    if not raw.strip():
        if required:
            raise InvalidArgument("bad parameter: request body is empty")
        return None
    try:
        return fastjson.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"invalid JSON: {exc}") from None


async def start_json_stream(request: web.Request, status: int = 200) -> web.StreamResponse:
    resp = web.StreamResponse(status=status)
    resp.content_type = JSON_TYPE
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    return resp


async def write_json_line(resp: web.StreamResponse, value: Mapping[str, Any]) -> None:
    # moby's stream formatter terminates every message with CRLF.
    await resp.write(dumps(value) + b"\r\n")


def stream_error(message: str) -> dict[str, Any]:
    """A JSON-stream error: the CLI reads ``errorDetail``, docker-py reads ``error``."""
    return {"errorDetail": {"message": message}, "error": message}
