"""``berth-snapshotter``: the content store, snapshots and images of one host, served over gRPC.

Order of things: flags → :class:`Config` → Redis, stores, crash cleanup (orphan snapshot
directories, ingest and spool files) → gRPC server on the socket → node registration →
heartbeats. SIGTERM/SIGINT: stop accepting, let running RPCs finish within the grace period,
cancel the rest, drop the heartbeat, close Redis, remove the socket, exit 0.

Readiness is the socket answering gRPC (``channel.channel_ready()``).

Before anything else (before any thread exists) the process takes a mount namespace of its own,
with the host's mounts as slaves: snapshots it mounts for file operations (``docker cp`` of a
stopped container, ``docker export``, COPY) are never visible on the host and vanish with it.

Across hosts it listens on TCP with mutual TLS: ``--tlscacert``, ``--tlscert`` and ``--tlskey``
(all three) make it present ``--tlscert`` and require client certificates signed by
``--tlscacert``. Without them TCP is refused beyond loopback, before anything starts (exit 2);
unix sockets are always plain (root-only files).

Registry settings are dockerd's: ``--insecure-registry`` (repeatable; loopback is always
insecure), ``--registry-certs-dir`` (``<dir>/<host:port>/{*.crt, client.cert, client.key}``),
``--max-concurrent-downloads`` and ``--max-concurrent-uploads``.
"""

from __future__ import annotations

import common.grpc_env  # noqa: F401  # first: gRPC reads its settings when it loads

# isort: split

import argparse
import asyncio
import contextlib
import os
import secrets
import signal
import stat
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import redis.asyncio as aioredis
import structlog

from common import linux, logs, nodes
from common.grpc_tls import NO_TLS, TLSFiles, add_port, add_tls_arguments, check_listener, tls_from_arguments
from common.keys import Keys
from protos.errors import InvalidArgument
from protos.rpc import SERVER_OPTIONS
from registry_client.hosts import insecure_matcher
from snapshotter.api import ContentStore, Images, Snapshotter
from snapshotter.content import LocalContentStore
from snapshotter.distribution import RegistryOptions
from snapshotter.images import LocalImages
from snapshotter.overlay import OverlaySnapshotter
from snapshotter.service import add_servicers

log = structlog.get_logger()

DEFAULT_ROOT = Path("/var/lib/berth/snapshotter")
DEFAULT_ADDRESS = "/run/berth/snapshotter.sock"
DEFAULT_CERTS_DIR = Path("/etc/berth/certs.d")


@dataclass(frozen=True, slots=True)
class Config:
    root: Path
    address: str
    redis_url: str
    redis_namespace: str
    node_id: str
    log_level: str
    grace_period: float = 10.0
    insecure_registries: tuple[str, ...] = ()
    registry_certs_dir: Path = DEFAULT_CERTS_DIR
    max_concurrent_downloads: int = 3
    max_concurrent_uploads: int = 5
    tls: TLSFiles = NO_TLS

    def registry_options(self) -> RegistryOptions:
        return RegistryOptions(insecure=insecure_matcher(self.insecure_registries),
                               certs_dir=self.registry_certs_dir,
                               max_concurrent_downloads=self.max_concurrent_downloads,
                               max_concurrent_uploads=self.max_concurrent_uploads)


@dataclass(frozen=True, slots=True)
class Listener:
    """Where to bind: ``target`` for grpc, ``socket`` path for unix sockets (None for TCP)."""

    target: str
    socket: Path | None


def parse_address(address: str, tls: TLSFiles = NO_TLS) -> Listener:
    """Where to bind ``address``; plain TCP beyond loopback (without ``tls``) is a ``ValueError``."""
    if address.startswith("unix:") or address.startswith("/"):
        path = Path(address.removeprefix("unix:").removeprefix("//"))
        if not path.is_absolute():
            raise ValueError(f"unix socket path must be absolute: {address}")
        return Listener(target=f"unix:{path}", socket=path)
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"invalid address {address!r}: want unix:PATH, /PATH or HOST:PORT")
    # Plain TCP beyond loopback would hand layers and the host's mounts to anyone (DESIGN §6).
    check_listener(address, tls)
    return Listener(target=address, socket=None)


def parse_args(argv: Sequence[str] | None = None) -> Config:
    parser = argparse.ArgumentParser(
        prog="berth-snapshotter", description="The content store, snapshots and images of one host, over gRPC.")
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="state directory (default %(default)s)")
    parser.add_argument("--address", default=DEFAULT_ADDRESS,
                        help="unix socket path (or unix:PATH), or HOST:PORT: loopback, or any with --tlscacert, "
                             "--tlscert and --tlskey (default %(default)s)")
    add_tls_arguments(parser)
    parser.add_argument("--redis-url", required=True, help="redis:// or unix:// URL of the cluster's Redis")
    parser.add_argument("--redis-namespace", default="berth", help="key prefix (default %(default)s)")
    parser.add_argument("--node-id", default="", help="node id (default: kept in ROOT/node-id)")
    parser.add_argument("--log-level", default="info", choices=sorted(logs.LEVELS))
    parser.add_argument("--grace-period", type=float, default=10.0,
                        help="seconds running RPCs get to finish on shutdown (default %(default)s)")
    parser.add_argument("--insecure-registry", dest="insecure_registries", action="append", default=[],
                        metavar="HOST[:PORT]|CIDR",
                        help="registry reached without TLS verification, or over plain HTTP (repeatable; "
                             "127.0.0.0/8 and ::1 always are)")
    parser.add_argument("--registry-certs-dir", type=Path, default=DEFAULT_CERTS_DIR,
                        help="per-registry certificates: DIR/<host:port>/*.crt (CAs), client.cert and "
                             "client.key (default %(default)s)")
    parser.add_argument("--max-concurrent-downloads", type=_positive, default=3,
                        help="layer downloads at once on this host (default %(default)s)")
    parser.add_argument("--max-concurrent-uploads", type=_positive, default=5,
                        help="layer uploads at once on this host (default %(default)s)")
    args = parser.parse_args(argv)
    root = args.root.absolute()
    tls = tls_from_arguments(args)
    try:
        tls.check()
        parse_address(args.address, tls)
        insecure_matcher(args.insecure_registries)
    except (ValueError, InvalidArgument) as exc:
        parser.error(str(exc))
    return Config(root=root, address=args.address, redis_url=args.redis_url,
                  redis_namespace=args.redis_namespace,
                  node_id=args.node_id or nodes.load_or_create_node_id(root),
                  log_level=args.log_level, grace_period=args.grace_period,
                  insecure_registries=tuple(args.insecure_registries),
                  registry_certs_dir=args.registry_certs_dir.absolute(),
                  max_concurrent_downloads=args.max_concurrent_downloads,
                  max_concurrent_uploads=args.max_concurrent_uploads, tls=tls)


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value}")
    return number


class AccessLog(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Binds a request id and the method to the log context; one line per RPC with code and ms;
    the heap trimmed after bulk transfers."""

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]], details: Any) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        method = details.method

        def unary(behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
            async def run(request: Any, context: Any) -> Any:
                with _rpc_context(method, context) as done:
                    result = await behavior(request, context)
                    done()
                    return result

            return run

        def streaming(behavior: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
            async def run(request: Any, context: Any) -> AsyncIterator[Any]:
                with _rpc_context(method, context) as done:
                    async for item in behavior(request, context):
                        yield item
                    done()

            return run

        return handler._replace(
            unary_unary=unary(handler.unary_unary) if handler.unary_unary else None,
            stream_unary=unary(handler.stream_unary) if handler.stream_unary else None,
            unary_stream=streaming(handler.unary_stream) if handler.unary_stream else None,
            stream_stream=streaming(handler.stream_stream) if handler.stream_stream else None,
        )


_CALLER_CODES = {"OK", "NOT_FOUND", "ALREADY_EXISTS", "INVALID_ARGUMENT", "FAILED_PRECONDITION"}


# RPCs that move megabytes through buffers: the heap's free pages go back to the kernel once a
# burst of them is over (see common.linux.trim_heap).
_BULK_RPCS = frozenset({"Pull", "Push", "Import", "Export", "ImportRootfs", "ApplyTar", "ReadTar", "Read", "Write"})
_HEAP = linux.HeapTrimmer()


@contextlib.contextmanager
def _rpc_context(method: str, context: Any) -> Any:
    ok = False

    def done() -> None:
        nonlocal ok
        ok = True

    start = time.monotonic()
    with structlog.contextvars.bound_contextvars(request_id=secrets.token_hex(6), rpc=method):
        try:
            yield done
        finally:
            if method.rsplit("/", 1)[-1] in _BULK_RPCS:
                _HEAP.soon()
            code = "OK" if ok else getattr(context.code(), "name", None) or "CANCELLED"
            ms = round((time.monotonic() - start) * 1000, 1)
            # The caller's mistakes are routine; only our own failures are errors.
            emit = log.info if code in _CALLER_CODES else log.error if code in ("INTERNAL", "UNKNOWN") \
                else log.warning
            emit("rpc", code=code, ms=ms)


def _prepare_socket(path: Path) -> None:
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True)
    try:
        if stat.S_ISSOCK(path.lstat().st_mode):
            path.unlink()  # a stale socket of a previous run
    except FileNotFoundError:
        pass


async def serve(config: Config) -> None:
    with structlog.contextvars.bound_contextvars(node=config.node_id):
        await _serve(config)


async def _serve(config: Config) -> None:
    listener = parse_address(config.address, config.tls)
    # A blocking pool: a burst of RPCs waits for a connection instead of failing.
    pool = aioredis.BlockingConnectionPool.from_url(config.redis_url, max_connections=64, timeout=20)
    redis = aioredis.Redis(connection_pool=pool)
    keys = Keys(ns=config.redis_namespace)
    server: grpc.aio.Server | None = None
    local_images: LocalImages | None = None
    try:
        await redis.ping()
        overlay = await OverlaySnapshotter.open(root=config.root, redis=redis, keys=keys, node=config.node_id)
        local_content = await LocalContentStore.open(root=config.root / "content")
        snapshotter: Snapshotter = overlay
        content: ContentStore = local_content
        local_images = LocalImages(snapshotter=snapshotter, content=local_content, spool_dir=config.root / "tmp",
                                   registry=config.registry_options())
        images: Images = local_images
        await local_content.cleanup()
        await local_images.cleanup()
        removed = await overlay.cleanup()

        server = grpc.aio.server(options=SERVER_OPTIONS, interceptors=[AccessLog()])
        add_servicers(server, snapshotter=snapshotter, content=content, images=images)
        if listener.socket is not None:
            await asyncio.to_thread(_prepare_socket, listener.socket)
        if add_port(server, listener.target, config.tls) == 0:
            raise OSError(f"cannot listen on {config.address}")
        await server.start()
        if listener.socket is not None:
            os.chmod(listener.socket, 0o600)
        await nodes.register(redis, keys, config.node_id, snapshotter_address=listener.target,
                             **nodes.host_facts())

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with asyncio.TaskGroup() as tasks:
            heartbeat = tasks.create_task(nodes.heartbeat_forever(redis, keys, config.node_id, "snapshotter"))
            log.info("snapshotter_ready", address=listener.target, root=str(config.root), orphans_removed=removed,
                     mtls=listener.socket is None and config.tls.enabled)
            await stop.wait()
            log.info("snapshotter_stopping", grace_period=config.grace_period)
            await server.stop(config.grace_period)  # stop accepting, drain, then cancel stragglers
            heartbeat.cancel()
            # Removed snapshots' directories still being emptied (the next start's cleanup would
            # finish them otherwise).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(overlay.settle(), config.grace_period)
        with contextlib.suppress(aioredis.RedisError, OSError):
            await redis.delete(keys.heartbeat(config.node_id, "snapshotter"))
        log.info("snapshotter_stopped")
    finally:
        if server is not None:
            await server.stop(0)
        if local_images is not None:
            await local_images.aclose()
        await redis.aclose()
        await pool.disconnect()
        if listener.socket is not None:
            with contextlib.suppress(FileNotFoundError):
                listener.socket.unlink()


def private_mount_namespace() -> bool:
    """Give this process a mount namespace of its own, with the host's mounts as slaves: the
    snapshots it mounts for file operations (``docker cp``, export, COPY) are invisible to the
    host and vanish with the process, while mounts the host makes later still reach it. Must
    run before any thread exists (``unshare(CLONE_NEWNS)`` implies ``CLONE_FS``, which a
    multi-threaded process cannot unshare)."""
    if threading.active_count() != 1 or len(os.listdir("/proc/self/task")) != 1:
        log.warning("mount_namespace_not_private", reason="threads are running")
        return False
    try:
        linux.unshare(linux.CLONE_NEWNS)
        linux.mount(None, "/", None, linux.MS_REC | linux.MS_SLAVE)
    except OSError as exc:
        log.warning("mount_namespace_not_private", error=str(exc))
        return False
    return True


def main(argv: Sequence[str] | None = None) -> None:
    config = parse_args(argv)
    logs.configure(config.log_level, process="snapshotter")
    private_mount_namespace()
    try:
        asyncio.run(serve(config))
    except Exception as exc:
        log.error("snapshotter_failed", error=str(exc), error_class=type(exc).__name__, exc_info=exc)
        sys.exit(1)


if __name__ == "__main__":
    main()
