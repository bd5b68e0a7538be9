"""The files of containers: ``docker diff``, ``docker export``, ``docker cp`` (``HEAD/GET/PUT
/containers/{id}/archive``) and ``docker commit``.

Where the work happens:

* a **running** (or paused) container's files are read and written by its node's shim, from a
  child of the supervisor inside the container's mount namespace (``host.files``): the copy sees
  and changes exactly what the container sees, volumes and tmpfs included;
* a **stopped** (or created) container's files by its node's snapshotter, on a private mount of
  the container's snapshot (``host.images``) — unless it has volumes or binds: then, as moby's
  ``openContainerFS``, the shim builds a private view of the rootfs with them mounted, so that a
  copy reaches them just as it would while the container runs;
* ``diff`` and ``commit`` read the container's upper layer (snapshotter), ``export`` a
  read-only mount of its snapshot, whatever the state.

Both sides resolve every path inside the container's root and decompress uploads themselves:
nothing runs inside the container, no path of it is ever followed on the host.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import io
import json
import posixpath
import tarfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

import redis.asyncio as aioredis
import structlog

from apiserver import BERTH_VERSION
from apiserver.containers.store import ContainerRecord, ContainerStore
from apiserver.containers.views import rfc3339_nano
from apiserver.images.changes import apply_changes
from apiserver.images.store import ImageRecord, ImageStore
from apiserver.nodes import HostServices, NodeDirectory
from common.events import append_event
from common.fstree import abs_path
from common.keys import Keys
from protos.errors import (
    BerthError,
    Conflict,
    ContainerNotRunning,
    InvalidArgument,
    NotFound,
)
from registry_client import reference
from shim.supervisor.child import StartError, resolve_user

log = structlog.get_logger()

# Enough of /etc/passwd and /etc/group for any real image.
_MAX_DB = 4 << 20


class PathStatLike(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def mode(self) -> int: ...
    @property
    def mtime(self) -> str: ...
    @property
    def link_target(self) -> str: ...


def stat_header(st: PathStatLike) -> str:
    """``X-Docker-Container-Path-Stat``: base64 (standard alphabet) of Go's JSON of PathStat."""
    body = {"name": st.name, "size": st.size, "mode": st.mode, "mtime": st.mtime, "linkTarget": st.link_target}
    return base64.b64encode(json.dumps(body, separators=(",", ":")).encode()).decode()


def _in_mount(destination: str, path: str) -> bool:
    """moby's linux HasResource: ``path`` is the mount point or below it."""
    rel = posixpath.relpath(path, destination)
    return rel != ".." and not rel.startswith("../")


def check_writable(record: ContainerRecord, path: str) -> None:
    """moby's checkWritablePath: a read-only volume or bind, else a read-only rootfs, refuses."""
    absolute = abs_path(path).rstrip("/") or "/"
    for mount in record.config.get("MountPoints") or []:
        if _in_mount(str(mount.get("Destination", "")), absolute):
            if mount.get("RW", True):
                return
            raise InvalidArgument("mounted volume is marked read-only")
    if record.config["HostConfig"].get("ReadonlyRootfs"):
        raise InvalidArgument("container rootfs is marked read-only")


@dataclass(frozen=True, slots=True)
class CommitOptions:
    repo: str = ""
    tag: str = ""
    comment: str = ""
    author: str = ""
    pause: bool = True
    changes: tuple[str, ...] = ()
    config: dict[str, Any] | None = None


class ContainerFilesBackend:
    def __init__(self, *, redis: aioredis.Redis, keys: Keys, containers: ContainerStore, images: ImageStore,
                 nodes: NodeDirectory) -> None:
        self._redis = redis
        self._keys = keys
        self._containers = containers
        self._images = images
        self._nodes = nodes

    async def _event(self, record: ContainerRecord, action: str, **extra: str) -> None:
        attrs = {"image": record.config["Config"].get("Image", ""), "name": record.name,
                 **(record.config["Config"].get("Labels") or {}), **extra}
        await append_event(self._redis, self._keys, "container", action, record.id, attrs)

    async def _resolve(self, ref: str) -> tuple[ContainerRecord, HostServices]:
        record = await self._containers.resolve(ref)
        return record, await self._nodes.host(record.node)

    @staticmethod
    def _live(record: ContainerRecord) -> bool:
        """Whether the shim does the work: the container runs (its own mount namespace), or it has
        volumes or binds (a private view with them). ``ContainerNotRunning`` from the shim sends
        the work to the snapshotter."""
        return record.status in ("running", "paused") or any(
            m.get("Type") != "tmpfs" for m in record.config.get("MountPoints") or [])

    @staticmethod
    def _not_found(exc: NotFound, path: str, ref: str) -> NotFound:
        if "no such file or directory" in exc.message:
            return NotFound(f"Could not find the file {path} in container {ref}")
        return exc

    # -- diff, export ----------------------------------------------------------------------------------
    async def changes(self, ref: str) -> list[dict[str, Any]] | None:
        record, host = await self._resolve(ref)
        changes = await host.snapshots.changes(record.id)
        # moby answers a nil slice when nothing changed: JSON null.
        return [{"Path": c.path, "Kind": int(c.kind)} for c in changes] or None

    async def export(self, ref: str) -> AsyncIterator[bytes]:
        record, host = await self._resolve(ref)
        stream = host.images.read_tar(record.id, "/")
        first = await anext(aiter(stream), b"")  # mount errors surface before the response starts
        await self._event(record, "export")
        return _prepend(first, stream)

    # -- archive ---------------------------------------------------------------------------------------
    async def stat(self, ref: str, path: str) -> PathStatLike:
        _require_path(path)
        record, host = await self._resolve(ref)
        try:
            if self._live(record):
                try:
                    return await host.files.stat_path(record.id, path)
                except ContainerNotRunning:
                    pass  # it stopped meanwhile: its snapshot has the files
            return await host.images.stat_path(record.id, path)
        except NotFound as exc:
            raise self._not_found(exc, path, ref) from None

    async def get(self, ref: str, path: str) -> tuple[PathStatLike, AsyncIterator[bytes]]:
        _require_path(path)
        record, host = await self._resolve(ref)
        try:
            if self._live(record):
                try:
                    st, data = await host.files.read_archive(record.id, path)
                    await self._event(record, "archive-path")
                    return st, data
                except ContainerNotRunning:
                    pass
            st_stopped = await host.images.stat_path(record.id, path)
            stream = host.images.read_tar(record.id, path)
            first = await anext(aiter(stream), b"")
        except NotFound as exc:
            raise self._not_found(exc, path, ref) from None
        await self._event(record, "archive-path")
        return st_stopped, _prepend(first, stream)

    async def put(self, ref: str, path: str, chunks: AsyncIterator[bytes], *, copy_uid_gid: bool,
                  no_overwrite_dir_non_dir: bool) -> None:
        _require_path(path)
        record, host = await self._resolve(ref)
        check_writable(record, path)
        owner = await self._owner(record, host) if copy_uid_gid else None
        try:
            if self._live(record):
                try:
                    await host.files.write_archive(record.id, path, chunks,
                                                   no_overwrite_dir_non_dir=no_overwrite_dir_non_dir, owner=owner)
                    await self._event(record, "extract-to-dir")
                    return
                except ContainerNotRunning:
                    pass
            await host.images.apply_tar(record.id, chunks, path, no_overwrite_dir_non_dir=no_overwrite_dir_non_dir,
                                        owner=owner)
        except NotFound as exc:
            raise self._not_found(exc, path, ref) from None
        await self._event(record, "extract-to-dir")

    async def _read_file(self, record: ContainerRecord, host: HostServices, path: str) -> bytes | None:
        """A small file of the container (None if absent), through the same path as a copy."""
        try:
            if self._live(record):
                try:
                    _, stream = await host.files.read_archive(record.id, path)
                except ContainerNotRunning:
                    stream = host.images.read_tar(record.id, path)
            else:
                stream = host.images.read_tar(record.id, path)
            data = b""
            async for chunk in stream:
                data += chunk
                if len(data) > _MAX_DB + 64 * 1024:
                    break
        except NotFound:
            return None
        with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as tar:
            for member in tar:
                if member.isreg():
                    src = tar.extractfile(member)
                    return src.read(_MAX_DB) if src is not None else b""
        return None

    async def _owner(self, record: ContainerRecord, host: HostServices) -> tuple[int, int] | None:
        """moby's getUIDGID for ``docker cp -a``: the container's Config.User, looked up in the
        container's own /etc/passwd and /etc/group (parsed here; no name service anywhere)."""
        user = str(record.config["Config"].get("User") or "")
        if not user:
            return None
        passwd = _rows(await self._read_file(record, host, "/etc/passwd"))
        group = _rows(await self._read_file(record, host, "/etc/group"))
        name, _, group_name = user.partition(":")
        try:
            uid, gid, _, _ = resolve_user(name, passwd, group)
        except StartError:
            raise InvalidArgument(f'failed to look up user "{name}" in container: no matching entries in passwd '
                                  "file") from None
        if group_name:
            if group_name.isdigit():
                gid = int(group_name)
            else:
                found = [int(r[2]) for r in group if len(r) >= 3 and r[0] == group_name and r[2].isdigit()]
                if not found:
                    raise InvalidArgument(f'failed to look up group "{group_name}" in container: no matching '
                                          "entries in group file")
                gid = found[0]
        return uid, gid

    # -- commit ----------------------------------------------------------------------------------------
    async def commit(self, ref: str, options: CommitOptions) -> str:
        """``POST /commit``: a new image of the container's image plus its upper layer, with the
        container's config (or the one given) and the ``--change`` lines applied."""
        record, host = await self._resolve(ref)
        if record.status == "dead":
            raise Conflict(f"You cannot commit container {record.id} which is Dead")
        target = _commit_reference(options.repo, options.tag)
        container_config: dict[str, Any] = copy.deepcopy(record.config["Config"])
        base = copy.deepcopy(options.config) if options.config else copy.deepcopy(container_config)
        new_config = _merge(apply_changes(base, list(options.changes)), container_config)
        parent = await self._images.get(record.config["Image"])
        paused_here = False
        if options.pause and record.status == "running":
            await host.runtime.pause(record.id)
            paused_here = True
        try:
            result = await host.images.commit_layer(record.id)
        finally:
            if paused_here:
                try:
                    await host.runtime.resume(record.id)
                except BerthError as exc:
                    log.warning("commit_unpause_failed", container=record.id, error=str(exc))
        doc = _image_config(parent, record, new_config, container_config, options,
                            diff_id=result.layer.diff_id if result.layer else "")
        raw = json.dumps(doc, separators=(",", ":")).encode()
        image_id = await _store_config(host, raw)
        layers = list(parent.layers)
        size = parent.size
        if result.layer is not None:
            layers.append({"digest": result.layer.digest, "diff_id": result.layer.diff_id,
                           "media_type": result.layer.media_type, "size": result.layer.size})
            size += (await host.snapshots.usage(result.chain_id)).size
        image = ImageRecord(id=image_id, config=doc, layers=layers, chain_id=result.chain_id, size=size,
                            raw_config=raw, parent=parent.id)
        await self._images.add(image, record.node, time.time_ns())
        image_ref = ""
        if target is not None:
            await self._images.tag(target.canonical, image_id)
            image_ref = target.familiar
        await self._event(record, "commit", comment=options.comment, imageID=image_id, imageRef=image_ref)
        log.info("container_committed", container=record.id, image=image_id, layer=bool(result.layer))
        return image_id


def _require_path(path: str) -> None:
    if not path:
        raise InvalidArgument("bad parameter: path cannot be empty")


async def _prepend(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    try:
        if first:
            yield first
        async for chunk in rest:
            yield chunk
    finally:
        closer = getattr(rest, "aclose", None)
        if closer is not None:
            await closer()


def _rows(data: bytes | None) -> list[list[str]]:
    if not data:
        return []
    rows = []
    for line in data.decode("utf-8", "replace").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            rows.append(line.split(":"))
    return rows


def _commit_reference(repo: str, tag: str) -> reference.Reference | None:
    """moby's RepoTagReference: no repo, no tag; a digest is refused; ``latest`` by default."""
    if not repo:
        return None
    parsed = reference.parse(repo)
    if parsed.digest:
        raise InvalidArgument("cannot import digest reference")
    if tag:
        parsed = reference.parse(f"{parsed.repository}:{tag}")
    return parsed.with_default_tag()


def _merge(user: dict[str, Any], image: dict[str, Any]) -> dict[str, Any]:
    """moby's commit ``merge``: the new config, completed from the container's where empty."""
    if not user.get("User"):
        user["User"] = image.get("User") or ""
    if not user.get("ExposedPorts"):
        user["ExposedPorts"] = image.get("ExposedPorts")
    elif image.get("ExposedPorts"):
        for port in image["ExposedPorts"]:
            user["ExposedPorts"].setdefault(port, {})
    if not user.get("Env"):
        user["Env"] = image.get("Env")
    else:
        keys = {e.split("=", 1)[0] for e in user["Env"]}
        user["Env"] = [*user["Env"], *(e for e in image.get("Env") or [] if e.split("=", 1)[0] not in keys)]
    labels = dict(user.get("Labels") or {})
    for key, value in (image.get("Labels") or {}).items():
        labels.setdefault(key, value)
    user["Labels"] = labels
    if not user.get("Entrypoint"):
        if not user.get("Cmd"):
            user["Cmd"] = image.get("Cmd")
        if user.get("Entrypoint") is None:
            user["Entrypoint"] = image.get("Entrypoint")
    if image.get("Healthcheck"):
        if not user.get("Healthcheck"):
            user["Healthcheck"] = image["Healthcheck"]
        else:
            for key in ("Test", "Interval", "Timeout", "StartPeriod", "StartInterval", "Retries"):
                if not user["Healthcheck"].get(key):
                    user["Healthcheck"][key] = image["Healthcheck"].get(key)
    if not user.get("WorkingDir"):
        user["WorkingDir"] = image.get("WorkingDir") or ""
    if not user.get("Volumes"):
        user["Volumes"] = image.get("Volumes")
    else:
        user["Volumes"] = {**user["Volumes"], **(image.get("Volumes") or {})}
    if not user.get("StopSignal") and image.get("StopSignal"):
        user["StopSignal"] = image["StopSignal"]
    return user


def _image_config(parent: ImageRecord, record: ContainerRecord, config: dict[str, Any],
                  container_config: dict[str, Any], options: CommitOptions, *, diff_id: str) -> dict[str, Any]:
    """moby's NewChildImage: the parent's rootfs and history plus this layer."""
    base = parent.config
    now = rfc3339_nano(time.time_ns())
    history_entry: dict[str, Any] = {"created": now}
    if options.author:
        history_entry["author"] = options.author
    created_by = " ".join(container_config.get("Cmd") or [])
    if created_by:
        history_entry["created_by"] = created_by
    if options.comment:
        history_entry["comment"] = options.comment
    if not diff_id:
        history_entry["empty_layer"] = True
    diff_ids = list((base.get("rootfs") or {}).get("diff_ids") or [])
    if diff_id:
        diff_ids.append(diff_id)
    doc: dict[str, Any] = {
        "architecture": base.get("architecture") or "amd64",
        **({"variant": base["variant"]} if base.get("variant") else {}),
        "os": base.get("os") or "linux",
        "config": config,
        "container": record.id,
        "container_config": container_config,
        "created": now,
        "docker_version": BERTH_VERSION,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [*(base.get("history") or []), history_entry],
    }
    if options.author:
        doc["author"] = options.author
    if options.comment:
        doc["comment"] = options.comment
    return doc


async def _store_config(host: HostServices, raw: bytes) -> str:
    image_id = "sha256:" + hashlib.sha256(raw).hexdigest()

    async def body() -> AsyncIterator[bytes]:
        yield raw

    await host.content.write(body(), expected=image_id, size=len(raw))
    return image_id
