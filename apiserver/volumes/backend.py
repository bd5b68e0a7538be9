"""What the volume routes and container create/remove need: volumes of the ``local`` driver,
recorded in Redis, with their data on a node (its shim's ``Volumes`` service).

Docker's rules (moby ``volume/service``, ``daemon/volumes.go``, ``daemon/create_unix.go``):

* creating a volume that exists returns it; a nameless one gets a random 64-hex name and the
  ``com.docker.volume.anonymous`` label; options are ``type``, ``device``, ``o`` (and ``size``,
  which needs quotas Berth does not have), ``o`` needing both others;
* a container's volumes are created on first use (``-v name:/p``, ``--mount``, the image's
  ``VOLUME``) and referenced by it; a referenced volume cannot be removed (``volume is in use``);
  removing the container with ``-v`` (or ``--rm``) removes its anonymous volumes;
* an empty volume gets the image's content at its mount point when the container is created
  (unless ``nocopy``);
* ``prune`` removes unused local volumes without mount options, only anonymous ones unless
  ``all=true``.

Volumes are per node: a container using a volume runs on the volume's node.
"""

from __future__ import annotations

import posixpath
import re
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis
import structlog

from apiserver.containers.store import ContainerRecord, ContainerStore
from apiserver.httputil import Filters
from apiserver.nodes import HostServices, NodeDirectory
from apiserver.volumes import mounts as mounts_mod
from apiserver.volumes.mounts import ANONYMOUS_LABEL, MountPoint
from apiserver.volumes.store import InUse, VolumeRecord, VolumeStore
from common.events import append_event
from common.keys import Keys
from protos.errors import (
    BerthError,
    Conflict,
    InvalidArgument,
    NotFound,
)
from shim.api import ContainerMount

log = structlog.get_logger()

LIST_FILTERS = ("dangling", "name", "driver", "label")
PRUNE_FILTERS = ("label", "label!", "all")
LOCAL = "local"
_VALID_OPTIONS = ("type", "o", "device", "size")
_MANDATORY = {"device": ("type",), "type": ("device",), "o": ("device", "type")}


class VolumeNotFound(NotFound):
    pass


def _created_at(ns: int) -> str:
    """Go's time.RFC3339 (seconds) in UTC, as the volume's CreatedAt."""
    return datetime.fromtimestamp(ns // 1_000_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _validate_options(name: str, options: dict[str, str]) -> None:
    """moby local driver's validateOpts, worded as its create error."""
    for key in options:
        if key not in _VALID_OPTIONS:
            raise InvalidArgument(f'create {name}: invalid option: "{key}"')
    if "size" in options:
        raise InvalidArgument(f"create {name}: quota size requested but no quota support")
    for key in sorted(_MANDATORY):
        if key in options:
            for needed in _MANDATORY[key]:
                if needed not in options:
                    raise InvalidArgument(f'create {name}: missing required option: "{needed}"')


def _check_driver(name: str, driver: str) -> None:
    if driver and driver != LOCAL:
        raise NotFound(f'create {name}: error looking up volume plugin {driver}: plugin "{driver}" not found')


@dataclass
class MountPlan:
    """A container's parsed mounts before any volume exists, and the node they pin it to."""

    points: list[MountPoint]
    tmpfs: dict[str, str]
    image_volumes: list[str]
    nodes: set[str] | None = None  # None: any node
    volumes_from: list[str] = field(default_factory=list)


class VolumeBackend:
    def __init__(self, *, redis: aioredis.Redis, keys: Keys, store: VolumeStore, containers: ContainerStore,
                 nodes: NodeDirectory) -> None:
        self._redis = redis
        self._keys = keys
        self.store = store
        self._containers = containers
        self._nodes = nodes

    async def _event(self, action: str, name: str, **attrs: str) -> None:
        await append_event(self._redis, self._keys, "volume", action, name, attrs)

    @staticmethod
    def view(record: VolumeRecord) -> dict[str, Any]:
        return dict(record.doc)

    # -- the volume API ---------------------------------------------------------------------------------
    async def create(self, name: str, driver: str = "", options: dict[str, str] | None = None,
                     labels: dict[str, str] | None = None, *, node: str = "", ref: str = "") -> VolumeRecord:
        """``POST /volumes/create`` and a container's volumes (``ref`` = the container id)."""
        labels = dict(labels) if labels is not None else None
        if not name:
            name = secrets.token_hex(32)
            labels = {**(labels or {}), ANONYMOUS_LABEL: ""}
        else:
            problem = mounts_mod.validate_volume_name(name)
            if problem:
                raise InvalidArgument(f"create {name}: {problem}")
        _check_driver(name, driver)
        existing = await self.store.get(name)
        if existing is not None:
            if ref and not await self.store.add_ref(name, ref):
                existing = None  # removed meanwhile: make it again
            else:
                return existing
        _validate_options(name, dict(options or {}))
        if not node:
            node = (await self._nodes.place(candidates=None, load=Counter())).id
        host = await self._nodes.host(node)
        info = await host.volumes.create(name, dict(options or {}))
        doc = {"CreatedAt": _created_at(info.created_at_ns), "Driver": LOCAL, "Labels": labels,
               "Mountpoint": info.mountpoint, "Name": name, "Options": dict(options) if options is not None else None,
               "Scope": "local"}
        record, created = await self.store.create(name, doc, node, time.time_ns(), ref)
        if created:
            await self._event("create", name, driver=LOCAL)
            log.info("volume_created", volume=name, node=node)
        return record

    async def get(self, name: str) -> VolumeRecord:
        record = await self.store.get(name)
        if record is None:
            raise VolumeNotFound(f"get {name}: no such volume")
        return record

    async def list_volumes(self, filters: Filters) -> dict[str, Any]:
        records = await self.store.all()
        return {"Volumes": [self.view(r) for r in self._filter(records, filters)], "Warnings": []}

    @staticmethod
    def _filter(records: list[VolumeRecord], filters: Filters) -> list[VolumeRecord]:
        for value in filters.get("dangling", []):
            if value not in ("true", "false", "1", "0"):
                raise InvalidArgument(f"invalid filter 'dangling={value}'")
        out = []
        for r in records:
            if "driver" in filters and r.doc.get("Driver") not in filters["driver"]:
                continue
            if "name" in filters and not any(_matches(n, r.name) for n in filters["name"]):
                continue
            if "dangling" in filters:
                dangling = filters["dangling"][-1] in ("true", "1")
                if dangling == bool(r.refs):
                    continue
            if not _labels_match(r.labels, filters.get("label", [])):
                continue
            out.append(r)
        return out

    async def remove(self, name: str, *, force: bool = False) -> None:
        record = await self.store.get(name)
        if record is None:
            if force:
                return
            raise VolumeNotFound(f"get {name}: no such volume")
        await self._remove(record)

    async def _remove(self, record: VolumeRecord) -> None:
        try:
            if not await self.store.remove(record.name):
                return
        except InUse as exc:
            raise Conflict(f"remove {record.name}: volume is in use - [{', '.join(exc.refs)}]") from None
        try:
            host = await self._nodes.host(record.node)
            await host.volumes.remove(record.name)
        except BaseException:
            # Keep the record while the data is there, so that the removal can be tried again.
            await self.store.create(record.name, record.doc, record.node, time.time_ns())
            raise
        await self._event("destroy", record.name, driver=LOCAL)
        log.info("volume_removed", volume=record.name)

    async def prune(self, filters: Filters) -> dict[str, Any]:
        for key in filters:
            if key not in PRUNE_FILTERS:
                raise InvalidArgument(f"invalid filter '{key}'")
        wanted = filters.get("all", [])
        if len(wanted) > 1:
            raise InvalidArgument(f"invalid filter 'all={wanted}': only one value is expected")
        everything = False
        if wanted:
            parsed = _go_bool(wanted[0])
            if parsed is None:
                raise InvalidArgument(f'invalid filter \'all\': strconv.ParseBool: parsing "{wanted[0]}": '
                                      "invalid syntax")
            everything = parsed
        deleted: list[str] = []
        reclaimed = 0
        for record in await self.store.all():
            if record.refs or record.options or record.doc.get("Driver") != LOCAL:
                continue
            if not everything and ANONYMOUS_LABEL not in record.labels:
                continue
            if not _labels_match(record.labels, filters.get("label", [])):
                continue
            if any(_labels_match(record.labels, [want]) for want in filters.get("label!", [])):
                continue
            try:
                size = await (await self._nodes.host(record.node)).volumes.usage(record.name)
                await self._remove(record)
            except BerthError as exc:
                log.warning("volume_prune_skipped", volume=record.name, error=str(exc))
                continue
            deleted.append(record.name)
            reclaimed += max(size, 0)
        await append_event(self._redis, self._keys, "volume", "prune", "", {"reclaimed": str(reclaimed)})
        return {"VolumesDeleted": deleted, "SpaceReclaimed": reclaimed}

    async def disk_usage(self) -> list[dict[str, Any]]:
        """``system df``'s volumes: local ones without mount options, with size and users."""
        out = []
        for record in await self.store.all():
            if record.options or record.doc.get("Driver") != LOCAL:
                continue
            try:
                size = await (await self._nodes.host(record.node)).volumes.usage(record.name)
            except BerthError:
                size = -1
            out.append({**self.view(record), "UsageData": {"Size": size, "RefCount": len(record.refs)}})
        return out

    # -- containers ------------------------------------------------------------------------------------
    async def plan(self, host_config: dict[str, Any], config_volumes: dict[str, Any] | None) -> MountPlan:
        """Parse and check a create request's mounts (nothing is created yet), in moby's order:
        ``--volumes-from``, then ``-v``, then ``--mount``; the image's ``VOLUME`` paths fill what
        is left. Raises Docker's errors."""
        tmpfs = mounts_mod.validate_tmpfs(host_config.get("Tmpfs"))
        points: dict[str, MountPoint] = {}
        nodes: set[str] | None = None

        def pin(node: str) -> None:
            nonlocal nodes
            nodes = {node} if nodes is None else nodes & {node}

        sources = []
        for spec in host_config.get("VolumesFrom") or []:
            ref, mode = mounts_mod.parse_volumes_from(str(spec))
            try:
                other = await self._containers.resolve(ref)
            except NotFound as exc:
                raise InvalidArgument(exc.message) from None
            pin(other.node)
            sources.append(other.id)
            for raw in other.config.get("MountPoints") or []:
                mp = mounts_mod.from_volume_of(MountPoint.from_record(raw), mode)
                points[mp.destination] = mp
        binds: set[str] = set()
        for raw_bind in host_config.get("Binds") or []:
            mp = mounts_mod.parse_bind(str(raw_bind), str(host_config.get("VolumeDriver") or ""))
            if mp.destination in binds or mp.destination in tmpfs:
                raise mounts_mod.duplicate(mp.destination)
            binds.add(mp.destination)
            points[mp.destination] = mp
        for spec in host_config.get("Mounts") or []:
            mp = mounts_mod.parse_mount(spec)
            if mp.destination in binds:
                raise mounts_mod.duplicate(str(spec.get("Target")))
            binds.add(mp.destination)
            points[mp.destination] = mp
        for mp in points.values():
            if mp.type == "volume":
                _check_driver(mp.name, mp.driver)
                if mp.name:
                    problem = mounts_mod.validate_volume_name(mp.name)
                    if problem:
                        raise InvalidArgument(f"create {mp.name}: {problem}")
                    existing = await self.store.get(mp.name)
                    if existing is not None:
                        pin(existing.node)
                    else:
                        _validate_options(mp.name, dict(mp.driver_options or {}))
        image_volumes = []
        for path in (config_volumes or {}):
            destination = _image_volume_destination(str(path))
            if destination in points or destination in tmpfs:
                continue  # mounted over by the user or --volumes-from (moby's HasMountFor)
            image_volumes.append(destination)
        return MountPlan(points=list(points.values()), tmpfs=tmpfs, image_volumes=image_volumes, nodes=nodes,
                         volumes_from=sources)

    async def attach(self, record: ContainerRecord, plan: MountPlan, host: HostServices,
                     file_in_image: Callable[[str], Awaitable[bool]]) -> tuple[ContainerMount, ...]:
        """Create (or reference) the container's volumes on its node and record its mount points
        in ``record.config["MountPoints"]``; returns the shim's mounts. ``file_in_image(path)``
        says whether the image has a non-directory there (an image volume cannot go over it)."""
        done: list[MountPoint] = []
        try:
            for destination in plan.image_volumes:
                if await file_in_image(destination):
                    raise InvalidArgument(f"cannot mount volume over existing file, file exists {destination}")
            for mp in [*plan.points, *(MountPoint(type="volume", destination=d, copy_data=True)
                                       for d in plan.image_volumes)]:
                if mp.type == "volume":
                    volume = await self.create(mp.name, mp.driver, mp.driver_options, mp.labels, node=record.node,
                                               ref=record.id)
                    if volume.node != record.node:
                        await self.store.remove_ref(volume.name, record.id)
                        raise Conflict(f"volume {volume.name} is on another node than container {record.id}")
                    mp.name, mp.driver, mp.source = volume.name, LOCAL, str(volume.doc.get("Mountpoint", ""))
                done.append(mp)
        except BaseException:
            await self._release(record.id, done, remove_anonymous=True)
            raise
        record.config["MountPoints"] = [mp.to_record() for mp in done]
        return container_mounts(done, plan.tmpfs)

    async def release(self, record: ContainerRecord, *, remove_anonymous: bool) -> None:
        """The container is gone: drop its references; with ``remove_anonymous`` (``rm -v``,
        ``--rm``) also remove its anonymous volumes that nobody else uses."""
        points = [MountPoint.from_record(raw) for raw in record.config.get("MountPoints") or []]
        await self._release(record.id, points, remove_anonymous=remove_anonymous)

    async def _release(self, container_id: str, points: list[MountPoint], *, remove_anonymous: bool) -> None:
        for mp in points:
            if mp.type != "volume" or not mp.name:
                continue
            await self.store.remove_ref(mp.name, container_id)
            if remove_anonymous and mp.anonymous:
                record = await self.store.get(mp.name)
                if record is None:
                    continue
                try:
                    await self._remove(record)
                except Conflict:
                    pass  # another container uses it: not an error (moby ignores "in use" here)
                except BerthError as exc:
                    log.warning("volume_remove_failed", volume=mp.name, error=str(exc))


def _image_volume_destination(path: str) -> str:
    """An image's VOLUME path as a mount point: absolute, cleaned (``/a/../../b`` is ``/b``:
    climbing stops at the container's root); a relative path or ``/`` is refused (moby's runtime
    refuses them at start; here the create fails and nothing is made)."""
    for check in (mounts_mod.validate_absolute, mounts_mod.validate_not_root):
        problem = check(path)
        if problem:
            raise InvalidArgument(f'invalid mount config for type "volume": {problem}')
    return posixpath.normpath(path)


def container_mounts(points: list[MountPoint], tmpfs: dict[str, str]) -> tuple[ContainerMount, ...]:
    """The shim's mounts of a container's mount points and ``--tmpfs`` entries."""
    out = []
    for mp in points:
        if mp.type == "bind":
            out.append(ContainerMount(type="bind", destination=mp.destination, source=mp.source, readonly=not mp.rw,
                                      propagation=mp.propagation, recursive=mp.recursive,
                                      create_source=mp.create_source))
        elif mp.type == "volume":
            out.append(ContainerMount(type="volume", destination=mp.destination, source=mp.name, readonly=not mp.rw,
                                      copy_up=mp.copy_data))
        elif mp.type == "tmpfs":
            out.append(ContainerMount(type="tmpfs", destination=mp.destination, readonly=not mp.rw,
                                      data=mp.tmpfs_data))
    for destination, options in tmpfs.items():
        out.append(ContainerMount(type="tmpfs", destination=posixpath.normpath(destination), data=options))
    return tuple(out)


def _matches(pattern: str, name: str) -> bool:
    """moby's filters Match: the value is a regular expression searched in the name."""
    try:
        return re.search(pattern, name) is not None
    except re.error:
        return pattern in name


def _labels_match(labels: dict[str, str], wanted: list[str]) -> bool:
    for want in wanted:
        key, sep, value = want.partition("=")
        if key not in labels or (sep and labels[key] != value):
            return False
    return True


def _go_bool(value: str) -> bool | None:
    if value in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if value in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    return None
