"""Copying between ``shim.storage.api`` types and their protobuf messages (and nowhere else)."""

from __future__ import annotations

from protos.shim.v1 import shim_pb2 as pb
from shim.storage.api import FileStat, VolumeInfo


def stat_to_proto(st: FileStat) -> pb.FileStat:
    return pb.FileStat(name=st.name, size=st.size, mode=st.mode, mtime=st.mtime, link_target=st.link_target)


def stat_from_proto(st: pb.FileStat) -> FileStat:
    return FileStat(name=st.name, size=st.size, mode=st.mode, mtime=st.mtime, link_target=st.link_target)


def write_header(id: str, path: str, *, no_overwrite_dir_non_dir: bool,
                 owner: tuple[int, int] | None) -> pb.WriteArchiveRequest:
    """The first message of a WriteArchive call (the options; data follows)."""
    uid, gid = owner if owner is not None else (0, 0)
    return pb.WriteArchiveRequest(id=id, path=path, no_overwrite_dir_non_dir=no_overwrite_dir_non_dir,
                                  chown=owner is not None, uid=uid, gid=gid)


def write_owner(first: pb.WriteArchiveRequest) -> tuple[int, int] | None:
    return (first.uid, first.gid) if first.chown else None


def volume_info_to_proto(info: VolumeInfo) -> pb.CreateVolumeResponse:
    return pb.CreateVolumeResponse(mountpoint=info.mountpoint, created_at_ns=info.created_at_ns)


def volume_info_from_proto(message: pb.CreateVolumeResponse) -> VolumeInfo:
    return VolumeInfo(mountpoint=message.mountpoint, created_at_ns=message.created_at_ns)
