"""``berth-shim`` (``python -m shim``): the containers of this host, served over gRPC.

Order of things: adopt the running supervisor (or start one) → record what happened while no
shim was connected and write every container's state to Redis → register the node and heartbeat
→ serve. On SIGTERM: stop serving, then ask the supervisor to exit only if no container runs
(containers never die because the RPC side stops; berthd stops them explicitly first).

Listening: a unix socket (plain, root-only), or TCP. Across hosts TCP takes mutual TLS —
``--tlscacert``, ``--tlscert`` and ``--tlskey`` (all three): the shim presents ``--tlscert`` and
requires client certificates signed by ``--tlscacert``. Plain TCP beyond loopback is refused at
start (exit 2), before the supervisor or anything else is touched.
"""

from __future__ import annotations

import common.grpc_env  # noqa: F401  # first: gRPC reads its settings when it loads

# isort: split

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import grpc
import redis.asyncio as aioredis
import structlog

from common import fastredis, logs, nodes
from common.grpc_tls import NO_TLS, TLSFiles, add_port, add_tls_arguments, check_listener, is_tcp, tls_from_arguments
from common.keys import Keys
from protos.errors import Unavailable
from protos.rpc import SERVER_OPTIONS
from protos.shim.v1 import shim_pb2_grpc
from shim.api import Runtime
from shim.linux import LinuxRuntime
from shim.network.manager import NetworkConfig, NetworkManager
from shim.network.redis_state import RedisNetStateSink
from shim.network.runtime import networked
from shim.network.service import NetworksServicer
from shim.redis_sink import RedisStateSink
from shim.restart import restart_on_boot
from shim.service import TasksServicer
from shim.storage import service as storage_service
from shim.storage.local import LocalFiles, LocalVolumes
from shim.supervisor.client import SupervisorPaths, spawn

log = structlog.get_logger()

SHUTDOWN_GRACE = 5.0


@dataclass(frozen=True, slots=True)
class ShimConfig:
    root: Path
    exec_root: Path
    address: str
    redis_url: str
    redis_namespace: str
    node_id: str
    cgroup_parent: str
    log_level: str
    network_table: str = "berth"
    veth_prefix: str = "veth"
    resolv_conf: Path = Path("/etc/resolv.conf")
    tls: TLSFiles = NO_TLS


def parse_args(argv: list[str]) -> ShimConfig:
    parser = argparse.ArgumentParser(prog="berth-shim", description="Berth's shim: the containers of this host.")
    parser.add_argument("--root", type=Path, default=Path("/var/lib/berth/shim"),
                        help="state: container records and logs (<root>/containers/<id>/<id>-json.log)")
    parser.add_argument("--exec-root", type=Path, default=Path("/run/berth/shim"),
                        help="runtime files: the supervisor's socket and pid file")
    parser.add_argument("--address", default="/run/berth/shim.sock",
                        help="gRPC listen address: unix path, unix:PATH, or host:port (beyond loopback only "
                             "with --tlscacert, --tlscert and --tlskey)")
    add_tls_arguments(parser)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--redis-namespace", default="berth")
    parser.add_argument("--node-id", default="", help="default: <root>/node-id (created on first run)")
    parser.add_argument("--cgroup-parent", default="berth")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--network-table", default="berth", help="name of Berth's nftables table (ip family)")
    parser.add_argument("--veth-prefix", default="veth", help="name prefix of host-side veth interfaces")
    parser.add_argument("--resolv-conf", type=Path, default=Path("/etc/resolv.conf"),
                        help="the host's resolver configuration, source of containers' resolv.conf")
    args = parser.parse_args(argv)
    tls = tls_from_arguments(args)
    try:
        tls.check()
        check_listener(args.address, tls)
    except ValueError as exc:
        parser.error(str(exc))
    root = args.root.absolute()
    return ShimConfig(root=root, exec_root=args.exec_root.absolute(), address=args.address,
                      redis_url=args.redis_url, redis_namespace=args.redis_namespace,
                      node_id=args.node_id or nodes.load_or_create_node_id(root),
                      cgroup_parent=args.cgroup_parent, log_level=args.log_level,
                      network_table=args.network_table, veth_prefix=args.veth_prefix,
                      resolv_conf=args.resolv_conf.absolute(), tls=tls)


async def connect_runtime(cfg: ShimConfig, sink: RedisStateSink) -> tuple[LinuxRuntime, subprocess.Popen[bytes] | None]:
    """Adopt the supervisor that is running, or start one (returned, to be reaped if it exits)."""
    paths = SupervisorPaths(cfg.root, cfg.exec_root)
    with contextlib.suppress(Unavailable):
        runtime = await LinuxRuntime.connect(paths.socket, sink, on_resync=sink.sync)
        log.info("supervisor_adopted", socket=str(paths.socket))
        return runtime, None
    proc = None
    try:
        proc = await asyncio.to_thread(spawn, paths, cgroup_parent=cfg.cgroup_parent, log_level=cfg.log_level)
        log.info("supervisor_started", pid=proc.pid)
    except Unavailable as exc:  # another shim may have started one at the same moment
        log.warning("supervisor_start_failed", error=str(exc))
    return await LinuxRuntime.connect(paths.socket, sink, on_resync=sink.sync), proc


def _listen(server: grpc.aio.Server, address: str, tls: TLSFiles) -> str:
    if not is_tcp(address):
        path = Path(address.removeprefix("unix:"))
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        server.add_insecure_port(f"unix:{path}")
        return str(path)
    if add_port(server, address, tls) == 0:  # plain TCP beyond loopback: refused here (and at parse_args)
        raise OSError(f"cannot listen on {address}")
    if tls.enabled:
        log.info("mtls_listener", address=address, cacert=tls.cacert)
    else:  # loopback only: still reachable by every local user, as dockerd warns
        log.warning("insecure_tcp_listener", address=address)
    return address


async def announce(redis: aioredis.Redis, keys: Keys, cfg: ShimConfig) -> None:
    """Register the node (retrying while Redis is unreachable), then heartbeat until cancelled."""
    delay = 0.5
    while True:
        try:
            socket = SupervisorPaths(cfg.root, cfg.exec_root).socket
            await nodes.register(redis, keys, cfg.node_id, shim_address=cfg.address, exec_socket=str(socket),
                                 exec_socket_id=nodes.file_identity(socket), **nodes.host_facts())
            break
        except (aioredis.ConnectionError, aioredis.TimeoutError, OSError) as exc:
            log.warning("node_register_failed", error=str(exc))
            await asyncio.sleep(delay)
            delay = min(delay * 2, nodes.HEARTBEAT_INTERVAL)
    await nodes.heartbeat_forever(redis, keys, cfg.node_id, "shim")


async def serve(cfg: ShimConfig) -> int:
    for directory in (cfg.root, cfg.exec_root):
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    structlog.contextvars.bind_contextvars(node=cfg.node_id[:12])
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    redis = aioredis.from_url(cfg.redis_url)
    keys = Keys(cfg.redis_namespace)
    sink = RedisStateSink(redis, keys)
    try:
        runtime, supervisor = await connect_runtime(cfg, sink)
    except BaseException:
        await redis.aclose()
        raise
    manager = NetworkManager(NetworkConfig(
        state_dir=cfg.root / "network", netns_dir=cfg.exec_root / "netns", table=cfg.network_table,
        veth_prefix=cfg.veth_prefix, resolv_conf=cfg.resolv_conf), RedisNetStateSink(redis, keys))
    try:
        wrapped = await networked(runtime, manager)
    except BaseException:
        await runtime.close()
        await redis.aclose()
        raise
    await restart_on_boot(runtime, cast(Runtime, wrapped))
    server = grpc.aio.server(options=SERVER_OPTIONS)
    tasks = TasksServicer(cast(Runtime, wrapped))
    shim_pb2_grpc.add_TasksServicer_to_server(tasks, server)  # type: ignore[no-untyped-call]
    shim_pb2_grpc.add_NetworksServicer_to_server(NetworksServicer(manager), server)  # type: ignore[no-untyped-call]
    storage_service.add_servicers(server, files=LocalFiles(SupervisorPaths(cfg.root, cfg.exec_root).socket),
                                  volumes=LocalVolumes(cfg.root / "volumes"))
    listen_path = _listen(server, cfg.address, cfg.tls)
    await server.start()
    if listen_path.startswith("/"):
        os.chmod(listen_path, 0o600)
    background = [loop.create_task(announce(redis, keys, cfg)), loop.create_task(stop.wait()),
                  loop.create_task(runtime.lost.wait())]
    log.info("shim_serving", address=cfg.address, containers=len(await runtime.list()))
    try:
        await asyncio.wait(background[1:], return_when=asyncio.FIRST_COMPLETED)
    finally:
        # Stop accepting and drain, then the heartbeat, then the supervisor (only if idle: the
        # containers outlive the RPC side), then the connections, in that order.
        log.info("shim_stopping")
        tasks.drain()
        await server.stop(SHUTDOWN_GRACE)
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        lost = runtime.lost.is_set()
        exiting = False
        if lost:
            log.error("supervisor_lost")  # the next shim starts a new supervisor, which recovers
        else:
            with contextlib.suppress(Exception):
                exiting = await runtime.shutdown_supervisor()
                log.info("supervisor_exiting" if exiting else "supervisor_left_running")
                if exiting and supervisor is not None:  # our child: reap it
                    await asyncio.to_thread(supervisor.wait, SHUTDOWN_GRACE)
        await wrapped.close()
        # Nothing runs any more: take Berth's bridges, veths, namespaces and nft table away.
        await manager.close(teardown=exiting)
        await runtime.close()
        fastredis.close(redis)
        await redis.aclose()
        log.info("shim_stopped")
    return 1 if lost else 0


def main() -> None:
    cfg = parse_args(sys.argv[1:])
    logs.configure(cfg.log_level, process="shim")
    sys.exit(asyncio.run(serve(cfg)))


if __name__ == "__main__":
    main()
