"""What the container routes need, composed from the Redis stores, the event bus and the shim and
snapshotter of the node each container lives on.

Events: the API server appends the ones it causes (create, destroy, kill, stop, restart, attach,
resize); the shim appends start, die and oom when it observes them.
"""

from __future__ import annotations

import asyncio
import secrets
import signal as signal_module
import time
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

import redis.asyncio as aioredis
import structlog

from apiserver.containers import create as create_mod
from apiserver.containers import prune as prune_mod
from apiserver.containers import runtime_options, views
from apiserver.containers.inspect_body import InspectBodies
from apiserver.containers.names import generate_name
from apiserver.containers.store import CachedRecord, ContainerRecord, ContainerStore
from apiserver.events import Event, EventBus, until_read
from apiserver.httputil import Filters, dumps
from apiserver.images.replicate import ImageReplicator
from apiserver.images.store import ImageStore
from apiserver.networks.backend import NetworkBackend
from apiserver.nodes import HostServices, NodeDirectory
from apiserver.volumes.backend import VolumeBackend
from common.events import append_event
from common.keys import Keys, text
from protos.errors import (
    BerthError,
    Conflict,
    ContainerNotFound,
    ContainerNotRunning,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NameConflict,
    NotFound,
    NotModified,
)
from shim.api import AttachInput, AttachOptions, ContainerState, LogBatch, LogEntry, LogsOptions, Output, Runtime
from shim.network.api import Networking

log = structlog.get_logger()

_AUTOREMOVE_BLOCK_S = 5  # a BLPOP's block: cancellation and reconnects are noticed this often

LIST_FILTERS = ("id", "name", "label", "status", "exited", "ancestor", "before", "since", "is-task",
                "health", "network", "volume", "publish", "expose", "isolation")
WAIT_CONDITIONS = ("not-running", "next-exit", "removed")


@dataclass(frozen=True, slots=True)
class WaitResult:
    status_code: int
    error: str = ""


class ContainerBackend:
    def __init__(self, *, redis: aioredis.Redis, keys: Keys, store: ContainerStore, images: ImageStore,
                 nodes: NodeDirectory, bus: EventBus, networks: NetworkBackend | None = None,
                 volumes: VolumeBackend | None = None) -> None:
        self._volumes = volumes
        self._redis = redis
        self._keys = keys
        self.store = store
        self._images = images
        self._nodes = nodes
        self._replicator = ImageReplicator(images, nodes)
        self._bus = bus
        self._networks = networks
        self._inspect_bodies = InspectBodies()

    # -- helpers -----------------------------------------------------------------------------------
    async def _host(self, record: ContainerRecord) -> HostServices:
        return await self._nodes.host(record.node)

    async def _event(self, record: ContainerRecord, action: str, **extra: str) -> None:
        attrs = {"image": record.config["Config"].get("Image", ""), "name": record.name,
                 **(record.config["Config"].get("Labels") or {}), **extra}
        await append_event(self._redis, self._keys, "container", action, record.id, attrs)

    # -- create / remove ---------------------------------------------------------------------------
    async def create(self, name: str | None, body: Any, platform: str = "") -> tuple[str, list[str]]:
        if not isinstance(body, dict):
            raise InvalidArgument("invalid JSON: expected an object")
        if platform and not platform.startswith("linux"):
            raise InvalidArgument(f"image operating system {platform.split('/')[0]!r} cannot be used on this platform")
        image_ref = body.get("Image") or ""
        if not image_ref:
            raise InvalidArgument("no image specified")
        image = await self._images.resolve(image_ref)
        plan = create_mod.plan(body, image, image_ref)
        container_id = secrets.token_hex(32)
        # Mounts are checked before anything exists (Docker's errors, nothing changed).
        mount_plan = await self._volumes.plan(plan.host_config, plan.config.get("Volumes")) \
            if self._volumes is not None else None
        if not plan.config["Hostname"]:
            plan.config["Hostname"] = container_id[:12]
        if name:
            name = create_mod.validate_name(name)
            await self.store.reserve_name(name, container_id)
        else:
            name = await self._unique_name(container_id)
        created_ns = time.time_ns()
        try:
            # Spread: the node with the fewest containers, the image's holders first among equals;
            # a node without the image gets a copy from one that has it.
            candidates = None
            if mount_plan is not None and mount_plan.nodes is not None:  # volumes pin it to their node
                candidates = mount_plan.nodes

            async def load() -> Counter[str]:
                return Counter(c.node for c in await self.store.cached())

            node = await self._nodes.place(candidates=candidates, load=load, prefer=image.nodes)
            await self._replicator.ensure(image, node.id)
            config: dict[str, Any] = {
                "Id": container_id,
                "Created": views.rfc3339_nano(created_ns),
                "CreatedNs": created_ns,
                "Path": plan.path,
                "Args": plan.args,
                "Name": "/" + name,
                "Image": image.id,
                "Config": plan.config,
                "HostConfig": plan.host_config,
                "Node": {"ID": node.id, "Name": node.hostname},
            }
            record = ContainerRecord(id=container_id, config=config, state={}, node=node.id)
            await self.store.put(record, created_ns)
        except BaseException:
            await self.store.release_name(name, container_id)
            raise
        try:
            networking = Networking()
            if self._networks is not None:  # endpoints (IPAM) are allocated once the record exists
                networking = await self._networks.attach_container(record, body)
                await self.store.save_config(record)
            host = await self._nodes.host(node.id)
            mounts = await host.snapshots.prepare(container_id, image.chain_id,
                                                  {"berth.container": container_id})
            try:
                spec = create_mod.container_spec(container_id, config, mounts)
                if self._volumes is not None and mount_plan is not None:
                    user_mounts = await self._volumes.attach(record, mount_plan, host,
                                                             self._file_in_image(host, container_id))
                    spec = replace(spec, mounts=user_mounts)
                    await self.store.save_config(record)
                await host.runtime.create(replace(spec, networking=networking))
                if any(m.copy_up for m in spec.mounts):
                    try:  # the image's content into the new volumes, as moby's populateVolumes
                        await host.files.populate(container_id)
                    except BaseException:
                        await _ignore_missing(host.runtime.delete(container_id, force=True))
                        raise
            except BaseException:
                await _ignore_missing(host.snapshots.remove(container_id))
                raise
        except BaseException:
            if self._volumes is not None:
                await self._volumes.release(record, remove_anonymous=True)
            if self._networks is not None:
                await self._networks.detach_container(record)
            await self.store.delete(record)
            raise
        await self._event(record, "create")
        if self._networks is not None:
            await self._networks.connected(record)
        return container_id, plan.warnings

    @staticmethod
    def _file_in_image(host: HostServices, container_id: str) -> Callable[[str], Awaitable[bool]]:
        """Whether the container's rootfs has a non-directory at a path (symlinks followed)."""
        async def check(path: str) -> bool:
            try:
                st = await host.images.stat_path(container_id, path)
                if st.link_target:
                    st = await host.images.stat_path(container_id, st.link_target)
            except NotFound:
                return False
            return not st.mode & (1 << 31)  # Go's os.ModeDir

        return check

    async def _unique_name(self, container_id: str) -> str:
        for attempt in range(10):
            candidate = generate_name(retry=attempt)
            try:
                await self.store.reserve_name(candidate, container_id)
                return candidate
            except Conflict:
                continue
        raise Conflict("could not generate a unique container name")

    async def remove(self, ref: str, *, force: bool = False, volumes: bool = False) -> None:
        record = await self.store.resolve(ref)
        if record.running and not force:
            if record.status == "paused":
                raise Conflict(f"cannot remove container \"/{record.name}\": container is paused and "
                               "must be unpaused first")
            if record.status == "restarting":
                raise FailedPrecondition(
                    f'cannot remove container "/{record.name}": container is restarting: stop the container '
                    "before removing or force remove")
            raise FailedPrecondition(
                f'cannot remove container "/{record.name}": container is running: stop the container '
                "before removing or force remove")
        await self._remove_record(record, force=force, volumes=volumes)

    async def _remove_record(self, record: ContainerRecord, *, force: bool, volumes: bool = False) -> None:
        host = await self._host(record)
        await _ignore_missing(host.runtime.delete(record.id, force=force))
        # With the container gone, its filesystem, volumes and addresses are released side by side.
        releases = [_ignore_missing(host.snapshots.remove(record.id))]
        if self._volumes is not None:  # `rm -v` and --rm also remove the anonymous volumes
            releases.append(self._volumes.release(record, remove_anonymous=volumes))
        if self._networks is not None:
            releases.append(self._networks.detach_container(record))
        failures = [r for r in await asyncio.gather(*releases, return_exceptions=True) if isinstance(r, BaseException)]
        if failures:
            raise failures[0]
        await self.store.delete(record)
        await self._event(record, "destroy")

    # -- read --------------------------------------------------------------------------------------
    async def inspect(self, ref: str, *, size: bool = False) -> dict[str, Any]:
        record, exec_ids = await self.store.resolve_with_execs(ref)
        size_rw = size_root = None
        if size:
            size_rw, size_root = await self._sizes(record)
        return views.inspect_view(record, size_rw=size_rw, size_rootfs=size_root, exec_ids=exec_ids)

    async def inspect_json(self, ref: str, *, size: bool = False) -> bytes:
        """:meth:`inspect` as the response body; an unchanged record's is not built again
        (:mod:`apiserver.containers.inspect_body`)."""
        if size:
            return dumps(await self.inspect(ref, size=True)) + b"\n"
        id, raw, exec_ids = await self.store.resolve_raw(ref)
        return self._inspect_bodies.body(ref, id, raw, exec_ids)

    async def _sizes(self, record: ContainerRecord) -> tuple[int, int]:
        host = await self._host(record)
        rw = (await host.snapshots.usage(record.id)).size
        try:
            image = await self._images.get(record.config["Image"])
            return rw, rw + image.size
        except NotFound:
            return rw, rw

    async def summaries(self, *, all: bool, limit: int, size: bool, filters: Filters) -> list[dict[str, Any]]:
        listed = await self._listed(all=all, limit=limit, filters=filters)
        now = time.time_ns()
        out = []
        for cached in listed:
            record = cached.record()
            item = views.summary_view(record, now)
            if size:
                item["SizeRw"], item["SizeRootFs"] = await self._sizes(record)
            out.append(item)
        return out

    async def summaries_json(self, *, all: bool, limit: int, size: bool, filters: Filters) -> bytes:
        """:meth:`summaries` as the JSON body of the response, built from each record's summary
        encoded once per version of the record (see :func:`views.summary_json`)."""
        if size:
            return dumps(await self.summaries(all=all, limit=limit, size=size, filters=filters)) + b"\n"
        listed = await self._listed(all=all, limit=limit, filters=filters)
        return views.summaries_body([views.summary_json(c) for c in listed], time.time_ns())

    async def _listed(self, *, all: bool, limit: int, filters: Filters) -> list[CachedRecord]:
        listed = await self.store.cached()
        if not all and not filters.get("status") and not filters.get("exited") and limit <= 0:
            listed = [c for c in listed if views.summary_json(c).running]
        if filters:
            records = [c.record() for c in listed]
            kept = {r.id for r in await self._filter(records, filters, all=all or limit > 0)}
            listed = [c for c in listed if c.id in kept]
        if limit > 0:
            listed = listed[:limit]
        return listed

    async def _filter(self, records: list[ContainerRecord], filters: Filters, *, all: bool) -> list[ContainerRecord]:
        if not filters:
            return records
        for value in filters.get("health", []):
            if value not in ("starting", "healthy", "unhealthy", "none"):
                raise InvalidArgument(f"Unrecognised filter value for health: {value}")
        if "status" in filters:
            allowed = ("created", "restarting", "running", "removing", "paused", "exited", "dead")
            for s in filters["status"]:
                if s not in allowed:
                    raise InvalidArgument(f"invalid filter 'status={s}'")
        for key in ("is-task",):
            for v in filters.get(key, []):
                if v not in ("true", "false", "1", "0"):
                    raise InvalidArgument(f"invalid filter '{key}={v}'")
        ancestors: set[str] = set()
        for ref in filters.get("ancestor", []):
            found = await self._images.find(ref)
            if found is not None:
                ancestors.add(found.id)
        before_ns = since_ns = None
        if filters.get("before"):
            before_ns = int((await self.store.resolve(filters["before"][0])).config.get("CreatedNs", 0))
        if filters.get("since"):
            since_ns = int((await self.store.resolve(filters["since"][0])).config.get("CreatedNs", 0))

        def keep(r: ContainerRecord) -> bool:
            if not all and "status" not in filters and "exited" not in filters and not r.running:
                return False
            if "id" in filters and not any(r.id.startswith(v) for v in filters["id"]):
                return False
            if "name" in filters and not any(_name_matches(r.name, v) for v in filters["name"]):
                return False
            if "status" in filters and views.docker_status(r) not in filters["status"]:
                return False
            if "exited" in filters:
                if views.docker_status(r) != "exited" or str(r.state.get("exit_code", 0)) not in filters["exited"]:
                    return False
            labels = r.config["Config"].get("Labels") or {}
            for want in filters.get("label", []):
                key, sep, value = want.partition("=")
                if key not in labels or (sep and labels[key] != value):
                    return False
            if "ancestor" in filters and r.config["Image"] not in ancestors:
                return False
            created = int(r.config.get("CreatedNs", 0))
            if before_ns is not None and created >= before_ns:
                return False
            if since_ns is not None and created <= since_ns:
                return False
            if "health" in filters and _health_status(r) not in filters["health"]:
                return False
            if "volume" in filters and not any(  # a volume's name or a mount's destination
                    m.get("Name") in filters["volume"] or m.get("Destination") in filters["volume"]
                    for m in r.config.get("MountPoints") or []):
                return False
            if any(v in ("true", "1") for v in filters.get("is-task", [])):
                return False
            return True

        return [r for r in records if keep(r)]

    # -- lifecycle ---------------------------------------------------------------------------------
    async def start(self, ref: str) -> None:
        record = await self.store.resolve(ref)
        if record.status == "paused":
            raise Conflict("cannot start a paused container, try unpause instead")
        host = await self._host(record)
        try:
            await host.runtime.start(record.id)
        except BerthError:
            # moby removes an AutoRemove container whose start failed; `docker run --rm` waits
            # for that removal before it reports the error.
            if record.config["HostConfig"].get("AutoRemove") and await self.store.claim_autoremove(record.id):
                try:
                    await self._remove_record(await self.store.get(record.id), force=True, volumes=True)
                except BerthError as exc:
                    log.warning("auto_remove_failed", container=record.id, error=str(exc))
            raise

    async def stop(self, ref: str, *, signal: str | None = None, timeout: int | None = None) -> None:
        record = await self.store.resolve(ref)
        if not record.running:
            raise NotModified("container already stopped")
        sig, wait = self._stop_params(record, signal, timeout)
        await self._event(record, "kill", signal=str(sig))
        host = await self._host(record)
        await host.runtime.stop(record.id, sig, float(wait))
        await self._event(record, "stop")

    def _stop_params(self, record: ContainerRecord, signal: str | None, timeout: int | None) -> tuple[int, int]:
        sig = create_mod.parse_signal(signal or record.config["Config"].get("StopSignal"))
        if timeout is None:
            timeout = int(record.config["Config"].get("StopTimeout", create_mod.DEFAULT_STOP_TIMEOUT))
        return sig, timeout

    async def restart(self, ref: str, *, signal: str | None = None, timeout: int | None = None) -> None:
        record = await self.store.resolve(ref)
        host = await self._host(record)
        if record.running:
            sig, wait = self._stop_params(record, signal, timeout)
            await self._event(record, "kill", signal=str(sig))
            await _ignore_not_modified(host.runtime.stop(record.id, sig, float(wait)))
            await self._event(record, "stop")
        await host.runtime.start(record.id)
        await self._event(record, "restart")

    async def kill(self, ref: str, signal: str | None) -> None:
        record = await self.store.resolve(ref)
        sig = create_mod.parse_signal(signal, default=signal_module.SIGKILL)
        if not record.running:
            raise ContainerNotRunning(f"cannot kill container: {record.id}: container {record.id} is not running")
        host = await self._host(record)
        # moby's killWithSignal: a user's kill keeps an unless-stopped container down, and a kill with
        # the stop signal (or SIGKILL) ends restarts.
        stop_signal = record.config["Config"].get("StopSignal")
        final = sig == signal_module.SIGKILL or not stop_signal or create_mod.parse_signal(stop_signal) == sig
        try:
            await host.runtime.kill(record.id, sig, manual=True, cancel_restart=final)
        except ContainerNotRunning:
            raise ContainerNotRunning(
                f"cannot kill container: {record.id}: container {record.id} is not running") from None
        await self._event(record, "kill", signal=str(sig))

    async def wait(self, ref: str, condition: str) -> AsyncGenerator[WaitResult, None]:
        """An iterator whose first step registers the waiter (so the route can send headers right
        after) and whose second yields the result."""
        if condition == "":
            condition = "not-running"
        if condition not in WAIT_CONDITIONS:
            raise InvalidArgument(f'invalid condition: "{condition}"')
        record = await self.store.resolve(ref)
        return self._wait(record, condition)

    async def _wait(self, record: ContainerRecord, condition: str) -> AsyncGenerator[WaitResult, None]:
        wanted = {"destroy"} if condition == "removed" else {"die"}
        track = {"die", "destroy", "stop"}  # stop: a restart policy's pending restart cancelled

        def mine(e: Event) -> bool:
            return e.type == "container" and e.actor_id == record.id and e.action in track

        async with self._bus.subscribe(mine) as sub:
            current = await self._current(record.id)
            yield WaitResult(-1)  # registered: the caller may flush headers now
            exit_code = int(current.state.get("exit_code", 0)) if current else 0
            if current is None:
                if condition == "removed":
                    yield WaitResult(exit_code)
                    return
                raise ContainerNotFound(f"No such container: {record.id}")
            if condition == "not-running" and not current.running:
                yield WaitResult(exit_code)
                return
            if condition == "not-running":
                wanted = set()  # a die may be followed by a restart: decided on the record below
            if condition == "removed" and not current.running and not current.config["HostConfig"].get("AutoRemove"):
                # Nothing will remove it by itself: wait for an explicit `docker rm`.
                pass
            while True:
                event = await sub.get()
                if event.action == "die":
                    exit_code = int(event.attributes.get("exitCode", exit_code))
                if event.action in wanted:
                    yield WaitResult(exit_code)
                    return
                if condition == "not-running" and event.action in ("die", "stop"):
                    now = await self._current(record.id)
                    if now is None or not now.running:
                        yield WaitResult(int(now.state.get("exit_code", exit_code)) if now else exit_code)
                        return

    async def _current(self, id: str) -> ContainerRecord | None:
        try:
            return await self.store.get(id)
        except ContainerNotFound:
            return None

    # -- io ----------------------------------------------------------------------------------------
    async def logs(self, ref: str, options: LogsOptions) -> tuple[bool, AsyncIterator[LogEntry]]:
        record = await self.store.resolve(ref)
        host = await self._host(record)
        return bool(record.config["Config"].get("Tty")), host.runtime.logs(record.id, options)

    async def log_batches(self, ref: str, options: LogsOptions) -> tuple[bool, AsyncIterator[LogBatch]]:
        """:meth:`logs` in the shim's batches: the cheap way to send a big log."""
        record = await self.store.resolve(ref)
        host = await self._host(record)
        return bool(record.config["Config"].get("Tty")), host.runtime.log_batches(record.id, options)

    async def prepare_attach(self, ref: str) -> ContainerRecord:
        record = await self.store.resolve(ref)
        if record.status == "paused":
            raise Conflict(f"container {record.id} is paused, unpause the container before attach")
        return record

    async def attach(self, record: ContainerRecord, options: AttachOptions,
                     stdin: AsyncIterator[AttachInput]) -> AsyncIterator[Output]:
        host = await self._host(record)
        await self._event(record, "attach")
        return host.runtime.attach(record.id, options, stdin)

    async def detached(self, record: ContainerRecord) -> None:
        await self._event(record, "detach")

    async def resize(self, ref: str, height: int, width: int) -> None:
        record = await self.store.resolve(ref)
        if not record.running:
            raise ContainerNotRunning(f"cannot resize a stopped container: container {record.id} is not running")
        host = await self._host(record)
        await host.runtime.resize(record.id, height, width)
        await self._event(record, "resize", height=str(height), width=str(width))

    async def tty_of(self, ref: str) -> bool:
        record = await self.store.resolve(ref)
        return bool(record.config["Config"].get("Tty"))

    # -- background --------------------------------------------------------------------------------
    async def auto_remove_forever(self) -> None:
        """Remove ``--rm`` containers when they exit: the shim queues each such exit, one API
        server pops it. Exits from before this server started are swept first."""
        for record in await self.store.all():
            if not record.running and record.state and record.config["HostConfig"].get("AutoRemove"):
                await self._auto_remove(record.id)
        while True:
            popped: Any = await until_read(
                lambda: self._redis.blpop([self._keys.autoremove_queue], timeout=_AUTOREMOVE_BLOCK_S),
                "auto_remove_follow_failed")
            if popped:
                await self._auto_remove(text(popped[1]))

    async def _auto_remove(self, id: str) -> None:
        try:
            record = await self.store.get(id)
        except ContainerNotFound:
            return
        if not record.config["HostConfig"].get("AutoRemove") or record.running:
            return
        if not await self.store.claim_autoremove(id):
            return
        try:
            await self._remove_record(record, force=True, volumes=True)
        except (BerthError, OSError) as exc:
            log.warning("auto_remove_failed", container=id, error=str(exc))

    async def stop_node(self, node_id: str, max_timeout: int) -> None:
        """Stop every running container of ``node_id`` (daemon shutdown, as dockerd without
        live-restore), each with its own stop signal and timeout capped at ``max_timeout``."""
        records = [r for r in await self.store.all() if r.node == node_id and r.running]
        if not records:
            return
        log.info("stopping_containers", node=node_id, count=len(records))
        host = await self._nodes.host(node_id)

        async def stop_one(record: ContainerRecord) -> None:
            sig, wait = self._stop_params(record, None, None)
            try:
                await host.runtime.stop(record.id, sig, float(min(wait, max_timeout)), manual=False)
            except (NotModified, NotFound):
                pass
            except BerthError as exc:
                log.warning("shutdown_stop_failed", container=record.id, error=str(exc))

        async with asyncio.timeout(max_timeout + 5):
            await asyncio.gather(*(stop_one(r) for r in records))

    # -- pause, top, stats, rename, update, prune ---------------------------------------------------
    async def pause(self, ref: str) -> None:
        record = await self.store.resolve(ref)
        if record.status == "restarting":
            raise Conflict(f"Container {record.id} is restarting, wait until the container is running")
        if not record.running:
            raise ContainerNotRunning(f"container {record.id} is not running")
        host = await self._host(record)
        await host.runtime.pause(record.id)

    async def unpause(self, ref: str) -> None:
        record = await self.store.resolve(ref)
        if record.status != "paused":
            raise Internal(f"Container {record.id} is not paused")
        host = await self._host(record)
        await host.runtime.resume(record.id)

    async def top(self, ref: str, ps_args: str) -> dict[str, Any]:
        record = await self.store.resolve(ref)
        if record.status == "restarting":
            raise Conflict(f"Container {record.id} is restarting, wait until the container is running")
        if not record.running:
            raise ContainerNotRunning(f"container {record.id} is not running")
        host = await self._host(record)
        result = await host.runtime.top(record.id, ps_args)
        await self._event(record, "top")
        return {"Titles": list(result.titles), "Processes": [list(row) for row in result.processes]}

    async def stats_source(self, ref: str) -> tuple[ContainerRecord, Runtime]:
        record = await self.store.resolve(ref)
        return record, (await self._host(record)).runtime

    async def rename(self, ref: str, new_name: str) -> None:
        if not ref or not new_name:
            raise InvalidArgument("Neither old nor new names may be empty")
        record = await self.store.resolve(ref)
        new_name = create_mod.validate_name(new_name)
        if new_name == record.name:
            raise InvalidArgument("Renaming a container with the same name as its current name")
        old = record.name
        try:
            record = await self.store.rename(record.id, new_name)
        except NameConflict as exc:
            raise NameConflict(f"Error when allocating new name: {exc.message}") from None
        await self._event(record, "rename", oldName="/" + old)

    async def update(self, ref: str, body: Any) -> list[str]:
        record = await self.store.resolve(ref)
        host_config, warnings = runtime_options.merge_update(record.id, record.config["HostConfig"], body)
        host = await self._host(record)
        # The shim first (its errors say "Cannot update container …"): a failure changes nothing.
        await host.runtime.update(record.id, runtime_options.resources(host_config),
                                  runtime_options.restart_policy(host_config.get("RestartPolicy")))
        await self.store.update_host_config(record.id, host_config)
        await self._event(record, "update")
        return warnings

    async def prune(self, filters: Filters) -> dict[str, Any]:
        until_ns = prune_mod.until(filters)
        deleted: list[str] = []
        reclaimed = 0
        for record in await self.store.all():
            if record.running or not prune_mod.matches(record, filters, until_ns):
                continue
            try:
                size = (await (await self._host(record)).snapshots.usage(record.id)).size
            except BerthError:
                size = 0
            try:
                await self._remove_record(record, force=False)
            except BerthError as exc:
                log.warning("prune_failed", container=record.id, error=str(exc))
                continue
            deleted.append(record.id)
            reclaimed += max(size, 0)
        await append_event(self._redis, self._keys, "container", "prune", "", {"reclaimed": str(reclaimed)})
        return {"ContainersDeleted": deleted or None, "SpaceReclaimed": reclaimed}

    async def states(self, node: str) -> list[ContainerState]:
        host = await self._nodes.host(node)
        return await host.runtime.list()


def _health_status(record: ContainerRecord) -> str:
    health = record.state.get("health")
    return str(health.get("status", "none")) if isinstance(health, dict) else "none"


def _name_matches(name: str, pattern: str) -> bool:
    import re

    try:
        return re.search(pattern.lstrip("/"), name) is not None
    except re.error:
        return pattern.lstrip("/") in name


async def _ignore_missing(coro: Any) -> None:
    try:
        await coro
    except NotFound:
        pass


async def _ignore_not_modified(coro: Any) -> None:
    try:
        await coro
    except NotModified:
        pass

