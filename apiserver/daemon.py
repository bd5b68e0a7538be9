"""berthd: wire config → embedded services → stores and backends → listeners, then shut down in
reverse order on SIGTERM/SIGINT.

Embedded mode (no ``--redis-url``) runs and supervises its own redis-server, shim and
snapshotter, like dockerd runs containerd. Shutdown stops the API first, then the containers of
the embedded node (each with its stop timeout, within ``--shutdown-timeout``), then the shim,
the snapshotter and Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis
import structlog

from apiserver.app import build_app
from apiserver.build.engine import BuildCache, Builder
from apiserver.config import ConfigError, DaemonConfig
from apiserver.containers.archive import ContainerFilesBackend
from apiserver.containers.backend import ContainerBackend
from apiserver.containers.store import ContainerStore
from apiserver.events import EventBus
from apiserver.exec.backend import ExecBackend
from apiserver.hijack import EngineRunner
from apiserver.images.backend import ImageBackend
from apiserver.images.distribution import DistributionBackend, RegistrySettings
from apiserver.images.store import ImageStore
from apiserver.listen import start_sites, validate_listeners
from apiserver.networks.backend import NetworkBackend, NetworkSettings
from apiserver.networks.ipam import DEFAULT_POOLS, Pool, host_networks
from apiserver.networks.store import NetworkStore
from apiserver.nodes import Connector, NodeDirectory
from apiserver.processes import ManagedProcess
from apiserver.remote import node_connector
from apiserver.routers import build as build_router
from apiserver.routers import container_files as container_files_router
from apiserver.routers import containers as containers_router
from apiserver.routers import exec as exec_router
from apiserver.routers import images as images_router
from apiserver.routers import networks as networks_router
from apiserver.routers import runtime as runtime_router
from apiserver.routers import system as system_router
from apiserver.routers import volumes as volumes_router
from apiserver.system import SystemBackend
from apiserver.volumes.backend import VolumeBackend
from apiserver.volumes.store import VolumeStore
from common import fastredis, redis_server
from common.keys import Keys
from common.nodes import load_or_create_node_id
from protos.errors import Unavailable
from protos.rpc import insecure_channel
from registry_client.hosts import RegistryTLS, insecure_matcher
from snapshotter.api import RegistryAuth

log = structlog.get_logger()


@dataclass(slots=True)
class Embedded:
    redis: ManagedProcess
    shim: ManagedProcess
    snapshotter: ManagedProcess
    node_id: str
    redis_url: str


def _write_pidfile(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        old = int(path.read_text().strip())
    except (OSError, ValueError):
        old = 0
    if old and old != os.getpid() and os.path.exists(f"/proc/{old}"):
        try:
            with open(f"/proc/{old}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            cmd = b""
        if b"berthd" in cmd or b"apiserver" in cmd:
            raise ConfigError(f"pid file found, ensure berthd is not running or delete {path}")
    path.write_text(f"{os.getpid()}\n")


async def _grpc_ready(address: str) -> None:
    channel = insecure_channel(address)
    try:
        async with asyncio.timeout(1.0):
            await channel.channel_ready()
    finally:
        await channel.close()


def _embedded(cfg: DaemonConfig) -> Embedded:
    node_id = cfg.node_id or load_or_create_node_id(cfg.data_root)
    run = cfg.exec_root
    logs = cfg.data_root / "logs"
    logs.mkdir(parents=True, exist_ok=True, mode=0o700)
    redis_sock = run / "redis.sock"
    redis_cfg = redis_server.RedisConfig(dir=cfg.data_root / "redis", socket=redis_sock)
    redis_conf = redis_server.write_config(redis_cfg)
    redis_url = redis_server.redis_url(redis_sock)

    async def redis_ready() -> None:
        client = aioredis.Redis(unix_socket_path=str(redis_sock))
        try:
            if not await client.ping():
                raise ConnectionError("redis not ready")
        finally:
            await client.aclose()

    common = ["--redis-url", redis_url, "--redis-namespace", cfg.redis_namespace, "--node-id", node_id,
              "--log-level", cfg.log_level]
    shim_sock = str(run / "shim.sock")
    snap_sock = str(run / "snapshotter.sock")
    shim = ManagedProcess(
        "shim",
        [sys.executable, "-m", "shim", "--root", str(cfg.data_root / "shim"), "--exec-root", str(run / "shim"),
         "--address", shim_sock, "--cgroup-parent", cfg.cgroup_parent, "--network-table", cfg.nft_table,
         "--veth-prefix", cfg.veth_prefix, "--resolv-conf", str(cfg.resolv_conf), *common],
        run / "shim.pid", lambda: _grpc_ready(shim_sock), log_file=logs / "shim.log")
    # The snapshotter shares berthd's defaults; pass only what the operator set.
    registry_flags = ["--registry-certs-dir", str(cfg.registry_certs_dir)] if cfg.registry_certs_dir.exists() else []
    for item in cfg.insecure_registries:
        registry_flags += ["--insecure-registry", item]
    snapshotter = ManagedProcess(
        "snapshotter",
        [sys.executable, "-m", "snapshotter", "--root", str(cfg.data_root / "snapshotter"),
         "--address", snap_sock, *registry_flags, *common],
        run / "snapshotter.pid", lambda: _grpc_ready(snap_sock), log_file=logs / "snapshotter.log")
    redis = ManagedProcess("redis", ["redis-server", str(redis_conf)], run / "redis.pid", redis_ready,
                           log_file=logs / "redis.log")
    return Embedded(redis=redis, shim=shim, snapshotter=snapshotter, node_id=node_id, redis_url=redis_url)


async def _wait_registered(directory: NodeDirectory, node_id: str, timeout: float = 30.0) -> None:
    """The shim and snapshotter answer gRPC slightly before their node record names them."""
    async with asyncio.timeout(timeout):
        while True:
            try:
                record = await directory.record(node_id)
                if record.shim_address and record.snapshotter_address:
                    return
            except Unavailable:
                pass
            await asyncio.sleep(0.05)


class Daemon:
    def __init__(self, cfg: DaemonConfig) -> None:
        self.cfg = cfg
        self._stop = asyncio.Event()

    async def run(self) -> None:
        cfg = self.cfg
        validate_listeners(cfg)  # refuse bad -H/TLS settings before starting anything
        connect = node_connector(cfg.node_tls)  # and unreadable node TLS files
        cfg.data_root.mkdir(parents=True, exist_ok=True, mode=0o711)
        cfg.exec_root.mkdir(parents=True, exist_ok=True, mode=0o700)
        _write_pidfile(cfg.pidfile)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        embedded = _embedded(cfg) if cfg.embedded else None
        try:
            if embedded is not None:
                await embedded.redis.ensure()
                await asyncio.gather(embedded.shim.ensure(), embedded.snapshotter.ensure())
            await self._serve(embedded, connect)
        finally:
            if embedded is not None:
                await embedded.shim.stop(timeout=10)
                await embedded.snapshotter.stop(timeout=10)
                await embedded.redis.stop(timeout=10)
            with contextlib.suppress(FileNotFoundError):
                cfg.pidfile.unlink()
            log.info("daemon_stopped")

    async def _serve(self, embedded: Embedded | None, connect: Connector) -> None:
        cfg = self.cfg
        redis_url = embedded.redis_url if embedded else cfg.redis_url
        redis = aioredis.Redis.from_url(redis_url, max_connections=256)
        keys = Keys(ns=cfg.redis_namespace)
        directory = NodeDirectory(redis, keys, connect)
        bus = EventBus(redis, keys)
        container_store = ContainerStore(redis, keys)
        image_store = ImageStore(redis, keys)
        networks = NetworkBackend(
            redis=redis, keys=keys, store=NetworkStore(redis, keys), containers=container_store, nodes=directory,
            settings=NetworkSettings(bridge=cfg.bridge, bip=cfg.bip, bridge_prefix=cfg.bridge_prefix,
                                     pools=tuple(Pool.parse(p) for p in cfg.default_address_pools) or DEFAULT_POOLS),
            host_networks=lambda: host_networks(resolv_conf=cfg.resolv_conf))
        default_bridge = await networks.ensure_predefined()
        await networks.reconcile()
        if embedded is not None:
            await _wait_registered(directory, embedded.node_id)
        if embedded is not None:  # the default bridge exists from the start, as docker0 does
            await networks.ensure_on_node(default_bridge, embedded.node_id)
        volumes = VolumeBackend(redis=redis, keys=keys, store=VolumeStore(redis, keys), containers=container_store,
                                nodes=directory)
        containers = ContainerBackend(redis=redis, keys=keys, store=container_store, images=image_store,
                                      nodes=directory, bus=bus, networks=networks, volumes=volumes)
        images = ImageBackend(redis=redis, keys=keys, store=image_store, containers=container_store,
                              nodes=directory, volume_usage=volumes.disk_usage)
        insecure = insecure_matcher(cfg.insecure_registries)
        registries = RegistrySettings(insecure=insecure, tls=RegistryTLS(insecure=insecure,
                                                                         certs_dir=cfg.registry_certs_dir),
                                      session_factory=aiohttp.ClientSession)
        distribution = DistributionBackend(redis=redis, keys=keys, store=image_store, nodes=directory,
                                           registries=registries)
        daemon_id = embedded.node_id if embedded else load_or_create_node_id(cfg.data_root)
        system = SystemBackend(containers=container_store, images=image_store, nodes=directory, bus=bus,
                               daemon_id=daemon_id, data_root=str(cfg.data_root), debug=cfg.debug,
                               labels=cfg.labels)
        async def pull_for_build(ref: str, auth: RegistryAuth) -> AsyncIterator[dict[str, Any]]:
            async for message in await distribution.pull(ref, "", auth):
                yield message

        def new_builder() -> Builder:
            return Builder(images=image_store, nodes=directory, cache=BuildCache(redis, f"{keys.ns}:build:cache"),
                           pull=pull_for_build, networks=networks)

        app = build_app([system_router.register, containers_router.register, images_router.register,
                         build_router.register, networks_router.register, runtime_router.register,
                         exec_router.register, container_files_router.register, volumes_router.register])
        app[exec_router.EXECS] = ExecBackend(redis=redis, keys=keys, containers=container_store, nodes=directory)
        app[networks_router.NETWORKS] = networks
        app[build_router.BUILDER] = new_builder
        app[build_router.CONTEXT_LIMIT] = cfg.max_build_context
        app[system_router.SYSTEM] = system
        app[containers_router.CONTAINERS] = containers
        app[volumes_router.VOLUMES] = volumes
        app[container_files_router.FILES] = ContainerFilesBackend(
            redis=redis, keys=keys, containers=container_store, images=image_store, nodes=directory)
        app[images_router.IMAGES] = images
        app[images_router.DISTRIBUTION] = distribution
        runner = EngineRunner(app, access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        try:
            await start_sites(runner, cfg)
            async with asyncio.TaskGroup() as tasks:
                bus_task = tasks.create_task(bus.run())
                background = [bus_task, tasks.create_task(containers.auto_remove_forever())]
                if embedded is not None:
                    for service in (embedded.redis, embedded.shim, embedded.snapshotter):
                        background.append(tasks.create_task(service.watch()))
                log.info("daemon_ready", hosts=list(cfg.hosts), embedded=embedded is not None)
                await self._stop.wait()
                log.info("daemon_shutting_down")
                await runner.cleanup()
                if embedded is not None:
                    await self._stop_containers(containers, embedded.node_id)
                for task in background:
                    task.cancel()
        finally:
            await runner.cleanup()
            await directory.close()
            fastredis.close(redis)
            await redis.aclose()

    async def _stop_containers(self, containers: ContainerBackend, node_id: str) -> None:
        try:
            await containers.stop_node(node_id, self.cfg.shutdown_timeout)
        except Exception as exc:  # the shim may already be gone; nothing left to stop then
            log.warning("shutdown_stop_failed", error=str(exc))
