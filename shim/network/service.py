"""``NetworksServicer``: the gRPC face of any :class:`shim.network.api.Networks`."""

from __future__ import annotations

import grpc

from protos.rpc import maps_errors
from protos.shim.v1 import shim_pb2 as pb
from protos.shim.v1 import shim_pb2_grpc
from shim.network import convert
from shim.network.api import Networks


@maps_errors
class NetworksServicer(shim_pb2_grpc.NetworksServicer):
    def __init__(self, networks: Networks) -> None:
        self._networks = networks

    async def EnsureNetwork(self, request: pb.EnsureNetworkRequest,
                            context: grpc.aio.ServicerContext) -> pb.EnsureNetworkResponse:
        await self._networks.ensure_network(convert.network_from_proto(request.network))
        return pb.EnsureNetworkResponse()

    async def RemoveNetwork(self, request: pb.RemoveNetworkRequest,
                            context: grpc.aio.ServicerContext) -> pb.RemoveNetworkResponse:
        await self._networks.remove_network(request.id)
        return pb.RemoveNetworkResponse()

    async def Connect(self, request: pb.ConnectRequest, context: grpc.aio.ServicerContext) -> pb.ConnectResponse:
        await self._networks.connect(request.container_id, convert.endpoint_from_proto(request.endpoint))
        return pb.ConnectResponse()

    async def Disconnect(self, request: pb.DisconnectRequest,
                         context: grpc.aio.ServicerContext) -> pb.DisconnectResponse:
        await self._networks.disconnect(request.container_id, request.network_id)
        return pb.DisconnectResponse()
