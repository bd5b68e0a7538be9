"""Copy an image to a node that lacks it, streamed from a node that holds it (DESIGN.md §3).

Images are per node on disk and the index in Redis records which nodes hold each one. When the
scheduler puts a container (or a build) on a node without its image, that node gets the image
from a node that has it: the holder's snapshotter exports it (``docker save`` format) and the
target's snapshotter imports the stream through this API server. Built, committed and loaded
images need no registry inside a cluster; the copy is verified by its id (the config digest).
"""

from __future__ import annotations

import asyncio

import structlog

from apiserver.images.store import ImageRecord, ImageStore
from apiserver.nodes import NodeDirectory
from protos.errors import Internal, NotFound, Unavailable

log = structlog.get_logger()


class ImageReplicator:
    """Copies images between nodes; concurrent requests for the same image and node share one copy."""

    def __init__(self, store: ImageStore, nodes: NodeDirectory) -> None:
        self._store = store
        self._nodes = nodes
        self._copies: dict[tuple[str, str], asyncio.Future[None]] = {}

    async def ensure(self, image: ImageRecord, node_id: str) -> None:
        """Return once ``node_id`` holds ``image`` (at once if the index says it does)."""
        if node_id in image.nodes:
            return
        key = (image.id, node_id)
        copy = self._copies.get(key)
        if copy is None:
            copy = asyncio.ensure_future(self._copy(image, node_id))
            self._copies[key] = copy
            copy.add_done_callback(lambda _: self._copies.pop(key, None))
        # One waiter leaving (a client that hung up) must not cancel the copy for the others.
        await asyncio.shield(copy)

    async def _copy(self, image: ImageRecord, node_id: str) -> None:
        holders = [n for n in await self._nodes.up_nodes() if n.id in image.nodes]
        if not holders:
            raise Unavailable(f"image {image.id} is not on any node that is up")
        source = holders[0]
        bound = log.bind(image=image.id[7:19], source=source.id[:12], target=node_id[:12])
        bound.info("image_copy_started")
        src = await self._nodes.host(source.id)
        dst = await self._nodes.host(node_id)
        archive = src.images.export_archive([image.export()])
        imported = await dst.images.import_archive(archive)
        ids = [r.id for r in imported]
        if ids != [image.id]:
            raise Internal(f"copying image {image.id} to node {node_id}: the node imported {ids}")
        if not await self._store.add_node(image.id, node_id):
            raise NotFound(f"No such image: {image.id} (removed while it was being copied)")
        image.nodes.add(node_id)
        bound.info("image_copied")
