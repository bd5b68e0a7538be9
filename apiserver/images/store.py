"""The cluster's image index in Redis: image records, tags, digests, and which nodes hold them.

The ``tags`` hash (canonical ``repo:tag`` → image id) is the one source of truth for tags; an
image's ``RepoTags`` are derived from it, so moving a tag is a single atomic HSET. Image bytes
(configs, layers) stay on the nodes; a record only describes them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from common.keys import Keys, text
from protos.errors import ImageNotFound, InvalidArgument
from registry_client import reference
from snapshotter.api import ExportImage, LayerRef


@dataclass(slots=True)
class ImageRecord:
    id: str
    config: dict[str, Any]
    layers: list[dict[str, Any]]
    chain_id: str
    size: int
    raw_config: bytes = b""
    nodes: set[str] = field(default_factory=set)
    parent: str = ""  # the image a build step started from (intermediate images)

    @property
    def created(self) -> str:
        return str(self.config.get("created", ""))

    @property
    def diff_ids(self) -> list[str]:
        return list(self.config.get("rootfs", {}).get("diff_ids", []))

    def export(self, repo_tags: tuple[str, ...] = ()) -> ExportImage:
        """The image as the snapshotter's export and push want it."""
        return ExportImage(id=self.id, repo_tags=repo_tags, layers=tuple(
            LayerRef(digest=layer["digest"], diff_id=layer["diff_id"], media_type=layer.get("media_type", ""),
                     size=int(layer.get("size", 0))) for layer in self.layers))


def _decode(id: str, raw: dict[bytes, bytes], nodes: set[bytes]) -> ImageRecord | None:
    if b"config" not in raw:
        return None
    return ImageRecord(
        id=id, config=json.loads(raw[b"config"]), layers=json.loads(raw.get(b"layers", b"[]")),
        chain_id=raw.get(b"chain_id", b"").decode(), size=int(raw.get(b"size", b"0")),
        raw_config=raw[b"config"], nodes={text(n) for n in nodes}, parent=text(raw.get(b"parent", b"")))


_MOVE_TAG = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return old
"""

_REMOVE_TAG_IF = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"""


# SADD the node (ARGV[1]) to the image's set (KEYS[2]) only while its record (KEYS[1]) exists: an
# image removed during a copy is not brought back.
_ADD_NODE = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
redis.call('SADD', KEYS[2], ARGV[1])
return 1
"""


class ImageStore:
    def __init__(self, redis: aioredis.Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys
        self._add_node = redis.register_script(_ADD_NODE)

    async def add(self, record: ImageRecord, node: str, created_ns: int) -> bool:
        """Record an image held by ``node``; returns True if the image was new to the cluster."""
        key = self._keys.image(record.id)
        new = bool(await self._redis.hsetnx(key, "config", record.raw_config))
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={"layers": json.dumps(record.layers), "chain_id": record.chain_id,
                                    "size": str(record.size), "parent": record.parent})
            pipe.sadd(self._keys.image_nodes(record.id), node)
            pipe.zadd(self._keys.images, {record.id: created_ns}, nx=True)
            pipe.zadd(self._keys.images_lex, {record.id.removeprefix("sha256:"): 0})
            await pipe.execute()
        return new

    async def add_node(self, id: str, node: str) -> bool:
        """Record that ``node`` now holds image ``id`` too; False if the image is gone."""
        return bool(await self._add_node(keys=[self._keys.image(id), self._keys.image_nodes(id)], args=[node]))

    async def get(self, id: str) -> ImageRecord:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self._keys.image(id))
            pipe.smembers(self._keys.image_nodes(id))
            raw, nodes = await pipe.execute()
        record = _decode(id, raw, nodes)
        if record is None:
            raise ImageNotFound(f"No such image: {id}")
        return record

    async def exists(self, id: str) -> bool:
        return bool(await self._redis.exists(self._keys.image(id)))

    async def find(self, ref: str) -> ImageRecord | None:
        """Resolve ``ref`` as moby does: ``sha256:`` id, then a reference (default tag
        ``latest``), then a unique id prefix. None if nothing matches."""
        if ref.startswith("sha256:"):
            if reference.is_digest(ref):
                return await self.get(ref) if await self.exists(ref) else None
            return await self._by_prefix(ref.removeprefix("sha256:"))
        try:
            parsed = reference.parse(ref)
        except InvalidArgument:
            parsed = None
        if parsed is not None:
            if parsed.digest:
                owner = await self._redis.hget(self._keys.digests, f"{parsed.repository}@{parsed.digest}")
            else:
                owner = await self._redis.hget(self._keys.tags, parsed.with_default_tag().canonical)
            if owner is not None:
                return await self.get(text(owner))
        if all(c in "0123456789abcdef" for c in ref) and ref:
            return await self._by_prefix(ref)
        if parsed is None:
            raise InvalidArgument("invalid reference format")
        return None

    async def resolve(self, ref: str) -> ImageRecord:
        record = await self.find(ref)
        if record is None:
            raise ImageNotFound(f"No such image: {familiar_or_raw(ref)}")
        return record

    async def _by_prefix(self, prefix: str) -> ImageRecord | None:
        hits = await self._redis.zrangebylex(self._keys.images_lex, f"[{prefix}", f"[{prefix}\xff", start=0, num=2)
        if len(hits) > 1:
            raise InvalidArgument(f"multiple IDs found with provided prefix: {prefix}")
        if not hits:
            return None
        return await self.get("sha256:" + text(hits[0]))

    async def tag(self, canonical: str, id: str) -> str | None:
        """Point ``canonical`` (``docker.io/library/busybox:latest``) at ``id``; returns the id
        it pointed at before (None if new)."""
        old = await self._redis.eval(_MOVE_TAG, 1, self._keys.tags, canonical, id)
        return text(old) if old else None

    async def untag(self, canonical: str, id: str) -> bool:
        return bool(await self._redis.eval(_REMOVE_TAG_IF, 1, self._keys.tags, canonical, id))

    async def tags_by_image(self) -> dict[str, list[str]]:
        """Image id → canonical tags (sorted)."""
        out: dict[str, list[str]] = {}
        for ref, id in (await self._redis.hgetall(self._keys.tags)).items():
            out.setdefault(text(id), []).append(text(ref))
        for refs in out.values():
            refs.sort()
        return out

    async def digests_by_image(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for ref, id in (await self._redis.hgetall(self._keys.digests)).items():
            out.setdefault(text(id), []).append(text(ref))
        return out

    async def all(self) -> list[ImageRecord]:
        """Every image, newest first."""
        ids = [text(i) for i in await self._redis.zrevrange(self._keys.images, 0, -1)]
        if not ids:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for id in ids:
                pipe.hgetall(self._keys.image(id))
                pipe.smembers(self._keys.image_nodes(id))
            raws = await pipe.execute()
        out = []
        for i, id in enumerate(ids):
            record = _decode(id, raws[2 * i], raws[2 * i + 1])
            if record is not None:
                out.append(record)
        return out

    async def delete(self, id: str) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._keys.image(id), self._keys.image_nodes(id))
            pipe.zrem(self._keys.images, id)
            pipe.zrem(self._keys.images_lex, id.removeprefix("sha256:"))
            await pipe.execute()


def familiar_or_raw(ref: str) -> str:
    """How moby names a missing image in errors: ``busybox:latest`` for references."""
    try:
        parsed = reference.parse(ref)
    except InvalidArgument:
        return ref
    if ref.startswith("sha256:") or (all(c in "0123456789abcdef" for c in ref) and len(ref) >= 12):
        return ref
    return parsed.with_default_tag().familiar
