"""Whole images in and out of one host: ``docker load``/``docker save`` archives and unpack.

Import (``docker load``) reads two archive kinds:

* ``docker save`` archives with ``manifest.json`` — the legacy layout (``<id>.json`` configs,
  ``<id>/layer.tar``, symlinked duplicates) and Docker 25+'s (everything under ``blobs/sha256``);
* OCI image layout tarballs: ``index.json`` → manifests, nested indexes resolved to this host's
  platform (attestation manifests skipped), names from the ``io.containerd.image.name``
  annotation or a full ``org.opencontainers.image.ref.name``.

The upload is spooled to disk first, one file per member, hashed on the way (``manifest.json``
comes last in ``docker save`` output). The outer tar is parsed like a layer — bounded headers —
but nothing is created by member name: names are only keys, and symlinks between members are
resolved lexically inside the archive. JSON documents are capped at 20 MiB (containerd's limit).

Then blobs go into the content store (verified) while layers are unpacked, each into a snapshot
named by its chain id (prepare ``extract-<random> <chain>``, apply, commit; a chain already
present is skipped). Layer *i* is applied as soon as its blob is stored, commits happen strictly
in order. If anything fails, what this import created and nobody else is using — committed
chains, then blobs — is removed again, so a hostile or broken archive leaves nothing behind.

Export (``docker save``) writes Docker 25+'s layout, which ``docker load`` of any version since
1.10 reads through ``manifest.json`` and OCI tools read through ``index.json``.

``docker import`` (:meth:`LocalImages.import_rootfs`) streams the tarball into the content store
as it is (plain or gzip) while the extractor follows the stored bytes into a new snapshot; the
layer is committed under its diff id once both are complete. Pull and push live in
:mod:`snapshotter.distribution`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import posixpath
import re
import shutil
import tarfile
import tempfile
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from common import fstree
from protos.errors import (
    BlobNotFound,
    DigestMismatch,
    FailedPrecondition,
    InvalidArgument,
)
from snapshotter import diff, files
from snapshotter.api import (
    BlobInfo,
    CommitResult,
    ContentStore,
    ExportImage,
    ImageRecord,
    Kind,
    LayerRef,
    PathStat,
    Progress,
    PullResult,
    PushResult,
    RegistryAuth,
    Snapshotter,
)
from snapshotter.archive import GZIP_MAGIC, ZSTD_MAGIC, LayerReader, iter_members
from snapshotter.content import IngestingStore, check_digest
from snapshotter.distribution import Distribution, RegistryOptions
from snapshotter.streams import (
    CHUNK,
    ThreadReader,
    file_chunks,
    iterate_bytes,
    run_blocking,
    thread_output,
    uncancellable,
)
from snapshotter.unpack import (
    LABEL_SNAPSHOT_REF,
    LABEL_UNCOMPRESSED,
    Lease,
    Unpacker,
    aclose,
    chain_ids,
    sha256_digest,
    upper_dir,
)

MAX_JSON = 20 << 20  # containerd's importer limit for manifests, indexes and configs
MAX_MEMBERS = 100_000
MAX_INDEX_DEPTH = 4

MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
MT_OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MT_OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
MT_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
INDEX_TYPES = {MT_OCI_INDEX, MT_DOCKER_LIST}
MANIFEST_TYPES = {MT_OCI_MANIFEST, MT_DOCKER_MANIFEST}

ANNOTATION_IMAGE_NAME = "io.containerd.image.name"
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"

_TAG = re.compile(r"[\w][\w.-]{0,127}")
_GOARCH = {"x86_64": ("amd64", ""), "aarch64": ("arm64", "v8"), "armv7l": ("arm", "v7"),
           "armv6l": ("arm", "v6"), "i686": ("386", ""), "ppc64le": ("ppc64le", ""),
           "s390x": ("s390x", ""), "riscv64": ("riscv64", "")}


def host_platform() -> tuple[str, str, str]:
    """(os, architecture, variant) of this host in GOOS/GOARCH terms."""
    machine = os.uname().machine
    arch, variant = _GOARCH.get(machine, (machine, ""))
    return "linux", arch, variant


def _split_tag(ref: str) -> tuple[str, str] | None:
    """``repo:tag`` → (repo, tag); None when ``ref`` has no tag (or is by digest)."""
    if "@" in ref:
        return None
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    if colon <= slash or not _TAG.fullmatch(ref[colon + 1:]) or colon == 0:
        return None
    return ref[:colon], ref[colon + 1:]


def familiar_name(repo: str) -> str:
    """``docker.io/library/busybox`` → ``busybox`` (Docker's FamiliarName)."""
    if not repo.startswith("docker.io/"):
        return repo
    rest = repo[len("docker.io/"):]
    if rest.startswith("library/") and rest.count("/") == 1:
        return rest[len("library/"):]
    return rest


def normalized_name(repo: str) -> str:
    """``busybox`` → ``docker.io/library/busybox`` (Docker's ParseNormalizedNamed)."""
    first, _, rest = repo.partition("/")
    if not rest:
        return f"docker.io/library/{repo}"
    if "." not in first and ":" not in first and first != "localhost":
        return f"docker.io/{repo}"
    return repo


# --- the spooled archive ---------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Member:
    path: Path
    size: int
    digest: str


@dataclass
class _Spool:
    """Members of an uploaded archive, each in its own file; names are never used as paths."""

    root: Path
    files: dict[str, _Member] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)

    def member(self, name: str, what: str) -> _Member:
        current = _archive_name(name)
        for _ in range(16):  # symlink hops inside the archive
            if current in self.files:
                return self.files[current]
            if current not in self.links:
                break
            current = self.links[current]
        raise InvalidArgument(f"invalid archive: {what} {json.dumps(name)} not found")

    def has(self, name: str) -> bool:
        return _archive_name(name) in self.files or _archive_name(name) in self.links

    def read(self, name: str, what: str, *, limit: int | None = None) -> tuple[bytes, _Member]:
        member = self.member(name, what)
        limit = MAX_JSON if limit is None else limit
        if member.size > limit:
            raise InvalidArgument(f"invalid archive: {what} is {member.size} bytes, more than {limit}")
        return member.path.read_bytes(), member

    def json(self, name: str, what: str) -> Any:
        data, _ = self.read(name, what)
        return _parse_json(data, what)

    def blob(self, digest: str, what: str, size: int | None = None, *, json_doc: bool = False) -> _Member:
        """The member ``blobs/sha256/<hex>``; its bytes must hash to ``digest``."""
        member = self.member("blobs/sha256/" + check_digest(digest), what)
        if member.digest != digest:
            raise DigestMismatch(f"{what} {digest}: content has digest {member.digest}")
        if size is not None and member.size != size:
            raise DigestMismatch(f"{what} {digest}: {member.size} bytes, descriptor says {size}")
        if json_doc and member.size > MAX_JSON:
            raise InvalidArgument(f"invalid archive: {what} is {member.size} bytes, more than {MAX_JSON}")
        return member


def _archive_name(name: str) -> str:
    norm = posixpath.normpath("/" + name).lstrip("/")
    return norm


def _parse_json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"invalid archive: {what} is not valid JSON: {exc}") from None


def spool_archive(raw: ThreadReader, root: Path) -> _Spool:
    """Read the outer tar (maybe gzipped) into ``root``; blocking."""
    spool = _Spool(root=root)
    reader = LayerReader(raw)
    for n, (tar, member) in enumerate(iter_members(reader, what="archive", max_entries=MAX_MEMBERS)):
        name = _archive_name(member.name)
        if member.issym():
            target = member.linkname
            base = "" if target.startswith("/") else posixpath.dirname(name)
            spool.links[name] = _archive_name(posixpath.join(base, target))
            spool.files.pop(name, None)
        elif member.islnk():
            spool.links[name] = _archive_name(member.linkname)
            spool.files.pop(name, None)
        elif member.isreg():
            path = root / str(n)
            h = hashlib.sha256()
            src = tar.extractfile(member)
            with open(path, "wb") as out:
                while src is not None and (chunk := src.read(CHUNK)):
                    h.update(chunk)
                    out.write(chunk)
            spool.files[name] = _Member(path=path, size=member.size, digest="sha256:" + h.hexdigest())
            spool.links.pop(name, None)
        # directories and anything else carry nothing an image needs
    reader.drain()
    return spool


# --- what an archive describes ----------------------------------------------------------------

@dataclass
class _Plan:
    """One image to load: its config, the blobs of its layers and its tags."""

    config_digest: str
    config: bytes
    config_member: _Member
    layers: list[tuple[LayerRef, _Member]]
    repo_tags: list[str]


def _layer_media_type(member: _Member) -> str:
    with open(member.path, "rb") as f:
        head = f.read(4)
    if head.startswith(ZSTD_MAGIC):
        return MT_OCI_LAYER_ZSTD
    return MT_OCI_LAYER_GZIP if head.startswith(GZIP_MAGIC) else MT_OCI_LAYER


def _diff_ids(config: Any, what: str) -> list[str]:
    if not isinstance(config, dict):
        raise InvalidArgument(f"invalid archive: {what} is not a JSON object")
    image_os = config.get("os", "linux")
    if image_os != "linux":
        raise InvalidArgument(f"cannot load {image_os} image on linux")
    rootfs = config.get("rootfs")
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if diff_ids is None:
        diff_ids = []
    if not isinstance(diff_ids, list) or not all(isinstance(d, str) for d in diff_ids):
        raise InvalidArgument(f"invalid archive: {what} has malformed rootfs.diff_ids")
    for d in diff_ids:
        check_digest(d)
    return diff_ids


def _docker_plans(spool: _Spool) -> list[_Plan]:
    manifest = spool.json("manifest.json", "manifest.json")
    if not isinstance(manifest, list):
        raise InvalidArgument("invalid manifest, manifest cannot be null (but can be [])")
    plans = []
    for item in manifest:
        if not isinstance(item, dict) or not isinstance(item.get("Config"), str):
            raise InvalidArgument("invalid manifest: every entry needs a Config")
        layers = item.get("Layers") or []
        tags = item.get("RepoTags") or []
        if not isinstance(layers, list) or not all(isinstance(x, str) for x in layers):
            raise InvalidArgument("invalid manifest: Layers must be a list of paths")
        if not isinstance(tags, list) or not all(isinstance(x, str) for x in tags):
            raise InvalidArgument("invalid manifest: RepoTags must be a list of strings")
        for tag in tags:
            if _split_tag(tag) is None:
                raise InvalidArgument(f"invalid tag {json.dumps(tag)}")
        config, config_member = spool.read(item["Config"], "image config")
        diff_ids = _diff_ids(_parse_json(config, "image config"), "image config")
        if len(layers) != len(diff_ids):
            raise InvalidArgument(
                f"invalid manifest, layers length mismatch: expected {len(layers)}, got {len(diff_ids)}")
        refs = []
        for path, diff_id in zip(layers, diff_ids, strict=True):
            member = spool.member(path, "layer")
            refs.append((LayerRef(digest=member.digest, diff_id=diff_id, media_type=_layer_media_type(member),
                                  size=member.size), member))
        plans.append(_Plan(config_digest=config_member.digest, config=config, config_member=config_member,
                           layers=refs, repo_tags=list(tags)))
    return plans


def _platform_matches(platform: Any) -> bool:
    if not isinstance(platform, dict):
        return False
    host_os, arch, variant = host_platform()
    if platform.get("os") != host_os or platform.get("architecture") != arch:
        return False
    wanted = str(platform.get("variant", ""))
    if arch == "arm64":
        return wanted in ("", "v8")
    if arch == "arm":
        return wanted == "" or wanted <= variant  # v7 runs v6 and v5
    return wanted in ("", "v1")


def _descriptor(desc: Any, what: str) -> tuple[str, int, str]:
    if not isinstance(desc, dict) or not isinstance(desc.get("digest"), str):
        raise InvalidArgument(f"invalid archive: malformed {what} descriptor")
    size = desc.get("size")
    if not isinstance(size, int) or size < 0:
        raise InvalidArgument(f"invalid archive: {what} descriptor without a valid size")
    check_digest(desc["digest"])
    return desc["digest"], size, str(desc.get("mediaType", ""))


def _oci_names(desc: Mapping[str, Any]) -> list[str]:
    annotations = desc.get("annotations") or {}
    if not isinstance(annotations, dict):
        return []
    for key in (ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME):
        ref = annotations.get(key)
        # A bare ref.name ("latest") is a tag without a repository: nothing to name.
        if isinstance(ref, str) and any(c in ref for c in "/:") and _split_tag(ref) is not None:
            return [ref]
    return []


def _oci_manifests(spool: _Spool, desc: Any, depth: int) -> list[str]:
    """Image manifest digests a descriptor leads to (an index resolves to this platform's one)."""
    digest, size, media_type = _descriptor(desc, "manifest")
    if depth > MAX_INDEX_DEPTH:
        raise InvalidArgument("invalid archive: image indexes nested too deep")
    annotations = desc.get("annotations") or {}
    if isinstance(annotations, dict) and annotations.get("vnd.docker.reference.type") == "attestation-manifest":
        return []
    if media_type and media_type not in INDEX_TYPES | MANIFEST_TYPES:
        return []  # unknown types must be ignored (image-spec)
    member = spool.blob(digest, "manifest", size, json_doc=True)
    doc = _parse_json(member.path.read_bytes(), "manifest")
    if not isinstance(doc, dict):
        raise InvalidArgument("invalid archive: manifest is not a JSON object")
    is_index = media_type in INDEX_TYPES or (not media_type and "manifests" in doc)
    if not is_index:
        return [digest]
    entries = doc.get("manifests") or []
    if not isinstance(entries, list):
        raise InvalidArgument("invalid archive: index manifests must be a list")
    for entry in entries:
        if isinstance(entry, dict) and _platform_matches(entry.get("platform")):
            found = _oci_manifests(spool, entry, depth + 1)
            if found:
                return found[:1]
    _, arch, _ = host_platform()
    raise InvalidArgument(f"no matching manifest for linux/{arch} in the manifest list entries")


def _oci_plans(spool: _Spool) -> list[_Plan]:
    if spool.has("oci-layout"):
        layout = spool.json("oci-layout", "oci-layout")
        if not isinstance(layout, dict) or layout.get("imageLayoutVersion") != "1.0.0":
            raise InvalidArgument("unsupported OCI layout version")
    index = spool.json("index.json", "index.json")
    entries = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(entries, list):
        raise InvalidArgument("invalid archive: index.json has no manifests list")
    plans: dict[str, _Plan] = {}
    for desc in entries:
        for manifest_digest in _oci_manifests(spool, desc, 0):
            plan = _oci_plan(spool, manifest_digest)
            known = plans.setdefault(plan.config_digest, plan)
            for name in _oci_names(desc):
                if name not in known.repo_tags:
                    known.repo_tags.append(name)
    return list(plans.values())


def _oci_plan(spool: _Spool, manifest_digest: str) -> _Plan:
    doc = _parse_json(spool.blob(manifest_digest, "manifest").path.read_bytes(), "manifest")
    config_digest, config_size, _ = _descriptor(doc.get("config"), "config")
    config_member = spool.blob(config_digest, "image config", config_size, json_doc=True)
    config = config_member.path.read_bytes()
    diff_ids = _diff_ids(_parse_json(config, "image config"), "image config")
    layer_descs = doc.get("layers") or []
    if not isinstance(layer_descs, list):
        raise InvalidArgument("invalid archive: manifest layers must be a list")
    if len(layer_descs) != len(diff_ids):
        raise InvalidArgument(
            f"invalid manifest, layers length mismatch: expected {len(layer_descs)}, got {len(diff_ids)}")
    refs = []
    for desc, diff_id in zip(layer_descs, diff_ids, strict=True):
        digest, size, media_type = _descriptor(desc, "layer")
        member = spool.blob(digest, "layer", size)
        refs.append((LayerRef(digest=digest, diff_id=diff_id, media_type=media_type or _layer_media_type(member),
                              size=size), member))
    return _Plan(config_digest=config_digest, config=config, config_member=config_member, layers=refs,
                 repo_tags=[])


def plan_archive(spool: _Spool) -> list[_Plan]:
    if spool.has("manifest.json"):  # Docker 25+ archives carry both; docker load reads this one
        return _docker_plans(spool)
    if spool.has("index.json"):
        return _oci_plans(spool)
    raise InvalidArgument("unrecognized image format: no manifest.json or index.json in the archive")


# --- the implementation ---------------------------------------------------------------------

class LocalImages:
    """``Images`` over a local snapshotter (its mounts are paths on this host) and content store.

    ``registry`` says how registries are reached (pull, push). Call :meth:`aclose` when done: it
    closes the registry connections (made on first use, in the loop that uses them)."""

    def __init__(self, *, snapshotter: Snapshotter, content: IngestingStore, spool_dir: Path,
                 allow_device_nodes: bool = False, registry: RegistryOptions | None = None,
                 mount_dir: Path | None = None) -> None:
        self._snapshotter = snapshotter
        self._content = content
        self._spool_dir = Path(spool_dir)
        # Snapshots are mounted here for file operations (see snapshotter.files).
        self._mounts = files.MountDir(Path(mount_dir) if mount_dir else self._spool_dir.parent / "mnt")
        self._unpacker = Unpacker(snapshotter=snapshotter, content=content, allow_devices=allow_device_nodes)
        self._distribution = Distribution(unpacker=self._unpacker, content=content,
                                          options=registry or RegistryOptions())
        self._log = structlog.get_logger().bind(component="images")

    async def aclose(self) -> None:
        await self._distribution.aclose()

    # registries
    def pull(self, reference: str, auth: RegistryAuth, platform: str = "") -> AsyncIterator[Progress | PullResult]:
        return self._distribution.pull(reference, auth, platform)

    def push(self, image: ExportImage, reference: str, auth: RegistryAuth) -> AsyncIterator[Progress | PushResult]:
        return self._distribution.push(image, reference, auth)

    # docker import
    async def import_rootfs(self, chunks: AsyncIterator[bytes], config: bytes) -> ImageRecord:
        doc = _import_config(config)
        ingest = await self._content.ingest()
        created_blobs: list[str] = []
        created_chains: list[str] = []
        with self._unpacker.leases.hold(set()) as lease:

            async def store() -> BlobInfo:
                """The upload into the content store, as it comes; the extractor follows it."""
                try:
                    async for chunk in chunks:
                        await ingest.write(chunk)
                    digest = ingest.digest_so_far
                    self._unpacker.leases.extend(lease, {digest})
                    try:
                        await self._content.info(digest)
                    except BlobNotFound:
                        created_blobs.append(digest)
                    return await ingest.commit()
                except BaseException as exc:
                    await ingest.abort(exc)
                    raise

            writer = asyncio.ensure_future(store())
            try:
                applied = await self._unpacker.unpack_new(ingest.follow(), lease, created_chains)
                blob = await writer
                if applied.size == 0:
                    raise InvalidArgument("invalid tar archive: the input is empty")
                layer = LayerRef(digest=blob.digest, diff_id=applied.diff_id, size=blob.size,
                                 media_type=MT_OCI_LAYER if blob.digest == applied.diff_id else MT_OCI_LAYER_GZIP)
                doc["rootfs"] = {"type": "layers", "diff_ids": [applied.diff_id]}
                doc["history"] = [{"created": doc["created"], "comment": doc.get("comment") or "Imported from -"}]
                body = _json_bytes(doc)
                image_id = sha256_digest(body)
                self._unpacker.leases.extend(lease, {image_id})
                try:
                    await self._content.info(image_id)
                except BlobNotFound:
                    created_blobs.append(image_id)
                    await self._content.write(iterate_bytes(body), image_id, len(body))
                size = await self._unpacker.size([applied.diff_id])
            except BaseException as exc:
                writer.cancel()
                await uncancellable(asyncio.wait({writer}))
                upload_error = None if writer.cancelled() else writer.exception()
                await uncancellable(self._unpacker.rollback(lease, created_chains, created_blobs))
                self._log.warning("rootfs_import_failed", error=str(exc), error_class=type(exc).__name__)
                if upload_error is not None and not isinstance(exc, asyncio.CancelledError):
                    raise upload_error from None  # the input broke: say so, not that the extractor starved
                raise
        self._log.info("rootfs_imported", id=image_id, diff_id=applied.diff_id, size=size)
        return ImageRecord(id=image_id, config=body, repo_tags=(), layers=(layer,), chain_id=applied.diff_id,
                           size=size)

    async def cleanup(self) -> None:
        """Delete spool and mount directories a crash left behind (call before serving)."""
        def sweep() -> None:
            self._spool_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            for entry in os.listdir(self._spool_dir):
                shutil.rmtree(self._spool_dir / entry, ignore_errors=True)
            self._mounts.cleanup()

        await asyncio.to_thread(sweep)

    # layers of containers and builds, files inside snapshots
    async def commit_layer(self, key: str, *, consume: bool = False) -> CommitResult:
        info = await self._snapshotter.stat(key)
        if info.kind is not Kind.ACTIVE:
            raise FailedPrecondition(f"snapshot {key} is not active ({info.kind})")
        upper, lowers = upper_dir(await self._snapshotter.mounts(key))
        parent = info.parent
        # Mount points the runtime made (/etc/hosts…) are not the container's changes.
        skip = frozenset(await run_blocking(lambda: diff.runtime_artifacts(upper, lowers)))
        if consume and skip:
            await run_blocking(lambda: diff.remove_paths(upper, set(skip)))
            skip = frozenset()
        if await asyncio.to_thread(diff.is_empty, upper, skip):
            if consume:
                await uncancellable(self._snapshotter.remove(key))
            return CommitResult(layer=None, chain_id=parent)
        if consume:
            # The upper directory becomes the layer: first make it exactly what the tar unpacks to.
            await run_blocking(lambda: diff.normalize_upper(upper))

        def produce(write: fstree.Sink) -> None:
            fd = os.open(upper, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                fstree.write_tree(fd, "", "", write, layer=True, skip=skip)
            finally:
                os.close(fd)

        with self._unpacker.leases.hold(set()) as lease:
            blob = await self._content.write(thread_output(produce))
            diff_id = blob.digest
            chain = sha256_digest(f"{parent} {diff_id}".encode()) if parent else diff_id
            self._unpacker.leases.extend(lease, {diff_id, chain})
            layer = LayerRef(digest=diff_id, diff_id=diff_id, media_type=MT_OCI_LAYER, size=blob.size)
            labels = {LABEL_SNAPSHOT_REF: chain, LABEL_UNCOMPRESSED: diff_id}
            async with self._unpacker.chain_locks.hold(chain):
                if await self._unpacker.is_committed(chain):
                    if consume:  # the same change set was committed before: keep that one
                        await uncancellable(self._snapshotter.remove(key))
                elif consume:
                    await uncancellable(self._snapshotter.commit(chain, key))
                    await self._snapshotter.update(chain, labels)
                else:
                    await self._unpacker.unpack_layer(layer, 0, chain, parent, trusted=True)
        self._log.info("layer_committed", key=key, chain=chain, diff_id=diff_id, size=blob.size, consumed=consume)
        return CommitResult(layer=layer, chain_id=chain)

    async def apply_tar(self, key: str, chunks: AsyncIterator[bytes], dest: str = "/", *,
                        no_overwrite_dir_non_dir: bool = False, owner: tuple[int, int] | None = None) -> None:
        await files.apply_tar(self._mounts, self._snapshotter, key, chunks, dest,
                              no_overwrite_dir_non_dir=no_overwrite_dir_non_dir, owner=owner)

    async def stat_path(self, key: str, path: str) -> PathStat:
        return await files.stat_path(self._mounts, self._snapshotter, key, path)

    async def read_tar(self, key: str, path: str) -> AsyncIterator[bytes]:
        async for chunk in files.read_tar(self._mounts, self._snapshotter, key, path):
            yield chunk

    # import
    async def import_archive(self, chunks: AsyncIterator[bytes]) -> list[ImageRecord]:
        def make_spool() -> Path:
            self._spool_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            return Path(tempfile.mkdtemp(prefix="import-", dir=self._spool_dir))

        spool_root = await run_blocking(make_spool, on_cancel=lambda p: shutil.rmtree(p, True))
        log = self._log.bind(spool=spool_root.name)
        try:
            reader = ThreadReader(chunks, asyncio.get_running_loop())
            spool = await run_blocking(lambda: spool_archive(reader, spool_root), abort=reader.abort)
            plans = await asyncio.to_thread(plan_archive, spool)
            records = await self._load(plans)
        except Exception as exc:
            log.warning("image_import_failed", error=str(exc), error_class=type(exc).__name__)
            raise
        finally:
            await uncancellable(asyncio.to_thread(shutil.rmtree, spool_root, True))
        for record in records:
            log.info("image_imported", id=record.id, tags=list(record.repo_tags), layers=len(record.layers))
        return records

    async def _load(self, plans: list[_Plan]) -> list[ImageRecord]:
        blobs: dict[str, _Member] = {}
        for plan in plans:
            for ref, member in plan.layers:
                blobs.setdefault(ref.digest, member)
        for plan in plans:
            blobs.setdefault(plan.config_digest, plan.config_member)
        names = set(blobs) | {c for p in plans for c in chain_ids([r.diff_id for r, _ in p.layers])}
        loop = asyncio.get_running_loop()
        stored: dict[str, asyncio.Future[None]] = {d: loop.create_future() for d in blobs}
        created_blobs: list[str] = []
        created_chains: list[str] = []

        async def store_all() -> None:
            for digest, member in blobs.items():
                try:
                    await self._store(digest, member, created_blobs)
                except BaseException as exc:
                    for fut in stored.values():
                        if fut.done():
                            continue
                        if isinstance(exc, Exception):
                            fut.set_exception(exc)  # the unpack waiting for this blob fails with it
                        else:
                            fut.cancel()
                    raise
                stored[digest].set_result(None)

        with self._unpacker.leases.hold(names) as lease:
            store = asyncio.create_task(store_all())
            try:
                records = []
                for plan in plans:
                    refs = [ref for ref, _ in plan.layers]
                    top = await self._unpacker.unpack_chain(refs, lambda d: stored[d], created_chains)
                    size = await self._unpacker.size(chain_ids([r.diff_id for r in refs]))
                    records.append(ImageRecord(id=plan.config_digest, config=plan.config,
                                               repo_tags=tuple(plan.repo_tags), layers=tuple(refs),
                                               chain_id=top, size=size))
                await store
            except BaseException:
                await uncancellable(self._abandon(store, stored, lease, created_chains, created_blobs))
                raise
        return records

    async def _store(self, digest: str, member: _Member, created: list[str]) -> None:
        """Put a spooled blob in the content store, noting it in ``created`` if it was not there.

        Noted *before* writing: a write cancelled after its rename still stored the blob."""
        try:
            await self._content.info(digest)
            return
        except BlobNotFound:
            pass
        created.append(digest)
        await self._content.write(file_chunks(member.path), expected=digest, size=member.size)

    async def _abandon(self, store: asyncio.Task[None], stored: Mapping[str, asyncio.Future[None]], lease: Lease,
                       chains: list[str], blobs: list[str]) -> None:
        """Stop storing, then undo what this import created (runs to the end even if cancelled)."""
        store.cancel()
        await asyncio.wait({store})
        for fut in (store, *stored.values()):
            if fut.done() and not fut.cancelled():
                fut.exception()  # retrieved: no "never retrieved" noise
        await self._unpacker.rollback(lease, chains, blobs)

    # unpack
    async def unpack(self, layers: Sequence[LayerRef]) -> str:
        for layer in layers:
            check_digest(layer.digest)
            check_digest(layer.diff_id)
        names = {layer.digest for layer in layers} | set(chain_ids([r.diff_id for r in layers]))
        with self._unpacker.leases.hold(names):
            for layer in layers:
                await self._content.info(layer.digest)

            async def ready(_: str) -> None:
                return None

            # Chains committed before a failure are verified layers: kept for the next attempt.
            return await self._unpacker.unpack_chain(list(layers), ready, [])

    # export
    async def export_archive(self, images: Sequence[ExportImage]) -> AsyncIterator[bytes]:
        plan = await self._export_plan(images)
        writer = _TarWriter()
        yield writer.directory("blobs/")
        yield writer.directory("blobs/sha256/")
        for name, source in plan.blobs:
            yield writer.header(f"blobs/sha256/{name[len('sha256:'):]}", source.size)
            async for chunk in source.open():
                yield writer.data(chunk)
            yield writer.pad()
        for name, data in plan.files:
            yield writer.file(name, data)
        yield writer.end()

    async def _export_plan(self, images: Sequence[ExportImage]) -> _ExportPlan:
        """Everything to write, checked before the first byte goes out (an error mid-stream would
        leave the client with a broken tarball)."""
        blobs: dict[str, _BlobSource] = {}
        manifest: list[dict[str, Any]] = []
        index: list[dict[str, Any]] = []
        repositories: dict[str, dict[str, str]] = {}
        for image in images:
            check_digest(image.id)
            config = b"".join([c async for c in self._content.read(image.id)])
            diff_ids = _diff_ids(_parse_json(config, "image config"), "image config")
            if [layer.diff_id for layer in image.layers] != diff_ids:
                raise InvalidArgument(f"layers of image {image.id} do not match its config's rootfs.diff_ids")
            blobs.setdefault(image.id, _BlobSource(self._content, image.id, image.id, len(config), False))
            layer_descs = []
            for layer in image.layers:
                if layer.diff_id not in blobs:
                    blobs[layer.diff_id] = await self._layer_source(layer)
                layer_descs.append({"mediaType": MT_OCI_LAYER, "digest": layer.diff_id,
                                    "size": blobs[layer.diff_id].size})
            oci_manifest = _json_bytes({
                "schemaVersion": 2, "mediaType": MT_OCI_MANIFEST,
                "config": {"mediaType": MT_OCI_CONFIG, "digest": image.id, "size": len(config)},
                "layers": layer_descs})
            manifest_digest = sha256_digest(oci_manifest)
            blobs.setdefault(manifest_digest, _BlobSource(None, manifest_digest, "", len(oci_manifest), False,
                                                          data=oci_manifest))
            descriptor = {"mediaType": MT_OCI_MANIFEST, "digest": manifest_digest, "size": len(oci_manifest)}
            tags = []
            for ref in image.repo_tags:
                split = _split_tag(ref)
                if split is None:
                    raise InvalidArgument(f"invalid tag {json.dumps(ref)}: export needs repository:tag")
                repo, tag = familiar_name(split[0]), split[1]
                tags.append(f"{repo}:{tag}")
                if image.layers:
                    repositories.setdefault(repo, {})[tag] = image.layers[-1].diff_id[len("sha256:"):]
                index.append({**descriptor, "annotations": {
                    ANNOTATION_IMAGE_NAME: f"{normalized_name(repo)}:{tag}", ANNOTATION_REF_NAME: tag}})
            if not image.repo_tags:
                index.append(descriptor)
            manifest.append({"Config": f"blobs/sha256/{image.id[len('sha256:'):]}", "RepoTags": tags or None,
                             "Layers": [f"blobs/sha256/{x.diff_id[len('sha256:'):]}" for x in image.layers]})
        files = [("index.json", _json_bytes({"schemaVersion": 2, "mediaType": MT_OCI_INDEX, "manifests": index})),
                 ("manifest.json", _json_bytes(manifest)),
                 ("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')]
        if repositories:
            files.append(("repositories", _json_bytes(repositories)))
        return _ExportPlan(blobs=sorted(blobs.items()), files=files)

    async def _layer_source(self, layer: LayerRef) -> _BlobSource:
        info = await self._content.info(layer.digest)
        if layer.digest == layer.diff_id:
            return _BlobSource(self._content, layer.digest, layer.diff_id, info.size, False)
        # A compressed blob: one pass to learn (and verify) the size of the tar we will write.
        source = _BlobSource(self._content, layer.digest, layer.diff_id, -1, True)
        size = 0
        async for chunk in source.open():
            size += len(chunk)
        return _BlobSource(self._content, layer.digest, layer.diff_id, size, True)


def _json_bytes(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def _import_config(config: bytes) -> dict[str, Any]:
    """The caller's image config for ``docker import``, checked and completed (os, architecture,
    created); ``rootfs`` and ``history`` are ours to fill in."""
    try:
        doc = json.loads(config)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"invalid image config: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidArgument("invalid image config: not a JSON object")
    doc.setdefault("os", "linux")
    if doc["os"] != "linux":
        raise InvalidArgument(f'image operating system "{doc["os"]}" cannot be used on this platform')
    doc.setdefault("architecture", host_platform()[1])
    if not isinstance(doc.get("created"), str) or not doc["created"]:
        now = time.time_ns()
        doc["created"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now // 1_000_000_000)) + \
            f".{now % 1_000_000_000:09d}Z"
    return doc


@dataclass(frozen=True, slots=True)
class _BlobSource:
    """Bytes of one exported blob: a stored blob as is, a stored blob gunzipped, or literal data.

    Opening it verifies the bytes against ``verify`` (the name they are written under)."""

    content: ContentStore | None
    digest: str
    verify: str
    size: int
    decompress: bool
    data: bytes = b""

    async def open(self) -> AsyncIterator[bytes]:
        if self.content is None:
            yield self.data
            return
        blob = self.content.read(self.digest)
        try:
            if not self.decompress:
                async for chunk in blob:
                    yield chunk
                return
            raw = ThreadReader(blob, asyncio.get_running_loop())
            layer = await run_blocking(lambda: LayerReader(raw), abort=raw.abort)
            if not layer.compressed:
                raise DigestMismatch(f"layer blob {self.digest} is not compressed and is not {self.verify}")
            while chunk := await run_blocking(lambda: layer.read(CHUNK), abort=raw.abort):
                yield chunk
            if self.verify and layer.digest != self.verify:
                raise DigestMismatch(f"layer blob {self.digest} unpacks to {layer.digest}, not {self.verify}")
            if self.size >= 0 and layer.size != self.size:
                raise DigestMismatch(f"layer blob {self.digest} changed while exporting")
        finally:
            await aclose(blob)


@dataclass(frozen=True, slots=True)
class _ExportPlan:
    blobs: list[tuple[str, _BlobSource]]
    files: list[tuple[str, bytes]]


class _TarWriter:
    """A deterministic ustar/PAX stream: mtime 0, root-owned, like moby's save (times at epoch)."""

    def __init__(self) -> None:
        self.written = 0
        self._size = 0

    def _emit(self, data: bytes) -> bytes:
        self.written += len(data)
        return data

    def header(self, name: str, size: int, kind: bytes = tarfile.REGTYPE) -> bytes:
        info = tarfile.TarInfo(name)
        info.size = size if kind == tarfile.REGTYPE else 0
        info.type = kind
        info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
        info.mtime = 0
        info.uname = info.gname = ""
        self._size = info.size
        return self._emit(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))

    def directory(self, name: str) -> bytes:
        return self.header(name, 0, tarfile.DIRTYPE)

    def data(self, chunk: bytes) -> bytes:
        return self._emit(chunk)

    def pad(self) -> bytes:
        return self._emit(b"\0" * (-self._size % tarfile.BLOCKSIZE))

    def file(self, name: str, data: bytes) -> bytes:
        return self.header(name, len(data)) + self.data(data) + self.pad()

    def end(self) -> bytes:
        tail = b"\0" * (2 * tarfile.BLOCKSIZE)
        tail += b"\0" * (-(self.written + len(tail)) % tarfile.RECORDSIZE)
        return self._emit(tail)
