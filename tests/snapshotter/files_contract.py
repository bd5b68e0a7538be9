"""The contract of the file primitives (``Snapshotter.changes``, ``Images.commit_layer``,
``apply_tar``, ``stat_path``, ``read_tar``), run against the local classes and the gRPC proxies.

Snapshots are changed the way a container changes them: through an overlay mount of the active
snapshot (``mounted``), so whiteouts and opaque directories are the kernel's own. Every check
that a hostile path stayed inside looks at a sentinel directory on the host as well.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import os
import secrets
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from common.fstree import GO_MODE_DIR, GO_MODE_SYMLINK
from protos.errors import FailedPrecondition, Internal, InvalidArgument, NotFound
from snapshotter.api import ChangeKind, Kind, LayerRef
from snapshotter.files import read_only
from snapshotter.unpack import chain_ids
from tests.snapshotter.conftest import Stack, mounted
from tests.snapshotter.layers import chunks_of, collect, d, f, hard, store_layers, sym, tar_bytes

BASE = [d("etc"), f("etc/a", b"a"), f("etc/b", b"b"), d("dir"), f("dir/x", b"x"), d("dir/sub"),
        f("dir/sub/y", b"y"), f("keep", b"keep"), d("data", 0o750, uid=7, gid=8), f("data/f", b"payload", 0o640),
        sym("abs-etc", "/etc"), sym("up", "../../../../../etc"), sym("dangling", "/nowhere/at/all")]


async def base_chain(stack: Stack, entries: list[Any] | None = None) -> tuple[str, LayerRef]:
    (layer,) = await store_layers(stack.content, [tar_bytes(entries or BASE)], compress=False)
    return await stack.images.unpack([layer]), layer


def tree(root: Path) -> dict[str, tuple[Any, ...]]:
    """Everything a container could observe of a tree (times in whole seconds)."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = os.lstat(path)
            rel = str(path.relative_to(root))
            kind = stat.S_IFMT(st.st_mode)
            if stat.S_ISREG(st.st_mode):
                extra: Any = path.read_bytes()
            elif stat.S_ISLNK(st.st_mode):
                extra = os.readlink(path)
            else:
                extra = st.st_rdev if stat.S_ISCHR(st.st_mode) else None
            xattrs = sorted((k, os.getxattr(path, k, follow_symlinks=False))
                            for k in os.listxattr(path, follow_symlinks=False))
            out[rel] = (kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                        None if stat.S_ISDIR(st.st_mode) else int(st.st_mtime), extra, xattrs)
    return out


def names(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return [m.name for m in tar]


def members(data: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: m for m in tar}


def _mount_count(root: Path) -> int:
    with open("/proc/self/mountinfo") as f:
        return f.read().count(str(root))


class FilesContract:
    @pytest.fixture
    def stack(self) -> Stack:
        raise NotImplementedError("concrete test classes provide the stack")

    async def change_like_a_container(self, stack: Stack, key: str, parent: str, scratch: Path) -> None:
        with mounted(await stack.snapshotter.mounts(key), scratch / f"m-{key}") as root:
            (root / "etc" / "a").write_bytes(b"changed")
            (root / "etc" / "b").unlink()
            for p in sorted((root / "dir").rglob("*"), reverse=True):
                p.rmdir() if p.is_dir() else p.unlink()
            (root / "dir").rmdir()
            (root / "dir").mkdir()  # an opaque directory now
            (root / "dir" / "z").write_bytes(b"z")
            (root / "new").write_bytes(b"new")
            os.chmod(root / "keep", 0o600)  # metadata only
            os.symlink("new", root / "link")
            os.link(root / "new", root / "new-hard")
            os.setxattr(root / "new", "user.note", b"not in a layer tar")  # Docker's layers drop it too

    async def test_changes_are_dockers_diff(self, stack: Stack, scratch: Path) -> None:
        chain, _ = await base_chain(stack)
        await stack.snapshotter.prepare("c", chain)
        assert await stack.snapshotter.changes("c") == []
        await self.change_like_a_container(stack, "c", chain, scratch)
        got = [(c.path, c.kind) for c in await stack.snapshotter.changes("c")]
        assert got == [("/dir", ChangeKind.DELETED), ("/dir/z", ChangeKind.ADDED), ("/etc", ChangeKind.MODIFIED),
                       ("/etc/a", ChangeKind.MODIFIED), ("/etc/b", ChangeKind.DELETED), ("/keep", ChangeKind.MODIFIED),
                       ("/link", ChangeKind.ADDED), ("/new", ChangeKind.ADDED), ("/new-hard", ChangeKind.ADDED)]

    async def test_changes_see_through_the_layer_stack(self, stack: Stack, scratch: Path) -> None:
        # Deleted in layer 2 and created again by the container: added, not modified (moby would
        # look the path up in layer 1 and call it modified).
        tars = [tar_bytes([d("a"), f("a/gone", b"1")]), tar_bytes([d("a"), f("a/.wh.gone")])]
        layers = await store_layers(stack.content, tars)
        top = await stack.images.unpack(layers)
        await stack.snapshotter.prepare("c", top)
        with mounted(await stack.snapshotter.mounts("c"), scratch / "m") as root:
            (root / "a" / "gone").write_bytes(b"back")
        got = [(c.path, c.kind) for c in await stack.snapshotter.changes("c")]
        assert got == [("/a", ChangeKind.MODIFIED), ("/a/gone", ChangeKind.ADDED)]

    async def test_runtime_mount_points_are_not_changes(self, stack: Stack, scratch: Path) -> None:
        # What Docker's init layer holds: created empty by the runtime when the image lacks them.
        chain, _ = await base_chain(stack)
        await stack.snapshotter.prepare("c", chain)
        with mounted(await stack.snapshotter.mounts("c"), scratch / "m") as root:
            for name in ("hosts", "resolv.conf", "hostname"):
                (root / "etc" / name).touch()
            (root / "proc").mkdir()
            (root / "sbin").mkdir()
            (root / "sbin" / "docker-init").touch()
        assert await stack.snapshotter.changes("c") == []
        assert (await stack.images.commit_layer("c")).layer is None
        with mounted(await stack.snapshotter.mounts("c"), scratch / "m2") as root:
            (root / "etc" / "hosts").write_text("127.0.0.1 mine\n")  # written by the container: a change
        got = [(c.path, c.kind) for c in await stack.snapshotter.changes("c")]
        assert got == [("/etc", ChangeKind.MODIFIED), ("/etc/hosts", ChangeKind.ADDED)]
        result = await stack.images.commit_layer("c", consume=True)
        assert result.layer is not None
        blob = await collect(stack.content.read(result.layer.digest))
        assert sorted(names(blob)) == ["etc", "etc/hosts"]

    async def test_changes_of_what_has_no_layer_of_its_own(self, stack: Stack) -> None:
        chain, _ = await base_chain(stack)
        await stack.snapshotter.view("v", chain)
        for key in ("v", chain):
            with pytest.raises(FailedPrecondition):
                await stack.snapshotter.changes(key)
        with pytest.raises(NotFound):
            await stack.snapshotter.changes("missing")

    async def test_commit_layer_keeps_the_container(self, stack: Stack, scratch: Path) -> None:
        chain, base = await base_chain(stack)
        await stack.snapshotter.prepare("c", chain)
        await self.change_like_a_container(stack, "c", chain, scratch)
        result = await stack.images.commit_layer("c")
        layer = result.layer
        assert layer is not None
        assert layer.media_type == "application/vnd.oci.image.layer.v1.tar"
        blob = await collect(stack.content.read(layer.digest))
        assert layer.digest == layer.diff_id == "sha256:" + hashlib.sha256(blob).hexdigest()
        assert layer.size == len(blob)
        assert result.chain_id == chain_ids([base.diff_id, layer.diff_id])[-1]
        entries = members(blob)
        assert entries["dir/.wh..wh..opq"].isreg() and entries["etc/.wh.b"].size == 0
        assert entries["new-hard"].islnk() and entries["new-hard"].linkname == "new"
        assert entries["link"].issym() and entries["dir"].isdir()
        assert all(m.uname == "" and m.gname == "" for m in entries.values())
        assert (await stack.snapshotter.stat("c")).kind == Kind.ACTIVE  # still the container's
        info = await stack.snapshotter.stat(result.chain_id)
        assert (info.kind, info.parent) == (Kind.COMMITTED, chain)
        # The committed layer shows what the container saw.
        await stack.snapshotter.view("look", result.chain_id)
        with mounted(await stack.snapshotter.mounts("look"), scratch / "look") as committed:
            with mounted(read_only(await stack.snapshotter.mounts("c")), scratch / "live") as live:
                seen, kept = tree(live), tree(committed)
            # A layer carries file capabilities, not other xattrs (as Docker's): the rest is equal.
            assert ("user.note", b"not in a layer tar") in seen["new"][-1] and kept["new"][-1] == []
            assert {k: v[:-1] for k, v in kept.items()} == {k: v[:-1] for k, v in seen.items()}
            assert not (committed / "etc" / "b").exists() and sorted(os.listdir(committed / "dir")) == ["z"]

    async def test_consumed_commit_equals_an_unpack_of_its_tar(self, stack: Stack, scratch: Path) -> None:
        chain, base = await base_chain(stack)
        await stack.snapshotter.prepare("build-1", chain, labels={"berth.build": "1"})
        await self.change_like_a_container(stack, "build-1", chain, scratch)
        result = await stack.images.commit_layer("build-1", consume=True)
        assert result.layer is not None
        with pytest.raises(NotFound):
            await stack.snapshotter.stat("build-1")
        info = await stack.snapshotter.stat(result.chain_id)
        assert "berth.build" not in info.labels and info.parent == chain
        await stack.snapshotter.view("v1", result.chain_id)
        with mounted(await stack.snapshotter.mounts("v1"), scratch / "v1") as root:
            consumed = tree(root)
        await stack.snapshotter.remove("v1")
        await stack.snapshotter.remove(result.chain_id)
        assert await stack.images.unpack([base, result.layer]) == result.chain_id  # from the stored tar
        await stack.snapshotter.view("v2", result.chain_id)
        with mounted(await stack.snapshotter.mounts("v2"), scratch / "v2") as root:
            assert tree(root) == consumed

    async def test_commit_of_nothing_is_an_empty_layer(self, stack: Stack) -> None:
        chain, _ = await base_chain(stack)
        await stack.snapshotter.prepare("c", chain)
        result = await stack.images.commit_layer("c")
        assert (result.layer, result.chain_id) == (None, chain)
        assert (await stack.snapshotter.stat("c")).kind == Kind.ACTIVE
        result = await stack.images.commit_layer("c", consume=True)
        assert (result.layer, result.chain_id) == (None, chain)
        with pytest.raises(NotFound):
            await stack.snapshotter.stat("c")
        await stack.snapshotter.view("v", chain)
        with pytest.raises(FailedPrecondition):
            await stack.images.commit_layer("v")
        with pytest.raises(NotFound):
            await stack.images.commit_layer("missing")

    async def test_same_changes_twice_share_the_chain(self, stack: Stack) -> None:
        chain, _ = await base_chain(stack)
        results = []
        for key in ("one", "two"):
            mounts = await stack.snapshotter.prepare(key, chain)
            upper = Path(dict(o.partition("=")[::2] for o in mounts[0].options)["upperdir"])
            (upper / "same").write_bytes(b"same")
            os.utime(upper / "same", (1_600_000_000, 1_600_000_000))
            results.append(await stack.images.commit_layer(key, consume=True))
        assert results[0] == results[1]
        with pytest.raises(NotFound):
            await stack.snapshotter.stat("two")

    async def test_stat_path(self, stack: Stack) -> None:
        chain, _ = await base_chain(stack)
        await stack.snapshotter.prepare("c", chain)
        st = await stack.images.stat_path("c", "/data/f")
        assert (st.name, st.size, st.mode, st.link_target) == ("f", 7, 0o640, "")
        assert st.mtime.endswith("Z") and st.mtime.startswith("2023-11-14T22:13:20")
        directory = await stack.images.stat_path("c", "/data")
        assert directory.mode == GO_MODE_DIR | 0o750 and directory.name == "data"
        link = await stack.images.stat_path("c", "/abs-etc")
        assert link.mode & GO_MODE_SYMLINK and link.link_target == "/etc"
        assert (await stack.images.stat_path("c", "/up")).link_target == "/etc"  # climbing stops at the root
        assert (await stack.images.stat_path("c", "/dangling")).link_target == "/nowhere/at/all"
        followed = await stack.images.stat_path("c", "/abs-etc/")
        assert followed.mode & GO_MODE_DIR and followed.name == "abs-etc"
        assert (await stack.images.stat_path("c", "/up/a")).size == 1  # /etc/a of the image
        assert (await stack.images.stat_path("c", "/../../../data/f")).size == 7
        root = await stack.images.stat_path("c", "/")
        assert root.name == "/" and root.mode & GO_MODE_DIR
        for missing in ("/nope", "/dangling/x"):
            with pytest.raises(NotFound, match=f"lstat {missing}: no such file or directory"):
                await stack.images.stat_path("c", missing)
        with pytest.raises(Internal, match="lstat /data/f/x: not a directory"):  # a 500 in moby too
            await stack.images.stat_path("c", "/data/f/x")

    async def test_read_tar(self, stack: Stack) -> None:
        chain, _ = await base_chain(stack)
        await stack.snapshotter.prepare("c", chain)
        data = await collect(stack.images.read_tar("c", "/data"))
        got = members(data)
        assert list(got) == ["data", "data/f"]
        assert (got["data"].uid, got["data"].gid, got["data"].mode) == (7, 8, 0o750)
        assert (got["data/f"].mode, got["data/f"].mtime) == (0o640, 1_700_000_000)
        assert names(await collect(stack.images.read_tar("c", "/etc/a"))) == ["a"]
        assert names(await collect(stack.images.read_tar("c", "/abs-etc"))) == ["abs-etc"]  # the link itself
        assert names(await collect(stack.images.read_tar("c", "/abs-etc/"))) == ["abs-etc", "abs-etc/a",
                                                                                "abs-etc/b"]
        assert names(await collect(stack.images.read_tar("c", "/up/b"))) == ["b"]  # the image's /etc/b
        everything = names(await collect(stack.images.read_tar("c", "/")))
        assert "data/f" in everything and "etc/a" in everything and "." not in everything and "" not in everything
        assert not any(n.startswith("/") for n in everything)
        with pytest.raises(NotFound):
            await collect(stack.images.read_tar("c", "/nope"))

    async def test_apply_tar(self, stack: Stack, scratch: Path) -> None:
        chain, _ = await base_chain(stack)
        await stack.snapshotter.prepare("c", chain)
        sentinel = scratch / "sentinel"
        sentinel.mkdir()
        payload = tar_bytes([d("srv"), f("srv/new", b"new", 0o600, uid=1234, gid=99), f(".wh.plain", b"plain"),
                             hard("srv/again", "srv/new")])
        await stack.images.apply_tar("c", chunks_of(payload), "/data")
        # through an absolute symlink of the image: resolved inside, never on the host
        await stack.images.apply_tar("c", chunks_of(tar_bytes([f("through", b"t")])), "/abs-etc")
        hostile = tar_bytes([sym("host", str(sentinel)), f("host/pwned", b"x")])
        with pytest.raises(InvalidArgument):
            await stack.images.apply_tar("c", chunks_of(hostile), "/data")
        with pytest.raises(Exception, match="outside of"):
            await stack.images.apply_tar("c", chunks_of(tar_bytes([f("../../escape", b"x")])), "/data")
        with mounted(read_only(await stack.snapshotter.mounts("c")), scratch / "m") as root:
            new = root / "data" / "srv" / "new"
            assert new.read_bytes() == b"new"
            st = os.stat(new)
            assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), st.st_nlink) == (1234, 99, 0o600, 2)
            assert (root / "data" / ".wh.plain").read_bytes() == b"plain"  # plain files here
            assert (root / "etc" / "through").read_bytes() == b"t"
            assert not (root / "escape").exists() and not (root / "data" / "escape").exists()
        assert os.listdir(sentinel) == []

    async def test_apply_tar_options_and_errors(self, stack: Stack, scratch: Path) -> None:
        chain, _ = await base_chain(stack)
        await stack.snapshotter.prepare("c", chain)
        raw = tar_bytes([f("file", b"compressed", uid=5, gid=5)])
        compressors: list[Callable[[bytes], bytes]] = [gzip.compress, bz2.compress, lzma.compress]
        for i, compress in enumerate(compressors):
            await stack.images.apply_tar("c", chunks_of(compress(raw)), "/data", owner=(42, 43) if i else None)
        with pytest.raises(NotFound):
            await stack.images.apply_tar("c", chunks_of(raw), "/missing")
        with pytest.raises(InvalidArgument, match="extraction point is not a directory"):
            await stack.images.apply_tar("c", chunks_of(raw), "/keep")
        with pytest.raises(Exception, match="cannot overwrite directory"):
            await stack.images.apply_tar("c", chunks_of(tar_bytes([f("etc", b"x")])), "/",
                                         no_overwrite_dir_non_dir=True)
        await stack.images.apply_tar("c", chunks_of(tar_bytes([f("etc", b"x")])), "/dir/sub")  # no clash there
        with pytest.raises(InvalidArgument):
            await stack.images.apply_tar("c", chunks_of(gzip.compress(raw)[:40]), "/data")
        with mounted(read_only(await stack.snapshotter.mounts("c")), scratch / "m") as root:
            st = os.stat(root / "data" / "file")
            assert (root / "data" / "file").read_bytes() == b"compressed" and (st.st_uid, st.st_gid) == (42, 43)
            assert (root / "etc").is_dir()
        await stack.snapshotter.view("v", chain)
        with pytest.raises(FailedPrecondition):
            await stack.images.apply_tar("v", chunks_of(raw), "/")

    async def test_file_operations_leave_no_mounts(self, stack: Stack) -> None:
        chain, _ = await base_chain(stack)
        await stack.snapshotter.prepare("c", chain)
        before = _mount_count(stack.root)
        await stack.images.stat_path("c", "/data")
        with pytest.raises(NotFound):
            await stack.images.stat_path("c", "/nope")
        stream = stack.images.read_tar("c", "/")
        await anext(aiter(stream))  # abandoned half-way
        await stream.aclose()  # type: ignore[attr-defined]
        token = secrets.token_hex(2)
        await stack.images.apply_tar("c", chunks_of(tar_bytes([f(token)])), "/")
        assert _mount_count(stack.root) == before
        mount_dir = stack.root / "mnt"
        assert not mount_dir.exists() or not os.listdir(mount_dir)
