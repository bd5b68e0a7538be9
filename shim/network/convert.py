"""Conversions between :mod:`shim.network.api` and the gRPC messages (the only place their
fields are copied)."""

from __future__ import annotations

from protos.shim.v1 import shim_pb2 as pb
from shim.network.api import BridgeNetwork, Endpoint, Networking, NetworkMode, PortRequest


def network_to_proto(n: BridgeNetwork) -> pb.BridgeNetwork:
    return pb.BridgeNetwork(id=n.id, name=n.name, bridge=n.bridge, subnet=n.subnet, gateway=n.gateway,
                            internal=n.internal, icc=n.icc, masquerade=n.masquerade, mtu=n.mtu,
                            embedded_dns=n.embedded_dns)


def network_from_proto(n: pb.BridgeNetwork) -> BridgeNetwork:
    return BridgeNetwork(id=n.id, name=n.name, bridge=n.bridge, subnet=n.subnet, gateway=n.gateway,
                         internal=n.internal, icc=n.icc, masquerade=n.masquerade, mtu=n.mtu,
                         embedded_dns=n.embedded_dns)


def endpoint_to_proto(e: Endpoint) -> pb.Endpoint:
    return pb.Endpoint(network=network_to_proto(e.network), id=e.id, address=e.address, mac=e.mac,
                       names=list(e.names))


def endpoint_from_proto(e: pb.Endpoint) -> Endpoint:
    return Endpoint(network=network_from_proto(e.network), id=e.id, address=e.address, mac=e.mac,
                    names=tuple(e.names))


def port_to_proto(p: PortRequest) -> pb.PortRequest:
    return pb.PortRequest(container_port=p.container_port, protocol=p.protocol, host_ip=p.host_ip,
                          host_port=p.host_port, host_port_end=p.host_port_end)


def port_from_proto(p: pb.PortRequest) -> PortRequest:
    return PortRequest(container_port=p.container_port, protocol=p.protocol or "tcp", host_ip=p.host_ip,
                       host_port=p.host_port, host_port_end=p.host_port_end)


def networking_to_proto(n: Networking) -> pb.Networking:
    return pb.Networking(mode=n.mode.value, endpoints=[endpoint_to_proto(e) for e in n.endpoints],
                         container=n.container, dns=list(n.dns), dns_search=list(n.dns_search),
                         dns_options=list(n.dns_options), extra_hosts=list(n.extra_hosts),
                         ports=[port_to_proto(p) for p in n.ports])


def networking_from_proto(n: pb.Networking) -> Networking:
    return Networking(mode=NetworkMode(n.mode), endpoints=tuple(endpoint_from_proto(e) for e in n.endpoints),
                      container=n.container, dns=tuple(n.dns), dns_search=tuple(n.dns_search),
                      dns_options=tuple(n.dns_options), extra_hosts=tuple(n.extra_hosts),
                      ports=tuple(port_from_proto(p) for p in n.ports))
