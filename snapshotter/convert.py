"""Copying between ``snapshotter.api`` types and their protobuf messages: the only place that does.

Each type has ``x_to_proto`` and ``x_from_proto``; the servicers and the client proxies use these
and nothing else, so a field added to the API is added here once.
"""

from __future__ import annotations

from collections.abc import Iterable

from common.mounts import Mount
from protos.errors import Internal
from protos.snapshotter.v1 import snapshotter_pb2 as pb
from snapshotter.api import (
    BlobInfo,
    Change,
    ChangeKind,
    CommitResult,
    ExportImage,
    ImageRecord,
    Info,
    Kind,
    LayerRef,
    PathStat,
    Progress,
    PullResult,
    PushResult,
    RegistryAuth,
    Usage,
)

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


def registry_auth_to_proto(auth: RegistryAuth) -> pb.RegistryAuth:
    return pb.RegistryAuth(username=auth.username, password=auth.password, identity_token=auth.identity_token,
                           registry_token=auth.registry_token)


def registry_auth_from_proto(auth: pb.RegistryAuth) -> RegistryAuth:
    return RegistryAuth(username=auth.username, password=auth.password, identity_token=auth.identity_token,
                        registry_token=auth.registry_token)


def progress_to_proto(p: Progress) -> pb.Progress:
    return pb.Progress(id=p.id, status=p.status, current=p.current, total=p.total)


def progress_from_proto(p: pb.Progress) -> Progress:
    return Progress(id=p.id, status=p.status, current=p.current, total=p.total)


def pull_event_to_proto(event: Progress | PullResult) -> pb.PullResponse:
    if isinstance(event, Progress):
        return pb.PullResponse(progress=progress_to_proto(event))
    return pb.PullResponse(result=pb.PullResult(image=image_record_to_proto(event.image),
                                                manifest_digest=event.manifest_digest))


def pull_event_from_proto(message: pb.PullResponse) -> Progress | PullResult:
    kind = message.WhichOneof("event")
    if kind == "progress":
        return progress_from_proto(message.progress)
    if kind == "result":
        return PullResult(image=image_record_from_proto(message.result.image),
                          manifest_digest=message.result.manifest_digest)
    raise Internal("pull message without an event")


def push_event_to_proto(event: Progress | PushResult) -> pb.PushResponse:
    if isinstance(event, Progress):
        return pb.PushResponse(progress=progress_to_proto(event))
    return pb.PushResponse(result=pb.PushResult(digest=event.digest, size=event.size))


def push_event_from_proto(message: pb.PushResponse) -> Progress | PushResult:
    kind = message.WhichOneof("event")
    if kind == "progress":
        return progress_from_proto(message.progress)
    if kind == "result":
        return PushResult(digest=message.result.digest, size=message.result.size)
    raise Internal("push message without an event")


def change_to_proto(change: Change) -> pb.Change:
    return pb.Change(path=change.path, kind=int(change.kind))


def change_from_proto(change: pb.Change) -> Change:
    try:
        kind = ChangeKind(change.kind)
    except ValueError:
        raise Internal(f"change of unknown kind {change.kind}") from None
    return Change(path=change.path, kind=kind)


def commit_result_to_proto(result: CommitResult) -> pb.CommitLayerResponse:
    if result.layer is None:
        return pb.CommitLayerResponse(chain_id=result.chain_id)
    return pb.CommitLayerResponse(layer=layer_to_proto(result.layer), chain_id=result.chain_id)


def commit_result_from_proto(message: pb.CommitLayerResponse) -> CommitResult:
    layer = layer_from_proto(message.layer) if message.HasField("layer") else None
    return CommitResult(layer=layer, chain_id=message.chain_id)


def path_stat_to_proto(st: PathStat) -> pb.PathStat:
    return pb.PathStat(name=st.name, size=st.size, mode=st.mode, mtime=st.mtime, link_target=st.link_target)


def path_stat_from_proto(st: pb.PathStat) -> PathStat:
    return PathStat(name=st.name, size=st.size, mode=st.mode, mtime=st.mtime, link_target=st.link_target)


def apply_tar_header(key: str, dest: str, *, no_overwrite_dir_non_dir: bool,
                     owner: tuple[int, int] | None) -> pb.ApplyTarRequest:
    """The first message of an ApplyTar call (the options; data follows)."""
    uid, gid = owner if owner is not None else (0, 0)
    return pb.ApplyTarRequest(key=key, dest=dest, no_overwrite_dir_non_dir=no_overwrite_dir_non_dir,
                              chown=owner is not None, uid=uid, gid=gid)


def apply_tar_owner(first: pb.ApplyTarRequest) -> tuple[int, int] | None:
    return (first.uid, first.gid) if first.chown else None
