"""What the image routes need: the image index in Redis plus the nodes' snapshotters.

Deletion follows moby's rules (daemon/images/image_delete.go): removing a tag only untags while
other references remain; deleting an image used by a running container is refused even with
force; a stopped container's image needs force; after untagging the last tag of an image a
container still uses, the image is quietly kept (dangling).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
import structlog

from apiserver.containers.store import ContainerStore
from apiserver.httputil import Filters
from apiserver.images import views
from apiserver.images.store import ImageRecord, ImageStore
from apiserver.nodes import NodeDirectory
from common.events import append_event
from common.keys import Keys
from protos.errors import (
    BerthError,
    Conflict,
    FailedPrecondition,
    ImageNotFound,
    InvalidArgument,
    NotFound,
)
from registry_client import reference

log = structlog.get_logger()

LIST_FILTERS = ("dangling", "label", "before", "since", "reference", "until")


def chain_ids(diff_ids: list[str]) -> list[str]:
    chain: list[str] = []
    for diff_id in diff_ids:
        parent = chain[-1] if chain else ""
        chain.append(diff_id if not parent else "sha256:" + hashlib.sha256(f"{parent} {diff_id}".encode()).hexdigest())
    return chain


class ImageBackend:
    def __init__(self, *, redis: aioredis.Redis, keys: Keys, store: ImageStore, containers: ContainerStore,
                 nodes: NodeDirectory,
                 volume_usage: Callable[[], Awaitable[list[dict[str, Any]]]] | None = None) -> None:
        self._volume_usage = volume_usage  # system df's volumes (the volume backend's disk_usage)
        self._redis = redis
        self._keys = keys
        self.store = store
        self._containers = containers
        self._nodes = nodes

    async def _event(self, action: str, id: str, name: str = "") -> None:
        attrs = {"name": name} if name else {}
        await append_event(self._redis, self._keys, "image", action, id if not name else name, attrs)

    # -- read --------------------------------------------------------------------------------------
    async def summaries(self, *, all: bool, filters: Filters) -> list[dict[str, Any]]:
        records = await self.store.all()
        tags = await self.store.tags_by_image()
        digests = await self.store.digests_by_image()
        usage: dict[str, int] = {}
        for c in await self._containers.all():
            usage[c.config["Image"]] = usage.get(c.config["Image"], 0) + 1
        if not all:
            # intermediate images (untagged parents of other images) only show with -a
            parents = {r.parent for r in records if r.parent}
            records = [r for r in records if tags.get(r.id) or r.id not in parents]
        records = await self._filter(records, tags, filters)
        patterns = filters.get("reference", [])

        def shown(refs: list[str]) -> list[str]:
            # moby lists only the tags that matched a reference filter
            return [t for t in refs if any(_reference_match(t, p) for p in patterns)] if patterns else refs

        return [views.summary(r, shown(tags.get(r.id, [])), digests.get(r.id, []), usage.get(r.id, 0))
                for r in records]

    async def _filter(self, records: list[ImageRecord], tags: dict[str, list[str]],
                      filters: Filters) -> list[ImageRecord]:
        if not filters:
            return records
        for v in filters.get("dangling", []):
            if v not in ("true", "false", "1", "0"):
                raise InvalidArgument(f"invalid filter 'dangling={v}'")
        before = since = None
        if filters.get("before"):
            before = (await self.store.resolve(filters["before"][0])).created
        if filters.get("since"):
            since = (await self.store.resolve(filters["since"][0])).created
        out = []
        for r in records:
            refs = tags.get(r.id, [])
            if "dangling" in filters:
                want = filters["dangling"][0] in ("true", "1")
                if want != (not refs):
                    continue
            labels = (r.config.get("config") or {}).get("Labels") or {}
            if any(not _label_match(labels, want) for want in filters.get("label", [])):
                continue
            if "reference" in filters and not any(
                    _reference_match(ref, pattern) for ref in refs for pattern in filters["reference"]):
                continue
            if before is not None and not r.created < before:
                continue
            if since is not None and not r.created > since:
                continue
            out.append(r)
        return out

    async def inspect(self, ref: str) -> dict[str, Any]:
        record = await self.store.resolve(ref)
        tags = (await self.store.tags_by_image()).get(record.id, [])
        digests = (await self.store.digests_by_image()).get(record.id, [])
        return views.inspect(record, tags, digests)

    async def history(self, ref: str) -> list[dict[str, Any]]:
        record = await self.store.resolve(ref)
        tags = (await self.store.tags_by_image()).get(record.id, [])
        return views.history(record, tags)

    # -- tags --------------------------------------------------------------------------------------
    async def tag(self, ref: str, repo: str, tag: str) -> None:
        record = await self.store.resolve(ref)
        if not repo:
            raise InvalidArgument("repository name must have at least one component")
        target = reference.parse(f"{repo}:{tag}" if tag else repo)
        if target.digest:
            raise InvalidArgument("refusing to create a tag with a digest reference")
        target = target.with_default_tag()
        await self.store.tag(target.canonical, record.id)
        await self._event("tag", record.id, target.familiar)

    # -- delete ------------------------------------------------------------------------------------
    async def remove(self, ref: str, *, force: bool = False, prune: bool = True) -> list[dict[str, str]]:
        record = await self.store.resolve(ref)
        tags = (await self.store.tags_by_image()).get(record.id, [])
        digests = (await self.store.digests_by_image()).get(record.id, [])
        results: list[dict[str, str]] = []
        by_id = _is_id_ref(ref, record.id)
        quiet = False
        if not by_id:
            parsed = reference.parse(ref)
            canonical = (f"{parsed.repository}@{parsed.digest}" if parsed.digest
                         else parsed.with_default_tag().canonical)
            if parsed.digest:
                await self._redis.hdel(self._keys.digests, canonical)
            else:
                await self.store.untag(canonical, record.id)
            results.append({"Untagged": reference.parse(canonical).familiar})
            await self._event("untag", record.id, reference.parse(canonical).familiar)
            remaining_tags = [t for t in tags if t != canonical]
            remaining_digests = [d for d in digests if d != canonical]
            if not parsed.digest and not any(reference.parse(t).repository == parsed.repository
                                             for t in remaining_tags):
                # moby: once the last tag of a repository goes, its digest references go too
                for digest_ref in [d for d in remaining_digests if d.startswith(parsed.repository + "@")]:
                    await self._redis.hdel(self._keys.digests, digest_ref)
                    results.append({"Untagged": reference.parse(digest_ref).familiar})
                    remaining_digests.remove(digest_ref)
            if remaining_tags or remaining_digests:
                return results
            quiet = True
        else:
            refs = tags + digests
            if len(refs) > 1 and not force:
                raise Conflict(f"conflict: unable to delete {_short(record.id)} (must be forced) - image is "
                               "referenced in multiple repositories")
        if any(r.parent == record.id for r in await self.store.all()):
            if quiet:
                return results
            raise Conflict(f"conflict: unable to delete {_short(record.id)} (cannot be forced) - image has "
                           "dependent child images")
        users = [c for c in await self._containers.all() if c.config["Image"] == record.id]
        running = [c for c in users if c.running]
        if running:
            if quiet:
                return results
            raise Conflict(f"conflict: unable to delete {_short(record.id)} (cannot be forced) - image is "
                           f"being used by running container {_short(running[0].id)}")
        if users and not force:
            if quiet:
                return results
            raise Conflict(f"conflict: unable to delete {_short(record.id)} (must be forced) - image is being "
                           f"used by stopped container {_short(users[0].id)}")
        if by_id:
            for canonical in tags:
                await self.store.untag(canonical, record.id)
                results.append({"Untagged": reference.parse(canonical).familiar})
                await self._event("untag", record.id, reference.parse(canonical).familiar)
            for canonical in digests:
                await self._redis.hdel(self._keys.digests, canonical)
                results.append({"Untagged": reference.parse(canonical).familiar})
        await self.store.delete(record.id)
        results.append({"Deleted": record.id})
        for layer in await self._release_layers(record, keep_in_use=bool(users)):
            results.append({"Deleted": layer})
        await self._event("delete", record.id)
        if prune and record.parent:
            results.extend(await self._prune_parent(record.parent))
        return results

    async def _prune_parent(self, parent_id: str) -> list[dict[str, str]]:
        """Like moby: deleting an image also deletes its untagged parents that nothing else needs."""
        try:
            parent = await self.store.get(parent_id)
        except ImageNotFound:
            return []
        if (await self.store.tags_by_image()).get(parent.id):
            return []
        if any(r.parent == parent.id for r in await self.store.all()):
            return []
        if any(c.config["Image"] == parent.id for c in await self._containers.all()):
            return []
        return await self.remove(parent.id, prune=True)

    async def _release_layers(self, record: ImageRecord, *, keep_in_use: bool) -> list[str]:
        """Remove the image's snapshots and blobs from each node, keeping what other images use."""
        others = [r for r in await self.store.all() if r.id != record.id]
        removed: list[str] = []
        for node in record.nodes:
            try:
                host = await self._nodes.host(node)
            except BerthError as exc:
                log.warning("image_release_skipped", node=node, error=str(exc))
                continue
            on_node = [r for r in others if node in r.nodes]
            used_chains = {c for r in on_node for c in chain_ids(r.diff_ids)}
            used_blobs = {r.id for r in on_node} | {layer["digest"] for r in on_node for layer in r.layers}
            for chain in reversed(chain_ids(record.diff_ids)):
                if chain in used_chains:
                    break
                try:
                    await host.snapshots.remove(chain)
                    removed.append(chain)
                except NotFound:
                    continue
                except FailedPrecondition:
                    break  # a container's layer still sits on it
            for digest in [record.id, *(layer["digest"] for layer in record.layers)]:
                if digest not in used_blobs:
                    try:
                        await host.content.delete(digest)
                    except NotFound:
                        pass
        return removed

    async def prune(self, filters: Filters) -> dict[str, Any]:
        """``docker image prune``: dangling images (``dangling=false``: every unused image)."""
        for key in filters:
            if key not in ("dangling", "until", "label", "label!"):
                raise InvalidArgument(f"invalid filter '{key}'")
        dangling_only = filters.get("dangling", ["true"])[0] in ("true", "1")
        until_ns = None
        if filters.get("until"):
            from apiserver.streams import unix_ns

            until_ns = unix_ns(filters["until"][0])
        tags = await self.store.tags_by_image()
        used = {c.config["Image"] for c in await self._containers.all()}
        deleted: list[dict[str, str]] = []
        reclaimed = 0
        # Children first, so a build's chain of intermediates goes in one prune.
        records = await self.store.all()
        for record in records:
            if record.id in used or (dangling_only and tags.get(record.id)):
                continue
            if any(r.parent == record.id for r in await self.store.all()):
                continue
            if until_ns is not None and _created_ns(record.config) >= until_ns:
                continue
            labels = (record.config.get("config") or {}).get("Labels") or {}
            if any(not _label_match(labels, want) for want in filters.get("label", [])):
                continue
            if any(_label_match(labels, want) for want in filters.get("label!", [])):
                continue
            try:
                results = await self.remove(record.id, force=True)
            except BerthError as exc:
                log.warning("prune_skip", image=record.id, error=str(exc))
                continue
            deleted.extend(results)
            reclaimed += record.size
        return {"ImagesDeleted": deleted or None, "SpaceReclaimed": reclaimed}

    async def disk_usage(self) -> dict[str, Any]:
        """``GET /system/df``: images with shared sizes, containers with their writable layers."""
        from apiserver.containers import views as container_views

        records = await self.store.all()
        tags = await self.store.tags_by_image()
        digests = await self.store.digests_by_image()
        containers = await self._containers.all()
        usage: dict[str, int] = {}
        for c in containers:
            usage[c.config["Image"]] = usage.get(c.config["Image"], 0) + 1
        # Per-layer sizes come from the snapshotter (each committed chain's own usage).
        layer_users: dict[str, int] = {}
        layer_size: dict[str, int] = {}
        for r in records:
            chains = chain_ids(r.diff_ids)
            for chain in chains:
                layer_users[chain] = layer_users.get(chain, 0) + 1
                if chain not in layer_size:
                    layer_size[chain] = await self._chain_usage(r, chain)
        images = []
        for r in records:
            item = views.summary(r, tags.get(r.id, []), digests.get(r.id, []), usage.get(r.id, 0))
            item["SharedSize"] = sum(layer_size[c] for c in chain_ids(r.diff_ids) if layer_users.get(c, 0) > 1)
            images.append(item)
        container_items = []
        for c in containers:
            item = container_views.summary_view(c)
            try:
                host = await self._nodes.host(c.node)
                rw = (await host.snapshots.usage(c.id)).size
            except BerthError:
                rw = 0
            item["SizeRw"] = rw
            image_size = next((r.size for r in records if r.id == c.config["Image"]), 0)
            item["SizeRootFs"] = rw + image_size
            container_items.append(item)
        volumes = await self._volume_usage() if self._volume_usage is not None else []
        return {"LayersSize": sum(layer_size.values()), "Images": images, "Containers": container_items,
                "Volumes": volumes, "BuildCache": []}

    async def _chain_usage(self, record: ImageRecord, chain: str) -> int:
        for node in sorted(record.nodes):
            try:
                host = await self._nodes.host(node)
                return (await host.snapshots.usage(chain)).size
            except BerthError:
                continue
        return 0

    # -- archives ----------------------------------------------------------------------------------
    async def load(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[dict[str, Any]]:
        node = await self._nodes.place(candidates=None, load=_zero())
        host = await self._nodes.host(node.id)
        imported = await host.images.import_archive(chunks)
        return self._record_loaded(imported, node.id)

    async def _record_loaded(self, imported: list[Any], node: str) -> AsyncIterator[dict[str, Any]]:
        for image in imported:
            config = json.loads(image.config)
            record = ImageRecord(
                id=image.id, config=config,
                layers=[{"digest": layer.digest, "diff_id": layer.diff_id, "media_type": layer.media_type,
                         "size": layer.size}
                        for layer in image.layers],
                chain_id=image.chain_id, size=image.size, raw_config=image.config)
            await self.store.add(record, node, _created_ns(config))
            if not image.repo_tags:
                await self._event("load", image.id)
                yield {"stream": f"Loaded image ID: {image.id}\n"}
                continue
            for tag in image.repo_tags:
                ref = reference.parse_tagged(tag)
                old = await self.store.tag(ref.canonical, image.id)
                if old and old != image.id:
                    yield {"stream": f"The image {ref.familiar} already exists, renaming the old one with ID "
                                     f"{old} to empty string\n"}
                await self._event("load", image.id, ref.familiar)
                yield {"stream": f"Loaded image: {ref.familiar}\n"}

    async def save(self, names: list[str]) -> AsyncIterator[bytes]:
        if not names:
            raise InvalidArgument("no images specified")
        wanted: dict[str, tuple[ImageRecord, list[str]]] = {}
        for name in names:
            record = await self.store.resolve(name)
            entry = wanted.setdefault(record.id, (record, []))
            if not _is_id_ref(name, record.id):
                parsed = reference.parse_tagged(name)
                if not parsed.digest:
                    entry[1].append(parsed.familiar)
        common_nodes = set.intersection(*(r.nodes for r, _ in wanted.values()))
        if not common_nodes:
            raise Conflict("the requested images are not all stored on one node")
        host = await self._nodes.host(sorted(common_nodes)[0])
        exports = [r.export(tuple(t)) for r, t in wanted.values()]
        for image_id in wanted:
            await self._event("save", image_id)
        return host.images.export_archive(exports)


def _zero() -> Any:
    from collections import Counter

    return Counter()


def _created_ns(config: dict[str, Any]) -> int:
    from apiserver.containers.views import parse_rfc3339

    try:
        return parse_rfc3339(str(config.get("created", ""))) or time.time_ns()
    except ValueError:
        return time.time_ns()


def _short(id: str) -> str:
    return id.removeprefix("sha256:")[:12]


def _is_id_ref(ref: str, image_id: str) -> bool:
    bare = ref.removeprefix("sha256:")
    return bool(bare) and image_id.removeprefix("sha256:").startswith(bare) and (
        ref.startswith("sha256:") or all(c in "0123456789abcdef" for c in ref))


def _label_match(labels: dict[str, str], want: str) -> bool:
    key, sep, value = want.partition("=")
    return key in labels and (not sep or labels[key] == value)


def _reference_match(canonical: str, pattern: str) -> bool:
    import fnmatch

    familiar = reference.parse(canonical).familiar
    repo = familiar.rsplit(":", 1)[0]
    return fnmatch.fnmatchcase(familiar, pattern) or fnmatch.fnmatchcase(repo, pattern)


__all__ = ["LIST_FILTERS", "ImageBackend", "ImageNotFound"]
