"""gRPC servicers of the shim's storage: request → call the implementation → response."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from protos.errors import InvalidArgument
from protos.rpc import maps_errors, request_data
from protos.shim.v1 import shim_pb2 as pb
from protos.shim.v1 import shim_pb2_grpc
from shim.storage import convert
from shim.storage.api import ContainerFiles, Volumes


@maps_errors
class FilesServicer(shim_pb2_grpc.FilesServicer):
    def __init__(self, files: ContainerFiles) -> None:
        self._f = files

    async def StatPath(self, request: pb.FilesStatRequest, context: grpc.aio.ServicerContext) -> pb.FilesStatResponse:
        return pb.FilesStatResponse(stat=convert.stat_to_proto(await self._f.stat_path(request.id, request.path)))

    async def ReadArchive(self, request: pb.ReadArchiveRequest,
                          context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ReadArchiveResponse]:
        stat, chunks = await self._f.read_archive(request.id, request.path)
        try:
            yield pb.ReadArchiveResponse(stat=convert.stat_to_proto(stat))
            async for chunk in chunks:
                yield pb.ReadArchiveResponse(data=chunk)
        finally:
            closer = getattr(chunks, "aclose", None)
            if closer is not None:
                await closer()

    async def WriteArchive(self, request_iterator: AsyncIterator[pb.WriteArchiveRequest],
                           context: grpc.aio.ServicerContext) -> pb.WriteArchiveResponse:
        stream = aiter(request_iterator)
        first = await anext(stream, None)
        if first is None:
            raise InvalidArgument("write archive: the first message must name the container")
        await self._f.write_archive(first.id, first.path, request_data(first, stream),
                                    no_overwrite_dir_non_dir=first.no_overwrite_dir_non_dir,
                                    owner=convert.write_owner(first))
        return pb.WriteArchiveResponse()

    async def Populate(self, request: pb.PopulateRequest, context: grpc.aio.ServicerContext) -> pb.PopulateResponse:
        await self._f.populate(request.id)
        return pb.PopulateResponse()



@maps_errors
class VolumesServicer(shim_pb2_grpc.VolumesServicer):
    def __init__(self, volumes: Volumes) -> None:
        self._v = volumes

    async def CreateVolume(self, request: pb.CreateVolumeRequest,
                           context: grpc.aio.ServicerContext) -> pb.CreateVolumeResponse:
        return convert.volume_info_to_proto(await self._v.create(request.name, dict(request.options)))

    async def RemoveVolume(self, request: pb.RemoveVolumeRequest,
                           context: grpc.aio.ServicerContext) -> pb.RemoveVolumeResponse:
        await self._v.remove(request.name)
        return pb.RemoveVolumeResponse()

    async def VolumeUsage(self, request: pb.VolumeUsageRequest,
                          context: grpc.aio.ServicerContext) -> pb.VolumeUsageResponse:
        return pb.VolumeUsageResponse(size=await self._v.usage(request.name))


def add_servicers(server: grpc.aio.Server, *, files: ContainerFiles, volumes: Volumes) -> None:
    shim_pb2_grpc.add_FilesServicer_to_server(FilesServicer(files), server)  # type: ignore[no-untyped-call]
    shim_pb2_grpc.add_VolumesServicer_to_server(VolumesServicer(volumes), server)  # type: ignore[no-untyped-call]
