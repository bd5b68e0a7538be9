"""Pull and push: images between OCI registries and this host's content store and snapshots.

Pull (REFERENCE §1.5, §2.2), in the order the work happens:

1. Resolve: HEAD the tag (or digest) for the manifest digest — the registry checks access, Docker
   Hub does not count it — then GET the manifest by digest unless we hold its verified bytes
   (a small in-memory cache by digest: a warm pull is HEAD-only). A manifest list / OCI index
   is resolved to the wanted platform's manifest, fetched by digest too.
2. The config blob: from the content store, else fetched and verified; its ``rootfs.diff_ids``
   must be as many as the manifest's layers, which give the chain ids.
3. Layers whose chain is committed: ``Already exists``, nothing fetched. The others are
   downloaded in parallel, at most ``max_concurrent_downloads`` on this host (``Waiting``
   beyond), each into an :class:`~snapshotter.content.Ingest`: the content store's write,
   sha256 and size checked as bytes land, Range-resumed when a connection breaks, retried when a
   transient error outlasts the client's own retries.
4. Unpack, strictly in layer order: layer *i* is extracted as soon as chain *i-1* is committed,
   *following its ingest file while it is still downloading* — gunzip and tar apply run on the
   bytes as they arrive, and the diff id is computed on the way. Its snapshot is committed only
   after the blob was verified (the follower ends only then) and the diff id matched.

Why the bytes go through the content store's ingest file rather than a pipe from the socket
straight into the extractor: the blob must be stored anyway (``docker save``, push), so writing
it is no extra work, and the page cache hands it straight back to the extractor; the download
never waits for extraction (layers ahead of the one being extracted keep downloading, and a
download slot is freed as soon as its bytes are in), a broken connection resumes from what is
on disk, and a second pull of the same blob can follow the same file. Memory stays at a few
chunks per layer however large the layer.

One blob wanted by concurrent pulls is fetched once: fetches are keyed by digest and shared; a
fetch is cancelled only when every pull that wanted it has gone.

If anything fails — a blob that does not hash to its digest, a truncated or oversized one, a
wrong diff id, a hostile tar, a registry that keeps answering 429 — the pull stops, and what it
created (committed chains, stored blobs) and no overlapping operation used is removed again,
so nothing half-verified is ever referenced and a later pull starts clean.

Push (§2.4): the config and each layer blob as stored (gzip or plain tar, never recompressed):
HEAD (``Layer already exists``), else a cross-repository mount from a repository of the same
registry that the blob is known to come from (content-store label
``containerd.io/distribution.source.<registry>=<repo,…>``, set by pulls and pushes), else an
upload (``Pushing`` with byte counts), at most ``max_concurrent_uploads`` at once; then the
manifest — Docker schema2 if every layer came with Docker media types, OCI otherwise.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import aiohttp
import structlog

from common.bounded import remember
from protos.errors import (
    BerthError,
    BlobNotFound,
    DigestMismatch,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from registry_client import platforms
from registry_client.auth import Credentials
from registry_client.client import (
    INDEX_TYPES,
    MEDIA_DOCKER_MANIFEST,
    MEDIA_OCI_MANIFEST,
    Descriptor,
    Manifest,
    RegistryClient,
)
from registry_client.hosts import RegistryTLS
from registry_client.reference import Reference, parse_tagged
from snapshotter.api import (
    MAX_DEPTH,
    ExportImage,
    ImageRecord,
    LayerRef,
    Progress,
    PullResult,
    PushResult,
    RegistryAuth,
)
from snapshotter.content import Ingest, IngestingStore, check_digest
from snapshotter.progress import ProgressChannel, Throttle, run_with_progress, short_id
from snapshotter.streams import iterate_bytes, uncancellable
from snapshotter.unpack import Lease, Unpacker, aclose, chain_ids, sha256_digest

T = TypeVar("T")

MT_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MT_DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
MT_DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
MT_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
MT_OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MT_OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_LAYER_TYPES = frozenset({MT_DOCKER_LAYER_GZIP, MT_DOCKER_LAYER})
LAYER_TYPES = DOCKER_LAYER_TYPES | {MT_OCI_LAYER, MT_OCI_LAYER_GZIP, MT_OCI_LAYER_ZSTD}
CONFIG_TYPES = frozenset({MT_DOCKER_CONFIG, MT_OCI_CONFIG})
SOURCE_LABEL = "containerd.io/distribution.source."
MAX_CONFIG = 20 << 20  # containerd's limit for JSON documents
MAX_SOURCES = 16  # repositories remembered per registry and blob
MAX_MOUNT_ATTEMPTS = 3  # moby's maxMountAttempts
MANIFEST_CACHE_BYTES = 8 << 20
CONFIG_CACHE_BYTES = 4 << 20
SIZE_CACHE_ENTRIES = 1024


def secure_only(host: str) -> bool:
    return False


@dataclass(frozen=True, slots=True)
class RegistryOptions:
    """How this host reaches registries (``berth-snapshotter`` flags)."""

    insecure: Callable[[str], bool] = secure_only
    certs_dir: Path | None = None
    max_concurrent_downloads: int = 3
    max_concurrent_uploads: int = 5
    attempts: int = 5  # moby's max-download-attempts / max-upload-attempts
    retry_delay: float = 1.0  # seconds, times the attempt number


def credentials(auth: RegistryAuth) -> Credentials:
    return Credentials(username=auth.username, password=auth.password, identity_token=auth.identity_token,
                       registry_token=auth.registry_token)


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"invalid {what}: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidArgument(f"invalid {what}: not a JSON object")
    return doc


def _descriptor(doc: Any, what: str) -> Descriptor:
    if not isinstance(doc, dict):
        raise InvalidArgument(f"invalid manifest: malformed {what} descriptor")
    digest, size, media_type = doc.get("digest"), doc.get("size"), doc.get("mediaType", "")
    if not isinstance(digest, str) or not isinstance(size, int) or isinstance(size, bool) or size < 0 \
            or not isinstance(media_type, str):
        raise InvalidArgument(f"invalid manifest: malformed {what} descriptor")
    check_digest(digest)
    return Descriptor(media_type=media_type, digest=digest, size=size)


def _layer_type_error(media_type: str) -> InvalidArgument:
    if "foreign" in media_type or "nondistributable" in media_type:
        why = "foreign (non-distributable) layers are not supported"
    else:
        why = "not a layer type this host can unpack"
    return InvalidArgument(f"unsupported layer media type {media_type or '(none)'}: {why}")


@dataclass(frozen=True, slots=True)
class _ImageManifest:
    config: Descriptor
    layers: tuple[Descriptor, ...]


def parse_image_manifest(manifest: Manifest) -> _ImageManifest:
    """The config and layer descriptors of an image manifest; foreign and unknown layer
    types are refused before anything is fetched."""
    doc = _json_object(manifest.body, "manifest")
    if doc.get("schemaVersion") != 2:
        raise InvalidArgument(f"unsupported manifest schema version {doc.get('schemaVersion')!r}")
    declared = doc.get("mediaType")
    if declared and declared != manifest.media_type:
        raise InvalidArgument(f"manifest media type {declared} does not match its Content-Type {manifest.media_type}")
    config = _descriptor(doc.get("config"), "config")
    if config.media_type not in CONFIG_TYPES:
        raise InvalidArgument(f"unsupported image config media type {config.media_type or '(none)'}: "
                              "not a container image")
    entries = doc.get("layers") or []
    if not isinstance(entries, list):
        raise InvalidArgument("invalid manifest: layers must be a list")
    if len(entries) > MAX_DEPTH:  # refused before anything is fetched, not at layer 129
        raise InvalidArgument(f"image has {len(entries)} layers, more than the maximum of {MAX_DEPTH}")
    layers = tuple(_descriptor(entry, "layer") for entry in entries)
    for layer in layers:
        if layer.media_type not in LAYER_TYPES:
            raise _layer_type_error(layer.media_type)
    return _ImageManifest(config=config, layers=layers)


def config_diff_ids(config: bytes, wanted: platforms.Platform | None, reference: str) -> list[str]:
    doc = _json_object(config, "image config")
    image_os = doc.get("os") or "linux"
    if image_os != "linux":
        raise InvalidArgument(f'image operating system "{image_os}" cannot be used on this platform')
    if wanted is not None:
        actual = platforms.normalize(str(image_os), str(doc.get("architecture") or ""),
                                     str(doc.get("variant") or ""))
        if actual.architecture != wanted.architecture:
            raise NotFound(f"image with reference {reference} was found but does not match the specified "
                           f"platform: wanted {wanted}, actual: {actual}")
    rootfs = doc.get("rootfs")
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if diff_ids is None:
        diff_ids = []
    if not isinstance(diff_ids, list) or not all(isinstance(d, str) for d in diff_ids):
        raise InvalidArgument("invalid image config: malformed rootfs.diff_ids")
    for diff_id in diff_ids:
        check_digest(diff_id)
    return diff_ids


def add_source(labels: dict[str, str], domain: str, path: str) -> dict[str, str]:
    """The label change recording that ``domain/path`` holds a blob (most recent last)."""
    key = SOURCE_LABEL + domain
    repos = [r for r in labels.get(key, "").split(",") if r and r != path]
    return {key: ",".join([*repos, path][-MAX_SOURCES:])}


class _DigestCache(Generic[T]):
    """Verified content by digest, bounded in bytes (immutable content: safe to share)."""

    def __init__(self, limit: int, size: Callable[[T], int]) -> None:
        self._limit = limit
        self._size = size
        self._used = 0
        self._entries: collections.OrderedDict[str, T] = collections.OrderedDict()

    def get(self, digest: str) -> T | None:
        found = self._entries.get(digest)
        if found is not None:
            self._entries.move_to_end(digest)
        return found

    def put(self, digest: str, value: T) -> None:
        size = self._size(value)
        if digest in self._entries or size > self._limit // 4:
            return
        self._entries[digest] = value
        self._used += size
        while self._used > self._limit:
            _, old = self._entries.popitem(last=False)
            self._used -= self._size(old)


@dataclass(eq=False)
class _Fetch:
    """One blob being downloaded into the content store, shared by every pull that wants it."""

    digest: str
    size: int
    users: int = 0
    status: str = "Pulling fs layer"
    current: int = 0
    ingest: Ingest | None = None
    ingest_ready: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    watchers: list[Callable[[str, int], None]] = field(default_factory=list)

    def notify(self, status: str, current: int = 0) -> None:
        self.status, self.current = status, current
        for watch in list(self.watchers):
            watch(status, current)


class Distribution:
    """Pull and push for one host: the registry side of :class:`~snapshotter.images.LocalImages`."""

    def __init__(self, *, unpacker: Unpacker, content: IngestingStore, options: RegistryOptions) -> None:
        self._unpacker = unpacker
        self._content = content
        self._options = options
        self._tls = RegistryTLS(insecure=options.insecure, certs_dir=options.certs_dir)
        self._session: aiohttp.ClientSession | None = None
        self._client: RegistryClient | None = None
        self._downloads: asyncio.Semaphore | None = None
        self._uploads: asyncio.Semaphore | None = None
        self._fetches: dict[str, _Fetch] = {}
        self._manifests: _DigestCache[Manifest] = _DigestCache(MANIFEST_CACHE_BYTES, lambda m: len(m.body))
        self._configs: _DigestCache[bytes] = _DigestCache(CONFIG_CACHE_BYTES, len)
        self._sizes: dict[str, int] = {}
        self._log = structlog.get_logger().bind(component="distribution")

    def _registry(self) -> RegistryClient:
        """The client, made on first use inside the running loop (aiohttp sessions belong to one)."""
        if self._client is None:
            # Blobs must arrive as stored: no transparent decompression, nothing that invites it.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=64), auto_decompress=False,
                headers={"Accept-Encoding": "identity", "User-Agent": "berth-snapshotter"})
            self._client = RegistryClient(self._session, insecure=self._options.insecure, tls=self._tls.context)
            self._downloads = asyncio.Semaphore(self._options.max_concurrent_downloads)
            self._uploads = asyncio.Semaphore(self._options.max_concurrent_uploads)
        return self._client

    async def aclose(self) -> None:
        """Stop downloads still running (their ingests are removed), then close connections."""
        tasks = [f.task for f in self._fetches.values() if f.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
        self._session = self._client = None

    # -- pull -------------------------------------------------------------------------------
    async def pull(self, reference: str, auth: RegistryAuth,
                   platform: str = "") -> AsyncIterator[Progress | PullResult]:
        ref = parse_tagged(reference)
        wanted = platforms.parse(platform) if platform else None
        creds = credentials(auth)

        async def work(channel: ProgressChannel) -> PullResult:
            with structlog.contextvars.bound_contextvars(pull=ref.canonical):
                return await self._pull(ref, creds, wanted, channel)

        # aclosing: a caller that walks away must cancel the work now, not when the GC notices.
        async with contextlib.aclosing(run_with_progress(work)) as events:
            async for event in events:
                yield event

    async def _pull(self, ref: Reference, creds: Credentials, wanted: platforms.Platform | None,
                    channel: ProgressChannel) -> PullResult:
        client = self._registry()
        manifest_digest, manifest = await self._resolve(client, ref, creds, wanted or platforms.host_platform())
        image = parse_image_manifest(manifest)
        created_blobs: list[str] = []
        created_chains: list[str] = []
        fetches: dict[str, _Fetch] = {}
        # Held before anything is checked: a rollback of an overlapping pull leaves these alone.
        with self._unpacker.leases.hold({image.config.digest}) as lease:
            config, stored = await self._config(client, ref, creds, image.config)
            diff_ids = config_diff_ids(config, wanted, ref.familiar)
            if len(diff_ids) != len(image.layers):
                raise InvalidArgument("layers from manifest don't match image configuration")
            layers = tuple(LayerRef(digest=d.digest, diff_id=diff_id, media_type=d.media_type, size=d.size)
                           for d, diff_id in zip(image.layers, diff_ids, strict=True))
            chains = chain_ids(diff_ids)
            self._unpacker.leases.extend(lease, {*(x.digest for x in layers), *chains})
            try:
                if not stored:
                    created_blobs.append(image.config.digest)
                    await self._content.write(iterate_bytes(config), image.config.digest, image.config.size)
                top = await self._layers(client, ref, creds, layers, chains, channel, fetches, created_blobs,
                                         created_chains)
                size = await self._size(chains)
            except BaseException as exc:
                await uncancellable(self._abandon(fetches, lease, created_chains, created_blobs))
                if isinstance(exc, asyncio.CancelledError):
                    self._log.info("pull_cancelled")
                else:
                    self._log.warning("pull_failed", error=str(exc), error_class=type(exc).__name__)
                raise
            finally:
                self._release(fetches)
        await self._remember(ref, [image.config.digest, *(x.digest for x in layers)])
        self._log.info("pulled", id=image.config.digest, manifest=manifest_digest, layers=len(layers),
                       downloaded=len([b for b in created_blobs if b != image.config.digest]))
        record = ImageRecord(id=image.config.digest, config=config, repo_tags=(), layers=layers, chain_id=top,
                             size=size)
        return PullResult(image=record, manifest_digest=manifest_digest)

    async def _size(self, chains: Sequence[str]) -> int:
        """Unpacked bytes of the chains; remembered by top chain (committed snapshots never change)."""
        top = chains[-1] if chains else ""
        size = self._sizes.get(top)
        if size is None:
            size = await self._unpacker.size(chains)
            remember(self._sizes, top, size, SIZE_CACHE_ENTRIES)
        return size

    async def _resolve(self, client: RegistryClient, ref: Reference, creds: Credentials,
                       wanted: platforms.Platform) -> tuple[str, Manifest]:
        """(digest the reference resolved to, the image manifest for ``wanted``)."""
        # HEAD even for a digest we hold: the registry still decides whether this caller may pull.
        head = await client.resolve_manifest(ref, ref.digest or ref.tag, creds)
        top = self._manifests.get(head.digest) if head is not None else None
        if top is None:
            top = await client.fetch_manifest(ref, head.digest if head is not None else (ref.digest or ref.tag), creds)
            self._manifests.put(top.digest, top)
        if top.media_type not in INDEX_TYPES:
            return top.digest, top
        chosen = platforms.select(_json_object(top.body, "manifest list"), wanted)
        entry = _descriptor(chosen, "manifest")
        child = self._manifests.get(entry.digest) or await client.fetch_manifest(ref, entry.digest, creds)
        self._manifests.put(child.digest, child)
        if child.media_type not in (MEDIA_DOCKER_MANIFEST, MEDIA_OCI_MANIFEST):
            raise InvalidArgument(f"manifest list entry {entry.digest} is a {child.media_type}, not an image manifest")
        return top.digest, child

    async def _has_blob(self, digest: str) -> bool:
        try:
            await self._content.info(digest)
        except BlobNotFound:
            return False
        return True

    async def _config(self, client: RegistryClient, ref: Reference, creds: Credentials,
                      desc: Descriptor) -> tuple[bytes, bool]:
        """The verified config, and whether the content store holds it."""
        if desc.size > MAX_CONFIG:
            raise InvalidArgument(f"image config {desc.digest} is {desc.size} bytes, more than {MAX_CONFIG}")
        if await self._has_blob(desc.digest):
            data = self._configs.get(desc.digest)
            if data is None:
                data = b"".join([chunk async for chunk in self._content.read(desc.digest)])
                self._configs.put(desc.digest, data)
            return data, True
        chunks: list[bytes] = []
        received = 0
        async for chunk in client.fetch_blob(ref, desc.digest, creds, size=desc.size):
            received += len(chunk)
            if received > desc.size:
                break
            chunks.append(chunk)
        data = b"".join(chunks)
        digest = sha256_digest(data) if len(data) < 1 << 20 else await asyncio.to_thread(sha256_digest, data)
        if received != desc.size or digest != desc.digest:
            raise DigestMismatch(f"image config verification failed for digest {desc.digest}")
        return data, False

    async def _layers(self, client: RegistryClient, ref: Reference, creds: Credentials, layers: Sequence[LayerRef],
                      chains: Sequence[str], channel: ProgressChannel, fetches: dict[str, _Fetch],
                      created_blobs: list[str], created_chains: list[str]) -> str:
        # A committed snapshot's parents are committed and stay (the warm pull's one lookup).
        if chains and await self._unpacker.is_committed(chains[-1]):
            present = [True] * len(chains)
        else:
            present = [await self._unpacker.is_committed(chain) for chain in chains]
        announced: set[str] = set()
        for layer, done in zip(layers, present, strict=True):
            pid = short_id(layer.digest)
            if done:
                channel.put(Progress(pid, "Already exists"))
            elif layer.digest not in announced:
                announced.add(layer.digest)
                channel.put(Progress(pid, "Pulling fs layer"))
        loop = asyncio.get_running_loop()
        failed: asyncio.Future[None] = loop.create_future()
        for layer, done in zip(layers, present, strict=True):
            if done or layer.digest in fetches or await self._has_blob(layer.digest):
                continue
            fetch, started = self._fetch(client, ref, creds, layer)
            fetches[layer.digest] = fetch
            if started:
                created_blobs.append(layer.digest)  # the download commits it
            self._watch(fetch, short_id(layer.digest), channel, failed)
        unpacking = asyncio.ensure_future(self._unpack_all(layers, chains, present, channel, fetches, created_chains))
        try:
            either: list[asyncio.Future[Any]] = [unpacking, failed]
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            if not unpacking.done():
                failed.result()  # a download failed first: stop unpacking with its error
            return unpacking.result()
        finally:
            if not unpacking.done():
                unpacking.cancel()
                await uncancellable(asyncio.wait({unpacking}))
            if not unpacking.cancelled():
                unpacking.exception()
            if failed.done():
                failed.exception()
            else:
                failed.cancel()

    async def _unpack_all(self, layers: Sequence[LayerRef], chains: Sequence[str], present: Sequence[bool],
                          channel: ProgressChannel, fetches: dict[str, _Fetch], created: list[str]) -> str:
        parent = ""
        for index, (layer, chain) in enumerate(zip(layers, chains, strict=True)):
            pid = short_id(layer.digest)
            if not present[index]:
                async with self._unpacker.chain_locks.hold(chain):
                    if not await self._unpacker.is_committed(chain):  # else another pull just did it
                        fetch = fetches.get(layer.digest)
                        source = await self._source(layer, fetch)
                        if fetch is None:
                            channel.put(Progress(pid, "Download complete"))
                        extracting = Throttle(channel.put, pid, "Extracting", layer.size)
                        read = [0]

                        def counted(n: int, fetch: _Fetch | None = fetch, extracting: Throttle = extracting,
                                    read: list[int] = read) -> None:
                            read[0] = n
                            # While it still downloads, the layer's line says Downloading.
                            if fetch is None or fetch.status == "Download complete":
                                extracting.update(n)

                        created.append(chain)
                        await self._unpacker.unpack_layer(layer, index, chain, parent, _counting(source, counted))
                        extracting.finish(read[0])  # extraction may have kept pace with the download
                channel.put(Progress(pid, "Pull complete"))
            parent = chain
        return parent

    async def _source(self, layer: LayerRef, fetch: _Fetch | None) -> AsyncIterator[bytes]:
        """The layer's bytes: following its download, or from the content store."""
        if fetch is not None:
            await fetch.ingest_ready.wait()
            if fetch.ingest is not None:
                return fetch.ingest.follow()
            if fetch.task is not None and fetch.task.done() and not fetch.task.cancelled() \
                    and fetch.task.exception() is not None:
                raise _copy(fetch.task.exception())
        return self._content.read(layer.digest)

    def _fetch(self, client: RegistryClient, ref: Reference, creds: Credentials,
               layer: LayerRef) -> tuple[_Fetch, bool]:
        """The running download of ``layer``'s blob, joined or started (True if started)."""
        fetch = self._fetches.get(layer.digest)
        if fetch is not None and fetch.task is not None and not fetch.task.done():
            fetch.users += 1
            return fetch, False
        fetch = _Fetch(digest=layer.digest, size=layer.size, users=1)
        self._fetches[layer.digest] = fetch
        fetch.task = asyncio.ensure_future(self._download(client, ref, creds, fetch))

        def forget(_: object) -> None:
            if self._fetches.get(layer.digest) is fetch:
                del self._fetches[layer.digest]
            fetch.ingest_ready.set()  # wake waiters of a fetch that ended before it began

        fetch.task.add_done_callback(forget)
        return fetch, True

    def _watch(self, fetch: _Fetch, pid: str, channel: ProgressChannel, failed: asyncio.Future[None]) -> None:
        downloading = Throttle(channel.put, pid, "Downloading", fetch.size)

        def watch(status: str, current: int) -> None:
            if status == "Downloading":
                downloading.update(current)
            else:
                channel.put(Progress(pid, status))

        fetch.watchers.append(watch)
        if fetch.status != "Pulling fs layer":
            watch(fetch.status, fetch.current)  # joined a fetch under way

        def ended(task: asyncio.Future[None]) -> None:
            fetch.watchers.remove(watch)
            if not failed.done() and not task.cancelled() and task.exception() is not None:
                failed.set_exception(_copy(task.exception()))

        assert fetch.task is not None
        fetch.task.add_done_callback(ended)

    def _release(self, fetches: dict[str, _Fetch]) -> None:
        """This pull no longer wants these downloads; one nobody wants is cancelled."""
        for fetch in fetches.values():
            fetch.users -= 1
            if fetch.users <= 0 and fetch.task is not None and not fetch.task.done():
                fetch.task.cancel()
        fetches.clear()

    async def _abandon(self, fetches: dict[str, _Fetch], lease: Lease, chains: list[str], blobs: list[str]) -> None:
        """Stop this pull's downloads (those nobody else wants), then undo what it created."""
        tasks = {f.task for f in fetches.values() if f.task is not None}
        self._release(fetches)
        stopping = {t for t in tasks if t.cancelled() or not t.done()}
        if stopping:
            await asyncio.wait(stopping)
        for task in tasks:
            if task.done() and not task.cancelled():
                task.exception()
        await self._unpacker.rollback(lease, chains, blobs)

    async def _download(self, client: RegistryClient, ref: Reference, creds: Credentials, fetch: _Fetch) -> None:
        assert self._downloads is not None
        if self._downloads.locked():
            fetch.notify("Waiting")
        async with self._downloads:
            mismatch = f"filesystem layer verification failed for digest {fetch.digest}"
            ingest = await self._content.ingest(fetch.digest, fetch.size, mismatch=mismatch)
            fetch.ingest = ingest
            fetch.ingest_ready.set()
            try:
                fetch.notify("Downloading", 0)
                attempt = 1
                while True:
                    try:
                        async for chunk in client.fetch_blob(ref, fetch.digest, creds, offset=ingest.written,
                                                             size=fetch.size):
                            await ingest.write(chunk)
                            fetch.notify("Downloading", ingest.written)
                        break
                    except Unavailable as exc:
                        if attempt >= self._options.attempts:
                            raise
                        self._log.warning("blob_download_retry", digest=fetch.digest, attempt=attempt,
                                          position=ingest.written, error=str(exc))
                        await asyncio.sleep(self._options.retry_delay * attempt)
                        attempt += 1
                if ingest.written != fetch.size:
                    raise Unavailable(f"downloading {fetch.digest}: unexpected EOF at {ingest.written} of "
                                      f"{fetch.size} bytes")
                fetch.notify("Verifying Checksum")
                await ingest.commit()
                fetch.notify("Download complete")
            except BaseException as exc:
                await ingest.abort(exc)
                raise

    async def _remember(self, ref: Reference, digests: Sequence[str]) -> None:
        """Note that ``ref``'s repository holds these blobs (mount candidates for later pushes)."""
        for digest in dict.fromkeys(digests):
            try:
                labels = await self._content.labels(digest)
                change = add_source(labels, ref.domain, ref.path)
                if all(labels.get(k) == v for k, v in change.items()):
                    continue  # known already (a warm pull): nothing to write
                await self._content.update_labels(digest, change)
            except (BlobNotFound, InvalidArgument) as exc:
                self._log.warning("source_label_skipped", digest=digest, error=str(exc))

    # -- push -------------------------------------------------------------------------------
    async def push(self, image: ExportImage, reference: str,
                   auth: RegistryAuth) -> AsyncIterator[Progress | PushResult]:
        ref = parse_tagged(reference)
        if ref.digest:
            raise InvalidArgument("cannot push a digest reference")
        creds = credentials(auth)

        async def work(channel: ProgressChannel) -> PushResult:
            with structlog.contextvars.bound_contextvars(push=ref.canonical):
                return await self._push(image, ref, creds, channel)

        # aclosing: a caller that walks away must cancel the work now, not when the GC notices.
        async with contextlib.aclosing(run_with_progress(work)) as events:
            async for event in events:
                yield event

    async def _push(self, image: ExportImage, ref: Reference, creds: Credentials,
                    channel: ProgressChannel) -> PushResult:
        client = self._registry()
        check_digest(image.id)
        try:
            config_info = await self._content.info(image.id)
        except BlobNotFound:
            raise NotFound(f"An image does not exist locally with the id {image.id}") from None
        if config_info.size > MAX_CONFIG:
            raise InvalidArgument(f"image config {image.id} is {config_info.size} bytes, more than {MAX_CONFIG}")
        config = b"".join([chunk async for chunk in self._content.read(image.id)])
        if config_diff_ids(config, None, ref.familiar) != [layer.diff_id for layer in image.layers]:
            raise InvalidArgument(f"layers of image {image.id} do not match its config's rootfs.diff_ids")
        docker = bool(image.layers) and all(layer.media_type in DOCKER_LAYER_TYPES for layer in image.layers)
        descriptors: list[dict[str, Any]] = []
        uploads: dict[str, tuple[int, str]] = {}  # digest → (size, progress id); a blob once
        pushed: list[str] = []
        for layer in image.layers:
            digest = layer.digest
            try:
                info = await self._content.info(digest)
            except BlobNotFound:
                # A pull skips layers whose chain the host already has (from a load or a build), so
                # the registry's blob may be absent; the plain tar stored under the diff id will do.
                try:
                    info = await self._content.info(layer.diff_id)
                except BlobNotFound:
                    raise NotFound(f"layer {layer.digest} of image {image.id} is not stored on this host") from None
                digest = layer.diff_id
            compressed = digest != layer.diff_id  # stored as received: gzip or zstd, or the plain tar
            if not compressed:
                media_type = MT_DOCKER_LAYER if docker else MT_OCI_LAYER
            elif layer.media_type == MT_OCI_LAYER_ZSTD:
                media_type = MT_OCI_LAYER_ZSTD
            else:
                media_type = MT_DOCKER_LAYER_GZIP if docker else MT_OCI_LAYER_GZIP
            descriptors.append({"mediaType": media_type, "size": info.size, "digest": digest})
            pushed.append(digest)
            if digest not in uploads:
                uploads[digest] = (info.size, short_id(layer.diff_id))  # moby names push lines by diff id
                channel.put(Progress(short_id(layer.diff_id), "Preparing"))
        await _all([self._push_blob(client, ref, creds, digest, size, pid, channel)
                    for digest, (size, pid) in uploads.items()]
                   + [self._push_blob(client, ref, creds, image.id, len(config), "", channel)])
        manifest = _manifest_bytes(docker, image.id, len(config), descriptors)
        media_type = MEDIA_DOCKER_MANIFEST if docker else MEDIA_OCI_MANIFEST
        digest = sha256_digest(manifest)
        returned = await client.put_manifest(ref, ref.tag, manifest, media_type, creds)
        if returned != digest:
            raise DigestMismatch(f"registry stored manifest {returned} for {ref.familiar}, expected {digest}")
        await self._remember(ref, [image.id, *pushed])
        self._log.info("pushed", id=image.id, manifest=digest, layers=len(image.layers))
        return PushResult(digest=digest, size=len(manifest))

    async def _push_blob(self, client: RegistryClient, ref: Reference, creds: Credentials, digest: str, size: int,
                         pid: str, channel: ProgressChannel) -> None:
        """One blob into the repository: present, mounted, or uploaded. ``pid`` "" means no
        progress lines (the config, as Docker shows none for it)."""
        def say(status: str) -> None:
            if pid:
                channel.put(Progress(pid, status))

        assert self._uploads is not None
        if self._uploads.locked():
            say("Waiting")
        async with self._uploads:
            if await client.blob_size(ref, digest, creds) is not None:
                say("Layer already exists")
                return
            location: str | None = None
            mount_from = ""
            for repo in await self._mount_candidates(ref, digest):
                if location is not None:
                    await client.cancel_upload(ref, location, creds, mount_from=mount_from)
                location = await client.start_upload(ref, creds, mount=digest, mount_from=repo)
                mount_from = repo
                if location is None:
                    say(f"Mounted from {repo}")
                    return
            pushing = Throttle(channel.put, pid, "Pushing", size) if pid else None
            attempt = 1
            while True:
                try:
                    source = self._content.read(digest)
                    await client.upload_blob(ref, digest, size, _counting(source, pushing.update if pushing else None),
                                             creds, location=location, mount_from=mount_from)
                    break
                except Unavailable as exc:
                    if attempt >= self._options.attempts:
                        raise
                    self._log.warning("blob_upload_retry", digest=digest, attempt=attempt, error=str(exc))
                    location, mount_from = None, ""
                    await asyncio.sleep(self._options.retry_delay * attempt)
                    attempt += 1
            say("Pushed")

    async def _mount_candidates(self, ref: Reference, digest: str) -> list[str]:
        """Repositories of ``ref``'s registry that this host saw holding ``digest``, newest first."""
        try:
            labels = await self._content.labels(digest)
        except BlobNotFound:
            return []
        repos = [r for r in labels.get(SOURCE_LABEL + ref.domain, "").split(",") if r and r != ref.path]
        return list(reversed(repos))[:MAX_MOUNT_ATTEMPTS]


def _manifest_bytes(docker: bool, config_digest: str, config_size: int, layers: Sequence[dict[str, Any]]) -> bytes:
    """The manifest as dockerd writes schema2 (3-space indent, size before digest, so the same
    image pushed by either gets the same digest), or compact OCI in image-spec field order."""
    if docker:
        doc = {"schemaVersion": 2, "mediaType": MEDIA_DOCKER_MANIFEST,
               "config": {"mediaType": MT_DOCKER_CONFIG, "size": config_size, "digest": config_digest},
               "layers": [{"mediaType": d["mediaType"], "size": d["size"], "digest": d["digest"]} for d in layers]}
        return json.dumps(doc, indent=3).encode()
    oci = {"schemaVersion": 2, "mediaType": MEDIA_OCI_MANIFEST,
           "config": {"mediaType": MT_OCI_CONFIG, "digest": config_digest, "size": config_size},
           "layers": [{"mediaType": d["mediaType"], "digest": d["digest"], "size": d["size"]} for d in layers]}
    return json.dumps(oci, separators=(",", ":")).encode()


async def _counting(source: AsyncIterator[bytes], seen: Callable[[int], None] | None) -> AsyncIterator[bytes]:
    """``source`` unchanged, reporting the running byte count."""
    total = 0
    try:
        async for chunk in source:
            total += len(chunk)
            if seen is not None:
                seen(total)
            yield chunk
    finally:
        await aclose(source)


def _copy(exc: BaseException | None) -> BaseException:
    """An error to raise in another task: classified errors keep class and text."""
    if isinstance(exc, BerthError):
        return type(exc)(exc.message)
    return Unavailable(f"download failed: {exc}")


async def _all(coros: Sequence[Coroutine[Any, Any, None]]) -> None:
    """Run concurrently; the first error cancels the rest and is raised as is (no group)."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await uncancellable(asyncio.wait(tasks))
        raise
    finally:
        for task in tasks:
            if task.done() and not task.cancelled():
                task.exception()


__all__ = ["Distribution", "RegistryOptions", "add_source", "config_diff_ids", "parse_image_manifest"]
