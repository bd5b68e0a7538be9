"""Copying between ``snapshotter.api`` types and their protobuf messages: the only place that does.

Each type has ``x_to_proto`` and ``x_from_proto``; the servicers and the client proxies use these
and nothing else, so a field added to the API is added here once.
"""

from __future__ import annotations

from collections.abc import Iterable

from common.mounts import Mount
from protos.errors import Internal
from protos.snapshotter.v1 import snapshotter_pb2 as pb
from snapshotter.api import BlobInfo, ExportImage, ImageRecord, Info, Kind, LayerRef, Usage

_KIND_TO_PROTO = {Kind.VIEW: pb.KIND_VIEW, Kind.ACTIVE: pb.KIND_ACTIVE, Kind.COMMITTED: pb.KIND_COMMITTED}
_KIND_FROM_PROTO = {v: k for k, v in _KIND_TO_PROTO.items()}


def mount_to_proto(m: Mount) -> pb.Mount:
    return pb.Mount(type=m.type, source=m.source, options=list(m.options))


def mount_from_proto(m: pb.Mount) -> Mount:
    return Mount(type=m.type, source=m.source, options=tuple(m.options))


def mounts_to_proto(mounts: Iterable[Mount]) -> list[pb.Mount]:
    return [mount_to_proto(m) for m in mounts]


def mounts_from_proto(mounts: Iterable[pb.Mount]) -> list[Mount]:
    return [mount_from_proto(m) for m in mounts]


def kind_to_proto(kind: Kind) -> pb.Kind:
    return _KIND_TO_PROTO[kind]


def kind_from_proto(kind: pb.Kind) -> Kind:
    try:
        return _KIND_FROM_PROTO[kind]
    except KeyError:
        raise Internal(f"snapshot of unknown kind {int(kind)}") from None


def info_to_proto(info: Info) -> pb.Info:
    return pb.Info(name=info.name, parent=info.parent, kind=kind_to_proto(info.kind),
                   created_at_ns=info.created_at_ns, updated_at_ns=info.updated_at_ns, labels=dict(info.labels))


def info_from_proto(info: pb.Info) -> Info:
    return Info(name=info.name, parent=info.parent, kind=kind_from_proto(info.kind),
                created_at_ns=info.created_at_ns, updated_at_ns=info.updated_at_ns, labels=dict(info.labels))


def usage_to_proto(usage: Usage) -> pb.UsageResponse:
    return pb.UsageResponse(size=usage.size, inodes=usage.inodes)


def usage_from_proto(usage: pb.UsageResponse) -> Usage:
    return Usage(size=usage.size, inodes=usage.inodes)


def blob_to_proto(blob: BlobInfo) -> pb.BlobInfo:
    return pb.BlobInfo(digest=blob.digest, size=blob.size)


def blob_from_proto(blob: pb.BlobInfo) -> BlobInfo:
    return BlobInfo(digest=blob.digest, size=blob.size)


def layer_to_proto(layer: LayerRef) -> pb.LayerRef:
    return pb.LayerRef(digest=layer.digest, diff_id=layer.diff_id, media_type=layer.media_type, size=layer.size)


def layer_from_proto(layer: pb.LayerRef) -> LayerRef:
    return LayerRef(digest=layer.digest, diff_id=layer.diff_id, media_type=layer.media_type, size=layer.size)


def image_record_to_proto(record: ImageRecord) -> pb.ImageRecord:
    return pb.ImageRecord(id=record.id, config=record.config, repo_tags=list(record.repo_tags),
                          layers=[layer_to_proto(x) for x in record.layers], chain_id=record.chain_id,
                          size=record.size)


def image_record_from_proto(record: pb.ImageRecord) -> ImageRecord:
    return ImageRecord(id=record.id, config=record.config, repo_tags=tuple(record.repo_tags),
                       layers=tuple(layer_from_proto(x) for x in record.layers), chain_id=record.chain_id,
                       size=record.size)


def export_image_to_proto(image: ExportImage) -> pb.ExportImage:
    return pb.ExportImage(id=image.id, repo_tags=list(image.repo_tags),
                          layers=[layer_to_proto(x) for x in image.layers])


def export_image_from_proto(image: pb.ExportImage) -> ExportImage:
    return ExportImage(id=image.id, repo_tags=tuple(image.repo_tags),
                       layers=tuple(layer_from_proto(x) for x in image.layers))
