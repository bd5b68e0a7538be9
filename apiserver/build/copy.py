"""COPY and ADD for the classic builder.

Sources come from the build context (globs, directory contents, symlinks resolved inside the
context), from another stage or image (``COPY --from``), or for ADD from a URL (downloaded; file
mode 0600 and Last-Modified as mtime, as Docker does) or a local archive (tar, gzip, bzip2, xz:
extracted into the destination). The destination is relative to WORKDIR when not absolute; it is
a directory when it ends in ``/``, when there are several sources or globs, or when it already
exists as a directory in the image. ``--chown`` takes names from the image's own /etc/passwd and
/etc/group (numeric ids need no lookup); ``--chmod`` takes octal.

What reaches the node is a plain tar with the final names, ownership and modes; the node extracts
it onto the build snapshot with every path resolved inside the image's filesystem.
"""

from __future__ import annotations

import asyncio
import bz2
import email.utils
import gzip
import hashlib
import io
import lzma
import posixpath
import tarfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import IO

import aiohttp

from apiserver.build.context import BuildContext, Selected, TarBuffer
from apiserver.build.dockerfile import DockerfileError, Instruction
from apiserver.build.shell import Lexer
from protos.errors import BerthError, InvalidArgument, NotFound
from snapshotter.api import Images, Snapshotter

MAX_REMOTE = 1024 * 1024 * 1024


@dataclass(slots=True)
class CopyPlan:
    """What one COPY/ADD step will write, known before it runs (for the cache key)."""

    created_by: str
    dest: str
    dest_is_dir: bool | None  # None: decided by looking at the image
    chown: str
    chmod: int | None
    context_items: list[Selected] = field(default_factory=list)
    archives: list[Selected] = field(default_factory=list)  # ADD: local archives to extract
    remote: list[tuple[str, bytes, float]] = field(default_factory=list)  # ADD: (name, data, mtime)
    from_source: tuple[str, list[str]] | None = None  # (chain id, paths) for COPY --from


def _parse_chmod(value: str, line: int) -> int | None:
    if not value:
        return None
    try:
        mode = int(value, 8)
    except ValueError:
        raise DockerfileError(f"dockerfile parse error on line {line}: invalid chmod parameter: {value}") from None
    if mode > 0o7777:
        raise DockerfileError(f"dockerfile parse error on line {line}: invalid chmod parameter: {value}")
    return mode


def _is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def _archive_kind(head: bytes) -> str | None:
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(b"BZh"):
        return "bzip2"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "xz"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    return None


async def _download(url: str) -> tuple[str, bytes, float]:
    """Fetch an ADD URL: the file name from the URL path, its bytes, and Last-Modified."""
    try:
        async with aiohttp.ClientSession() as session, session.get(
                url, timeout=aiohttp.ClientTimeout(total=600), allow_redirects=True) as resp:
            if resp.status >= 400:
                body = (await resp.text())[:200]
                raise NotFound(f"failed to GET {url} with status {resp.status} {resp.reason}: {body}")
            chunks: list[bytes] = []
            size = 0
            async for chunk in resp.content.iter_chunked(1024 * 1024):
                size += len(chunk)
                if size > MAX_REMOTE:
                    raise InvalidArgument(f"{url} is larger than {MAX_REMOTE} bytes")
                chunks.append(chunk)
            modified = resp.headers.get("Last-Modified")
    except aiohttp.ClientError as exc:
        raise NotFound(f"failed to GET {url}: {exc}") from None
    mtime = 0.0
    if modified:
        try:
            mtime = email.utils.parsedate_to_datetime(modified).timestamp()
        except (TypeError, ValueError):
            mtime = 0.0
    name = posixpath.basename(url.split("?", 1)[0].rstrip("/")) or "index.html"
    return name, b"".join(chunks), mtime


class Copier:
    def __init__(self, images: Images, snapshots: Snapshotter, ctx: BuildContext) -> None:
        self._images = images
        self._snapshots = snapshots
        self._ctx = ctx

    async def plan(self, ins: Instruction, lexer: Lexer, env: dict[str, str], workdir: str,
                   from_chain: str | None, from_ref: str) -> CopyPlan:
        words = list(ins.json_args) if ins.json_args is not None else lexer.process_words(ins.rest, env)
        if ins.json_args is not None:
            words = [lexer.process_word(w, env) for w in words]
        if len(words) < 2:
            raise DockerfileError(f"dockerfile parse error on line {ins.line}: {ins.keyword} requires at least two "
                                  "arguments, but only one was provided. Destination could not be determined.")
        sources, dest = words[:-1], words[-1]
        chown = lexer.process_word(ins.flags.get("chown", ""), env)
        chmod = _parse_chmod(lexer.process_word(ins.flags.get("chmod", ""), env), ins.line)
        explicit_dir = dest.endswith("/") or dest in (".", "./")
        target = dest if dest.startswith("/") else posixpath.join(workdir or "/", dest)
        target = posixpath.normpath(target)
        many = len(sources) > 1 or any(c in s for s in sources for c in "*?[")
        if many and not explicit_dir:
            raise InvalidArgument(f"When using {ins.keyword} with more than one source file, the destination must be "
                                  "a directory and end with a /")
        plan = CopyPlan(created_by="", dest=target, dest_is_dir=True if (explicit_dir or many) else None,
                        chown=chown, chmod=chmod)
        h = hashlib.sha256(f"{chown}\0{chmod}\0{target}\0{explicit_dir}".encode())
        kind = "file"
        if from_chain is not None:
            plan.from_source = (from_chain, sources)
            h.update(f"from\0{from_ref}\0{chr(0).join(sources)}".encode())
            kind = "dir" if many else "file"
        else:
            for source in sources:
                if _is_url(source):
                    if ins.cmd != "add":
                        raise InvalidArgument(f"source can't be a URL for {ins.keyword}")
                    name, data, mtime = await _download(source)
                    plan.remote.append((name, data, mtime))
                    h.update(hashlib.sha256(data).digest() + name.encode())
                    continue
                matched = self._ctx.select([source], "/", dest_is_dir=True)
                for item in matched:
                    if ins.cmd == "add" and item.member.info.isreg() and len(matched) == 1 and \
                            self._is_archive(item):
                        plan.archives.append(item)
                    else:
                        plan.context_items.append(item)
                if len(matched) > 1 or any(c in source for c in "*?[") or self._ctx_is_dir(source):
                    kind = "dir"
            h.update(self._ctx.checksum([*plan.context_items, *plan.archives]).encode())
            if plan.archives or any(self._ctx_is_dir(s) for s in sources if not _is_url(s)):
                plan.dest_is_dir = True if plan.archives and not plan.context_items else plan.dest_is_dir
        digest = h.hexdigest()
        plan.created_by = f"/bin/sh -c #(nop) {ins.keyword} {kind}:{digest} in {target} "
        return plan

    def _ctx_is_dir(self, source: str) -> bool:
        try:
            paths = self._ctx.match(source)
        except BerthError:
            return False
        return any(self._ctx._is_dir(p) for p in paths)

    def _is_archive(self, item: Selected) -> bool:
        return _archive_kind(self._ctx._data(item.member)[:262]) is not None

    async def execute(self, key: str, plan: CopyPlan) -> None:
        """Write the planned files onto active snapshot ``key``."""
        uid, gid = await self._ids(key, plan.chown)
        dest_is_dir = plan.dest_is_dir
        if dest_is_dir is None:
            try:
                stat = await self._images.stat_path(key, plan.dest)
                dest_is_dir = bool(stat.mode & 0x80000000)  # Go's os.ModeDir
            except NotFound:
                dest_is_dir = False
        buffer = TarBuffer()
        try:
            await asyncio.to_thread(self._write, plan, buffer.file, uid, gid, dest_is_dir)
            if plan.from_source is not None:
                await self._copy_from(key, plan, uid, gid, dest_is_dir)
            await self._images.apply_tar(key, buffer.chunks(), "/")
        finally:
            buffer.close()

    def _write(self, plan: CopyPlan, out: IO[bytes], uid: int | None, gid: int | None, dest_is_dir: bool) -> None:
        parents = _parents(plan.dest if dest_is_dir else posixpath.dirname(plan.dest))
        items = [Selected(i.member, posixpath.join(plan.dest, i.target.lstrip("/")) if dest_is_dir else plan.dest)
                 for i in plan.context_items]
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for directory in parents:
                info = tarfile.TarInfo(directory.lstrip("/"))
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            self._ctx.add_selected(tar, items, uid=uid, gid=gid, chmod=plan.chmod)
            for name, data, mtime in plan.remote:
                info = tarfile.TarInfo((posixpath.join(plan.dest, name) if dest_is_dir else plan.dest).lstrip("/"))
                info.size = len(data)
                info.mode = plan.chmod if plan.chmod is not None else 0o600
                info.mtime = int(mtime)
                info.uid, info.gid = uid or 0, gid or 0
                tar.addfile(info, io.BytesIO(data))
            for item in plan.archives:
                _extract_into(tar, self._ctx._data(item.member), plan.dest, uid, gid)

    async def _copy_from(self, key: str, plan: CopyPlan, uid: int | None, gid: int | None,
                         dest_is_dir: bool) -> None:
        """COPY --from: read each source out of the other image's filesystem, re-rooted."""
        assert plan.from_source is not None
        chain, sources = plan.from_source
        view = f"{key}-from"
        await self._snapshots.view(view, chain)  # read the other image through a read-only view
        try:
            for source in sources:
                await self._copy_one(key, view, source, plan, uid, gid, dest_is_dir)
        finally:
            await self._snapshots.remove(view)

    async def _copy_one(self, key: str, view: str, source: str, plan: CopyPlan, uid: int | None,
                        gid: int | None, dest_is_dir: bool) -> None:
        data = b"".join([c async for c in self._images.read_tar(view, source)])
        target = plan.dest
        out = io.BytesIO()
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as src, \
                tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as dst:
            members = src.getmembers()
            base = members[0].name.split("/", 1)[0] if members else ""
            single_file = len(members) == 1 and members[0].isreg()
            for member in members:
                rel = member.name[len(base):].lstrip("/")
                if single_file:
                    name = posixpath.join(target, base) if dest_is_dir else target
                else:
                    name = posixpath.join(target, rel) if rel else target
                    if not rel and not member.isdir():
                        continue
                member.name = name.lstrip("/") or "."
                if uid is not None:
                    member.uid, member.gid = uid, gid or 0
                if plan.chmod is not None and not member.issym():
                    member.mode = plan.chmod
                dst.addfile(member, src.extractfile(member) if member.isreg() else None)

        async def body(raw: bytes = out.getvalue()) -> AsyncIterator[bytes]:
            yield raw

        await self._images.apply_tar(key, body(), "/")

    async def _ids(self, key: str, chown: str) -> tuple[int | None, int | None]:
        if not chown:
            return None, None
        user, _, group = chown.partition(":")
        uid = await self._lookup(key, "/etc/passwd", user, 2) if user else None
        gid: int | None
        if group:
            gid = await self._lookup(key, "/etc/group", group, 2)
        else:
            gid = await self._lookup(key, "/etc/passwd", user, 3) if user and not user.isdigit() else uid
        return uid, gid

    async def _lookup(self, key: str, path: str, name: str, field_index: int) -> int:
        if name.isdigit():
            return int(name)
        try:
            raw = b"".join([c async for c in self._images.read_tar(key, path)])
        except NotFound:
            raw = b""
        text = ""
        if raw:
            with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
                members = [m for m in tar.getmembers() if m.isreg()]
                if members:
                    f = tar.extractfile(members[0])
                    text = f.read().decode(errors="replace") if f else ""
        for line in text.splitlines():
            fields = line.split(":")
            if fields and fields[0] == name and len(fields) > field_index:
                return int(fields[field_index])
        what = "user" if path.endswith("passwd") else "group"
        raise InvalidArgument(f"unable to convert uid/gid chown string to host mapping: can't find {what} {name}"
                              if what == "user" else f"unable to find group {name}")


def _parents(directory: str) -> list[str]:
    out: list[str] = []
    path = "/"
    for part in [p for p in directory.split("/") if p]:
        path = posixpath.join(path, part)
        out.append(path)
    return out


def _extract_into(tar: tarfile.TarFile, data: bytes, dest: str, uid: int | None, gid: int | None) -> None:
    """ADD of a local archive: its entries re-rooted under ``dest`` (never above it)."""
    kind = _archive_kind(data[:262])
    raw: IO[bytes] = io.BytesIO(data)
    if kind == "gzip":
        raw = io.BytesIO(gzip.decompress(data))
    elif kind == "bzip2":
        raw = io.BytesIO(bz2.decompress(data))
    elif kind == "xz":
        raw = io.BytesIO(lzma.decompress(data))
    with tarfile.open(fileobj=raw, mode="r:") as src:
        for member in src:
            name = posixpath.normpath("/" + member.name).lstrip("/")
            if not name or name == ".":
                continue
            member.name = posixpath.join(dest, name).lstrip("/")
            if member.islnk():
                inside = posixpath.normpath("/" + member.linkname).lstrip("/")
                member.linkname = posixpath.join(dest, inside).lstrip("/")
            if uid is not None:
                member.uid, member.gid = uid, gid or 0
            tar.addfile(member, src.extractfile(member) if member.isreg() else None)
