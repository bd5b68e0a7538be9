"""Lua script calls on the hot paths (exec, container lookup, the shim's state records) without
redis-py's per-command machinery.

redis-py 8's asyncio client spends ~105 us of CPU on a one-key call here (connection pool
checkout and release, timeouts, telemetry hooks, the command's response callbacks); the same
call written to a kept connection and read with hiredis' parser costs ~27 us. A ``docker exec``
makes six such calls across the API server and the shim, on the path the user waits on, so
the few scripts that run there go through :func:`fast_script`; everything else keeps redis-py.

Same connection settings as the redis-py client it is made from (unix socket or TCP, password,
database); a TLS client gets redis-py's own script object instead. Errors are redis-py's
exception classes. A connection whose call did not end cleanly (an error, a cancellation) is
closed, never reused; a call that fails on a reused connection (the server restarted) is tried
once more on a new one, as redis-py does.
"""

from __future__ import annotations

import asyncio
import hashlib
import weakref
from collections.abc import Sequence
from typing import Any, Protocol

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.connection import Connection, UnixDomainSocketConnection
from redis.exceptions import AuthenticationError, NoScriptError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError

Arg = str | bytes | int | float

_MAX_IDLE = 16  # connections kept for reuse; more may be open while calls overlap
_READ_SIZE = 65536


class ScriptCall(Protocol):
    async def __call__(self, keys: Sequence[Arg] | None = None, args: Sequence[Arg] | None = None) -> Any: ...


def _encode(value: Arg) -> bytes:
    """As redis-py encodes arguments (it refuses bools too)."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value).encode()
    if isinstance(value, float):
        return repr(value).encode()
    raise TypeError(f"invalid Redis argument {value!r}")


def _pack(parts: Sequence[bytes]) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out.append(b"$%d\r\n%b\r\n" % (len(part), part))
    return b"".join(out)


def _error(reply: hiredis.ReplyError) -> ResponseError:
    text = str(reply)
    return NoScriptError(text) if text.startswith("NOSCRIPT") else ResponseError(text)


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._parser = hiredis.Reader()

    async def request(self, payload: bytes) -> Any:
        self._writer.write(payload)
        while (reply := self._parser.gets()) is False:
            data = await self._reader.read(_READ_SIZE)
            if not data:
                raise RedisConnectionError("Connection closed by server.")
            self._parser.feed(data)
        return reply

    def close(self) -> None:
        self._writer.close()


class FastRedis:
    def __init__(self, settings: dict[str, Any]) -> None:
        self._settings = settings
        self._idle: list[_Connection] = []

    async def _connect(self) -> _Connection:
        s = self._settings
        try:
            if s.get("path"):
                reader, writer = await asyncio.open_unix_connection(s["path"], limit=2**20)
            else:
                reader, writer = await asyncio.open_connection(s.get("host") or "localhost", s.get("port") or 6379,
                                                               limit=2**20)
        except OSError as exc:
            raise RedisConnectionError(f"Error connecting to Redis: {exc}") from exc
        conn = _Connection(reader, writer)
        try:
            if s.get("password"):
                auth = [b"AUTH", *([_encode(s["username"])] if s.get("username") else []), _encode(s["password"])]
                if isinstance(await conn.request(_pack(auth)), hiredis.ReplyError):
                    raise AuthenticationError("invalid username-password pair")
            if s.get("db"):
                reply = await conn.request(_pack([b"SELECT", _encode(int(s["db"]))]))
                if isinstance(reply, hiredis.ReplyError):
                    raise _error(reply)
        except BaseException:
            conn.close()
            raise
        return conn

    async def call(self, parts: Sequence[bytes]) -> Any:
        payload = _pack(parts)
        while True:
            reused = bool(self._idle)
            conn = self._idle.pop() if reused else await self._connect()
            try:
                reply = await conn.request(payload)
            except BaseException as exc:
                conn.close()
                if reused and isinstance(exc, RedisConnectionError | ConnectionError):
                    continue  # a connection from before a server restart: try a fresh one
                if isinstance(exc, OSError):
                    raise RedisConnectionError(f"Error talking to Redis: {exc}") from exc
                raise
            if len(self._idle) < _MAX_IDLE:
                self._idle.append(conn)
            else:
                conn.close()
            if isinstance(reply, hiredis.ReplyError):
                raise _error(reply)
            return reply

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()


class _Script:
    def __init__(self, fast: FastRedis, text: str) -> None:
        self._fast = fast
        self._text = text.encode()
        self._sha = hashlib.sha1(self._text).hexdigest().encode()

    async def __call__(self, keys: Sequence[Arg] | None = None, args: Sequence[Arg] | None = None) -> Any:
        keys, args = keys or (), args or ()
        rest = [str(len(keys)).encode(), *map(_encode, keys), *map(_encode, args)]
        try:
            return await self._fast.call([b"EVALSHA", self._sha, *rest])
        except NoScriptError:  # not cached by this server yet (or flushed): EVAL caches it
            return await self._fast.call([b"EVAL", self._text, *rest])


_FAST: weakref.WeakKeyDictionary[aioredis.Redis, FastRedis | None] = weakref.WeakKeyDictionary()


def _fast_for(redis: aioredis.Redis) -> FastRedis | None:
    if redis not in _FAST:
        pool = redis.connection_pool
        plain = pool.connection_class in (Connection, UnixDomainSocketConnection)
        _FAST[redis] = FastRedis(dict(pool.connection_kwargs)) if plain else None
    return _FAST[redis]


def fast_script(redis: aioredis.Redis, text: str) -> ScriptCall:
    """``redis.register_script(text)``, called the same way (``keys=``, ``args=``), but cheap."""
    fast = _fast_for(redis)
    if fast is None:
        return redis.register_script(text)  # type: ignore[return-value]
    return _Script(fast, text)


def close(redis: aioredis.Redis) -> None:
    """Close the connections kept for ``redis``' scripts (with the client, at shutdown)."""
    fast = _FAST.get(redis)
    if fast is not None:
        fast.close()
