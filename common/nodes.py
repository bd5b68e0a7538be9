"""Node records in Redis: each host's shim and snapshotter register themselves and heartbeat.

A node record is one JSON value in the ``nodes`` hash, merged field by field by the parts that
run on that host (the shim sets ``shim_address``, the snapshotter ``snapshotter_address``). Each
part refreshes its own heartbeat key with a TTL; a node whose heartbeats have all expired is
``down`` (DESIGN.md §2).
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import secrets
import socket
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
import structlog

from common.keys import Keys

log = structlog.get_logger()

HEARTBEAT_INTERVAL = 5.0
HEARTBEAT_TTL = 15  # about three periods, as Swarm's node DOWN detection


@dataclass(frozen=True, slots=True)
class NodeRecord:
    id: str
    hostname: str
    shim_address: str = ""
    snapshotter_address: str = ""
    # The supervisor's socket, and which file it is (:func:`file_identity`): an API server on the
    # same host (the same file) runs execs through it directly (shim.supervisor.direct).
    exec_socket: str = ""
    exec_socket_id: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    cpus: int = 0
    memory: int = 0
    role: str = "manager"
    availability: str = "active"
    kernel: str = ""
    os: str = "linux"
    arch: str = ""
    version: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> NodeRecord:
        data = json.loads(raw)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def load_or_create_node_id(state_dir: Path) -> str:
    """A stable random node id kept in ``<state_dir>/node-id`` (like dockerd's engine id)."""
    path = state_dir / "node-id"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        node_id = secrets.token_hex(13)
        state_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(node_id + "\n")
        os.replace(tmp, path)
        return node_id


def host_facts() -> dict[str, Any]:
    uname = os.uname()
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return {"hostname": socket.gethostname(), "cpus": os.cpu_count() or 1, "memory": pages,
            "kernel": uname.release, "arch": uname.machine}


def file_identity(path: Path) -> str:
    """Which file ``path`` is, on which boot of which host: the same string only for the same
    file seen from the same running kernel (whatever mount namespace); "" if there is none."""
    try:
        st = os.stat(path)
        return f"{_boot_id()}:{st.st_dev}:{st.st_ino}"
    except OSError:
        return ""


@functools.cache
def _boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


_MERGE_SCRIPT = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
local rec = {}
if cur then rec = cjson.decode(cur) end
local upd = cjson.decode(ARGV[2])
for k, v in pairs(upd) do rec[k] = v end
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(rec))
return 1
"""


async def register(redis: aioredis.Redis, keys: Keys, node_id: str, **fields_: Any) -> None:
    """Merge ``fields_`` into the node's record atomically (two parts may register at once)."""
    update = {"id": node_id, **fields_}
    await redis.eval(_MERGE_SCRIPT, 1, keys.nodes, node_id, json.dumps(update))


async def beat(redis: aioredis.Redis, keys: Keys, node_id: str, part: str) -> None:
    await redis.set(keys.heartbeat(node_id, part), "1", ex=HEARTBEAT_TTL)


async def heartbeat_forever(redis: aioredis.Redis, keys: Keys, node_id: str, part: str,
                            interval: float = HEARTBEAT_INTERVAL) -> None:
    """Refresh the heartbeat until cancelled; Redis outages are logged and retried."""
    while True:
        try:
            await beat(redis, keys, node_id, part)
        except (aioredis.ConnectionError, aioredis.TimeoutError, OSError) as exc:
            log.warning("heartbeat_failed", node=node_id, part=part, error=str(exc))
        await asyncio.sleep(interval)


async def get_nodes(redis: aioredis.Redis, keys: Keys) -> list[NodeRecord]:
    raw = await redis.hgetall(keys.nodes)
    return [NodeRecord.from_json(v) for v in raw.values()]


async def node_is_up(redis: aioredis.Redis, keys: Keys, node_id: str, parts: tuple[str, ...] = ("shim",)) -> bool:
    values = await redis.mget([keys.heartbeat(node_id, p) for p in parts])
    return all(v is not None for v in values)
