"""What the network routes and the container backend need: Docker's network API over the
Redis store, endpoints of containers (IPAM at create, release at removal), and the host side
through each node's shim (``Networks``).

Networks are cluster records (one IPAM, so no two API servers hand out one address); each node
builds a network's bridge when a container of that node first needs it (eagerly on the
embedded node at ``docker network create``). ``bridge``, ``host`` and ``none`` always exist.
"""

from __future__ import annotations

import contextlib
import ipaddress
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from apiserver.containers.store import ContainerRecord, ContainerStore
from apiserver.httputil import Filters
from apiserver.networks import ipam
from apiserver.networks import views as net_views
from apiserver.networks.store import NetworkRecord, NetworkStore
from apiserver.nodes import NodeDirectory
from common.events import append_event
from common.keys import Keys
from protos.errors import (
    BerthError,
    Conflict,
    ContainerNotFound,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from shim.network.api import BridgeNetwork, Endpoint, Networking, NetworkMode, PortRequest

log = structlog.get_logger()

LIST_FILTERS = ("dangling", "driver", "id", "label", "name", "scope", "type")
PRUNE_FILTERS = ("until", "label", "label!")
PREDEFINED = ("bridge", "host", "none")
ORPHAN_GRACE_NS = 60 * 1_000_000_000
BUILD_STEP_LEASE = 24 * 3600  # seconds: longer than any RUN step
_OPT_BRIDGE = "com.docker.network.bridge.name"
_OPT_ICC = "com.docker.network.bridge.enable_icc"
_OPT_MASQ = "com.docker.network.bridge.enable_ip_masquerade"
_OPT_MTU = "com.docker.network.driver.mtu"


@dataclass(frozen=True, slots=True)
class NetworkSettings:
    """berthd's networking flags."""

    bridge: str = "berth0"
    bip: str = ""
    pools: tuple[ipam.Pool, ...] = ipam.DEFAULT_POOLS
    bridge_prefix: str = "br-"


class NetworkBackend:
    def __init__(self, *, redis: Any, keys: Keys, store: NetworkStore, containers: ContainerStore,
                 nodes: NodeDirectory, settings: NetworkSettings,
                 host_networks: Callable[[], list[ipaddress.IPv4Network]] = ipam.host_networks) -> None:
        self._redis = redis
        self._keys = keys
        self.store = store
        self._containers = containers
        self._nodes = nodes
        self.settings = settings
        self._host_networks = host_networks

    # Predefined networks and reconciliation ------------------------------------------------------

    async def ensure_predefined(self) -> NetworkRecord:
        """``bridge`` (Berth's default bridge: ``--bridge``, ``--bip`` or a free subnet),
        ``host`` and ``none``; returns the default bridge."""
        for name, driver in (("host", "host"), ("none", "null")):
            if await self.store.find(name) is None:
                with contextlib.suppress(Conflict):
                    await self._create_record(name=name, driver=driver, options={}, labels={}, ipam_cfg=None,
                                              internal=False, attachable=False, predefined=True)
        existing = await self.store.find("bridge")
        bridge = self.settings.bridge
        if existing is not None:
            wanted = self._bip()
            same_bridge = existing.berth.get("Bridge") == bridge
            same_subnet = wanted is None or existing.subnet == str(wanted[1].network)
            if same_bridge and same_subnet:
                return existing
            if await self.store.endpoints(existing.id):
                log.warning("default_bridge_config_changed_in_use", bridge=bridge)
                return existing
            await self.store.delete(existing, in_use=lambda eps: None)
        options = {"com.docker.network.bridge.default_bridge": "true", _OPT_ICC: "true", _OPT_MASQ: "true",
                   "com.docker.network.bridge.host_binding_ipv4": "0.0.0.0", _OPT_BRIDGE: bridge,
                   _OPT_MTU: "1500"}
        bip = self._bip()
        ipam_cfg = {"Subnet": str(bip[1].network), "Gateway": str(bip[0])} if bip else None
        try:
            return await self._create_record(name="bridge", driver="bridge", options=options, labels={},
                                             ipam_cfg=ipam_cfg, internal=False, attachable=False,
                                             predefined=True, bridge=bridge)
        except Conflict:
            return await self.store.resolve("bridge")

    def _bip(self) -> tuple[ipaddress.IPv4Address, ipaddress.IPv4Interface] | None:
        if not self.settings.bip:
            return None
        iface = ipaddress.ip_interface(self.settings.bip)
        if not isinstance(iface, ipaddress.IPv4Interface):
            raise InvalidArgument(f"invalid --bip {self.settings.bip}")
        gateway = iface.ip if iface.ip != iface.network.network_address else ipam.first_host(iface.network)
        return gateway, iface

    async def reconcile(self) -> None:
        """Release endpoints and addresses whose container is gone (a crash between steps)."""
        async def exists(container: str) -> bool:
            try:
                await self._containers.get(container)
                return True
            except ContainerNotFound:
                return bool(await self._redis.exists(self._keys.build_step(container)))

        for record in await self.store.all():
            released = await self.store.collect_orphans(record.id, container_exists=exists, grace_ns=ORPHAN_GRACE_NS)
            if released:
                log.info("ipam_orphans_released", network=record.name, count=released)

    async def ensure_on_node(self, record: NetworkRecord, node_id: str) -> None:
        if record.driver != "bridge":
            return
        host = await self._nodes.host(node_id)
        await host.networks.ensure_network(self.bridge_network(record))

    # Records -------------------------------------------------------------------------------------

    async def _create_record(self, *, name: str, driver: str, options: dict[str, str], labels: dict[str, str],
                             ipam_cfg: dict[str, str] | None, internal: bool, attachable: bool,
                             predefined: bool = False, bridge: str = "",
                             ipam_options: dict[str, str] | None = None) -> NetworkRecord:
        id = secrets.token_hex(32)
        now = time.time_ns()
        user_subnet = bool(ipam_cfg and ipam_cfg.get("Subnet"))
        if driver == "bridge" and not bridge:
            prefix = self.settings.bridge_prefix
            bridge = options.get(_OPT_BRIDGE) or prefix + id[:15 - len(prefix)]
        config: dict[str, Any] = {
            "Name": name, "Id": id, "Created": _rfc3339(now), "Scope": "local", "Driver": driver,
            "EnableIPv4": driver == "bridge", "EnableIPv6": False,
            "IPAM": {"Driver": "default", "Options": ipam_options if ipam_options is not None else
                     (None if predefined else {}),
                     "Config": [dict(ipam_cfg)] if ipam_cfg else []},
            "Internal": internal, "Attachable": attachable, "Ingress": False,
            "ConfigFrom": {"Network": ""}, "ConfigOnly": False, "Options": options, "Labels": labels,
            "Berth": {"Bridge": bridge, "Predefined": predefined, "UserSubnet": user_subnet},
        }
        record = NetworkRecord(id=id, config=config)

        def choose(rec: NetworkRecord, used: dict[str, str]) -> NetworkRecord:
            if rec.driver != "bridge":
                return rec
            taken = [ipaddress.IPv4Network(s) for s in used]
            cfgs = rec.config["IPAM"]["Config"]
            if cfgs and cfgs[0].get("Subnet"):
                subnet = ipaddress.IPv4Network(cfgs[0]["Subnet"])
                if any(subnet.overlaps(t) for t in taken):
                    raise PermissionDenied("invalid pool request: Pool overlaps with other one on this address space")
            else:
                chosen = ipam.choose_subnet(self.settings.pools, [*taken, *self._host_networks()])
                if chosen is None:
                    raise PermissionDenied("could not find an available, non-overlapping IPv4 address pool among "
                                           "the defaults to assign to the network")
                subnet = chosen
                entry = {"Subnet": str(subnet), "Gateway": str(ipam.first_host(subnet))}
                if cfgs:
                    entry = {**cfgs[0], **entry}
                rec.config["IPAM"]["Config"] = [entry]
            cfg = rec.config["IPAM"]["Config"][0]
            cfg.setdefault("Gateway", str(ipam.first_host(subnet)))
            if not cfg.get("Gateway"):
                cfg["Gateway"] = str(ipam.first_host(subnet))
            return rec

        def gateway_of(rec: NetworkRecord) -> int | None:
            cfgs = rec.config["IPAM"]["Config"]
            return int(ipaddress.IPv4Address(cfgs[0]["Gateway"])) if cfgs and cfgs[0].get("Gateway") else None

        return await self.store.create(record, created_ns=now, choose=choose, gateway_of=gateway_of)

    def bridge_network(self, record: NetworkRecord) -> BridgeNetwork:
        cfg = (record.config["IPAM"]["Config"] or [{}])[0]
        options = record.config.get("Options") or {}
        mtu = options.get(_OPT_MTU) or "0"
        return BridgeNetwork(
            id=record.id, name=record.name, bridge=str(record.berth.get("Bridge", "")),
            subnet=str(cfg.get("Subnet", "")), gateway=str(cfg.get("Gateway", "")),
            internal=bool(record.config.get("Internal")), icc=_opt_bool(options.get(_OPT_ICC), True),
            masquerade=_opt_bool(options.get(_OPT_MASQ), True), mtu=int(mtu) if mtu.isdigit() else 0,
            embedded_dns=not record.predefined)

    # Network API ---------------------------------------------------------------------------------

    async def create(self, body: Any) -> tuple[str, str]:
        if not isinstance(body, dict):
            raise InvalidArgument("invalid JSON: expected an object")
        name = str(body.get("Name") or "")
        if not name:
            raise InvalidArgument("invalid name: name is empty")
        if name in PREDEFINED:
            raise PermissionDenied(f"operation is not permitted on predefined {name} network ")
        driver = str(body.get("Driver") or "bridge")
        if driver in ("host", "null"):
            raise PermissionDenied(f'only one instance of "{driver}" network is allowed')
        if driver == "overlay":
            raise PermissionDenied('This node is not a swarm manager. Use "docker swarm init" or "docker swarm join" '
                                   "to connect this node to swarm and try again.")
        if driver != "bridge":
            raise NotFound(f'plugin "{driver}" not found')
        if body.get("EnableIPv6"):
            raise InvalidArgument("IPv6 networks are not supported by Berth")
        if body.get("ConfigOnly") or body.get("ConfigFrom") or body.get("Ingress"):
            raise InvalidArgument("config-only, config-from and ingress networks are not supported by Berth")
        ipam_body = body.get("IPAM") or {}
        if (ipam_body.get("Driver") or "default") != "default":
            raise NotFound(f'plugin "{ipam_body["Driver"]}" not found')
        configs = [c for c in ipam_body.get("Config") or [] if c]
        if len(configs) > 1:
            raise InvalidArgument("Berth supports one IPv4 subnet per network")
        ipam_cfg = _validate_ipam(configs[0]) if configs else None
        options = {str(k): str(v) for k, v in (body.get("Options") or {}).items()}
        labels = {str(k): str(v) for k, v in (body.get("Labels") or {}).items()}
        bridge = options.get(_OPT_BRIDGE, "")
        if bridge and (len(bridge) > 15 or "/" in bridge or " " in bridge):
            raise InvalidArgument(f"invalid bridge name {bridge!r}")
        record = await self._create_record(name=name, driver=driver, options=options, labels=labels,
                                           ipam_cfg=ipam_cfg, internal=bool(body.get("Internal")),
                                           attachable=bool(body.get("Attachable")), bridge=bridge,
                                           ipam_options={str(k): str(v) for k, v in
                                                         (ipam_body.get("Options") or {}).items()})
        await self._event(record, "create")
        await self._ensure_locally(record)
        return record.id, ""

    async def _ensure_locally(self, record: NetworkRecord) -> None:
        """Build the bridge eagerly on the nodes that are up (best effort: containers' starts
        build it anyway)."""
        for node in await self._nodes.up_nodes():
            try:
                await self.ensure_on_node(record, node.id)
            except BerthError as exc:
                log.warning("network_not_ensured", network=record.name, node=node.id, error=str(exc))

    async def list_networks(self, filters: Filters) -> list[dict[str, Any]]:
        records = await self.store.all()
        return [net_views.network_view(r, {}) for r in await self._filter(records, filters)]

    async def inspect(self, ref: str, *, verbose: bool = False) -> dict[str, Any]:
        record = await self.store.resolve(ref)
        return net_views.network_view(record, await self.store.endpoints(record.id))

    async def _filter(self, records: list[NetworkRecord], filters: Filters) -> list[NetworkRecord]:
        if not filters:
            return records
        for value in filters.get("type", []):
            if value not in ("custom", "builtin"):
                raise InvalidArgument(f"invalid filter: 'type'='{value}'")
        for value in filters.get("dangling", []):
            if value.lower() not in ("true", "false", "1", "0"):
                raise InvalidArgument(f"invalid filter 'dangling={value}'")
        dangling = {v.lower() in ("true", "1") for v in filters.get("dangling", [])}
        out = []
        for r in records:
            if "driver" in filters and r.driver not in filters["driver"]:
                continue
            if "id" in filters and not any(r.id.startswith(v) for v in filters["id"]):
                continue
            if "name" in filters and not any(v in r.name for v in filters["name"]):
                continue
            if "scope" in filters and "local" not in filters["scope"]:
                continue
            if "type" in filters:
                kind = "builtin" if r.predefined else "custom"
                if kind not in filters["type"]:
                    continue
            labels = r.config.get("Labels") or {}
            if not all(_label_matches(labels, want) for want in filters.get("label", [])):
                continue
            if dangling:
                unused = not r.predefined and not await self.store.endpoints(r.id)
                if unused not in dangling:
                    continue
            out.append(r)
        return out

    async def remove(self, ref: str) -> None:
        record = await self.store.resolve(ref)
        if record.predefined:
            raise PermissionDenied(f"{record.name} is a pre-defined network and cannot be removed")
        await self._remove(record)

    async def _remove(self, record: NetworkRecord) -> None:
        def in_use(endpoints: dict[str, dict[str, Any]]) -> None:
            listed = ", ".join(f'name:"{ep.get("Name", "")}" id:"{str(ep.get("EndpointID", ""))[:12]}"'
                               for ep in endpoints.values())
            raise PermissionDenied(f"error while removing network: network {record.name} has active endpoints "
                                   f"({listed})")

        await self.store.delete(record, in_use=in_use)
        for node in await self._nodes.up_nodes():
            try:
                host = await self._nodes.host(node.id)
                await host.networks.remove_network(record.id)
            except BerthError as exc:  # the shim also drops bridges of removed networks at start
                log.warning("network_bridge_not_removed", network=record.name, node=node.id, error=str(exc))
        await self._event(record, "destroy")

    async def prune(self, filters: Filters) -> list[str]:
        until_ns = _until(filters.get("until", []))
        deleted = []
        for record in await self.store.all():
            if record.predefined:
                continue
            labels = record.config.get("Labels") or {}
            if not all(_label_matches(labels, w) for w in filters.get("label", [])):
                continue
            if any(_label_matches(labels, w) for w in filters.get("label!", [])):
                continue
            if until_ns is not None and _created_ns(record) >= until_ns:
                continue
            if await self.store.endpoints(record.id):
                continue
            try:
                await self._remove(record)
            except (PermissionDenied, NotFound):
                continue
            deleted.append(record.name)
        return deleted

    async def _event(self, record: NetworkRecord, action: str, **extra: str) -> None:
        attrs = {"name": record.name, "type": record.driver, **extra}
        await append_event(self._redis, self._keys, "network", action, record.id, attrs)

    # Containers ----------------------------------------------------------------------------------

    async def attach_container(self, record: ContainerRecord, body: dict[str, Any]) -> Networking:
        """Allocate the endpoints of a new container (its record exists already) and fill its
        ``NetworkSettings``; returns the shim's view. On error nothing stays allocated."""
        cfg = record.config
        host = cfg["HostConfig"]
        mode = str(host.get("NetworkMode") or "bridge")
        endpoints_cfg: dict[str, Any] = dict((body.get("NetworkingConfig") or {}).get("EndpointsConfig") or {})
        networks: dict[str, Any] = {}
        cfg["NetworkSettings"] = {"Networks": networks}
        common = _common_networking(cfg)
        if mode.startswith("container:"):
            _refuse_for_shared(cfg, body)
            target = await self._containers.resolve(mode.partition(":")[2])
            if target.node != record.node:
                raise InvalidArgument("cannot join the network namespace of a container on another node")
            return Networking(mode=NetworkMode.CONTAINER, container=target.id)
        if mode in ("host", "none"):
            if mode == "none" and len(endpoints_cfg) > 1:
                raise InvalidArgument("container cannot be connected to multiple networks with one of the "
                                      "networks in private (none) mode")
            net = await self.store.resolve(mode)
            networks[mode] = _endpoint_settings(net, secrets.token_hex(32), None, {}, dns_names=None)
            if mode == "host":
                if not body.get("Hostname"):  # Docker: a host-network container has the host's name
                    with contextlib.suppress(BerthError):
                        cfg["Config"]["Hostname"] = (await self._nodes.record(record.node)).hostname \
                            or cfg["Config"]["Hostname"]
                return Networking(mode=NetworkMode.HOST, dns=common.dns, dns_search=common.dns_search,
                                  dns_options=common.dns_options, extra_hosts=await self._extra_hosts(cfg))
            return Networking(mode=NetworkMode.NONE, dns=common.dns, dns_search=common.dns_search,
                              dns_options=common.dns_options, extra_hosts=await self._extra_hosts(cfg))
        primary = await self._resolve_for_create(mode)
        if primary.driver in ("host", "null"):
            raise InvalidArgument(f"network mode {mode} cannot be combined with other networks")
        wanted: list[tuple[NetworkRecord, dict[str, Any]]] = [(primary, _pick(endpoints_cfg, mode, primary))]
        for key, ep_cfg in endpoints_cfg.items():
            if key in (mode, "default") or key in (primary.id, primary.name):
                continue
            other = await self._resolve_for_create(key)
            if other.id != primary.id and all(other.id != w[0].id for w in wanted):
                if other.driver != "bridge":
                    raise InvalidArgument("container sharing network namespace with another container or host "
                                          "cannot be connected to any other network")
                wanted.append((other, ep_cfg or {}))
        attached: list[NetworkRecord] = []
        endpoints: list[Endpoint] = []
        try:
            for net, ep_cfg in wanted:
                endpoint = await self._allocate(record, net, ep_cfg)
                attached.append(net)
                endpoints.append(endpoint)
                networks[net.name] = self._settings_for(net, endpoint, ep_cfg)
        except BaseException:
            for net in attached:
                await self.store.detach(net.id, record.id)
            raise
        return Networking(mode=NetworkMode.BRIDGE, endpoints=tuple(endpoints), dns=common.dns,
                          dns_search=common.dns_search, dns_options=common.dns_options,
                          extra_hosts=await self._extra_hosts(cfg), ports=port_requests(cfg))

    async def _resolve_for_create(self, ref: str) -> NetworkRecord:
        """A 404 from create makes the CLI pull the image: a missing network is a 400 here
        (Docker finds out at start, with the same words)."""
        try:
            return await self.store.resolve(ref)
        except NotFound as exc:
            raise InvalidArgument(exc.message) from None

    async def _extra_hosts(self, cfg: dict[str, Any]) -> tuple[str, ...]:
        out = []
        for entry in cfg["HostConfig"].get("ExtraHosts") or []:
            name, sep, address = str(entry).replace("=", ":", 1).partition(":")
            if not sep or not name:
                raise InvalidArgument(f"invalid argument \"{entry}\" for \"--add-host\" flag: bad format")
            if address == "host-gateway":
                default = await self.store.find("bridge")
                address = str((default.config["IPAM"]["Config"] or [{}])[0].get("Gateway", "")) if default else ""
            else:
                try:
                    ipaddress.ip_address(address.strip("[]"))
                except ValueError:
                    raise InvalidArgument(f"invalid IP address in add-host: \"{address}\"") from None
            out.append(f"{name}:{address}")
        return tuple(out)

    async def _allocate(self, record: ContainerRecord, net: NetworkRecord, ep_cfg: dict[str, Any]) -> Endpoint:
        user_defined = not net.predefined
        ipam_cfg = ep_cfg.get("IPAMConfig") or {}
        requested = str(ipam_cfg.get("IPv4Address") or "")
        aliases = [str(a) for a in ep_cfg.get("Aliases") or []]
        if not user_defined:
            if requested:
                raise InvalidArgument("user specified IP address is supported on user defined networks only")
            if aliases:
                raise InvalidArgument("network-scoped alias is supported only for containers in user defined networks")
        subnet = ipaddress.IPv4Network(net.subnet)
        cfg0 = (net.config["IPAM"]["Config"] or [{}])[0]
        ip_range = ipaddress.IPv4Network(cfg0["IPRange"]) if cfg0.get("IPRange") else None
        wanted: int | None = None
        if requested:
            address = ipam.parse_address(requested)
            if not net.berth.get("UserSubnet"):
                raise InvalidArgument("user specified IP address is supported only when connecting to networks "
                                      "with user configured subnets")
            if address not in subnet:
                raise InvalidArgument(f"no configured subnet or ip-range contain the IP address {requested}")
            wanted = int(address)
        first, last = ipam.host_range(subnet, ip_range)
        endpoint_id = secrets.token_hex(32)
        names = [record.name, *aliases, record.id[:12]] if user_defined else [record.name]
        entry = {"Name": record.name, "EndpointID": endpoint_id, "Network": net.name}
        try:
            value = await self.store.attach(net.id, record.id, entry, requested=wanted, first=first, last=last)
        except PermissionDenied:
            raise PermissionDenied(f"endpoint with name {record.name} already exists in network {net.name}") from None
        address = ipaddress.IPv4Address(value)
        mac = str(ep_cfg.get("MacAddress") or "") or ipam.mac_for(address)
        return Endpoint(network=self.bridge_network(net), id=endpoint_id, address=str(address), mac=mac,
                        names=tuple(dict.fromkeys(names)))

    def _settings_for(self, net: NetworkRecord, endpoint: Endpoint, ep_cfg: dict[str, Any]) -> dict[str, Any]:
        ipam_cfg = ep_cfg.get("IPAMConfig") or None
        dns_names = list(endpoint.names) if not net.predefined else None
        return _endpoint_settings(net, endpoint.id, endpoint, {
            "IPAMConfig": {k: v for k, v in ipam_cfg.items() if v} if ipam_cfg else None,
            "Aliases": [str(a) for a in ep_cfg.get("Aliases") or []] or None,
            "DriverOpts": ep_cfg.get("DriverOpts") or None,
            "GwPriority": int(ep_cfg.get("GwPriority") or 0),
        }, dns_names=dns_names)

    async def attach_build_step(self, run_id: str, node_id: str) -> Networking:
        """The default bridge for a build's ``RUN`` step, where the classic builder runs them: an
        address for ``run_id`` on ``node_id``, held by a lease that keeps :meth:`reconcile` away
        while the step runs (and lets it collect the address after a crash)."""
        net = await self.store.resolve("bridge")
        await self.ensure_on_node(net, node_id)
        lease = self._keys.build_step(run_id)
        await self._redis.set(lease, node_id, ex=BUILD_STEP_LEASE)
        step = ContainerRecord(id=run_id, config={"Name": f"/build-{run_id[:12]}"}, state={}, node=node_id)
        try:
            endpoint = await self._allocate(step, net, {})
        except BaseException:
            await self._redis.delete(lease)
            raise
        return Networking(mode=NetworkMode.BRIDGE, endpoints=(endpoint,))

    async def detach_build_step(self, run_id: str) -> None:
        net = await self.store.find("bridge")
        if net is not None:
            await self.store.detach(net.id, run_id)
        await self._redis.delete(self._keys.build_step(run_id))

    async def detach_container(self, record: ContainerRecord) -> None:
        """Release every endpoint of a removed container."""
        for name, settings in ((record.config.get("NetworkSettings") or {}).get("Networks") or {}).items():
            net_id = str(settings.get("NetworkID") or "")
            if not net_id:
                continue
            try:
                if await self.store.detach(net_id, record.id):
                    await self._event_by_id(net_id, name, "disconnect", container=record.id)
            except BerthError as exc:
                log.warning("endpoint_not_released", container=record.id, network=name, error=str(exc))

    async def _event_by_id(self, net_id: str, name: str, action: str, **extra: str) -> None:
        try:
            record = await self.store.get(net_id)
        except NotFound:
            record = NetworkRecord(id=net_id, config={"Name": name, "Driver": "bridge"})
        await self._event(record, action, **extra)

    async def connected(self, record: ContainerRecord) -> None:
        """Events for a new container's networks (Docker sends them when it joins them)."""
        for name, settings in ((record.config.get("NetworkSettings") or {}).get("Networks") or {}).items():
            if settings.get("NetworkID"):
                await self._event_by_id(str(settings["NetworkID"]), name, "connect", container=record.id)

    async def connect(self, ref: str, body: Any) -> None:
        if not isinstance(body, dict):
            raise InvalidArgument("invalid JSON: expected an object")
        net = await self.store.resolve(ref)
        container = await self._containers.resolve(str(body.get("Container") or ""))
        ep_cfg = dict(body.get("EndpointConfig") or {})
        host = container.config["HostConfig"]
        mode = str(host.get("NetworkMode") or "bridge")
        if net.driver == "host":
            raise PermissionDenied("cannot connect container to host network - container must be created in host "
                                   "network mode")
        if mode.startswith("container:") or mode == "host":
            raise PermissionDenied("container sharing network namespace with another container or host cannot be "
                                   "connected to any other network")
        if mode == "none" or net.driver == "null":
            raise PermissionDenied("container cannot be connected to multiple networks with one of the networks in "
                                   "private (none) mode")
        networks = container.config.setdefault("NetworkSettings", {}).setdefault("Networks", {})
        if net.name in networks:
            raise PermissionDenied(f"endpoint with name {container.name} already exists in network {net.name}")
        endpoint = await self._allocate(container, net, ep_cfg)
        try:
            if container.running or container.state:
                h = await self._nodes.host(container.node)
                await h.networks.connect(container.id, endpoint)
            latest = await self._containers.get(container.id)
            latest.config.setdefault("NetworkSettings", {}).setdefault("Networks", {})[net.name] = \
                self._settings_for(net, endpoint, ep_cfg)
            await self._containers.save_config(latest)
        except BaseException:
            await self.store.detach(net.id, container.id)
            raise
        await self._event(net, "connect", container=container.id)

    async def disconnect(self, ref: str, body: Any) -> None:
        if not isinstance(body, dict):
            raise InvalidArgument("invalid JSON: expected an object")
        net = await self.store.resolve(ref)
        container = await self._containers.resolve(str(body.get("Container") or ""))
        networks = (container.config.get("NetworkSettings") or {}).get("Networks") or {}
        name = next((n for n, s in networks.items() if s.get("NetworkID") == net.id), None)
        mode = str(container.config["HostConfig"].get("NetworkMode") or "")
        if net.driver == "host" and mode == "host":
            raise PermissionDenied("cannot disconnect container from host network - container was created in host "
                                   "network mode")
        if name is None:
            raise PermissionDenied(f"container {container.id} is not connected to network {net.name}")
        if net.driver == "bridge":
            h = await self._nodes.host(container.node)
            await h.networks.disconnect(container.id, net.id)
        latest = await self._containers.get(container.id)
        (latest.config.get("NetworkSettings") or {}).get("Networks", {}).pop(name, None)
        await self._containers.save_config(latest)
        await self.store.detach(net.id, container.id)
        await self._event(net, "disconnect", container=container.id)


def _common_networking(cfg: dict[str, Any]) -> Networking:
    host = cfg["HostConfig"]
    return Networking(dns=tuple(str(d) for d in host.get("Dns") or ()),
                      dns_search=tuple(str(d) for d in host.get("DnsSearch") or ()),
                      dns_options=tuple(str(d) for d in host.get("DnsOptions") or ()))


def _refuse_for_shared(cfg: dict[str, Any], body: dict[str, Any]) -> None:
    host = cfg["HostConfig"]
    if body.get("Hostname"):
        raise InvalidArgument("conflicting options: hostname and the network mode")
    if host.get("Dns") or host.get("DnsSearch") or host.get("DnsOptions"):
        raise InvalidArgument("conflicting options: dns and the network mode")
    if host.get("ExtraHosts"):
        raise InvalidArgument("conflicting options: custom host-to-IP mapping and the network mode")
    if host.get("PortBindings") or host.get("PublishAllPorts"):
        raise InvalidArgument("conflicting options: port publishing and the container type network mode")


def _pick(endpoints_cfg: dict[str, Any], mode: str, net: NetworkRecord) -> dict[str, Any]:
    for key in (mode, net.name, net.id, "default"):
        if key in endpoints_cfg:
            return dict(endpoints_cfg[key] or {})
    return {}


def _endpoint_settings(net: NetworkRecord, endpoint_id: str, endpoint: Endpoint | None, extra: dict[str, Any],
                       *, dns_names: list[str] | None) -> dict[str, Any]:
    prefix = ipaddress.IPv4Network(net.subnet).prefixlen if endpoint is not None and net.subnet else 0
    return {
        "IPAMConfig": extra.get("IPAMConfig"), "Links": None, "Aliases": extra.get("Aliases"),
        "MacAddress": endpoint.mac if endpoint else "", "DriverOpts": extra.get("DriverOpts"),
        "GwPriority": extra.get("GwPriority", 0), "NetworkID": net.id, "EndpointID": endpoint_id,
        "Gateway": endpoint.network.gateway if endpoint else "", "IPAddress": endpoint.address if endpoint else "",
        "IPPrefixLen": prefix, "IPv6Gateway": "", "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0,
        "DNSNames": dns_names,
    }


def port_requests(cfg: dict[str, Any]) -> tuple[PortRequest, ...]:
    """``-p`` (``PortBindings``) and ``-P`` (``PublishAllPorts`` over ``ExposedPorts``)."""
    host = cfg["HostConfig"]
    bindings: dict[str, Any] = host.get("PortBindings") or {}
    out: list[PortRequest] = []
    for key, binds in bindings.items():
        port, proto = parse_port_key(key)
        for bind in binds or [{}]:
            bind = bind or {}
            host_ip = str(bind.get("HostIp") or "")
            if host_ip:
                try:
                    address = ipaddress.ip_address(host_ip.strip("[]"))
                except ValueError:
                    raise InvalidArgument(f"invalid host IP address: {host_ip}") from None
                if address.version == 6:
                    continue  # IPv4 only: an IPv6 binding (-p [::]:…) is not made
            first, last = _host_ports(str(bind.get("HostPort") or ""))
            out.append(PortRequest(container_port=port, protocol=proto, host_ip=host_ip, host_port=first,
                                   host_port_end=last))
    if host.get("PublishAllPorts"):
        for key in cfg["Config"].get("ExposedPorts") or {}:
            if key not in bindings:
                port, proto = parse_port_key(key)
                out.append(PortRequest(container_port=port, protocol=proto))
    return tuple(out)


def parse_port_key(key: str) -> tuple[int, str]:
    port, _, proto = key.partition("/")
    proto = (proto or "tcp").lower()
    if proto not in ("tcp", "udp", "sctp") or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidArgument(f"invalid port specification: \"{key}\"")
    return int(port), proto


def _host_ports(text: str) -> tuple[int, int]:
    if not text:
        return 0, 0
    start, _, end = text.partition("-")
    try:
        first, last = int(start), int(end or start)
    except ValueError:
        raise InvalidArgument(f"invalid port specification: \"{text}\"") from None
    if not (0 <= first <= last < 65536):
        raise InvalidArgument(f"invalid port range: {text}")
    return first, (last if last != first else 0)


def _validate_ipam(cfg: dict[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    subnet_text = str(cfg.get("Subnet") or "")
    if not subnet_text:
        if cfg.get("IPRange") or cfg.get("Gateway"):
            raise InvalidArgument("invalid network config:\nip-range and gateway need a subnet")
        return out
    try:
        subnet = ipam.parse_subnet(subnet_text)
    except InvalidArgument as exc:
        raise InvalidArgument(f"invalid network config:\n{exc.message}") from None
    out["Subnet"] = str(subnet)
    if cfg.get("IPRange"):
        text = str(cfg["IPRange"])
        try:
            rng = ipaddress.ip_interface(text)
        except ValueError:
            raise InvalidArgument(f"invalid network config:\ninvalid ip-range {text}: invalid CIDR block notation") \
                from None
        if rng.ip != rng.network.network_address:
            raise InvalidArgument(f"invalid network config:\ninvalid ip-range {text}: it should be {rng.network}")
        if rng.network.prefixlen < subnet.prefixlen:
            raise InvalidArgument(f"invalid network config:\ninvalid ip-range {text}: CIDR block is bigger than its "
                                  f"parent subnet {subnet}")
        if not rng.network.subnet_of(subnet):  # type: ignore[arg-type]
            raise InvalidArgument(f"invalid network config:\ninvalid ip-range {text}: parent subnet {subnet} doesn't "
                                  "contain ip-range")
        out["IPRange"] = str(rng.network)
    if cfg.get("Gateway"):
        text = str(cfg["Gateway"])
        try:
            gateway = ipaddress.ip_address(text)
        except ValueError:
            raise InvalidArgument(f"invalid network config:\ninvalid gateway {text}: invalid address") from None
        if gateway not in subnet:
            raise InvalidArgument(f"invalid network config:\ninvalid gateway {text}: parent subnet {subnet} doesn't "
                                  "contain this address")
        out["Gateway"] = text
    return out


def _opt_bool(value: str | None, default: bool) -> bool:
    if value is None or value == "":
        return default
    return value.lower() in ("1", "t", "true", "yes")


def _label_matches(labels: dict[str, str], want: str) -> bool:
    key, sep, value = want.partition("=")
    return key in labels and (not sep or labels[key] == value)


def _rfc3339(ns: int) -> str:
    from apiserver.containers.views import rfc3339_nano

    return rfc3339_nano(ns)


def _created_ns(record: NetworkRecord) -> int:
    from apiserver.containers.views import parse_rfc3339

    return parse_rfc3339(str(record.config.get("Created", "")))


def _until(values: list[str]) -> int | None:
    """``until``: a Unix timestamp (seconds, fractions allowed) or a Go duration before now
    (``10m``, ``1h30m``), as moby's ``filters.GetTimestamp`` accepts them."""
    if not values:
        return None
    value = values[0]
    try:
        return int(float(value) * 1_000_000_000)
    except ValueError:
        pass
    units = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000, "m": 60_000_000_000,
             "h": 3_600_000_000_000}
    total, number = 0, ""
    i = 0
    while i < len(value):
        ch = value[i]
        if ch.isdigit() or ch == ".":
            number += ch
            i += 1
            continue
        unit = value[i:i + 2] if value[i:i + 2] in units else ch
        if unit not in units or not number:
            raise InvalidArgument(f"failed to parse value as time or duration: \"{value}\"")
        total += int(float(number) * units[unit])
        number = ""
        i += len(unit)
    if number:
        raise InvalidArgument(f"failed to parse value as time or duration: \"{value}\"")
    return time.time_ns() - total
