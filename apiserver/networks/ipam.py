"""Address arithmetic and subnet choice (pure functions; Redis-side allocation is in
:mod:`apiserver.networks.store`).

Subnets are chosen from address pools (dockerd's ``--default-address-pool base=…,size=…``)
never overlapping anything in use: Berth's other networks, every route of the host (the
default route excepted), the host's nameservers, and Docker's own default bridge
172.17.0.0/16 even when no dockerd runs (so a later dockerd keeps its usual address).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from protos.errors import InvalidArgument

IPv4Network = ipaddress.IPv4Network
IPv4Address = ipaddress.IPv4Address

DOCKER0 = IPv4Network("172.17.0.0/16")


@dataclass(frozen=True, slots=True)
class Pool:
    """``--default-address-pool``: carve ``size``-bit subnets out of ``base``."""

    base: IPv4Network
    size: int

    @classmethod
    def parse(cls, text: str) -> Pool:
        """``base=172.18.0.0/16,size=24``."""
        fields = dict(part.split("=", 1) for part in text.split(",") if "=" in part)
        try:
            base = IPv4Network(fields["base"])
            size = int(fields.get("size", base.prefixlen))
        except (KeyError, ValueError) as exc:
            raise InvalidArgument(f"invalid default address pool {text!r}: {exc}") from None
        if not base.prefixlen <= size <= 30:
            raise InvalidArgument(f"invalid default address pool {text!r}: size must be in [{base.prefixlen}, 30]")
        return cls(base, size)

    def subnets(self) -> Iterable[IPv4Network]:
        return self.base.subnets(new_prefix=self.size)


# dockerd's defaults (daemon/config: 172.17-31/16, then 192.168/16 in /20s), except 172.17.
DEFAULT_POOLS: tuple[Pool, ...] = (
    Pool(IPv4Network("172.18.0.0/15"), 16), Pool(IPv4Network("172.20.0.0/14"), 16),
    Pool(IPv4Network("172.24.0.0/13"), 16), Pool(IPv4Network("192.168.0.0/16"), 20),
)


def choose_subnet(pools: Sequence[Pool], in_use: Iterable[IPv4Network]) -> IPv4Network | None:
    """The first subnet of the pools that overlaps nothing in ``in_use``."""
    used = [n for n in in_use if n.prefixlen > 0]
    for pool in pools:
        for candidate in pool.subnets():
            if not any(candidate.overlaps(u) for u in used):
                return candidate
    return None


def host_networks(route_file: Path = Path("/proc/thread-self/net/route"),
                  resolv_conf: Path = Path("/etc/resolv.conf")) -> list[IPv4Network]:
    """Destinations of the host's IPv4 routes (of the calling thread's namespace), and its
    nameservers as /32s, with Docker's default bridge: what a new subnet must not overlap."""
    found = [DOCKER0]
    try:
        lines = route_file.read_text().splitlines()[1:]
    except OSError:
        lines = []
    for line in lines:
        fields = line.split()
        if len(fields) < 8:
            continue
        dest = IPv4Address(int(fields[1], 16).to_bytes(4, "little"))
        mask = IPv4Address(int(fields[7], 16).to_bytes(4, "little"))
        try:
            net = IPv4Network(f"{dest}/{mask}", strict=False)
        except ValueError:
            continue
        if net.prefixlen:
            found.append(net)
    try:
        for line in resolv_conf.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                try:
                    found.append(IPv4Network(f"{IPv4Address(parts[1])}/32"))
                except ValueError:
                    continue
    except OSError:
        pass
    return found


def parse_subnet(text: str) -> IPv4Network:
    """A subnet as moby's ValidateIPAM words its complaints."""
    try:
        iface = ipaddress.ip_interface(text)
    except ValueError:
        raise InvalidArgument(f"invalid CIDR address: {text}") from None
    if not isinstance(iface, ipaddress.IPv4Interface):
        raise InvalidArgument(f"invalid subnet {text}: IPv6 networks are not supported by Berth")
    if iface.ip != iface.network.network_address:
        raise InvalidArgument(f"invalid subnet {text}: it should be {iface.network}")
    return iface.network


def parse_address(text: str, what: str = "IPv4 address") -> IPv4Address:
    try:
        return IPv4Address(text)
    except ValueError:
        raise InvalidArgument(f"invalid {what}: {text}") from None


def first_host(net: IPv4Network) -> IPv4Address:
    return net.network_address + 1


def host_range(subnet: IPv4Network, ip_range: IPv4Network | None) -> tuple[int, int]:
    """Allocatable addresses as integers [first, last]: the subnet without its network and
    broadcast addresses, narrowed to ``ip_range``."""
    first, last = int(subnet.network_address) + 1, int(subnet.broadcast_address) - 1
    if subnet.prefixlen >= 31:
        first, last = int(subnet.network_address), int(subnet.broadcast_address)
    if ip_range is not None:
        first = max(first, int(ip_range.network_address))
        last = min(last, int(ip_range.broadcast_address))
    return first, last


def mac_for(address: IPv4Address) -> str:
    """A locally administered MAC derived from the address (Docker's 02:42 scheme), so a
    container keeps its MAC with its address."""
    return "02:42:" + ":".join(f"{b:02x}" for b in address.packed)
