"""Client proxies: the snapshotter's Protocols over a ``grpc.aio`` channel.

``RemoteSnapshotter``, ``RemoteContentStore`` and ``RemoteImages`` implement the same Protocols
as the local classes, so a caller cannot tell them apart: failed RPCs come back as the exact
domain error the server raised (``protos.rpc``), streams are sent in ~1 MiB messages, and a
server stream abandoned by the caller is cancelled. The channel belongs to the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import grpc

from common.mounts import Mount
from protos.rpc import rpc_errors, stream_errors
from protos.snapshotter.v1 import snapshotter_pb2 as pb
from protos.snapshotter.v1 import snapshotter_pb2_grpc as pb_grpc
from snapshotter import convert
from snapshotter.api import (
    BlobInfo,
    ChangeList,
    CommitResult,
    ContentStore,
    ExportImage,
    ImageRecord,
    Images,
    Info,
    LayerRef,
    PathStat,
    Progress,
    PullResult,
    PushResult,
    RegistryAuth,
    Snapshotter,
    Usage,
)
from snapshotter.streams import rechunk


class _SendFailure:
    """Remembers why a request stream stopped, so the caller sees its own error, not CANCELLED."""

    def __init__(self) -> None:
        self.error: BaseException | None = None

    async def track(self, messages: AsyncIterator[Any]) -> AsyncIterator[Any]:
        try:
            async for message in messages:
                yield message
        except (GeneratorExit, asyncio.CancelledError):
            # gRPC stopped reading: the call ended (the server answered early, with its error,
            # or the caller was cancelled): not a failure of the sender's to report instead.
            raise
        except BaseException as exc:
            self.error = exc
            raise

    def reraise(self) -> None:
        if self.error is not None:
            raise self.error


async def _unary(call: Any) -> Any:
    async with rpc_errors():
        return await call


async def _client_stream(method: Any, messages: AsyncIterator[Any]) -> Any:
    failure = _SendFailure()
    call = method(failure.track(messages))
    try:
        async with rpc_errors():
            return await call
    except BaseException:
        call.cancel()  # else the server keeps waiting for the rest of the stream
        failure.reraise()
        raise


async def _server_stream(call: Any) -> AsyncGenerator[Any, None]:
    try:
        async for message in stream_errors(call):
            yield message
    finally:
        call.cancel()  # no-op once finished; stops the server when the caller walks away


class RemoteSnapshotter:
    def __init__(self, channel: grpc.aio.Channel, *, timeout: float | None = None) -> None:
        self._stub = pb_grpc.SnapshotsStub(channel)  # type: ignore[no-untyped-call]
        self._timeout = timeout

    async def prepare(self, key: str, parent: str = "", labels: Mapping[str, str] | None = None) -> list[Mount]:
        request = pb.PrepareRequest(key=key, parent=parent, labels=dict(labels or {}))
        response = await _unary(self._stub.Prepare(request, timeout=self._timeout))
        return convert.mounts_from_proto(response.mounts)

    async def view(self, key: str, parent: str = "", labels: Mapping[str, str] | None = None) -> list[Mount]:
        request = pb.ViewRequest(key=key, parent=parent, labels=dict(labels or {}))
        response = await _unary(self._stub.View(request, timeout=self._timeout))
        return convert.mounts_from_proto(response.mounts)

    async def mounts(self, key: str) -> list[Mount]:
        response = await _unary(self._stub.Mounts(pb.MountsRequest(key=key), timeout=self._timeout))
        return convert.mounts_from_proto(response.mounts)

    async def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None) -> None:
        # No deadline by default: commit walks the upper directory to record its usage.
        await _unary(self._stub.Commit(pb.CommitRequest(name=name, key=key, labels=dict(labels or {}))))

    async def remove(self, key: str) -> None:
        await _unary(self._stub.Remove(pb.RemoveRequest(key=key), timeout=self._timeout))

    async def stat(self, key: str) -> Info:
        response = await _unary(self._stub.Stat(pb.StatRequest(key=key), timeout=self._timeout))
        return convert.info_from_proto(response.info)

    async def update(self, key: str, labels: Mapping[str, str]) -> Info:
        request = pb.UpdateRequest(key=key, labels=dict(labels))
        response = await _unary(self._stub.Update(request, timeout=self._timeout))
        return convert.info_from_proto(response.info)

    async def usage(self, key: str) -> Usage:
        return convert.usage_from_proto(await _unary(self._stub.Usage(pb.UsageRequest(key=key))))

    async def list(self, filters: Sequence[str] = ()) -> AsyncIterator[Info]:
        call = self._stub.List(pb.ListSnapshotsRequest(filters=list(filters)), timeout=self._timeout)
        async for response in _server_stream(call):
            for info in response.info:
                yield convert.info_from_proto(info)

    async def cleanup(self) -> int:
        response = await _unary(self._stub.Cleanup(pb.CleanupRequest()))
        return int(response.removed)

    async def changes(self, key: str) -> ChangeList:
        out: ChangeList = []
        async for response in _server_stream(self._stub.Changes(pb.ChangesRequest(key=key))):
            out.extend(convert.change_from_proto(c) for c in response.changes)
        return out


class RemoteContentStore:
    def __init__(self, channel: grpc.aio.Channel, *, timeout: float | None = None) -> None:
        self._stub = pb_grpc.ContentsStub(channel)  # type: ignore[no-untyped-call]
        self._timeout = timeout

    async def info(self, digest: str) -> BlobInfo:
        response = await _unary(self._stub.Info(pb.InfoRequest(digest=digest), timeout=self._timeout))
        return convert.blob_from_proto(response.info)

    async def read(self, digest: str, offset: int = 0) -> AsyncIterator[bytes]:
        async for response in _server_stream(self._stub.Read(pb.ReadContentRequest(digest=digest, offset=offset))):
            yield response.data

    async def write(self, chunks: AsyncIterator[bytes], expected: str = "", size: int = -1) -> BlobInfo:
        async def messages() -> AsyncIterator[pb.WriteContentRequest]:
            first = True
            async for chunk in rechunk(chunks):
                if first:
                    yield pb.WriteContentRequest(expected=expected, size=size, data=chunk)
                    first = False
                else:
                    yield pb.WriteContentRequest(data=chunk)
            if first:  # an empty blob still sends what it must hash to
                yield pb.WriteContentRequest(expected=expected, size=size)

        response = await _client_stream(self._stub.Write, messages())
        return convert.blob_from_proto(response.info)

    async def delete(self, digest: str) -> None:
        await _unary(self._stub.Delete(pb.DeleteContentRequest(digest=digest), timeout=self._timeout))

    async def list(self) -> AsyncIterator[BlobInfo]:
        async for response in _server_stream(self._stub.List(pb.ListContentRequest(), timeout=self._timeout)):
            for blob in response.info:
                yield convert.blob_from_proto(blob)


class RemoteImages:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = pb_grpc.ImagesStub(channel)  # type: ignore[no-untyped-call]

    async def import_archive(self, chunks: AsyncIterator[bytes]) -> list[ImageRecord]:
        async def messages() -> AsyncIterator[pb.ImportRequest]:
            async for chunk in rechunk(chunks):
                yield pb.ImportRequest(data=chunk)

        response = await _client_stream(self._stub.Import, messages())
        return [convert.image_record_from_proto(x) for x in response.images]

    async def export_archive(self, images: Sequence[ExportImage]) -> AsyncIterator[bytes]:
        request = pb.ExportRequest(images=[convert.export_image_to_proto(x) for x in images])
        async for response in _server_stream(self._stub.Export(request)):
            yield response.data

    async def unpack(self, layers: Sequence[LayerRef]) -> str:
        request = pb.UnpackRequest(layers=[convert.layer_to_proto(x) for x in layers])
        return str((await _unary(self._stub.Unpack(request))).chain_id)

    async def pull(self, reference: str, auth: RegistryAuth,
                   platform: str = "") -> AsyncIterator[Progress | PullResult]:
        request = pb.PullRequest(reference=reference, auth=convert.registry_auth_to_proto(auth), platform=platform)
        async with contextlib.aclosing(_server_stream(self._stub.Pull(request))) as messages:
            async for message in messages:  # closing cancels the call: the server stops the pull
                yield convert.pull_event_from_proto(message)

    async def push(self, image: ExportImage, reference: str,
                   auth: RegistryAuth) -> AsyncIterator[Progress | PushResult]:
        request = pb.PushRequest(image=convert.export_image_to_proto(image), reference=reference,
                                 auth=convert.registry_auth_to_proto(auth))
        async with contextlib.aclosing(_server_stream(self._stub.Push(request))) as messages:
            async for message in messages:
                yield convert.push_event_from_proto(message)

    async def import_rootfs(self, chunks: AsyncIterator[bytes], config: bytes) -> ImageRecord:
        async def messages() -> AsyncIterator[pb.ImportRootfsRequest]:
            yield pb.ImportRootfsRequest(config=config)
            async for chunk in rechunk(chunks):
                yield pb.ImportRootfsRequest(data=chunk)

        response = await _client_stream(self._stub.ImportRootfs, messages())
        return convert.image_record_from_proto(response.image)

    async def commit_layer(self, key: str, *, consume: bool = False) -> CommitResult:
        # No deadline: the layer is written and unpacked on the other side.
        response = await _unary(self._stub.CommitLayer(pb.CommitLayerRequest(key=key, consume=consume)))
        return convert.commit_result_from_proto(response)

    async def apply_tar(self, key: str, chunks: AsyncIterator[bytes], dest: str = "/", *,
                        no_overwrite_dir_non_dir: bool = False, owner: tuple[int, int] | None = None) -> None:
        async def messages() -> AsyncIterator[pb.ApplyTarRequest]:
            yield convert.apply_tar_header(key, dest, no_overwrite_dir_non_dir=no_overwrite_dir_non_dir, owner=owner)
            async for chunk in rechunk(chunks):
                yield pb.ApplyTarRequest(data=chunk)

        await _client_stream(self._stub.ApplyTar, messages())

    async def stat_path(self, key: str, path: str) -> PathStat:
        response = await _unary(self._stub.StatPath(pb.StatPathRequest(key=key, path=path)))
        return convert.path_stat_from_proto(response.stat)

    async def read_tar(self, key: str, path: str) -> AsyncIterator[bytes]:
        request = pb.ReadTarRequest(key=key, path=path)
        async with contextlib.aclosing(_server_stream(self._stub.ReadTar(request))) as messages:
            async for message in messages:
                yield message.data


if TYPE_CHECKING:
    def _conforms(channel: grpc.aio.Channel) -> tuple[Snapshotter, ContentStore, Images]:
        """mypy proves the proxies implement the same Protocols as the local classes."""
        return RemoteSnapshotter(channel), RemoteContentStore(channel), RemoteImages(channel)
