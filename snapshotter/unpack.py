"""Layers into committed snapshots named by chain id, shared by load, unpack, pull and import.

A layer is unpacked as containerd's unpacker does it (REFERENCE §1.5): under a lock on its chain
id, if the chain is not committed yet, prepare ``extract-<random> <chain>`` on the parent chain,
extract the layer straight into the new upper directory (nobody has mounted it, so nothing can
race the extraction), check the diff id, and commit it as the chain id. The bytes come from any
stream: a stored blob, or a download still being written (``Ingest.follow``).

Operations take a :class:`Lease` on every name (blob digest, chain id) they use. If one fails,
it removes what it created — committed chains, then blobs — but only names no overlapping
operation used: that one may have found the name present and built an image on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from protos.errors import AlreadyExists, DigestMismatch, FailedPrecondition, InvalidArgument, NotFound, SnapshotNotFound
from snapshotter.api import ContentStore, Kind, LayerRef, Mount, Snapshotter
from snapshotter.archive import ApplyResult, apply_layer
from snapshotter.streams import ThreadReader, run_blocking, uncancellable

LABEL_SNAPSHOT_REF = "containerd.io/snapshot.ref"
LABEL_UNCOMPRESSED = "containerd.io/snapshot/berth.diffid"


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """image-spec ChainID of every prefix of ``diff_ids``."""
    chain: list[str] = []
    for diff_id in diff_ids:
        chain.append(diff_id if not chain else sha256_digest(f"{chain[-1]} {diff_id}".encode()))
    return chain


def upper_dir(mounts: Sequence[Mount]) -> tuple[str, list[str]]:
    """The directory a layer is extracted into, and the lower layers (nearest first)."""
    if len(mounts) == 1 and mounts[0].type == "bind":
        return mounts[0].source, []
    if len(mounts) == 1 and mounts[0].type == "overlay":
        options = dict(o.partition("=")[::2] for o in mounts[0].options)
        if options.get("upperdir"):
            lowers = options.get("lowerdir", "")
            return options["upperdir"], lowers.split(":") if lowers else []
    raise InvalidArgument("cannot apply a layer: the snapshot's mounts have no local upper directory")


async def aclose(it: AsyncIterator[Any]) -> None:
    """Close an async iterator now if it can be closed (a generator's ``finally`` runs)."""
    closer = getattr(it, "aclose", None)
    if closer is not None:
        with contextlib.suppress(RuntimeError):
            await closer()


class KeyedLock:
    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


@dataclass(eq=False)
class Lease:
    contested: set[str] = field(default_factory=set)
    names: set[str] = field(default_factory=set)


class Leases:
    """Names (blob digests, chain ids) used by running operations."""

    def __init__(self) -> None:
        self._holders: dict[str, set[Lease]] = {}

    @contextlib.contextmanager
    def hold(self, names: set[str]) -> Iterator[Lease]:
        lease = Lease()
        held: set[str] = set()
        try:
            self._add(lease, held, names)
            yield lease
        finally:
            for name in held:
                holders = self._holders[name]
                holders.discard(lease)
                if not holders:
                    del self._holders[name]

    def extend(self, lease: Lease, names: set[str]) -> None:
        """Add names an operation learns on the way (a digest known only once the input ended);
        call before creating anything under them. Released with the lease."""
        self._add(lease, lease.names, names)

    def _add(self, lease: Lease, held: set[str], names: set[str]) -> None:
        lease.names = held
        for name in names - held:
            others = self._holders.setdefault(name, set())
            if others:
                lease.contested.add(name)
                for other in others:
                    other.contested.add(name)
            others.add(lease)
            held.add(name)


class Unpacker:
    """Chains of layers into snapshots on one host (its mounts are local paths)."""

    def __init__(self, *, snapshotter: Snapshotter, content: ContentStore, allow_devices: bool = False) -> None:
        self.snapshotter = snapshotter
        self.content = content
        self.allow_devices = allow_devices
        self.chain_locks = KeyedLock()
        self.leases = Leases()
        self._log = structlog.get_logger().bind(component="unpack")

    async def is_committed(self, chain: str) -> bool:
        try:
            info = await self.snapshotter.stat(chain)
        except SnapshotNotFound:
            return False
        if info.kind is not Kind.COMMITTED:
            raise FailedPrecondition(f"snapshot {chain} exists but is not committed")
        return True

    async def unpack_chain(self, layers: Sequence[LayerRef], wait: Callable[[str], Awaitable[None]],
                           created: list[str]) -> str:
        """Unpack ``layers`` from stored blobs (``wait(digest)`` returns once a blob is stored);
        chain ids this call commits are appended to ``created``. Returns the top chain id."""
        parent = ""
        for index, (layer, chain) in enumerate(zip(layers, chain_ids([r.diff_id for r in layers]), strict=True)):
            async with self.chain_locks.hold(chain):
                if not await self.is_committed(chain):
                    await wait(layer.digest)
                    created.append(chain)  # before: a commit cancelled after the fact still happened
                    await self.unpack_layer(layer, index, chain, parent)
            parent = chain
        return parent

    async def unpack_layer(self, layer: LayerRef, index: int, chain: str, parent: str,
                           source: AsyncIterator[bytes] | None = None, *, trusted: bool = False) -> ApplyResult:
        """Extract one layer (from ``source``, else its stored blob) and commit it as ``chain``.
        The caller holds the chain's lock and has checked that it is not committed. ``trusted``:
        the tar is one this host wrote from a container's own changes (device nodes allowed)."""
        key = f"extract-{secrets.token_hex(8)} {chain}"
        blob = source if source is not None else self.content.read(layer.digest)
        try:
            try:
                # A cancel mid-prepare must not orphan the key: finish, then remove it below.
                mounts = await uncancellable(self.snapshotter.prepare(
                    key, parent, labels={LABEL_SNAPSHOT_REF: chain, LABEL_UNCOMPRESSED: layer.diff_id}))
                result = await self._apply(blob, mounts, allow_devices=trusted or self.allow_devices)
                if result.diff_id != layer.diff_id:
                    raise DigestMismatch(f"invalid diffID for layer {index}: expected {json.dumps(layer.diff_id)}, "
                                         f"got {json.dumps(result.diff_id)}")
                await self.snapshotter.commit(chain, key)
            except BaseException:
                with contextlib.suppress(NotFound):
                    await uncancellable(self.snapshotter.remove(key))
                raise
        finally:
            await aclose(blob)
        self._log.info("layer_unpacked", chain=chain, digest=layer.digest, size=result.size, entries=result.entries)
        return result

    async def unpack_new(self, source: AsyncIterator[bytes], lease: Lease, created: list[str]) -> ApplyResult:
        """Extract a parentless layer whose diff id is not known in advance (``docker import``)
        and commit it under its diff id; if that chain exists already, ours is dropped."""
        key = f"extract-{secrets.token_hex(8)} import"
        try:
            try:
                mounts = await uncancellable(self.snapshotter.prepare(key, ""))
                result = await self._apply(source, mounts)
                self.leases.extend(lease, {result.diff_id})
                async with self.chain_locks.hold(result.diff_id):
                    committed = await self.is_committed(result.diff_id)
                    if not committed:
                        created.append(result.diff_id)  # before: a commit cancelled after the fact still happened
                        try:
                            await self.snapshotter.commit(result.diff_id, key, labels={
                                LABEL_SNAPSHOT_REF: result.diff_id, LABEL_UNCOMPRESSED: result.diff_id})
                        except AlreadyExists:  # committed by someone outside this process meanwhile
                            created.pop()
                            committed = True
                    if committed:
                        await uncancellable(self.snapshotter.remove(key))
            except BaseException:
                with contextlib.suppress(NotFound):
                    await uncancellable(self.snapshotter.remove(key))
                raise
        finally:
            await aclose(source)
        return result

    async def _apply(self, blob: AsyncIterator[bytes], mounts: Sequence[Mount], *,
                     allow_devices: bool | None = None) -> ApplyResult:
        upper, lowers = upper_dir(mounts)
        reader = ThreadReader(blob, asyncio.get_running_loop())
        return await run_blocking(
            lambda: apply_layer(reader, upper, lowers=lowers,
                                allow_devices=self.allow_devices if allow_devices is None else allow_devices),
            abort=reader.abort)

    async def size(self, chains: Sequence[str]) -> int:
        """Unpacked bytes of the chains' own layers, summed."""
        total = 0
        for chain in chains:
            total += (await self.snapshotter.usage(chain)).size
        return total

    async def rollback(self, lease: Lease, chains: Sequence[str], blobs: Sequence[str]) -> None:
        """Remove what one failed operation created and no overlapping operation used."""
        for chain in reversed(chains):
            if chain not in lease.contested:
                with contextlib.suppress(NotFound, FailedPrecondition):
                    await self.snapshotter.remove(chain)
        for digest in blobs:
            if digest not in lease.contested:
                with contextlib.suppress(NotFound):
                    await self.content.delete(digest)
        self._log.info("operation_rolled_back", chains=len(chains), blobs=len(blobs))
