"""``RemoteFiles`` and ``RemoteVolumes``: the storage Protocols of a host over its shim's gRPC
socket. Errors come back as the exact classes the shim raised (``protos.rpc``)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

import grpc

from protos.errors import Internal
from protos.rpc import rpc_errors, stream_errors
from protos.shim.v1 import shim_pb2 as pb
from protos.shim.v1 import shim_pb2_grpc
from shim.storage import convert
from shim.storage.api import ContainerFiles, FileStat, VolumeInfo, Volumes

_CHUNK = 1 << 20


async def _messages(call: Any) -> AsyncGenerator[Any, None]:
    try:
        async for message in stream_errors(call):
            yield message
    finally:
        call.cancel()  # no-op once finished; stops the server when the caller walks away


class RemoteFiles:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = shim_pb2_grpc.FilesStub(channel)  # type: ignore[no-untyped-call]

    async def stat_path(self, id: str, path: str) -> FileStat:
        async with rpc_errors():
            response = await self._stub.StatPath(pb.FilesStatRequest(id=id, path=path))
        return convert.stat_from_proto(response.stat)

    async def read_archive(self, id: str, path: str) -> tuple[FileStat, AsyncIterator[bytes]]:
        messages = _messages(self._stub.ReadArchive(pb.ReadArchiveRequest(id=id, path=path)))
        first = await anext(messages, None)  # path errors come here, before any data
        if first is None or first.WhichOneof("event") != "stat":
            await messages.aclose()
            raise Internal("read archive: the shim sent no stat")
        return convert.stat_from_proto(first.stat), self._data(messages)

    @staticmethod
    async def _data(messages: AsyncGenerator[Any, None]) -> AsyncIterator[bytes]:
        async with contextlib.aclosing(messages):
            async for message in messages:
                yield message.data

    async def write_archive(self, id: str, path: str, chunks: AsyncIterator[bytes], *,
                            no_overwrite_dir_non_dir: bool = False, owner: tuple[int, int] | None = None) -> None:
        async def requests() -> AsyncIterator[pb.WriteArchiveRequest]:
            yield convert.write_header(id, path, no_overwrite_dir_non_dir=no_overwrite_dir_non_dir, owner=owner)
            async for chunk in chunks:
                for start in range(0, len(chunk), _CHUNK):
                    yield pb.WriteArchiveRequest(data=chunk[start:start + _CHUNK])

        failure: list[BaseException] = []

        async def tracked() -> AsyncIterator[pb.WriteArchiveRequest]:
            try:
                async for request in requests():
                    yield request
            except BaseException as exc:
                failure.append(exc)
                raise

        call = self._stub.WriteArchive(tracked())
        try:
            async with rpc_errors():
                await call
        except BaseException:
            call.cancel()
            if failure:  # the caller's own stream broke: say that, not CANCELLED
                raise failure[0] from None
            raise

    async def populate(self, id: str) -> None:
        async with rpc_errors():
            await self._stub.Populate(pb.PopulateRequest(id=id))


class RemoteVolumes:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = shim_pb2_grpc.VolumesStub(channel)  # type: ignore[no-untyped-call]

    async def create(self, name: str, options: Mapping[str, str]) -> VolumeInfo:
        async with rpc_errors():
            response = await self._stub.CreateVolume(pb.CreateVolumeRequest(name=name, options=dict(options)))
        return convert.volume_info_from_proto(response)

    async def remove(self, name: str) -> None:
        async with rpc_errors():
            await self._stub.RemoveVolume(pb.RemoveVolumeRequest(name=name))

    async def usage(self, name: str) -> int:
        async with rpc_errors():
            response = await self._stub.VolumeUsage(pb.VolumeUsageRequest(name=name))
        return int(response.size)


if TYPE_CHECKING:
    def _conforms(channel: grpc.aio.Channel) -> tuple[ContainerFiles, Volumes]:
        """mypy proves the proxies implement the same Protocols as the local classes."""
        return RemoteFiles(channel), RemoteVolumes(channel)
