"""``RemoteNetworks``: :class:`shim.network.api.Networks` of a host, over its shim's gRPC socket."""

from __future__ import annotations

import grpc

from protos.rpc import rpc_errors
from protos.shim.v1 import shim_pb2 as pb
from protos.shim.v1 import shim_pb2_grpc
from shim.network import convert
from shim.network.api import BridgeNetwork, Endpoint


class RemoteNetworks:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = shim_pb2_grpc.NetworksStub(channel)  # type: ignore[no-untyped-call]

    async def ensure_network(self, network: BridgeNetwork) -> None:
        async with rpc_errors():
            await self._stub.EnsureNetwork(pb.EnsureNetworkRequest(network=convert.network_to_proto(network)))

    async def remove_network(self, network_id: str) -> None:
        async with rpc_errors():
            await self._stub.RemoveNetwork(pb.RemoveNetworkRequest(id=network_id))

    async def connect(self, container_id: str, endpoint: Endpoint) -> None:
        async with rpc_errors():
            await self._stub.Connect(pb.ConnectRequest(container_id=container_id,
                                                       endpoint=convert.endpoint_to_proto(endpoint)))

    async def disconnect(self, container_id: str, network_id: str) -> None:
        async with rpc_errors():
            await self._stub.Disconnect(pb.DisconnectRequest(container_id=container_id, network_id=network_id))
