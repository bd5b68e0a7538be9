"""The snapshotter's interfaces: snapshots, content and image import/export on one host.

Vocabulary (as in containerd's snapshots package):

* A **key** names an *active* or *view* snapshot; a **name** names a *committed* one. Keys and
  names share one key space per host: ``prepare("x")`` fails with ``AlreadyExists`` if a
  committed snapshot ``x`` exists, and vice versa.
* A **parent** is always a committed snapshot. Active snapshots can never be parents.
* Lifecycle: ``prepare(key, parent)`` → write into the returned mounts → ``commit(name, key)``
  turns the active snapshot into a committed one (the key disappears, the directory and numeric
  id stay). ``view(key, parent)`` gives a read-only snapshot that can only be removed.
* Committed image layers are named by their **chain id** (image-spec ``ChainID``), so two images
  sharing layers share snapshots, and an unpack that finds the chain id present does nothing.

Failure cases, by method, use the shared vocabulary in :mod:`protos.errors`:

* ``prepare``/``view``: ``AlreadyExists`` if the key or name is taken; ``NotFound`` if the parent
  is missing; ``InvalidArgument`` if the parent is not committed or the chain is deeper than
  ``MAX_DEPTH`` layers.
* ``mounts``/``stat``/``usage``/``update``: ``NotFound`` for an unknown key; ``mounts`` of a
  committed snapshot: ``FailedPrecondition`` (as containerd: only active snapshots and views
  have mounts).
* ``commit``: ``NotFound`` for an unknown key, ``FailedPrecondition`` if the key is not active,
  ``AlreadyExists`` if the name is taken. The committed snapshot keeps the active one's labels,
  updated with the ``labels`` given to ``commit``.
* Any method: ``InvalidArgument`` for an empty key or a label whose key and value exceed 4096
  bytes; ``Unavailable`` when the metadata store (Redis) cannot be reached.
* ``remove``: ``NotFound`` if absent, ``FailedPrecondition`` while it has children.

Costs: ``prepare``, ``view``, ``mounts``, ``stat``, ``commit`` are O(1) metadata operations plus
directory creation (``commit`` also walks the upper directory once to record its usage);
``usage`` of an active snapshot walks its upper directory; ``remove`` drops metadata at once and
deletes the directory (``cleanup`` removes directories orphaned by a crash).

The snapshotter does not mount anything: it returns :class:`Mount` specs and the consumer (the
shim's container child, a differ, a test) mounts them with :func:`common.mounts.mount_all`.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from common.mounts import Mount

__all__ = ["MAX_DEPTH", "BlobInfo", "Change", "ChangeKind", "ChangeList", "CommitResult", "ContentStore", "ExportImage",
           "ImageRecord", "Images", "Info", "Kind", "LayerRef", "Mount", "PathStat", "Progress", "PullResult",
           "PushResult", "RegistryAuth", "Snapshotter", "Usage"]

# Docker's overlay2 limit; deeper chains are rejected when preparing a child.
MAX_DEPTH = 128


class Kind(enum.StrEnum):
    VIEW = "view"
    ACTIVE = "active"
    COMMITTED = "committed"


@dataclass(frozen=True, slots=True)
class Info:
    name: str
    parent: str
    kind: Kind
    created_at_ns: int
    updated_at_ns: int
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Usage:
    size: int
    inodes: int


@dataclass(frozen=True, slots=True)
class BlobInfo:
    digest: str
    size: int


@dataclass(frozen=True, slots=True)
class LayerRef:
    """A layer of an image: the blob as stored (``digest``, maybe compressed) and its ``diff_id``."""

    digest: str
    diff_id: str
    media_type: str
    size: int


@dataclass(frozen=True, slots=True)
class ImageRecord:
    """What the host knows of one image after an import: its config and unpacked layer chain.

    ``id`` is the config digest (Docker's image id). ``chain_id`` names the committed snapshot
    of the top layer ("" for an image with no layers). ``size`` is the unpacked size of all
    layers. ``repo_tags`` are the tags the archive carried, normalised by the importer only as far
    as the archive format requires (the apiserver normalises references).
    """

    id: str
    config: bytes
    repo_tags: tuple[str, ...]
    layers: tuple[LayerRef, ...]
    chain_id: str
    size: int


class ChangeKind(enum.IntEnum):
    """Docker's ``ContainerChangeType``: what ``docker diff`` prints as C, A, D."""

    MODIFIED = 0
    ADDED = 1
    DELETED = 2


@dataclass(frozen=True, slots=True)
class Change:
    path: str  # absolute, as docker diff shows it
    kind: ChangeKind


@dataclass(frozen=True, slots=True)
class CommitResult:
    """A snapshot's own changes as a layer: ``layer`` is None when there were none (an empty
    layer, as ENV/CMD steps give); ``chain_id`` names the committed snapshot holding the result
    (the parent's chain id for an empty layer)."""

    layer: LayerRef | None
    chain_id: str


@dataclass(frozen=True, slots=True)
class PathStat:
    """What ``X-Docker-Container-Path-Stat`` carries (base64 JSON): name, size, mode (Go's
    os.FileMode bits), mtime (RFC3339), and the link target for symlinks."""

    name: str
    size: int
    mode: int
    mtime: str
    link_target: str = ""


# An alias, because ``Snapshotter.list`` shadows the builtin inside the class body.
ChangeList = list[Change]


class Snapshotter(Protocol):
    """containerd-style snapshots over overlayfs. Every method is safe to call concurrently."""

    async def prepare(self, key: str, parent: str = "",
                      labels: Mapping[str, str] | None = None) -> list[Mount]:
        """Create an active snapshot ``key`` on top of committed ``parent`` ("" for none)."""
        ...

    async def view(self, key: str, parent: str = "", labels: Mapping[str, str] | None = None) -> list[Mount]:
        """Create a read-only view ``key`` of committed ``parent``."""
        ...

    async def mounts(self, key: str) -> list[Mount]:
        """The mounts of an existing active snapshot or view (how a restarted consumer re-mounts)."""
        ...

    async def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None) -> None:
        """Turn active snapshot ``key`` into committed ``name``; records its usage."""
        ...

    async def remove(self, key: str) -> None:
        """Remove a snapshot of any kind that has no children."""
        ...

    async def stat(self, key: str) -> Info:
        ...

    async def update(self, key: str, labels: Mapping[str, str]) -> Info:
        """Replace the labels of a snapshot; name, parent, kind and created are immutable."""
        ...

    async def usage(self, key: str) -> Usage:
        """Disk used by this snapshot's own layer (never its parents)."""
        ...

    def list(self, filters: Sequence[str] = ()) -> AsyncIterator[Info]:
        """Every snapshot; ``filters`` (``name==x``, ``parent==y``, ``kind==committed``,
        ``labels.k==v``) are OR-ed as in containerd."""
        ...

    async def cleanup(self) -> int:
        """Delete directories no metadata refers to; returns how many were removed."""
        ...

    async def changes(self, key: str) -> ChangeList:
        """What ``docker diff`` shows for active snapshot ``key`` against its parent, in moby's
        order (a walk with the names of each directory sorted, a directory before its contents):
        added, modified (including metadata-only changes) and deleted (whiteouts and opaque
        directories) entries; the parent of an added or deleted entry counts as modified.
        Read from the upper directory without mounting; O(entries of the layer).
        ``FailedPrecondition`` for a view or committed snapshot, ``NotFound`` if absent."""
        ...


class ContentStore(Protocol):
    """Blobs by digest (``sha256:<hex>``), verified on write: a blob whose bytes do not hash to
    the expected digest is never stored (``DigestMismatch``)."""

    async def info(self, digest: str) -> BlobInfo:
        ...

    def read(self, digest: str, offset: int = 0) -> AsyncIterator[bytes]:
        """Stream the blob from ``offset``; ``BlobNotFound`` if absent."""
        ...

    async def write(self, chunks: AsyncIterator[bytes], expected: str = "", size: int = -1) -> BlobInfo:
        """Store a blob. With ``expected``, the digest must match; with ``size`` >= 0, the length."""
        ...

    async def delete(self, digest: str) -> None:
        ...

    def list(self) -> AsyncIterator[BlobInfo]:
        ...


@dataclass(frozen=True, slots=True)
class ExportImage:
    """One image to write into a ``docker save`` archive, with the tags to record for it."""

    id: str
    repo_tags: tuple[str, ...]
    layers: tuple[LayerRef, ...]


@dataclass(frozen=True, slots=True)
class Progress:
    """One progress line in Docker's JSON-message terms: ``id`` is a layer's short id (12 hex)
    and ``status`` one of Docker's words (``Pulling fs layer``, ``Waiting``, ``Downloading``,
    ``Verifying Checksum``, ``Download complete``, ``Extracting``, ``Pull complete``, ``Already
    exists``, ``Preparing``, ``Pushing``, ``Pushed``, ``Layer already exists``, ``Mounted from
    <repo>``). ``total`` 0 means no byte counts (a message without ``progressDetail`` numbers)."""

    id: str
    status: str
    current: int = 0
    total: int = 0


@dataclass(frozen=True, slots=True)
class PullResult:
    """The last event of a pull: the image as unpacked on this host, and the digest of the
    manifest (of the manifest list when the tag pointed at one) for ``RepoDigests``."""

    image: ImageRecord
    manifest_digest: str


@dataclass(frozen=True, slots=True)
class PushResult:
    """The last event of a push: the pushed manifest's digest and size."""

    digest: str
    size: int


@dataclass(frozen=True, slots=True)
class RegistryAuth:
    """Credentials for one registry, as the docker CLI sends them in ``X-Registry-Auth``."""

    username: str = ""
    password: str = ""
    identity_token: str = ""
    registry_token: str = ""


class Images(Protocol):
    """Moves whole images in and out of this host's content store and snapshots."""

    async def import_archive(self, chunks: AsyncIterator[bytes]) -> list[ImageRecord]:
        """Load a ``docker save`` tarball or an OCI image layout tarball: store config and layer
        blobs, unpack every layer into a snapshot named by its chain id (skipping chains already
        present), and describe each image found. Hostile entries raise ``UnsafeArchive``; a
        malformed archive ``InvalidArgument``; nothing half-imported is left referenced."""
        ...

    def export_archive(self, images: Sequence[ExportImage]) -> AsyncIterator[bytes]:
        """Write a ``docker save`` tarball (``manifest.json``, ``repositories``, OCI ``index.json``,
        ``oci-layout`` and ``blobs/sha256/…`` with uncompressed layers) for ``images``."""
        ...

    async def unpack(self, layers: Sequence[LayerRef]) -> str:
        """Make sure the chain of ``layers`` (blobs already in the content store) is unpacked;
        returns the top chain id. Layers whose chain exists are skipped; diff ids are verified."""
        ...

    def pull(self, reference: str, auth: RegistryAuth, platform: str = "") -> AsyncIterator[Progress | PullResult]:
        """Pull ``reference`` (normalised, with tag or digest) from its registry into this host:
        manifest negotiation and platform selection, layers fetched in parallel (bounded), streamed
        through decompression straight into their snapshots, every digest and diff id verified,
        layers whose chain exists skipped, one blob shared by concurrent pulls fetched once.
        Yields progress, then exactly one ``PullResult``. Errors use Docker's words (``manifest
        for x not found: manifest unknown…``, ``pull access denied for x…``)."""
        ...

    def push(self, image: ExportImage, reference: str, auth: RegistryAuth) -> AsyncIterator[Progress | PushResult]:
        """Push ``image`` (stored on this host) as ``reference``: blobs the registry has are
        skipped (HEAD), others mounted across repositories when possible, else uploaded; then
        the manifest. Yields progress, then exactly one ``PushResult``."""
        ...

    async def commit_layer(self, key: str, *, consume: bool = False) -> CommitResult:
        """Turn the changes of active snapshot ``key`` into a layer: a tar with OCI whiteouts
        (uncompressed, ``application/vnd.oci.image.layer.v1.tar``, so diff id = digest; gzip for
        registries is the pusher's business) stored in the content store, and a committed snapshot
        named by the new chain id that behaves exactly like one unpacked from that tar. With
        ``consume`` the active snapshot itself becomes that committed snapshot (a build's RUN
        container is done with it; the key disappears, also when the layer is empty or its chain
        exists already); without, it stays usable (``docker commit`` of a running container) and
        the layer is unpacked from the stored tar. ``FailedPrecondition`` if ``key`` is not active.
        Costs one walk of the upper directory (two with ``consume``), one unpack without."""
        ...

    async def apply_tar(self, key: str, chunks: AsyncIterator[bytes], dest: str = "/", *,
                        no_overwrite_dir_non_dir: bool = False, owner: tuple[int, int] | None = None) -> None:
        """Extract a tar (plain, gzip, bzip2 or xz: decompressed here) onto the mounted filesystem
        of active snapshot ``key`` into directory ``dest``, with every path resolved inside that
        filesystem (symlinks cannot lead out; ``dest`` itself is followed), as COPY/ADD and
        ``docker cp`` into a stopped container need. ``.wh.`` names are plain files here. Modes
        and times come from the tar, owners too unless ``owner`` (uid, gid) replaces them
        (``docker cp -a``). Errors in moby's words: ``NotFound`` (``lstat /x: no such file or
        directory``) for a missing ``dest``, ``InvalidArgument`` ``extraction point is not a
        directory``; with ``no_overwrite_dir_non_dir`` replacing a directory by a non-directory
        (or the reverse) fails. ``FailedPrecondition`` for a view or committed snapshot."""
        ...

    async def stat_path(self, key: str, path: str) -> PathStat:
        """Stat ``path`` inside the mounted filesystem of snapshot ``key`` (active or view), as
        moby's ``containerStatPath``: the last component is not followed unless ``path`` ends in
        ``/``; a symlink's ``link_target`` is its target fully resolved inside the filesystem.
        ``NotFound`` (``lstat /x: no such file or directory``) if it does not exist."""
        ...

    def read_tar(self, key: str, path: str) -> AsyncIterator[bytes]:
        """A tar of ``path`` (file or directory, named by its base name; the last component is
        not followed unless ``path`` ends in ``/``) from the mounted filesystem of snapshot
        ``key``: ``docker cp`` out of a stopped container; with ``path="/"`` the whole filesystem
        named relative to it, for ``docker export``. Numeric owners, second-precision mtimes,
        file capabilities, hard links; sockets are skipped. ``NotFound`` at the first step if
        ``path`` does not exist."""
        ...

    async def import_rootfs(self, chunks: AsyncIterator[bytes], config: bytes) -> ImageRecord:
        """``docker import``: the (possibly compressed) tarball becomes the single layer of a new
        image whose config is ``config`` with ``rootfs.diff_ids`` (and ``history``) filled in."""
        ...
