"""gRPC servicers: request → call the implementation → response. No logic lives here.

Each servicer wraps any implementation of its Protocol (the local one in the snapshotter process,
a fake in tests). ``@maps_errors`` turns the classified errors into gRPC statuses with their
class in the trailing metadata; streams are cut into ~1 MiB messages.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TypeVar

import grpc

from protos.errors import InvalidArgument
from protos.rpc import maps_errors, request_data
from protos.snapshotter.v1 import snapshotter_pb2 as pb
from protos.snapshotter.v1 import snapshotter_pb2_grpc as pb_grpc
from snapshotter import convert
from snapshotter.api import ContentStore, Images, Snapshotter
from snapshotter.streams import rechunk

LIST_BATCH = 100
CHANGES_BATCH = 5000
T = TypeVar("T")


@maps_errors
class SnapshotsServicer(pb_grpc.SnapshotsServicer):
    def __init__(self, snapshotter: Snapshotter) -> None:
        self._s = snapshotter

    async def Prepare(self, request: pb.PrepareRequest, context: grpc.aio.ServicerContext) -> pb.PrepareResponse:
        mounts = await self._s.prepare(request.key, request.parent, dict(request.labels))
        return pb.PrepareResponse(mounts=convert.mounts_to_proto(mounts))

    async def View(self, request: pb.ViewRequest, context: grpc.aio.ServicerContext) -> pb.ViewResponse:
        mounts = await self._s.view(request.key, request.parent, dict(request.labels))
        return pb.ViewResponse(mounts=convert.mounts_to_proto(mounts))

    async def Mounts(self, request: pb.MountsRequest, context: grpc.aio.ServicerContext) -> pb.MountsResponse:
        return pb.MountsResponse(mounts=convert.mounts_to_proto(await self._s.mounts(request.key)))

    async def Commit(self, request: pb.CommitRequest, context: grpc.aio.ServicerContext) -> pb.CommitResponse:
        await self._s.commit(request.name, request.key, dict(request.labels))
        return pb.CommitResponse()

    async def Remove(self, request: pb.RemoveRequest, context: grpc.aio.ServicerContext) -> pb.RemoveResponse:
        await self._s.remove(request.key)
        return pb.RemoveResponse()

    async def Stat(self, request: pb.StatRequest, context: grpc.aio.ServicerContext) -> pb.StatResponse:
        return pb.StatResponse(info=convert.info_to_proto(await self._s.stat(request.key)))

    async def Update(self, request: pb.UpdateRequest, context: grpc.aio.ServicerContext) -> pb.UpdateResponse:
        info = await self._s.update(request.key, dict(request.labels))
        return pb.UpdateResponse(info=convert.info_to_proto(info))

    async def List(self, request: pb.ListSnapshotsRequest,
                   context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ListSnapshotsResponse]:
        batch: list[pb.Info] = []
        async for info in self._s.list(list(request.filters)):
            batch.append(convert.info_to_proto(info))
            if len(batch) >= LIST_BATCH:
                yield pb.ListSnapshotsResponse(info=batch)
                batch = []
        if batch:
            yield pb.ListSnapshotsResponse(info=batch)

    async def Usage(self, request: pb.UsageRequest, context: grpc.aio.ServicerContext) -> pb.UsageResponse:
        return convert.usage_to_proto(await self._s.usage(request.key))

    async def Cleanup(self, request: pb.CleanupRequest, context: grpc.aio.ServicerContext) -> pb.CleanupResponse:
        return pb.CleanupResponse(removed=await self._s.cleanup())

    async def Changes(self, request: pb.ChangesRequest,
                      context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ChangesResponse]:
        changes = await self._s.changes(request.key)
        for start in range(0, len(changes), CHANGES_BATCH):
            yield pb.ChangesResponse(changes=[convert.change_to_proto(c)
                                              for c in changes[start:start + CHANGES_BATCH]])



@maps_errors
class ContentsServicer(pb_grpc.ContentsServicer):
    def __init__(self, content: ContentStore) -> None:
        self._c = content

    async def Info(self, request: pb.InfoRequest, context: grpc.aio.ServicerContext) -> pb.InfoResponse:
        return pb.InfoResponse(info=convert.blob_to_proto(await self._c.info(request.digest)))

    async def Read(self, request: pb.ReadContentRequest,
                   context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ReadContentResponse]:
        async for chunk in rechunk(self._c.read(request.digest, request.offset)):
            yield pb.ReadContentResponse(data=chunk)

    async def Write(self, request_iterator: AsyncIterator[pb.WriteContentRequest],
                    context: grpc.aio.ServicerContext) -> pb.WriteContentResponse:
        stream = aiter(request_iterator)
        first = await anext(stream, None)
        expected = first.expected if first is not None else ""
        size = first.size if first is not None else -1
        info = await self._c.write(request_data(first, stream), expected, size)
        return pb.WriteContentResponse(info=convert.blob_to_proto(info))

    async def Delete(self, request: pb.DeleteContentRequest,
                     context: grpc.aio.ServicerContext) -> pb.DeleteContentResponse:
        await self._c.delete(request.digest)
        return pb.DeleteContentResponse()

    async def List(self, request: pb.ListContentRequest,
                   context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ListContentResponse]:
        batch: list[pb.BlobInfo] = []
        async for blob in self._c.list():
            batch.append(convert.blob_to_proto(blob))
            if len(batch) >= LIST_BATCH:
                yield pb.ListContentResponse(info=batch)
                batch = []
        if batch:
            yield pb.ListContentResponse(info=batch)



@contextlib.asynccontextmanager
async def _closing(events: AsyncIterator[T]) -> AsyncIterator[AsyncIterator[T]]:
    """Close a stream of events when the RPC ends early (the caller went away): its work stops."""
    try:
        yield events
    finally:
        closer = getattr(events, "aclose", None)
        if closer is not None:
            await closer()




@maps_errors
class ImagesServicer(pb_grpc.ImagesServicer):
    def __init__(self, images: Images) -> None:
        self._i = images

    async def Import(self, request_iterator: AsyncIterator[pb.ImportRequest],
                     context: grpc.aio.ServicerContext) -> pb.ImportResponse:
        records = await self._i.import_archive(request_data(None, request_iterator))
        return pb.ImportResponse(images=[convert.image_record_to_proto(r) for r in records])

    async def Export(self, request: pb.ExportRequest,
                     context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ExportResponse]:
        images = [convert.export_image_from_proto(x) for x in request.images]
        async for chunk in rechunk(self._i.export_archive(images)):
            yield pb.ExportResponse(data=chunk)

    async def Unpack(self, request: pb.UnpackRequest, context: grpc.aio.ServicerContext) -> pb.UnpackResponse:
        chain_id = await self._i.unpack([convert.layer_from_proto(x) for x in request.layers])
        return pb.UnpackResponse(chain_id=chain_id)

    async def Pull(self, request: pb.PullRequest,
                   context: grpc.aio.ServicerContext) -> AsyncIterator[pb.PullResponse]:
        auth = convert.registry_auth_from_proto(request.auth)
        async with _closing(self._i.pull(request.reference, auth, request.platform)) as events:
            async for event in events:
                yield convert.pull_event_to_proto(event)

    async def Push(self, request: pb.PushRequest,
                   context: grpc.aio.ServicerContext) -> AsyncIterator[pb.PushResponse]:
        image = convert.export_image_from_proto(request.image)
        auth = convert.registry_auth_from_proto(request.auth)
        async with _closing(self._i.push(image, request.reference, auth)) as events:
            async for event in events:
                yield convert.push_event_to_proto(event)

    async def ImportRootfs(self, request_iterator: AsyncIterator[pb.ImportRootfsRequest],
                           context: grpc.aio.ServicerContext) -> pb.ImportRootfsResponse:
        stream = aiter(request_iterator)
        first = await anext(stream, None)
        config = first.config if first is not None else b""
        record = await self._i.import_rootfs(request_data(first, stream), config)
        return pb.ImportRootfsResponse(image=convert.image_record_to_proto(record))

    async def CommitLayer(self, request: pb.CommitLayerRequest,
                          context: grpc.aio.ServicerContext) -> pb.CommitLayerResponse:
        return convert.commit_result_to_proto(await self._i.commit_layer(request.key, consume=request.consume))

    async def ApplyTar(self, request_iterator: AsyncIterator[pb.ApplyTarRequest],
                       context: grpc.aio.ServicerContext) -> pb.ApplyTarResponse:
        stream = aiter(request_iterator)
        first = await anext(stream, None)
        if first is None:
            raise InvalidArgument("apply tar: the first message must name the snapshot")
        await self._i.apply_tar(first.key, request_data(first, stream), first.dest,
                                no_overwrite_dir_non_dir=first.no_overwrite_dir_non_dir,
                                owner=convert.apply_tar_owner(first))
        return pb.ApplyTarResponse()

    async def StatPath(self, request: pb.StatPathRequest, context: grpc.aio.ServicerContext) -> pb.StatPathResponse:
        return pb.StatPathResponse(stat=convert.path_stat_to_proto(await self._i.stat_path(request.key, request.path)))

    async def ReadTar(self, request: pb.ReadTarRequest,
                      context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ReadTarResponse]:
        async with _closing(rechunk(self._i.read_tar(request.key, request.path))) as chunks:
            async for chunk in chunks:
                yield pb.ReadTarResponse(data=chunk)


def add_servicers(server: grpc.aio.Server, *, snapshotter: Snapshotter, content: ContentStore,
                  images: Images) -> None:
    """Register the three services of one host on ``server``."""
    pb_grpc.add_SnapshotsServicer_to_server(SnapshotsServicer(snapshotter), server)  # type: ignore[no-untyped-call]
    pb_grpc.add_ContentsServicer_to_server(ContentsServicer(content), server)  # type: ignore[no-untyped-call]
    pb_grpc.add_ImagesServicer_to_server(ImagesServicer(images), server)  # type: ignore[no-untyped-call]
