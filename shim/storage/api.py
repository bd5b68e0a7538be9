"""The shim's storage interfaces: files of running containers and the local volume driver.

``ContainerFiles`` works inside a *running* container's mount namespace (its volumes, tmpfs and
network files included), from a child of the supervisor (:mod:`shim.supervisor.archive_child`);
a stopped container's files are the snapshotter's business (``snapshotter.api.Images``).
Errors use :mod:`protos.errors`: ``ContainerNotFound``, ``ContainerNotRunning`` (the caller then
uses the snapshotter), ``NotFound`` for a missing path (``lstat /x: no such file or
directory``; the API server words Docker's 404), ``InvalidArgument`` for a destination that is
not a directory (``extraction point is not a directory``) or a broken archive.

``Volumes`` keeps the bytes of the ``local`` driver's volumes on this host, under
``<shim root>/volumes/<name>/_data``; which volumes exist, and who uses them, is the API
server's record in Redis. A volume with ``type``/``device``/``o`` options is mounted on its
``_data`` the first time a container starts with it, and stays mounted until it is removed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class FileStat:
    """What ``X-Docker-Container-Path-Stat`` carries: ``mode`` holds Go's os.FileMode bits,
    ``mtime`` is RFC 3339 with nanoseconds, ``link_target`` a symlink's target resolved inside
    the container."""

    name: str
    size: int
    mode: int
    mtime: str
    link_target: str = ""


class ContainerFiles(Protocol):
    async def stat_path(self, id: str, path: str) -> FileStat:
        """Stat ``path`` in running container ``id`` (last component not followed unless the path
        ends in ``/``)."""
        ...

    async def read_archive(self, id: str, path: str) -> tuple[FileStat, AsyncIterator[bytes]]:
        """The stat of ``path`` and a tar of it, named by its base name. Path errors are raised
        here, before any byte; a failure later ends the stream with the error."""
        ...

    async def write_archive(self, id: str, path: str, chunks: AsyncIterator[bytes], *,
                            no_overwrite_dir_non_dir: bool = False, owner: tuple[int, int] | None = None) -> None:
        """Extract a tar (plain, gzip, bzip2 or xz; decompressed by the shim, never inside the
        container) into directory ``path`` (followed if a symlink), every entry resolved inside
        the container; ``owner`` replaces the tar's owners (``docker cp -a``)."""
        ...

    async def populate(self, id: str) -> None:
        """Copy the image's content at each ``copy_up`` volume mount point of created container
        ``id`` into its volume, if the volume is empty (``docker create``)."""
        ...


@dataclass(frozen=True, slots=True)
class VolumeInfo:
    mountpoint: str
    created_at_ns: int


class Volumes(Protocol):
    async def create(self, name: str, options: Mapping[str, str]) -> VolumeInfo:
        """Make the volume's directories (idempotent: an existing volume is returned as it is)
        and record its driver options."""
        ...

    async def remove(self, name: str) -> None:
        """Unmount (if its options mounted it) and delete the volume; absent is fine."""
        ...

    async def usage(self, name: str) -> int:
        """Bytes under the volume's data directory (-1 if it cannot be measured)."""
        ...
