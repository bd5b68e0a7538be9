"""The storage of this host: ``LocalFiles`` (running containers' files, through the supervisor)
and ``LocalVolumes`` (the local driver's directories)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import stat
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from common import linux
from common.decompress import CHUNK, DecompressError, plain_stream
from protos.errors import InvalidArgument, Unavailable
from shim import wire
from shim.storage.api import ContainerFiles, FileStat, VolumeInfo, Volumes
from shim.supervisor.client import read_frame, reply_error
from shim.supervisor.user_mounts import is_mount_point

log = structlog.get_logger()

# moby's RestrictedNamePattern: a volume name is also a directory name here.
VOLUME_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")


def _stat(raw: Mapping[str, Any]) -> FileStat:
    return FileStat(name=str(raw["name"]), size=int(raw["size"]), mode=int(raw["mode"]), mtime=str(raw["mtime"]),
                    link_target=str(raw.get("link_target", "")))


class _Session:
    """One ``files`` connection to the supervisor, handed to its archive child after the request."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, socket_path: Path, action: str, cid: str, **fields: Any) -> tuple[_Session, Any]:
        try:
            reader, writer = await asyncio.open_unix_connection(str(socket_path), limit=wire.MAX_FRAME)
        except OSError as exc:
            raise Unavailable(f"supervisor unreachable at {socket_path}: {exc.strerror}") from None
        session = cls(reader, writer)
        try:
            writer.write(wire.json_frame({"id": 1, "op": "files", "action": action, "cid": cid, **fields}))
            _, payload = await read_frame(reader)
            reply = json.loads(payload)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, wire.ProtocolError) as exc:
            await session.close()
            raise Unavailable(f"files {action}: the supervisor went away: {exc}") from None
        except BaseException:
            await session.close()
            raise
        if not reply.get("ok"):
            await session.close()
            raise reply_error(reply, f"files {action} failed")
        return session, reply.get("result")

    async def end(self) -> dict[str, Any]:
        """The END frame's outcome (data frames before it are skipped)."""
        while True:
            try:
                kind, payload = await read_frame(self.reader)
            except (asyncio.IncompleteReadError, ConnectionError, OSError):
                raise Unavailable("the copy ended unexpectedly: the helper in the container exited") from None
            if kind == wire.Kind.END:
                outcome: dict[str, Any] = json.loads(payload) if payload else {}
                return outcome

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


class LocalFiles:
    """``ContainerFiles`` over the supervisor's socket."""

    def __init__(self, socket_path: Path) -> None:
        self._socket = socket_path

    async def stat_path(self, id: str, path: str) -> FileStat:
        session, result = await _Session.open(self._socket, "stat", id, path=path)
        await session.close()
        return _stat(result)

    async def read_archive(self, id: str, path: str) -> tuple[FileStat, AsyncIterator[bytes]]:
        session, result = await _Session.open(self._socket, "get", id, path=path)
        return _stat(result), self._tar(session)

    async def _tar(self, session: _Session) -> AsyncIterator[bytes]:
        try:
            while True:
                try:
                    kind, payload = await read_frame(session.reader)
                except (asyncio.IncompleteReadError, ConnectionError, OSError):
                    raise Unavailable("the copy ended unexpectedly: the helper in the container exited") from None
                if kind == wire.Kind.END:
                    outcome = json.loads(payload) if payload else {}
                    if not outcome.get("ok"):
                        raise reply_error(outcome, "copy failed")
                    return
                if kind == wire.Kind.STDOUT:
                    yield payload
        finally:
            await session.close()  # a reader that stops early stops the child (it gets EPIPE)

    async def write_archive(self, id: str, path: str, chunks: AsyncIterator[bytes], *,
                            no_overwrite_dir_non_dir: bool = False, owner: tuple[int, int] | None = None) -> None:
        session, _ = await _Session.open(self._socket, "put", id, path=path,
                                         no_overwrite_dir_non_dir=no_overwrite_dir_non_dir,
                                         owner=list(owner) if owner is not None else None)
        try:
            try:
                async for piece in plain_stream(chunks):
                    for start in range(0, len(piece), CHUNK):
                        session.writer.write(wire.frame(wire.Kind.STDIN, piece[start:start + CHUNK]))
                        await session.writer.drain()
                session.writer.write(wire.frame(wire.Kind.CLOSE_STDIN, b""))
                await session.writer.drain()
            except DecompressError as exc:
                raise InvalidArgument(str(exc)) from None
            except (ConnectionError, OSError):
                pass  # the child stopped reading: its END frame says why
            outcome = await session.end()
            if not outcome.get("ok"):
                raise reply_error(outcome, "copy failed")
        finally:
            await session.close()

    async def populate(self, id: str) -> None:
        session, _ = await _Session.open(self._socket, "populate", id)
        await session.close()


class LocalVolumes:
    """The local driver's volumes of this host: ``<root>/<name>/_data``, options in
    ``<root>/<name>/opts.json`` (read by the supervisor when it mounts them)."""

    def __init__(self, root: Path) -> None:
        self._root = root

    def _dir(self, name: str) -> Path:
        if not VOLUME_NAME.match(name):
            raise InvalidArgument(f'"{name}" includes invalid characters for a local volume name, only '
                                  '"[a-zA-Z0-9][a-zA-Z0-9_.-]" are allowed. If you intended to pass a host directory, '
                                  "use absolute path")
        return self._root / name

    async def create(self, name: str, options: Mapping[str, str]) -> VolumeInfo:
        directory = self._dir(name)

        def make() -> VolumeInfo:
            self._root.mkdir(mode=0o701, parents=True, exist_ok=True)
            directory.mkdir(mode=0o701, exist_ok=True)
            data = directory / "_data"
            data.mkdir(mode=0o755, exist_ok=True)
            opts = directory / "opts.json"
            if options and not opts.exists():
                tmp = directory / "opts.json.tmp"
                tmp.write_text(json.dumps(dict(options)))
                os.chmod(tmp, 0o600)
                os.replace(tmp, opts)
            return VolumeInfo(mountpoint=str(data), created_at_ns=os.stat(directory).st_ctime_ns)

        info = await asyncio.to_thread(make)
        log.info("volume_created", volume=name)
        return info

    async def remove(self, name: str) -> None:
        directory = self._dir(name)

        def delete() -> None:
            data = str(directory / "_data")
            if os.path.isdir(data) and is_mount_point(data):
                try:
                    linux.umount2(data)
                except OSError as exc:
                    raise Unavailable(f"remove {name}: error unmounting volume: {exc.strerror}") from None
                if is_mount_point(data):  # never delete through a mount (a bind of host data)
                    raise Unavailable(f"remove {name}: the volume is still mounted")
            shutil.rmtree(directory, ignore_errors=False, onerror=_ignore_missing)

        await asyncio.to_thread(delete)
        log.info("volume_removed", volume=name)

    async def usage(self, name: str) -> int:
        data = self._dir(name) / "_data"
        return await asyncio.to_thread(_size, str(data))


def _ignore_missing(_fn: object, _path: str, info: tuple[type[BaseException], BaseException, object]) -> None:
    if not isinstance(info[1], FileNotFoundError):
        raise info[1]


def _size(path: str) -> int:
    """moby's ``directory.Size``: apparent bytes of everything below, hard links once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    stack = [path]
    try:
        while stack:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    st = entry.stat(follow_symlinks=False)
                    if stat.S_ISDIR(st.st_mode):
                        stack.append(entry.path)
                        continue
                    key = (st.st_dev, st.st_ino)
                    if st.st_nlink > 1:
                        if key in seen:
                            continue
                        seen.add(key)
                    total += st.st_size
    except OSError:
        return -1
    return total


if TYPE_CHECKING:
    def _conforms(files: LocalFiles, volumes: LocalVolumes) -> tuple[ContainerFiles, Volumes]:
        """mypy proves the classes implement the Protocols."""
        return files, volumes
