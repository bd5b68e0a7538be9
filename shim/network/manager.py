"""``NetworkManager``: the networking of one host's containers.

Lifecycle of a container's network (every step idempotent, every intent on disk first):

* ``prepare`` (at create): the container's networking is written to
  ``<state>/containers/<id>/config.json``, then its hosts, hostname and resolv.conf next to it;
  the spec handed to the runtime joins ``<netns_dir>/<id>`` and bind-mounts those files.
* ``setup`` (before each start): bridges exist; the namespace is created and pinned, with a
  veth pair per endpoint (host end ``<veth_prefix><endpoint id>`` on the bridge, ``ethN``
  inside, address, MAC, default route through the first non-internal network); the embedded
  resolver's sockets are opened inside it; host ports are reserved (bound sockets, so nothing
  else takes them) and DNATed.
* ``stopped`` (each exit): ports are released and the container's names leave the resolver.
  The namespace and its veths stay, so a restart is cheap and keeps the addresses.
* ``remove`` (delete): veths, namespace pin, files and record go.

Crash consistency: the record is written before anything is created on the host, and host
objects are named from ids (veths from endpoint ids, pins from container ids, one nft table),
so ``reconcile`` (at shim start) finds leftovers by name and removes what no container owns,
re-adopts running containers (resolver sockets, port reservations, DNAT), and rebuilds the nft
table from what it knows. A container whose wiring was interrupted is rewired from scratch at
its next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import json
import os
import secrets
import shutil
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import structlog
from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

from protos.errors import Conflict, FailedPrecondition, InvalidArgument, NotFound
from shim import wire
from shim.api import BindMount, ContainerSpec, NamespaceMode
from shim.network import etc, netns, nft
from shim.network.api import (
    BridgeNetwork,
    Endpoint,
    Networking,
    NetworkMode,
    NetworkState,
    PortBinding,
    PortRequest,
)
from shim.network.dns import Resolver

log = structlog.get_logger()

PidOf = Callable[[str], Awaitable[int]]


class NetStateSink(Protocol):
    """Where the manager reports container network state, and learns which networks the
    cluster still has (Redis in production)."""

    async def record(self, container: str, state: NetworkState) -> None:
        ...

    async def network_exists(self, network_id: str) -> bool:
        ...


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    """``state_dir``: records and generated files (persistent); ``netns_dir``: namespace pins
    (runtime); ``table``: Berth's nft table; ``veth_prefix``: host-side veth names."""

    state_dir: Path
    netns_dir: Path
    table: str = "berth"
    veth_prefix: str = "veth"
    resolv_conf: Path = Path("/etc/resolv.conf")
    hosts_file: Path = Path("/etc/hosts")


@dataclass(frozen=True, slots=True)
class ContainerRecord:
    """What is persisted per container."""

    id: str
    networking: Networking
    hostname: str = ""
    domainname: str = ""


@dataclass(slots=True)
class _Live:
    """What exists now for a container (in this process)."""

    wired: bool = False
    running: bool = False
    setup_ns: int = 0
    ports: list[PortBinding] = field(default_factory=list)
    published: list[nft.Published] = field(default_factory=list)
    reservations: list[socket.socket] = field(default_factory=list)
    dns_registered: list[Endpoint] = field(default_factory=list)
    files_fresh: bool = False  # written by prepare, not yet used by a start

    def release_ports(self) -> None:
        for sock in self.reservations:
            sock.close()
        self.reservations.clear()
        self.ports.clear()
        self.published.clear()


class NetworkManager:
    def __init__(self, config: NetworkConfig, sink: NetStateSink) -> None:
        self.config = config
        self._sink = sink
        self._worker = netns.NamespaceWorker()
        self._resolver = Resolver()
        self._ipr: AsyncIPRoute | None = None
        self._networks: dict[str, BridgeNetwork] = {}
        self._records: dict[str, ContainerRecord] = {}
        self._live: dict[str, _Live] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._net_locks: dict[str, asyncio.Lock] = {}
        self._bridges_ready: set[str] = set()
        self._bridge_index: dict[str, int] = {}
        self._background: set[asyncio.Task[None]] = set()
        # Removals under way, with the endpoints whose links they are deleting (see _settle).
        self._removals: dict[asyncio.Task[None], tuple[Endpoint, ...]] = {}
        self._fw_lock = asyncio.Lock()
        self._fw_dirty = False

    # Paths --------------------------------------------------------------------------------------

    def _dir(self, id: str) -> Path:
        return self.config.state_dir / "containers" / id

    def netns_path(self, id: str) -> Path:
        return self.config.netns_dir / id

    def veth_name(self, endpoint_id: str) -> str:
        prefix = self.config.veth_prefix
        return prefix + endpoint_id[:15 - len(prefix)]

    def _files(self, rec: ContainerRecord) -> tuple[Path, Path, Path]:
        """(hosts, hostname, resolv.conf); a ``container:`` network uses its target's."""
        owner = rec.networking.container if rec.networking.mode == NetworkMode.CONTAINER else rec.id
        d = self._dir(owner)
        return d / "hosts", d / "hostname", d / "resolv.conf"

    # Start and stop -----------------------------------------------------------------------------

    async def start(self) -> None:
        for sub in ("containers", "networks"):
            (self.config.state_dir / sub).mkdir(parents=True, exist_ok=True, mode=0o711)
        self.config.netns_dir.mkdir(parents=True, exist_ok=True, mode=0o711)
        if not nft.available():
            raise RuntimeError("libnftables.so.1 not found: install Debian's nftables (libnftables1)")
        self._ipr = AsyncIPRoute()
        await _links(self._ipr)  # pyroute2 builds its parsers on first use: not on a start path
        self._load()

    def _load(self) -> None:
        for path in sorted((self.config.state_dir / "networks").glob("*.json")):
            try:
                net = wire.decode(BridgeNetwork, json.loads(path.read_text()))
            except (OSError, ValueError, TypeError, wire.ProtocolError) as exc:
                log.warning("network_record_unreadable", path=str(path), error=str(exc))
                continue
            self._networks[net.id] = net
        for path in sorted((self.config.state_dir / "containers").glob("*/config.json")):
            try:
                rec = wire.decode(ContainerRecord, json.loads(path.read_text()))
            except (OSError, ValueError, TypeError, wire.ProtocolError) as exc:
                log.warning("container_network_unreadable", path=str(path), error=str(exc))
                continue
            self._records[rec.id] = rec

    async def close(self, *, teardown: bool) -> None:
        """Stop serving. ``teardown`` (nothing runs any more): also remove every namespace,
        veth and bridge and the nft table; records and files stay for the next start."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        await self._resolver.close()
        for live in self._live.values():
            live.release_ports()
        if teardown and self._ipr is not None:
            for rec in list(self._records.values()):
                with contextlib.suppress(Exception):
                    await self._unwire(rec)
            for net in list(self._networks.values()):
                with contextlib.suppress(Exception):
                    await self._delete_link(net.bridge)
            with contextlib.suppress(Exception):
                await self._worker.run(nft.run, nft.delete_table(self.config.table))
            log.info("network_torn_down", networks=len(self._networks))
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None
        self._worker.close()

    def _lock(self, id: str) -> asyncio.Lock:
        return self._locks.setdefault(id, asyncio.Lock())

    def manages(self, id: str) -> bool:
        return id in self._records

    # Networks ------------------------------------------------------------------------------------

    async def ensure_network(self, net: BridgeNetwork) -> None:
        """Create (or adopt) the network's bridge on this host; record it first."""
        known = self._networks.get(net.id)
        if known is not None and known != net:
            self._bridges_ready.discard(net.id)
        await self._ensure_bridge(net)

    async def remove_network(self, network_id: str) -> None:
        users = [r.id for r in self._records.values() if any(e.network.id == network_id
                                                             for e in r.networking.endpoints)]
        if users:
            raise FailedPrecondition(f"network {network_id} has active endpoints on this host")
        async with self._net_locks.setdefault(network_id, asyncio.Lock()):
            net = self._networks.pop(network_id, None)
            self._bridges_ready.discard(network_id)
            if net is not None:
                self._bridge_index.pop(net.bridge, None)
                await self._delete_link(net.bridge)
                with contextlib.suppress(FileNotFoundError):
                    (self.config.state_dir / "networks" / f"{network_id}.json").unlink()
                await self._apply_firewall()
                log.info("network_removed", network=net.name, bridge=net.bridge)

    async def _ensure_bridge(self, net: BridgeNetwork) -> None:
        if net.id in self._bridges_ready:
            return
        async with self._net_locks.setdefault(net.id, asyncio.Lock()):
            if net.id in self._bridges_ready:
                return
            path = self.config.state_dir / "networks" / f"{net.id}.json"
            if self._networks.get(net.id) != net:
                _write_atomic(path, json.dumps(wire.encode(net)))
                self._networks[net.id] = net
            ipr = self._host()
            self._bridge_index.pop(net.bridge, None)
            iface = ipaddress.ip_interface(f"{net.gateway}/{ipaddress.ip_network(net.subnet).prefixlen}")
            try:
                (index,) = await ipr.link_lookup(ifname=net.bridge)
            except ValueError:
                options: dict[str, Any] = {"mtu": net.mtu} if net.mtu else {}
                try:
                    await ipr.link("add", ifname=net.bridge, kind="bridge", **options)
                except NetlinkError as exc:
                    if exc.code != errno.EEXIST:
                        raise
                (index,) = await ipr.link_lookup(ifname=net.bridge)
            try:
                await ipr.addr("add", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen,
                               broadcast=str(iface.network.broadcast_address))
            except NetlinkError as exc:
                if exc.code != errno.EEXIST:
                    raise
            await ipr.link("set", index=index, state="up")
            # 127.0.0.1 published ports are DNATed to containers behind this bridge (the input
            # chain drops loopback addresses arriving on it from containers).
            _sysctl(f"net/ipv4/conf/{net.bridge}/route_localnet", "1")
            if not net.internal:
                _sysctl("net/ipv4/ip_forward", "1")
            await self._apply_firewall()
            self._bridges_ready.add(net.id)
            log.info("network_ready", network=net.name, bridge=net.bridge, subnet=net.subnet)

    # Containers ----------------------------------------------------------------------------------

    async def prepare(self, spec: ContainerSpec) -> ContainerSpec:
        """Record the container's networking, write its files, and return the spec the runtime
        runs: the namespace to join and the files to bind-mount."""
        n = spec.networking
        rec = ContainerRecord(spec.id, n, spec.hostname or spec.id[:12], spec.domainname)
        if n.mode == NetworkMode.CONTAINER:
            target = self._records.get(n.container)
            if target is None:
                raise NotFound(f"No such container: {n.container}")
            if target.networking.mode == NetworkMode.CONTAINER:
                n = replace(n, container=target.networking.container)
                rec = replace(rec, networking=n)
        def write() -> None:
            directory = self._dir(spec.id)
            directory.mkdir(parents=True, exist_ok=True, mode=0o711)
            _write_atomic(directory / "config.json", json.dumps(wire.encode(rec)))  # intent first
            if n.mode != NetworkMode.CONTAINER:
                self._write_files(rec, False)

        async with self._lock(spec.id):
            self._records[spec.id] = rec
            try:
                await asyncio.to_thread(write)
            except BaseException:
                await self.forget(spec.id)
                raise
            self._live[spec.id] = _Live(files_fresh=True)
        hosts, hostname, resolv = self._files(rec)
        binds = (BindMount(str(resolv), "/etc/resolv.conf"), BindMount(str(hostname), "/etc/hostname"),
                 BindMount(str(hosts), "/etc/hosts"))
        out = replace(spec, binds=(*spec.binds, *binds))
        if n.mode in (NetworkMode.BRIDGE, NetworkMode.CONTAINER):
            out = replace(out, netns_path=str(self.netns_path(spec.id)), network=NamespaceMode.PRIVATE)
            if n.mode == NetworkMode.CONTAINER and self._records[n.container].networking.mode == NetworkMode.HOST:
                out = replace(out, netns_path="", network=NamespaceMode.HOST)
        elif n.mode == NetworkMode.HOST:
            out = replace(out, network=NamespaceMode.HOST)
        await self._report(rec)
        return out

    async def forget(self, id: str) -> None:
        """Drop a container whose creation failed."""
        self._records.pop(id, None)
        shutil.rmtree(self._dir(id), ignore_errors=True)

    def _write_files(self, rec: ContainerRecord, in_place: bool) -> None:
        """Generate hosts, hostname and resolv.conf (``in_place``: they are bind-mounted in a
        running container, whose view a rename would not reach)."""
        n = rec.networking
        hosts_path, hostname_path, resolv_path = self._files(rec)
        if n.mode == NetworkMode.HOST and not n.extra_hosts:
            hosts_text = _read(self.config.hosts_file)
        else:
            hosts_text = etc.hosts(hostname=rec.hostname, domainname=rec.domainname, extra_hosts=n.extra_hosts,
                                   addresses=[e.address for e in n.endpoints])
        rc = etc.ResolvConf.parse(_read(self.config.resolv_conf), str(self.config.resolv_conf))
        rc.override(dns=n.dns, search=n.dns_search, options=n.dns_options)
        if any(e.network.embedded_dns for e in n.endpoints):
            rc.internal()
        elif n.mode == NetworkMode.BRIDGE:
            rc.legacy()
        write = _write_in_place if in_place else _write_atomic
        write(hosts_path, hosts_text)
        write(hostname_path, etc.hostname_file(rec.hostname))
        write(resolv_path, rc.render())

    def _upstreams(self, rec: ContainerRecord) -> list[tuple[str, bool]]:
        n = rec.networking
        rc = etc.ResolvConf.parse(_read(self.config.resolv_conf), str(self.config.resolv_conf))
        rc.override(dns=n.dns, search=n.dns_search, options=n.dns_options)
        return rc.internal()

    async def setup(self, id: str, pid_of: PidOf) -> None:
        """Everything a start needs (see the module docstring); raises with Docker's words."""
        async with self._lock(id):
            rec = self._records.get(id)
            if rec is None:
                return
            live = self._live.setdefault(id, _Live())
            live.setup_ns = _now_ns()
            n = rec.networking
            if n.mode == NetworkMode.CONTAINER:
                await self._join(rec, pid_of)
            elif n.mode == NetworkMode.BRIDGE:
                for ep in n.endpoints:
                    await self._ensure_bridge(ep.network)
                if not live.files_fresh:  # Docker rebuilds them at every start (host resolv.conf may change)
                    await asyncio.to_thread(self._write_files, rec, True)
                live.files_fresh = False
                if not (live.wired and netns.is_pinned(self.netns_path(id))):
                    await self._rewire(rec, live)
                elif self._needs_dns(rec) and not self._resolver.serving(id):
                    await self._serve_dns(rec, await self._worker.run(netns.enter, self.netns_path(id), _open_dns))
                self._register_names(rec, live)
                if not live.reservations and n.ports:
                    try:
                        await self._publish(rec, live)
                    except BaseException:
                        self._unregister_names(rec, live)
                        raise
            live.running = True
            if live.ports or n.mode == NetworkMode.CONTAINER:
                await self._report(rec)

    async def _join(self, rec: ContainerRecord, pid_of: PidOf) -> None:
        target = self._records.get(rec.networking.container)
        path = self.netns_path(rec.id)
        if netns.is_pinned(path):
            return
        if target is None:
            raise NotFound(f"No such container: {rec.networking.container}")
        if target.networking.mode == NetworkMode.BRIDGE and netns.is_pinned(self.netns_path(target.id)):
            source = str(self.netns_path(target.id))
        else:
            try:
                pid = await pid_of(target.id)
            except NotFound:
                pid = 0
            if not pid:
                raise FailedPrecondition(f"cannot join network of a non running container: {target.id}")
            source = f"/proc/{pid}/ns/net"
        await asyncio.to_thread(netns.pin, source, path)

    async def started(self, id: str, pid_of: PidOf) -> None:
        """The runtime started the container by itself (a restart policy): wire what a start
        through :meth:`setup` would have."""
        live = self._live.get(id)
        if live is None or not live.running:
            await self.setup(id, pid_of)

    async def stopped(self, id: str, finished_ns: int = 0) -> None:
        """The container's process exited (at ``finished_ns``): release its ports and names.
        An exit older than the latest setup belongs to a previous run and is ignored."""
        async with self._lock(id):
            live = self._live.get(id)
            rec = self._records.get(id)
            if live is None or rec is None:
                return
            if finished_ns and finished_ns < live.setup_ns:
                return
            live.running = False
            had_ports = bool(live.ports)
            await self._release(rec, live)
            if rec.networking.mode == NetworkMode.CONTAINER:
                await asyncio.to_thread(netns.remove, self.netns_path(id))
            if had_ports:
                await self._report(rec)

    async def _release(self, rec: ContainerRecord, live: _Live) -> None:
        had_ports = bool(live.published)
        live.release_ports()
        with contextlib.suppress(FileNotFoundError):
            (self._dir(rec.id) / "ports.json").unlink()
        if had_ports:
            await self._apply_firewall()
        self._unregister_names(rec, live)
        await self._resolver.stop(rec.id)

    def remove_soon(self, id: str) -> None:
        """:meth:`remove` in the background: the runtime's delete (and ``docker run --rm``) does
        not wait for veth and namespace teardown; the record on disk keeps the intent (a crash
        before the end leaves it for :meth:`reconcile`), and a container wired meanwhile waits
        for the links it would collide with (:meth:`_settle`)."""
        rec = self._records.get(id)
        task = asyncio.get_running_loop().create_task(self._remove_logged(id))
        self._background.add(task)
        self._removals[task] = rec.networking.endpoints if rec is not None else ()
        task.add_done_callback(self._background.discard)
        task.add_done_callback(self._removals.pop)

    async def _settle(self, endpoints: Iterable[Endpoint]) -> None:
        """Wait until no background removal is still deleting a link with one of ``endpoints``'
        host names, or with the address or MAC one of them takes on its network (an address freed
        by a delete is handed out again at once)."""
        taken = self._claims(endpoints)
        pending = [task for task, eps in self._removals.items() if taken & self._claims(eps)]
        if pending:
            await asyncio.wait(pending)

    def _claims(self, endpoints: Iterable[Endpoint]) -> set[object]:
        """What wiring ``endpoints`` takes on the host: link names, addresses and MACs."""
        return {k for e in endpoints for k in (self.veth_name(e.id), (e.network.id, e.address), (e.network.id, e.mac))}

    async def _remove_logged(self, id: str) -> None:
        try:
            await self.remove(id)
        except Exception as exc:  # reconcile at the next start finishes it
            log.warning("container_network_not_removed", container=id[:12], error=str(exc))

    async def remove(self, id: str) -> None:
        """The container is deleted: everything of its network goes. Idempotent."""
        async with self._lock(id):
            rec = self._records.get(id)
            if rec is None:
                return
            live = self._live.pop(id, _Live())
            await self._release(rec, live)
            await self._unwire(rec)
            self._records.pop(id, None)
            await asyncio.to_thread(shutil.rmtree, self._dir(id), True)
        self._locks.pop(id, None)
        log.info("container_network_removed", container=id[:12])

    async def connect(self, id: str, endpoint: Endpoint) -> None:
        """Add ``endpoint``; a running container gets its interface at once (``eth<N>``)."""
        async with self._lock(id):
            rec = self._records.get(id)
            if rec is None:
                raise NotFound(f"No such container: {id}")
            n = rec.networking
            if n.mode != NetworkMode.BRIDGE:
                raise InvalidArgument("container sharing network namespace with another container or host "
                                      "cannot be connected to any other network")
            others = tuple(e for e in n.endpoints if e.network.id != endpoint.network.id)
            rec = replace(rec, networking=replace(n, endpoints=(*others, endpoint)))
            await self._persist(rec)
            live = self._live.get(id)
            if live is None or not live.wired or not live.running:
                return
            await self._ensure_bridge(endpoint.network)
            await self._settle((endpoint,))
            path = self.netns_path(id)
            sock = await self._worker.run(netns.enter, path, netns.rtnl_socket)
            async with AsyncIPRoute(use_socket=sock) as ns:
                names = {link.get("ifname") for link in await _links(ns)}
                ifname = next(f"eth{i}" for i in range(len(names) + 1) if f"eth{i}" not in names)
                gateway = not any(not e.network.internal for e in others) and not endpoint.network.internal
                await self._add_veth(ns, path, endpoint, ifname, gateway)
            await asyncio.to_thread(self._write_files, rec, True)
            if endpoint.network.embedded_dns and not self._resolver.serving(id):
                await self._serve_dns(rec, await self._worker.run(netns.enter, path, _open_dns))
            self._register_names(rec, live)

    async def disconnect(self, id: str, network_id: str) -> None:
        async with self._lock(id):
            rec = self._records.get(id)
            if rec is None:
                raise NotFound(f"No such container: {id}")
            n = rec.networking
            gone = [e for e in n.endpoints if e.network.id == network_id]
            if not gone:
                return
            live = self._live.get(id)
            if live is not None:
                self._unregister_names(rec, live)
            rec = replace(rec, networking=replace(n, endpoints=tuple(e for e in n.endpoints
                                                                      if e.network.id != network_id)))
            await self._persist(rec)
            for ep in gone:
                await self._delete_link(self.veth_name(ep.id))
            if live is not None and live.running:
                await asyncio.to_thread(self._write_files, rec, True)
                self._register_names(rec, live)
                if not self._needs_dns(rec):
                    await self._resolver.stop(id)

    async def _persist(self, rec: ContainerRecord) -> None:
        self._records[rec.id] = rec
        await asyncio.to_thread(_write_atomic, self._dir(rec.id) / "config.json", json.dumps(wire.encode(rec)))

    # Wiring --------------------------------------------------------------------------------------

    def _host(self) -> AsyncIPRoute:
        if self._ipr is None:
            raise RuntimeError("network manager not started")
        return self._ipr

    @staticmethod
    def _needs_dns(rec: ContainerRecord) -> bool:
        return any(e.network.embedded_dns for e in rec.networking.endpoints)

    async def _rewire(self, rec: ContainerRecord, live: _Live) -> None:
        """Build the namespace and its interfaces from scratch (removing any partial leftover).
        The resolver's sockets and DNAT (a per-namespace NAT set-up the kernel makes slow) are
        made by a second worker thread while the veths are wired."""
        if self.netns_path(rec.id).exists():
            await self._unwire(rec)
        live.wired = False
        await self._settle(rec.networking.endpoints)
        path = self.netns_path(rec.id)
        sock = await self._worker.run(netns.create, path, netns.rtnl_socket)
        dns_job = asyncio.ensure_future(self._worker.run(netns.enter, path, _open_dns)) \
            if self._needs_dns(rec) else None
        try:
            async with AsyncIPRoute(use_socket=sock) as ns:
                gateway_done = False
                for i, ep in enumerate(_gateway_first(rec.networking.endpoints)):
                    gateway = not gateway_done and not ep.network.internal
                    gateway_done |= gateway
                    await self._add_veth(ns, path, ep, f"eth{i}", gateway, index=2 + i)
            if dns_job is not None:
                job, dns_job = dns_job, None
                await self._serve_dns(rec, await job)
        except BaseException:
            if dns_job is not None:
                with contextlib.suppress(BaseException):
                    for s in await dns_job:
                        s.close()
            await self._unwire(rec)
            raise
        live.wired = True

    async def _add_veth(self, ns: AsyncIPRoute, path: Path, ep: Endpoint, ifname: str, gateway: bool,
                        index: int = 0) -> None:
        """One endpoint: the veth pair (host end on the bridge, up), then address, link and
        route inside. ``index``: the interface index to give the inner end (in a namespace
        that only has ``lo`` it is free, which saves a lookup on the start path)."""
        ipr = self._host()
        net = ep.network
        bridge = self._bridge_index.get(net.bridge)
        if bridge is None:
            (bridge,) = await ipr.link_lookup(ifname=net.bridge)
            self._bridge_index[net.bridge] = bridge
        peer: dict[str, Any] = {"ifname": ifname, "address": ep.mac}
        if index:
            peer["index"] = index
        if net.mtu:
            peer["mtu"] = net.mtu
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            peer["net_ns_fd"] = fd
            options: dict[str, Any] = {"mtu": net.mtu} if net.mtu else {}
            await ipr.link("add", ifname=self.veth_name(ep.id), kind="veth", master=bridge, state="up",
                           peer=peer, **options)
        finally:
            os.close(fd)
        if not index:
            (index,) = await ns.link_lookup(ifname=ifname)
        subnet = ipaddress.ip_network(net.subnet)
        await ns.addr("add", index=index, address=ep.address, prefixlen=subnet.prefixlen,
                      broadcast=str(subnet.broadcast_address))
        await ns.link("set", index=index, state="up")
        if gateway:
            await ns.route("add", dst="0.0.0.0/0", gateway=net.gateway, oif=index)

    async def _unwire(self, rec: ContainerRecord) -> None:
        for ep in rec.networking.endpoints:
            await self._delete_link(self.veth_name(ep.id))
        await asyncio.to_thread(netns.remove, self.netns_path(rec.id))
        live = self._live.get(rec.id)
        if live is not None:
            live.wired = False

    async def _delete_link(self, name: str) -> None:
        # In a worker thread: the kernel tears the link down inside the request (a veth takes
        # milliseconds), which must not stall the event loop.
        await asyncio.to_thread(netns.delete_link, name)

    # DNS -----------------------------------------------------------------------------------------

    async def _serve_dns(self, rec: ContainerRecord, socks: tuple[socket.socket, socket.socket]) -> None:
        eps = rec.networking.endpoints
        await self._resolver.serve(rec.id, socks[0], socks[1],
                                   networks=[e.network.id for e in eps if e.network.embedded_dns],
                                   upstreams=await asyncio.to_thread(self._upstreams, rec),
                                   external=any(not e.network.internal for e in eps))

    def _register_names(self, rec: ContainerRecord, live: _Live) -> None:
        self._unregister_names(rec, live)
        for ep in rec.networking.endpoints:
            if ep.network.embedded_dns:
                self._resolver.add_endpoint(rec.id, ep)
                live.dns_registered.append(ep)
        eps = rec.networking.endpoints
        self._resolver.update(rec.id, networks=[e.network.id for e in eps if e.network.embedded_dns],
                              external=any(not e.network.internal for e in eps))

    def _unregister_names(self, rec: ContainerRecord, live: _Live) -> None:
        for ep in live.dns_registered:
            self._resolver.remove_endpoint(rec.id, ep)
        live.dns_registered.clear()

    # Ports ---------------------------------------------------------------------------------------

    async def _publish(self, rec: ContainerRecord, live: _Live,
                       requests: tuple[PortRequest, ...] | None = None) -> None:
        """Reserve and DNAT the container's ports; the bindings are written next to its record
        first, so a restarted shim re-adopts the very same host ports."""
        target = next((e for e in _gateway_first(rec.networking.endpoints) if not e.network.internal), None)
        if target is None:
            return
        try:
            for req in rec.networking.ports if requests is None else requests:
                sock, port = _reserve(req, target)
                live.reservations.append(sock)
                host_ip = req.host_ip or "0.0.0.0"
                live.ports.append(PortBinding(req.container_port, req.protocol, host_ip, port))
                if req.protocol in ("tcp", "udp"):
                    live.published.append(nft.Published(req.protocol, host_ip, port, target.address,
                                                         req.container_port))
            await asyncio.to_thread(_write_atomic, self._dir(rec.id) / "ports.json",
                                    json.dumps([wire.encode(b) for b in live.ports]))
            await self._apply_firewall()
        except BaseException:
            live.release_ports()
            raise

    async def _apply_firewall(self) -> None:
        """Rebuild the host table from the networks and published ports (one transaction).
        Concurrent callers coalesce: whoever holds the lock applies the latest state."""
        self._fw_dirty = True
        async with self._fw_lock:
            if not self._fw_dirty:
                return
            self._fw_dirty = False
            published = [p for live in self._live.values() for p in live.published]
            text = nft.host_ruleset(self.config.table, list(self._networks.values()), published)
            await self._worker.run(nft.run, text)

    # Reporting -----------------------------------------------------------------------------------

    async def _report(self, rec: ContainerRecord) -> None:
        hosts, hostname, resolv = self._files(rec)
        live = self._live.get(rec.id)
        key = str(self.netns_path(rec.id)) if rec.networking.mode in (NetworkMode.BRIDGE,
                                                                       NetworkMode.CONTAINER) else ""
        state = NetworkState(sandbox_key=key, hosts_path=str(hosts), hostname_path=str(hostname),
                             resolv_conf_path=str(resolv),
                             ports=tuple(live.ports) if live is not None and live.running else ())
        try:
            await self._sink.record(rec.id, state)
        except Exception as exc:  # Redis trouble must not fail a start; reconcile reports again
            log.warning("network_state_not_recorded", container=rec.id[:12], error=str(exc))

    # Reconcile -----------------------------------------------------------------------------------

    async def reconcile(self, running: Iterable[str], known: Iterable[str], pid_of: PidOf) -> None:
        """After a (re)start of the shim: drop what no container owns, re-adopt running ones."""
        running_ids, known_ids = set(running), set(known)
        for id in [i for i in self._records if i not in known_ids]:
            log.info("network_leftover_removed", container=id[:12])
            await self.remove(id)
        for pin in self.config.netns_dir.iterdir() if self.config.netns_dir.exists() else ():
            if pin.name not in self._records:
                await asyncio.to_thread(netns.remove, pin)
        expected = {self.veth_name(e.id) for r in self._records.values() for e in r.networking.endpoints}
        prefix = self.config.veth_prefix
        for link in await _links(self._host()):
            name = link.get("ifname") or ""
            if name.startswith(prefix) and link.get_attr("IFLA_LINKINFO") is not None \
                    and link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") == "veth" and name not in expected:
                await self._delete_link(name)
        in_use = {e.network.id for r in self._records.values() for e in r.networking.endpoints}
        for net in list(self._networks.values()):
            if net.id not in in_use and not await self._sink.network_exists(net.id):
                await self.remove_network(net.id)
        for id, rec in self._records.items():
            live = self._live.setdefault(id, _Live())
            if id not in running_ids:
                if rec.networking.mode == NetworkMode.CONTAINER:
                    await asyncio.to_thread(netns.remove, self.netns_path(id))
                await self._report(rec)
                continue
            try:
                await self._adopt(rec, live)
            except Exception as exc:
                log.error("network_adopt_failed", container=id[:12], error=str(exc))
        self._fw_dirty = True
        await self._apply_firewall()

    async def _adopt(self, rec: ContainerRecord, live: _Live) -> None:
        live.running = True
        if rec.networking.mode != NetworkMode.BRIDGE or not netns.is_pinned(self.netns_path(rec.id)):
            await self._report(rec)
            return
        for ep in rec.networking.endpoints:
            await self._ensure_bridge(ep.network)
        live.wired = True
        if self._needs_dns(rec):
            await self._serve_dns(rec, await self._worker.run(netns.enter, self.netns_path(rec.id), _open_dns))
        self._register_names(rec, live)
        if rec.networking.ports:
            await self._publish(rec, live, _recorded_ports(self._dir(rec.id) / "ports.json"))
        await self._report(rec)


async def _links(ipr: AsyncIPRoute) -> list[Any]:
    return [link async for link in await ipr.link("dump")]


def _gateway_first(endpoints: Iterable[Endpoint]) -> list[Endpoint]:
    eps = list(endpoints)
    return [e for e in eps if not e.network.internal] + [e for e in eps if e.network.internal]


def _recorded_ports(path: Path) -> tuple[PortRequest, ...] | None:
    """The bindings a previous shim made (exact ports), or None to allocate afresh."""
    try:
        raw = json.loads(path.read_text())
        bindings = [wire.decode(PortBinding, b) for b in raw]
    except (OSError, ValueError, TypeError, wire.ProtocolError):
        return None
    return tuple(PortRequest(b.container_port, b.protocol, "" if b.host_ip == "0.0.0.0" else b.host_ip,
                             b.host_port) for b in bindings)


def _open_dns() -> tuple[socket.socket, socket.socket]:
    """The resolver's sockets in the calling thread's namespace, and the DNAT from port 53."""
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        udp.bind((nft.DNS_ADDRESS, 0))
        tcp.bind((nft.DNS_ADDRESS, 0))
        tcp.listen(64)
        nft.run(nft.dns_ruleset(udp.getsockname()[1], tcp.getsockname()[1]))
    except BaseException:
        udp.close()
        tcp.close()
        raise
    return udp, tcp


def _reserve(req: PortRequest, endpoint: Endpoint) -> tuple[socket.socket, int]:
    """Bind the host port (so no other program or container gets it); 0 = ephemeral."""
    kind = socket.SOCK_DGRAM if req.protocol == "udp" else socket.SOCK_STREAM
    host_ip = req.host_ip or "0.0.0.0"
    first, last = req.host_port, max(req.host_port_end, req.host_port)
    candidates = range(first, last + 1) if first else [0]
    error: OSError | None = None
    for port in candidates:
        sock = socket.socket(socket.AF_INET, kind | socket.SOCK_CLOEXEC)
        try:
            sock.bind((host_ip, port))
            return sock, sock.getsockname()[1]
        except OSError as exc:
            sock.close()
            error = exc
    shown = f"{first}-{last}" if last > first else str(first)
    where = f"{endpoint.names[0]} ({endpoint.id})" if endpoint.names else f"({endpoint.id})"
    if error is not None and error.errno == errno.EADDRNOTAVAIL:
        raise InvalidArgument(f"driver failed programming external connectivity on endpoint "
                              f"{where}: Error starting userland proxy: listen {req.protocol} "
                              f"{host_ip}:{shown}: bind: cannot assign requested address")
    raise Conflict(f"driver failed programming external connectivity on endpoint {where}: "
                   f"Bind for {host_ip}:{shown} failed: port is already allocated")


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    tmp.write_text(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def _write_in_place(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _sysctl(name: str, value: str) -> None:
    path = f"/proc/sys/{name}"
    try:
        with open(path) as f:
            if f.read().strip() == value:
                return
        with open(path, "w") as f:
            f.write(value)
    except OSError as exc:
        log.warning("sysctl_not_set", name=name, error=str(exc))


def _now_ns() -> int:
    return time.time_ns()
