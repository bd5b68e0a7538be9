"""Start and stop a private ``redis-server`` (unix socket, append-only file in its own dir).

Used by berthd on embedded defaults (as dockerd starts containerd) and by the test fixtures.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis.asyncio as aioredis


@dataclass(frozen=True, slots=True)
class RedisConfig:
    dir: Path
    socket: Path
    appendonly: bool = True
    binary: str = "redis-server"


def redis_url(socket_path: Path | str) -> str:
    return f"unix://{socket_path}"


def write_config(cfg: RedisConfig) -> Path:
    cfg.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    conf = cfg.dir / "redis.conf"
    conf.write_text(
        "\n".join([
            "port 0",
            f"unixsocket {cfg.socket}",
            "unixsocketperm 600",
            f"dir {cfg.dir}",
            f"appendonly {'yes' if cfg.appendonly else 'no'}",
            "appendfsync everysec",
            'save ""',
            "daemonize no",
            "protected-mode yes",
            "loglevel warning",
            f"logfile {cfg.dir / 'redis.log'}",
            "",
        ])
    )
    return conf


def spawn(cfg: RedisConfig) -> subprocess.Popen[bytes]:
    """Start redis-server in its own session so a terminal's SIGINT does not reach it."""
    binary = shutil.which(cfg.binary)
    if binary is None:
        raise FileNotFoundError(f"{cfg.binary} not found: install Debian's redis-server")
    conf = write_config(cfg)
    try:
        cfg.socket.unlink()
    except FileNotFoundError:
        pass
    return subprocess.Popen([binary, str(conf)], stdin=subprocess.DEVNULL, start_new_session=True)


async def wait_ready(socket_path: Path, timeout: float = 10.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until redis answers PING on ``socket_path`` (or the process died)."""
    deadline = time.monotonic() + timeout
    client = aioredis.Redis(unix_socket_path=str(socket_path))
    try:
        while True:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {proc.returncode}")
            try:
                if await client.ping():
                    return
            except (aioredis.ConnectionError, OSError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"redis-server not ready on {socket_path}")
            await asyncio.sleep(0.02)
    finally:
        await client.aclose()


def stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM (redis flushes the AOF), then SIGKILL."""
    if proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
