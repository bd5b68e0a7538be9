"""Networks and container network settings in Docker's JSON shapes (swagger ``Network``,
``EndpointSettings``, ``NetworkSettings``, ``Port``)."""

from __future__ import annotations

import hashlib
import ipaddress
from typing import Any

from apiserver.containers.store import ContainerRecord
from apiserver.networks import ipam
from apiserver.networks.store import NetworkRecord


def network_view(record: NetworkRecord, endpoints: dict[str, dict[str, Any]]) -> dict[str, Any]:
    out = {k: v for k, v in record.config.items() if k != "Berth"}
    prefix = ipaddress.IPv4Network(record.subnet).prefixlen if record.subnet else 0
    containers: dict[str, Any] = {}
    for container_id, ep in endpoints.items():
        address = str(ipaddress.IPv4Address(int(ep["Address"]))) if ep.get("Address") else ""
        containers[container_id] = {
            "Name": ep.get("Name", ""), "EndpointID": ep.get("EndpointID", ""),
            "MacAddress": ep.get("MacAddress") or (ipam.mac_for(ipaddress.IPv4Address(address)) if address else ""),
            "IPv4Address": f"{address}/{prefix}" if address else "", "IPv6Address": "",
        }
    out["Containers"] = containers
    return out


def _exposed(record: ContainerRecord) -> list[str]:
    cfg = record.config
    keys = list((cfg["Config"].get("ExposedPorts") or {}).keys())
    for key in (cfg["HostConfig"].get("PortBindings") or {}):
        if key not in keys:
            keys.append(key)
    return keys


def _key(key: str) -> str:
    return key if "/" in key else f"{key}/tcp"


def ports_map(record: ContainerRecord) -> dict[str, Any]:
    """``NetworkSettings.Ports``: every exposed port with its bindings in force (null when not
    published); {} while the container is not running, as Docker shows it."""
    if not record.running:
        return {}
    bound = (record.net or {}).get("ports") or []
    out: dict[str, Any] = {_key(k): None for k in _exposed(record)}
    for b in bound:
        key = f"{b['container_port']}/{b['protocol']}"
        entry = {"HostIp": b["host_ip"], "HostPort": str(b["host_port"])}
        if out.get(key) is None:
            out[key] = [entry]
        else:
            out[key].append(entry)
    return out


def port_list(record: ContainerRecord) -> list[dict[str, Any]]:
    """``docker ps``'s ``Ports`` (running containers only)."""
    if not record.running:
        return []
    out: list[dict[str, Any]] = []
    published = set()
    for b in (record.net or {}).get("ports") or []:
        out.append({"IP": b["host_ip"], "PrivatePort": int(b["container_port"]), "PublicPort": int(b["host_port"]),
                    "Type": b["protocol"]})
        published.add((int(b["container_port"]), b["protocol"]))
    for key in _exposed(record):
        port, _, proto = _key(key).partition("/")
        if port.isdigit() and (int(port), proto) not in published:
            out.append({"PrivatePort": int(port), "Type": proto})
    return out


def networks(record: ContainerRecord) -> dict[str, Any]:
    return dict(((record.config.get("NetworkSettings") or {}).get("Networks")) or {})


def network_settings(record: ContainerRecord) -> dict[str, Any]:
    nets = networks(record)
    net_state = record.net or {}
    key = str(net_state.get("sandbox_key") or "") if record.running else ""
    default = nets.get("bridge") or {}
    return {
        "Bridge": "",
        "SandboxID": hashlib.sha256(key.encode()).hexdigest() if key else "",
        "SandboxKey": key,
        "Ports": ports_map(record),
        "HairpinMode": False, "LinkLocalIPv6Address": "", "LinkLocalIPv6PrefixLen": 0,
        "SecondaryIPAddresses": None, "SecondaryIPv6Addresses": None,
        "EndpointID": default.get("EndpointID", ""), "Gateway": default.get("Gateway", ""),
        "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0,
        "IPAddress": default.get("IPAddress", ""), "IPPrefixLen": default.get("IPPrefixLen", 0),
        "IPv6Gateway": "", "MacAddress": default.get("MacAddress", ""),
        "Networks": nets,
    }


def file_paths(record: ContainerRecord) -> dict[str, str]:
    net_state = record.net or {}
    return {"ResolvConfPath": str(net_state.get("resolv_conf_path") or ""),
            "HostnamePath": str(net_state.get("hostname_path") or ""),
            "HostsPath": str(net_state.get("hosts_path") or "")}
