"""Apply an OCI/Docker layer tarball to a snapshot's upper directory, safely.

We extract straight into the new snapshot's ``fs`` directory (overlay's upperdir) before anything
mounts it, so no running container can race the extraction, and whiteouts are written in overlay's
own form: ``.wh.<name>`` becomes a 0/0 character device with the entry's owner, and
``.wh..wh..opq`` the ``trusted.overlay.opaque=y`` xattr on its directory (REFERENCE §1.5/§1.6).

``tarfile`` is used only to parse headers (stream mode, with bounded header records); every
filesystem write is ours, relative to a directory fd:

* Each entry's parent directory is opened with ``openat2(RESOLVE_IN_ROOT)``: the kernel resolves
  ``..`` and symlinks (absolute or relative) as if the snapshot root were ``/``. The final
  component is never followed: files are created ``O_CREAT|O_EXCL|O_NOFOLLOW``, metadata is set
  through the new fd or with ``follow_symlinks=False``.

What is rejected and what is contained (the choices of moby and containerd):

* A name that climbs above the root (``../x``, ``a/../../x``) is **rejected** with
  ``UnsafeArchive`` — moby's ``breakoutError``. An absolute name (``/etc/x``) is **contained**:
  it is taken relative to the root, as both moby and containerd do.
* A symlink entry is created verbatim whatever it points at: it is data until a container
  resolves it inside its own root. Entries written *through* a symlink are **contained** (the
  kernel resolves the link inside the snapshot, like moby's chrooted applier and containerd's
  ``RootPath``); if the link leads nowhere inside the layer the entry is **rejected**.
* A hardlink must name a file already extracted from this same layer, resolved inside the root;
  a target that climbs out or is missing (``/etc/shadow``) is **rejected**.
* Device nodes are **rejected** unless ``allow_devices`` is set, except char 0/0 (a whiteout
  already in overlay form). FIFOs are allowed.
* Overlay xattrs (``trusted.overlay.*``, ``user.overlay.*``) and ``security.selinux`` from the tar
  are dropped: a layer must not forge redirects, metacopy or opaque markers.

The diffID (sha256 of the uncompressed tar) is computed while streaming, gzip is detected by its
magic and decompressed on the fly (multi-member streams included); a truncated or corrupt stream
and a diffID that differs from the expected one fail the apply. The caller owns cleanup of the
partly written snapshot (it removes the snapshot).

The filesystem side (confined lookups, extraction, tar writing) lives in :mod:`common.fstree`,
shared with the shim's supervisor; this module adds what only layers need (decompression, the
diffID) and turns ``FsError`` into the classified errors of :mod:`protos.errors`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tarfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog

from common import fstree
from common.fstree import MAX_HEADER_RECORD, ExtractOptions, FsError, clean_name
from common.zstd import ZSTD_MAGIC, ZstdError, ZstdReader
from protos.errors import BerthError, DigestMismatch, InvalidArgument, error_class
from snapshotter.streams import CHUNK

__all__ = ["GZIP_MAGIC", "MAX_HEADER_RECORD", "ZSTD_MAGIC", "ApplyResult", "LayerReader", "RawReader",
           "apply_layer", "classified", "clean_name", "iter_members"]

log = structlog.get_logger()

GZIP_MAGIC = b"\x1f\x8b"
# Full magics (bzip2: "BZh", level, block header): a tar's first bytes are a file name.
_UNSUPPORTED_MAGIC = tuple((re.compile(m, re.DOTALL), kind) for m, kind in (
    (rb"BZh[1-9]1AY&SY", "bzip2"), (rb"\xfd7zXZ\x00", "xz")))


def _q(text: str) -> str:
    """Quote like Go's %q, as Docker's messages do."""
    return json.dumps(text, ensure_ascii=False)


def as_berth_error(exc: FsError) -> BerthError:
    """The classified error an ``FsError`` names."""
    return error_class(exc.kind)(exc.message)


@contextlib.contextmanager
def classified() -> Iterator[None]:
    """Raise :mod:`common.fstree`'s errors as their :mod:`protos.errors` classes."""
    try:
        yield
    except FsError as exc:
        raise as_berth_error(exc) from None


class RawReader(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


@dataclass(frozen=True, slots=True)
class ApplyResult:
    diff_id: str
    size: int  # uncompressed bytes of the tar
    entries: int


class LayerReader:
    """A file object over a layer blob: transparent gunzip or zstd, sha256 and size of what it yields.

    Output is produced in pieces of at most ``chunk`` bytes, so a decompression bomb never sits
    in memory at once.
    """

    def __init__(self, raw: RawReader, *, chunk: int = CHUNK) -> None:
        self._raw = raw
        self._chunk = chunk
        self._hash = hashlib.sha256()
        self.size = 0
        self._buf = b""
        self._pos = 0
        head = b""
        while len(head) < 4:
            more = raw.read(chunk)
            if not more:
                break
            head += more
        for magic, kind in _UNSUPPORTED_MAGIC:
            if magic.match(head):
                raise InvalidArgument(f"{kind}-compressed archives are not supported: use tar, tar.gz or tar.zst")
        self._zstd = ZstdReader(raw, head, read_size=chunk) if head.startswith(ZSTD_MAGIC) else None
        self.compression = "zstd" if self._zstd else "gzip" if head.startswith(GZIP_MAGIC) else ""
        self.compressed = bool(self.compression)
        self._in = b"" if self._zstd else head
        self._z: zlib._Decompress | None = zlib.decompressobj(wbits=31) if self.compression == "gzip" else None

    @property
    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()

    def _raw_read(self) -> bytes:
        return self._raw.read(self._chunk)

    def _produce(self) -> bytes:
        if self._zstd is not None:
            try:
                return self._zstd.read(self._chunk)
            except ZstdError as exc:
                raise InvalidArgument(str(exc).replace("zstd stream", "zstd layer")) from None
        if not self.compressed:
            if self._in:
                data, self._in = self._in, b""
                return data
            return self._raw_read()
        while True:
            if self._z is None:  # between gzip members
                if not self._in:
                    self._in = self._raw_read()
                    if not self._in:
                        return b""
                if len(self._in) < 2:
                    more = self._raw_read()
                    if not more:
                        raise InvalidArgument("invalid gzip layer: trailing garbage after the last member")
                    self._in += more
                    continue
                if not self._in.startswith(GZIP_MAGIC):
                    raise InvalidArgument("invalid gzip layer: trailing garbage after the last member")
                self._z = zlib.decompressobj(wbits=31)
            if not self._in:
                self._in = self._raw_read()
                if not self._in:
                    raise InvalidArgument("unexpected EOF: the gzip layer is truncated")
            try:
                out = self._z.decompress(self._in, self._chunk)
            except zlib.error as exc:
                raise InvalidArgument(f"invalid gzip layer: {exc}") from None
            if self._z.eof:
                self._in, self._z = self._z.unused_data, None
            else:
                self._in = self._z.unconsumed_tail
            if out:
                return out

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            parts = []
            while piece := self.read(self._chunk):
                parts.append(piece)
            return b"".join(parts)
        if self._pos >= len(self._buf):
            self._buf, self._pos = self._produce(), 0
            self._hash.update(self._buf)
            self.size += len(self._buf)
        out = self._buf[self._pos:self._pos + n]
        self._pos += len(out)
        return out

    def drain(self) -> None:
        while self.read(self._chunk):
            pass


def iter_members(reader: LayerReader, *, what: str,
                 max_entries: int = fstree.MAX_ENTRIES) -> Iterator[tuple[tarfile.TarFile, tarfile.TarInfo]]:
    """:func:`common.fstree.iter_members` with classified errors."""
    with classified():
        yield from fstree.iter_members(reader, what=what, max_entries=max_entries)


def apply_layer(raw: RawReader, root: str, *, lowers: Sequence[str] = (), expected_diff_id: str = "",
                allow_devices: bool = False) -> ApplyResult:
    """Extract the layer read from ``raw`` (tar, maybe gzip) into ``root``; blocking.

    ``lowers`` are the parent layers' directories, nearest first: parents missing from the tar
    are created with their attributes. Raises ``UnsafeArchive`` for escaping entries,
    ``InvalidArgument`` for malformed input and ``DigestMismatch`` if the tar's sha256 is not
    ``expected_diff_id``.
    """
    reader = LayerReader(raw)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        with classified():
            entries = fstree.extract(reader, fd, ExtractOptions(layer=True, allow_devices=allow_devices,
                                                                lowers=tuple(lowers)))
    finally:
        os.close(fd)
    reader.drain()  # the diffID covers the end-of-archive blocks and padding too
    if expected_diff_id and reader.digest != expected_diff_id:
        raise DigestMismatch(f"invalid diffID: expected {_q(expected_diff_id)}, got {_q(reader.digest)}")
    return ApplyResult(diff_id=reader.digest, size=reader.size, entries=entries)
