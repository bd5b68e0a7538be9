"""Container networking as the shim sees it: plain data, no behaviour.

The API server decides *what* a container's network is (mode, networks, addresses from IPAM,
names, requested port bindings, DNS settings); the shim wires it on its host. A container's
``Networking`` travels inside its ``ContainerSpec`` at create, and ``Endpoint`` values travel
alone for ``docker network connect``.

Vocabulary (Docker's):

* a **network** is a bridge device with a subnet and a gateway address on the bridge;
* an **endpoint** is one container's attachment to one network: a veth pair whose host end is
  enslaved to the bridge and whose other end (``eth0``, ``eth1``…) is in the container's network
  namespace, with an address from the network's IPAM;
* a **port binding** maps a host address and port to a container port (``-p``), by DNAT.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol


class NetworkMode(enum.StrEnum):
    """``UNMANAGED``: the runtime's own private namespace with only ``lo`` and no generated
    files (what a ``ContainerSpec`` without networking gets)."""

    UNMANAGED = ""
    NONE = "none"
    HOST = "host"
    BRIDGE = "bridge"
    CONTAINER = "container"


@dataclass(frozen=True, slots=True)
class BridgeNetwork:
    """A bridge network as a host wires it. ``bridge`` is the device name; ``subnet`` a CIDR
    whose ``gateway`` address goes on the bridge. ``embedded_dns``: containers resolve each
    other through the resolver at 127.0.0.11 (user-defined networks; not the default bridge)."""

    id: str
    name: str
    bridge: str
    subnet: str
    gateway: str
    internal: bool = False
    icc: bool = True
    masquerade: bool = True
    mtu: int = 0
    embedded_dns: bool = False


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One container on one network. ``names`` are what the embedded resolver answers for on
    this network (container name, aliases, short id)."""

    network: BridgeNetwork
    id: str
    address: str
    mac: str
    names: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PortRequest:
    """One ``-p``: container port/protocol, host address ("" = every address) and host port;
    ``host_port`` 0 asks for an ephemeral port, ``host_port_end`` > ``host_port`` for the first
    free port of a range."""

    container_port: int
    protocol: str = "tcp"
    host_ip: str = ""
    host_port: int = 0
    host_port_end: int = 0


@dataclass(frozen=True, slots=True)
class PortBinding:
    """A port binding in force: ``host_ip`` is ``0.0.0.0`` for every address."""

    container_port: int
    protocol: str
    host_ip: str
    host_port: int


@dataclass(frozen=True, slots=True)
class Networking:
    """A container's network. ``container`` (mode ``CONTAINER``): the id of the container whose
    namespace and files this one shares. ``extra_hosts`` are ``name:address`` (``--add-host``)."""

    mode: NetworkMode = NetworkMode.UNMANAGED
    endpoints: tuple[Endpoint, ...] = ()
    container: str = ""
    dns: tuple[str, ...] = ()
    dns_search: tuple[str, ...] = ()
    dns_options: tuple[str, ...] = ()
    extra_hosts: tuple[str, ...] = ()
    ports: tuple[PortRequest, ...] = ()


@dataclass(frozen=True, slots=True)
class NetworkState:
    """What the shim reports for a container (written to its Redis record as ``net``): the
    namespace path (``SandboxKey``), the generated files, and the port bindings in force
    (empty while the container is not running)."""

    sandbox_key: str = ""
    hosts_path: str = ""
    hostname_path: str = ""
    resolv_conf_path: str = ""
    ports: tuple[PortBinding, ...] = ()


class Networks(Protocol):
    """The network side of one host, for the API server (the runtime's ``create``/``start``/
    ``delete`` carry the rest). Every method is idempotent."""

    async def ensure_network(self, network: BridgeNetwork) -> None:
        """Create (or adopt) the network's bridge and firewall entries on this host."""
        ...

    async def remove_network(self, network_id: str) -> None:
        """Delete the network's bridge; ``FailedPrecondition`` while a container here uses it."""
        ...

    async def connect(self, container_id: str, endpoint: Endpoint) -> None:
        """Add ``endpoint`` to the container (its interface appears at once if it runs)."""
        ...

    async def disconnect(self, container_id: str, network_id: str) -> None:
        """Remove the container's endpoint on ``network_id`` (a no-op if it has none)."""
        ...
