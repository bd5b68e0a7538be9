"""The build context: the uploaded tar, indexed but never extracted on the API server.

The upload (plain, gzip, bzip2 or xz, detected by magic) is spooled to a temporary file within a
size limit, then every member is indexed by its cleaned path. Names that climb out of the
context (``..``) or are absolute after cleaning are refused. ``.dockerignore`` is applied here
as well (clients filter too; applying it twice is harmless and protects raw-tar clients).

COPY/ADD sources are resolved against this index: globs per path component (filepath.Match), a
directory source copies its contents, and symlinks in a source path resolve inside the context
(never outside it: a link pointing out is an error). The selection is written out again as a tar
with the destination names, ownership and modes the instruction asks for; the node extracts it
onto the build snapshot with every path resolved inside the image's filesystem.
"""

from __future__ import annotations

import asyncio
import bz2
import fnmatch
import gzip
import hashlib
import io
import lzma
import os
import posixpath
import shutil
import tarfile
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from apiserver.build.ignore import Matcher
from protos.errors import InvalidArgument, NotFound

DEFAULT_MAX_CONTEXT = 4 * 1024 * 1024 * 1024
_CHUNK = 1024 * 1024


@dataclass(slots=True)
class Member:
    path: str  # cleaned, relative, no leading "./"
    info: tarfile.TarInfo
    data_offset: int


@dataclass(frozen=True, slots=True)
class Selected:
    """One entry to copy: the context member and the name it gets under the destination."""

    member: Member
    target: str


def _open_decompressed(raw: IO[bytes]) -> IO[bytes]:
    head = raw.read(6)
    raw.seek(0)
    if head.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=raw)  # type: ignore[return-value]
    if head.startswith(b"BZh"):
        return bz2.BZ2File(raw)
    if head.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(raw)
    return raw


def clean(path: str) -> str:
    """Context-relative form of ``path`` (absolute paths are relative to the context root);
    refuses paths that climb out of the context, with Docker's words."""
    relative = path.replace("\\", "/")
    normalized = posixpath.normpath(relative)
    if not relative.startswith("/") and (normalized == ".." or normalized.startswith("../")):
        raise InvalidArgument(f"forbidden path outside the build context: {path} ()")
    return posixpath.normpath("/" + relative).lstrip("/")


class BuildContext:
    """An indexed, decompressed copy of the context on local disk (deleted by ``close``)."""

    def __init__(self, directory: Path) -> None:
        self._dir = directory
        self._tar_path = directory / "context.tar"
        self.members: dict[str, Member] = {}
        self._file: IO[bytes] | None = None

    @classmethod
    async def receive(cls, chunks: AsyncIterator[bytes], *, spool_dir: Path | None = None,
                      max_size: int = DEFAULT_MAX_CONTEXT) -> BuildContext:
        directory = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="berth-build-", dir=spool_dir))
        ctx = cls(directory)
        try:
            raw_path = directory / "upload"
            size = 0
            out = await asyncio.to_thread(open, raw_path, "wb")
            try:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > max_size:
                        raise InvalidArgument(f"build context is larger than the limit of {max_size} bytes")
                    await asyncio.to_thread(out.write, chunk)
            finally:
                out.close()
            await asyncio.to_thread(ctx._index, raw_path, max_size)
        except BaseException:
            ctx.close()
            raise
        return ctx

    def _index(self, raw_path: Path, max_size: int) -> None:
        with open(raw_path, "rb") as raw, _open_decompressed(raw) as src, open(self._tar_path, "wb") as out:
            total = 0
            while block := src.read(_CHUNK):
                total += len(block)
                if total > max_size * 4:
                    raise InvalidArgument("build context decompresses to more than the size limit allows")
                out.write(block)
        raw_path.unlink()
        self._file = open(self._tar_path, "rb")
        if os.path.getsize(self._tar_path) == 0:
            return
        try:
            with tarfile.open(fileobj=self._file, mode="r:") as tar:
                for info in tar:
                    name = info.name
                    if name.startswith("/") or ".." in name.split("/"):
                        raise InvalidArgument(f"forbidden path in the build context: {name}")
                    path = posixpath.normpath(name)
                    if path == ".":
                        continue
                    self.members[path] = Member(path, info, info.offset_data)
        except tarfile.TarError as exc:
            raise InvalidArgument(f"the build context is not a valid tar archive: {exc}") from None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        shutil.rmtree(self._dir, ignore_errors=True)

    # -- reading -----------------------------------------------------------------------------------
    def read(self, path: str, limit: int = 16 * 1024 * 1024) -> bytes:
        member = self.members.get(clean(path))
        if member is None or not member.info.isreg():
            raise NotFound(f"Cannot locate specified Dockerfile: {path}")
        if member.info.size > limit:
            raise InvalidArgument(f"{path} is too large")
        return self._data(member)

    def _data(self, member: Member) -> bytes:
        assert self._file is not None
        self._file.seek(member.data_offset)
        return self._file.read(member.info.size)

    def apply_dockerignore(self) -> None:
        """Drop what ``.dockerignore`` excludes (the Dockerfile and .dockerignore itself stay, as
        the CLI keeps them for the daemon)."""
        member = self.members.get(".dockerignore")
        if member is None:
            return
        matcher = Matcher.from_text(self._data(member).decode(errors="replace"))
        for path in list(self.members):
            if path not in (".dockerignore",) and matcher.excluded(path):
                del self.members[path]

    def remove(self, path: str) -> None:
        self.members.pop(clean(path), None)

    # -- selection for COPY/ADD -------------------------------------------------------------------
    def _resolve(self, path: str, depth: int = 0) -> str:
        """Follow symlinks in ``path`` inside the context (FollowSymlinkInScope)."""
        if depth > 40:
            raise InvalidArgument(f"too many levels of symbolic links: {path}")
        parts = [p for p in path.split("/") if p]
        resolved: list[str] = []
        for i, part in enumerate(parts):
            current = "/".join([*resolved, part])
            member = self.members.get(current)
            if member is not None and member.info.issym():
                target = member.info.linkname
                base = "" if target.startswith("/") else "/".join(resolved)
                joined = posixpath.normpath("/" + posixpath.join(base, target)).lstrip("/")
                rest = "/".join(parts[i + 1:])
                return self._resolve(f"{joined}/{rest}" if rest else joined, depth + 1)
            resolved.append(part)
        return "/".join(resolved)

    def _children(self, directory: str) -> Iterator[Member]:
        prefix = f"{directory}/" if directory else ""
        for path, member in self.members.items():
            if path.startswith(prefix) and path != directory:
                yield member

    def _is_dir(self, path: str) -> bool:
        if path == "":
            return True
        member = self.members.get(path)
        if member is not None:
            return member.info.isdir()
        return any(True for _ in self._children(path))

    def match(self, source: str) -> list[str]:
        """Context paths matching ``source`` (a glob per path component)."""
        pattern = clean(source)
        if not any(c in pattern for c in "*?["):
            resolved = self._resolve(pattern)
            if resolved in self.members or self._is_dir(resolved):
                return [resolved]
            raise NotFound(f"COPY failed: file not found in build context or excluded by .dockerignore: "
                           f"stat {source}: file does not exist")
        hits = sorted(p for p in self.members if _glob_match(pattern, p))
        if not hits:
            raise NotFound(f"COPY failed: no source files were specified matching {source}")
        return hits

    def select(self, sources: list[str], dest: str, *, dest_is_dir: bool) -> list[Selected]:
        """Entries to copy, named relative to ``dest``, following Docker's COPY rules."""
        matched = [p for s in sources for p in self.match(s)]
        out: list[Selected] = []
        for path in matched:
            if self._is_dir(path):
                for member in sorted(self._children(path), key=lambda m: m.path):
                    rel = member.path[len(path) + 1:] if path else member.path
                    out.append(Selected(member, posixpath.join(dest, rel)))
            else:
                member = self.members[path]
                target = posixpath.join(dest, posixpath.basename(path)) if dest_is_dir else dest
                out.append(Selected(member, target))
        return out

    def checksum(self, selected: list[Selected]) -> str:
        """Content hash of a selection (what the cache compares for COPY/ADD)."""
        h = hashlib.sha256()
        for item in sorted(selected, key=lambda s: s.target):
            info = item.member.info
            h.update(f"{item.target}\0{info.type!r}\0{info.mode:o}\0{info.linkname}\0{info.size}\0".encode())
            if info.isreg():
                h.update(hashlib.sha256(self._data(item.member)).digest())
        return h.hexdigest()

    def add_selected(self, tar: tarfile.TarFile, selected: list[Selected], *, uid: int | None, gid: int | None,
                     chmod: int | None) -> None:
        """Append the selection to ``tar`` under its target names, with ``--chown``/``--chmod``."""
        renamed = {s.member.path: s.target.lstrip("/") for s in selected}
        for item in selected:
            src = item.member.info
            info = tarfile.TarInfo(item.target.lstrip("/"))
            info.type = src.type
            info.mode = (chmod if chmod is not None and not src.issym() else src.mode) & 0o7777
            info.mtime = src.mtime
            info.linkname = src.linkname
            info.uid = src.uid if uid is None else uid
            info.gid = src.gid if gid is None else (gid or 0)
            if src.islnk():
                # a hardlink keeps pointing at its (renamed) target within the selection
                info.linkname = renamed.get(posixpath.normpath(src.linkname), src.linkname)
            if src.isreg():
                info.size = src.size
                tar.addfile(info, io.BytesIO(self._data(item.member)))
            else:
                tar.addfile(info)


def _glob_match(pattern: str, path: str) -> bool:
    pparts = pattern.split("/")
    parts = path.split("/")
    if len(pparts) != len(parts):
        return False
    return all(fnmatch.fnmatchcase(part, pat) for part, pat in zip(parts, pparts, strict=True))


@dataclass(slots=True)
class TarBuffer:
    """A spooled tar that can be streamed to the node in chunks."""

    file: IO[bytes] = field(default_factory=lambda: tempfile.SpooledTemporaryFile(max_size=8 * 1024 * 1024))

    async def chunks(self) -> AsyncIterator[bytes]:
        self.file.seek(0)
        while block := await asyncio.to_thread(self.file.read, _CHUNK):
            yield block

    def close(self) -> None:
        self.file.close()
