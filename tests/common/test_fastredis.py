"""common/fastredis.py against real redis-servers: the same replies and errors as redis-py's
scripts, scripts the server has not cached, a cancelled call, a server that restarted under
kept connections, and a password-protected server on TCP."""

from __future__ import annotations

import asyncio
import socket
import subprocess
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError

from common import fastredis, redis_server
from common.keys import Keys

_ECHO = "return {KEYS[1], ARGV[1], ARGV[2], ARGV[3], redis.call('INCR', KEYS[1])}"


async def test_same_replies_as_redis_py(redis_client: aioredis.Redis, keys: Keys) -> None:
    key = keys.container("counter")
    fast, slow = fastredis.fast_script(redis_client, _ECHO), redis_client.register_script(_ECHO)
    assert await fast(keys=[key], args=["text", b"\xff\x00", 7]) == [key.encode(), b"text", b"\xff\x00", b"7", 1]
    assert await slow(keys=[key], args=["text", b"\xff\x00", 7]) == [key.encode(), b"text", b"\xff\x00", b"7", 2]
    assert await fastredis.fast_script(redis_client, "return false")() is None
    assert await fastredis.fast_script(redis_client, "return 12")() == 12
    with pytest.raises(ResponseError, match="boom"):
        await fastredis.fast_script(redis_client, "return redis.error_reply('boom')")()
    await redis_client.script_flush()  # not cached any more: EVALSHA fails, EVAL caches it again
    assert (await fast(keys=[key], args=["a", "b", "c"]))[-1] == 3
    with pytest.raises(TypeError):
        await fast(keys=[key], args=[True, "b", "c"])


async def test_a_cancelled_call_leaves_no_half_read_connection(redis_client: aioredis.Redis, keys: Keys) -> None:
    slow = fastredis.fast_script(redis_client, "redis.call('SET', KEYS[1], 'x'); "
                                               "local t = redis.call('TIME') "
                                               "while true do local n = redis.call('TIME') "
                                               "if (n[1] - t[1]) * 1000000 + n[2] - t[2] > 200000 then break end end "
                                               "return 'late'")
    task = asyncio.create_task(slow(keys=[keys.container("x")]))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The next call must not read the cancelled call's reply.
    assert await fastredis.fast_script(redis_client, "return ARGV[1]")(args=["mine"]) == b"mine"


async def test_survives_a_server_restart(tmp_path: Path) -> None:
    cfg = redis_server.RedisConfig(dir=tmp_path / "r", socket=tmp_path / "r.sock", appendonly=False)
    proc = redis_server.spawn(cfg)
    client = aioredis.Redis(unix_socket_path=str(cfg.socket))
    try:
        await redis_server.wait_ready(cfg.socket, proc=proc)
        script = fastredis.fast_script(client, "return ARGV[1]")
        assert await asyncio.gather(*(script(args=[str(i)]) for i in range(3))) == [b"0", b"1", b"2"]  # 3 kept
        redis_server.stop(proc)
        with pytest.raises(RedisConnectionError):
            await script(args=["down"])
        proc = redis_server.spawn(cfg)
        await redis_server.wait_ready(cfg.socket, proc=proc)
        assert await script(args=["back"]) == b"back"  # the stale connections are dropped, not reused
    finally:
        fastredis.close(client)
        await client.aclose()
        redis_server.stop(proc)


async def test_password_and_database_on_tcp(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",  # noqa: ASYNC220
                             "--appendonly", "no", "--requirepass", "s3cret", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, start_new_session=True)
    good = aioredis.Redis.from_url(f"redis://:s3cret@127.0.0.1:{port}/3")
    bad = aioredis.Redis.from_url(f"redis://:wrong@127.0.0.1:{port}/3")
    try:
        for _ in range(200):
            try:
                await good.ping()
                break
            except (RedisConnectionError, OSError):
                await asyncio.sleep(0.02)
        await fastredis.fast_script(good, "redis.call('SET', KEYS[1], 'v')")(keys=["k"])
        assert await good.get("k") == b"v"  # the same database as redis-py's connections
        with pytest.raises(AuthenticationError):
            await fastredis.fast_script(bad, "return 1")()
    finally:
        for client in (good, bad):
            fastredis.close(client)
            await client.aclose()
        redis_server.stop(proc)
