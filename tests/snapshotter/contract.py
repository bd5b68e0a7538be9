"""The contract of ``snapshotter.api``, as abstract test classes (fsspec's abstract-test style).

A concrete class in ``test_contract.py`` inherits one of these and overrides the ``stack``
fixture; the same tests then run against the local implementations and against the gRPC proxies
talking to a live server. Paths in mounts are real paths on this host in both cases.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from protos.errors import (
    AlreadyExists,
    BlobNotFound,
    DigestMismatch,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    SnapshotNotFound,
    UnsafeArchive,
)
from snapshotter.api import MAX_DEPTH, BlobInfo, ExportImage, Kind, Mount
from snapshotter.unpack import upper_dir
from tests.snapshotter.conftest import Stack
from tests.snapshotter.layers import (
    chunks_of,
    collect,
    d,
    docker_save_blobs,
    f,
    gzip_bytes,
    oci_layout,
    read_tar,
    store_layers,
    tar_bytes,
    write_archive,
)
from tests.support import busybox


async def eventually(check: Callable[[], bool], seconds: float = 5.0) -> None:
    """Poll ``check`` (state on disk has no event to wait on) until true or ``seconds`` pass."""
    for _ in range(int(seconds * 100)):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"condition still false after {seconds}s")


def upper(mounts: list[Mount]) -> Path:
    return Path(upper_dir(mounts)[0])


async def commit_layer(stack: Stack, name: str, parent: str = "", files: dict[str, bytes] | None = None) -> None:
    """A committed snapshot ``name`` on ``parent`` holding ``files``, written into its upper dir."""
    key = f"build-{name}"
    mounts = await stack.snapshotter.prepare(key, parent)
    for rel, data in (files or {}).items():
        path = upper(mounts) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    await stack.snapshotter.commit(name, key)


async def keys_of(stack: Stack, *filters: str) -> set[str]:
    return {info.name async for info in stack.snapshotter.list(filters)}


class SnapshotterContract:
    @pytest.fixture
    def stack(self) -> Stack:
        raise NotImplementedError("concrete test classes provide the stack")

    async def test_prepare_write_commit_and_build_on_it(self, stack: Stack) -> None:
        s = stack.snapshotter
        mounts = await s.prepare("base-active", labels={"a": "1"})
        assert len(mounts) == 1 and mounts[0].type == "bind" and "rw" in mounts[0].options
        (upper(mounts) / "hello").write_text("world")
        await s.commit("base", "base-active")

        with pytest.raises(NotFound):
            await s.stat("base-active")  # the key is gone: the record was renamed
        info = await s.stat("base")
        assert (info.name, info.parent, info.kind) == ("base", "", Kind.COMMITTED)
        assert info.labels == {"a": "1"}

        child = await s.prepare("child", "base")
        assert child[0].type == "overlay"
        options = dict(o.partition("=")[::2] for o in child[0].options)
        lower = Path(options["lowerdir"])
        assert (lower / "hello").read_text() == "world"
        assert os.listdir(options["upperdir"]) == [] and os.listdir(options["workdir"]) == []
        assert options["upperdir"] != options["lowerdir"]
        assert (await s.stat("child")).parent == "base"

    async def test_overlay_options_keep_upper_dirs_self_contained(self, stack: Stack) -> None:
        await commit_layer(stack, "l1")
        options = (await stack.snapshotter.prepare("c", "l1"))[0].options
        for flag, param in (("index=off", "index"), ("redirect_dir=off", "redirect_dir"),
                            ("metacopy=off", "metacopy")):
            assert (flag in options) == (param in os.listdir("/sys/module/overlay/parameters"))

    async def test_views_are_read_only(self, stack: Stack) -> None:
        s = stack.snapshotter
        assert (await s.view("empty-view"))[0].options == ("ro", "rbind")
        await commit_layer(stack, "l1", files={"f": b"1"})
        one = await s.view("v1", "l1")
        assert one[0].type == "bind" and "ro" in one[0].options and (Path(one[0].source) / "f").exists()
        await commit_layer(stack, "l2", "l1")
        two = await s.view("v2", "l2")
        assert two[0].type == "overlay"
        assert not any(o.startswith(("upperdir=", "workdir=")) for o in two[0].options)
        assert (await s.stat("v2")).kind == Kind.VIEW

    async def test_mounts_recovers_active_and_view(self, stack: Stack) -> None:
        s = stack.snapshotter
        await commit_layer(stack, "l1")
        prepared = await s.prepare("active", "l1")
        viewed = await s.view("view", "l1")
        assert await s.mounts("active") == prepared
        assert await s.mounts("view") == viewed
        with pytest.raises(FailedPrecondition):
            await s.mounts("l1")
        with pytest.raises(SnapshotNotFound):
            await s.mounts("nope")

    async def test_keys_and_names_share_one_key_space(self, stack: Stack) -> None:
        s = stack.snapshotter
        await s.prepare("k")
        for create in (s.prepare, s.view):
            with pytest.raises(AlreadyExists):
                await create("k")
        await commit_layer(stack, "name")
        for create in (s.prepare, s.view):
            with pytest.raises(AlreadyExists):
                await create("name")
        with pytest.raises(AlreadyExists):
            await s.commit("name", "k")
        await s.view("v")
        with pytest.raises(AlreadyExists):
            await s.commit("v", "k")
        assert (await s.stat("k")).kind == Kind.ACTIVE  # a failed commit changes nothing

    async def test_parent_must_exist_and_be_committed(self, stack: Stack) -> None:
        s = stack.snapshotter
        with pytest.raises(NotFound):
            await s.prepare("c", "missing")
        await s.prepare("active")
        await s.view("view")
        for parent in ("active", "view"):
            with pytest.raises(InvalidArgument):
                await s.prepare("c", parent)
            with pytest.raises(InvalidArgument):
                await s.view("c", parent)
        with pytest.raises(NotFound):
            await s.stat("c")  # nothing half-created
        with pytest.raises(InvalidArgument):
            await s.prepare("")

    async def test_commit_failures(self, stack: Stack) -> None:
        s = stack.snapshotter
        with pytest.raises(NotFound):
            await s.commit("x", "missing")
        await s.view("view")
        with pytest.raises(FailedPrecondition):
            await s.commit("x", "view")
        await commit_layer(stack, "done")
        with pytest.raises(FailedPrecondition):
            await s.commit("x", "done")
        assert await keys_of(stack) == {"view", "done"}

    async def test_children_block_remove(self, stack: Stack) -> None:
        s = stack.snapshotter
        await commit_layer(stack, "parent")
        await s.prepare("child", "parent")
        await s.view("child-view", "parent")
        with pytest.raises(FailedPrecondition):
            await s.remove("parent")
        await s.remove("child")
        with pytest.raises(FailedPrecondition):
            await s.remove("parent")
        await s.remove("child-view")
        await s.remove("parent")
        with pytest.raises(NotFound):
            await s.remove("parent")
        assert await keys_of(stack) == set()
        await s.prepare("parent")  # a removed key is free at once

    async def test_committed_child_still_blocks_remove(self, stack: Stack) -> None:
        await commit_layer(stack, "p")
        await commit_layer(stack, "c", "p")
        with pytest.raises(FailedPrecondition):
            await stack.snapshotter.remove("p")
        await stack.snapshotter.remove("c")
        await stack.snapshotter.remove("p")

    async def test_remove_deletes_the_directory(self, stack: Stack) -> None:
        mounts = await stack.snapshotter.prepare("gone")
        directory = upper(mounts).parent
        assert directory.is_dir()
        await stack.snapshotter.remove("gone")
        assert not directory.exists()

    async def test_labels_stat_and_update(self, stack: Stack) -> None:
        s = stack.snapshotter
        await s.prepare("a", labels={"x": "1", "y": "2"})
        before = await s.stat("a")
        assert before.labels == {"x": "1", "y": "2"}
        assert before.created_at_ns > 0 and before.updated_at_ns == before.created_at_ns
        after = await s.update("a", {"z": "3"})
        assert after.labels == {"z": "3"}
        assert (after.name, after.parent, after.kind, after.created_at_ns) == \
            (before.name, before.parent, before.kind, before.created_at_ns)
        assert after.updated_at_ns >= before.updated_at_ns
        await s.commit("A", "a", labels={"w": "4"})
        assert (await s.stat("A")).labels == {"z": "3", "w": "4"}
        with pytest.raises(NotFound):
            await s.update("missing", {})
        with pytest.raises(InvalidArgument):
            await s.prepare("big", labels={"k": "v" * 4096})

    async def test_usage_counts_own_layer_only(self, stack: Stack) -> None:
        s = stack.snapshotter
        mounts = await s.prepare("a")
        (upper(mounts) / "big").write_bytes(os.urandom(256 * 1024))
        (upper(mounts) / "dir").mkdir()
        active = await s.usage("a")
        assert active.size >= 256 * 1024 and active.inodes >= 3
        await s.commit("A", "a")
        assert await s.usage("A") == active  # recorded at commit
        await s.prepare("b", "A")
        child = await s.usage("b")
        assert child.size < 64 * 1024 and child.inodes >= 1
        with pytest.raises(NotFound):
            await s.usage("missing")

    async def test_list_filters(self, stack: Stack) -> None:
        s = stack.snapshotter
        await commit_layer(stack, "base")
        await s.prepare("work", "base", labels={"role": "container"})
        await s.view("look", "base", labels={"role": "debug"})
        assert await keys_of(stack) == {"base", "work", "look"}
        assert await keys_of(stack, "kind==committed") == {"base"}
        assert await keys_of(stack, "kind==active", "kind==view") == {"work", "look"}
        assert await keys_of(stack, "parent==base") == {"work", "look"}
        assert await keys_of(stack, "name==work") == {"work"}
        assert await keys_of(stack, "labels.role==debug") == {"look"}
        assert await keys_of(stack, "labels.role") == {"work", "look"}
        assert await keys_of(stack, "parent==base,labels.role==container") == {"work"}
        assert await keys_of(stack, "kind!=committed") == {"work", "look"}
        with pytest.raises(InvalidArgument):
            await keys_of(stack, "colour==red")

    async def test_list_streams_many(self, stack: Stack) -> None:
        await asyncio.gather(*(stack.snapshotter.prepare(f"k{i:03}") for i in range(250)))
        infos = [info async for info in stack.snapshotter.list()]
        assert sorted(i.name for i in infos) == [f"k{i:03}" for i in range(250)]

    async def test_depth_is_capped(self, stack: Stack) -> None:
        parent = ""
        for i in range(MAX_DEPTH + 1):
            await commit_layer(stack, f"l{i}", parent)
            parent = f"l{i}"
        # l127 has 127 parents: a child of it mounts 128 lower layers, the most allowed.
        await stack.snapshotter.prepare("deepest", f"l{MAX_DEPTH - 1}")
        with pytest.raises(InvalidArgument, match="max depth"):
            await stack.snapshotter.prepare("too-deep", f"l{MAX_DEPTH}")
        with pytest.raises(NotFound):
            await stack.snapshotter.stat("too-deep")

    async def test_cleanup_removes_only_orphans(self, stack: Stack) -> None:
        mounts = await stack.snapshotter.prepare("kept")
        snapshots = stack.root / "snapshots"
        (snapshots / "99999" / "fs").mkdir(parents=True)  # a crash after rename, before the record
        (snapshots / "new-crashed").mkdir()
        assert await stack.snapshotter.cleanup() == 2
        assert sorted(os.listdir(snapshots)) == [upper(mounts).parent.name]
        assert await stack.snapshotter.cleanup() == 0


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class ContentContract:
    @pytest.fixture
    def stack(self) -> Stack:
        raise NotImplementedError("concrete test classes provide the stack")

    def ingest_is_empty(self, stack: Stack) -> bool:
        return os.listdir(stack.root / "content" / "ingest") == []

    async def test_write_read_info(self, stack: Stack) -> None:
        c = stack.content
        data = os.urandom(3 * 1024 * 1024 + 17)  # more than one message
        info = await c.write(chunks_of(data, 100_000), _digest(data), len(data))
        assert info == BlobInfo(_digest(data), len(data))
        assert await c.info(info.digest) == info
        assert await collect(c.read(info.digest)) == data
        assert await collect(c.read(info.digest, offset=1024 * 1024 + 5)) == data[1024 * 1024 + 5:]
        assert [b async for b in c.list()] == [info]
        assert self.ingest_is_empty(stack)

    async def test_write_without_expectations_and_empty_blob(self, stack: Stack) -> None:
        info = await stack.content.write(chunks_of(b"abc"))
        assert info == BlobInfo(_digest(b"abc"), 3)
        empty = await stack.content.write(chunks_of(b""), _digest(b""), 0)
        assert empty.size == 0 and await collect(stack.content.read(empty.digest)) == b""

    async def test_digest_mismatch_stores_nothing(self, stack: Stack) -> None:
        with pytest.raises(DigestMismatch):
            await stack.content.write(chunks_of(b"evil"), _digest(b"good"), 4)
        with pytest.raises(DigestMismatch):
            await stack.content.write(chunks_of(b"good and more"), _digest(b"good"), 4)
        with pytest.raises(DigestMismatch):
            await stack.content.write(chunks_of(b"goo"), _digest(b"goo"), 4)
        for digest in (_digest(b"good"), _digest(b"evil"), _digest(b"goo")):
            with pytest.raises(BlobNotFound):
                await stack.content.info(digest)
        assert [b async for b in stack.content.list()] == []
        assert self.ingest_is_empty(stack)

    async def test_broken_stream_stores_nothing(self, stack: Stack) -> None:
        class Boom(Exception):
            pass

        async def broken() -> object:
            yield b"x" * 2_000_000
            raise Boom("source failed")

        with pytest.raises(Exception) as caught:
            await stack.content.write(broken())  # type: ignore[arg-type]
        assert isinstance(caught.value, Boom)  # the caller's own error, also through gRPC
        assert [b async for b in stack.content.list()] == []
        # A server learns of a cancelled call asynchronously: give its cleanup a moment.
        await eventually(lambda: self.ingest_is_empty(stack))

    async def test_write_is_idempotent(self, stack: Stack) -> None:
        first = await stack.content.write(chunks_of(b"same"), _digest(b"same"), 4)
        again = await stack.content.write(chunks_of(b"same"), _digest(b"same"), 4)
        assert first == again
        with pytest.raises(DigestMismatch):
            await stack.content.write(chunks_of(b"other"), _digest(b"same"))
        assert await collect(stack.content.read(first.digest)) == b"same"

    async def test_delete(self, stack: Stack) -> None:
        info = await stack.content.write(chunks_of(b"bye"))
        await stack.content.delete(info.digest)
        with pytest.raises(BlobNotFound):
            await stack.content.info(info.digest)
        with pytest.raises(BlobNotFound):
            await collect(stack.content.read(info.digest))
        with pytest.raises(BlobNotFound):
            await stack.content.delete(info.digest)

    async def test_malformed_digests_are_rejected(self, stack: Stack) -> None:
        for bad in ("sha256:../../etc/passwd", "md5:abc", "sha256:" + "A" * 64, ""):
            with pytest.raises(InvalidArgument):
                await stack.content.info(bad)
        with pytest.raises(InvalidArgument):
            await stack.content.write(chunks_of(b"x"), "sha256:/etc/passwd")
        with pytest.raises(InvalidArgument):
            await collect(stack.content.read("sha512:00"))


async def _everything(stack: Stack) -> tuple[list[object], set[str]]:
    return [b async for b in stack.content.list()], await keys_of(stack)


class ImagesContract:
    @pytest.fixture
    def stack(self) -> Stack:
        raise NotImplementedError("concrete test classes provide the stack")

    async def import_file(self, stack: Stack, path: Path) -> list:  # type: ignore[type-arg]
        data = await asyncio.to_thread(path.read_bytes)
        return await stack.images.import_archive(chunks_of(data, 256 * 1024))

    async def test_import_docker_save(self, stack: Stack, scratch: Path) -> None:
        extra = tar_bytes([d("etc"), f("etc/motd", b"hi\n")])
        image = busybox.busybox_image(tags=("busybox:latest", "example.com/bb:1"), extra_layers=[extra])
        records = await self.import_file(stack, busybox.write_docker_save([image], scratch / "save.tar"))
        assert len(records) == 1
        record = records[0]
        assert record.id == image.id
        assert json.loads(record.config) == json.loads(image.config_json())
        assert record.repo_tags == ("busybox:latest", "example.com/bb:1")
        assert [x.diff_id for x in record.layers] == image.diff_ids
        assert record.chain_id == image.chain_ids()[-1]
        assert record.size > 1_000_000
        for chain in image.chain_ids():
            assert (await stack.snapshotter.stat(chain)).kind == Kind.COMMITTED
        stored = {b.digest async for b in stack.content.list()}
        assert {image.id, *(x.digest for x in record.layers)} <= stored
        assert not [k for k in await keys_of(stack) if k.startswith("extract-")]

    async def test_import_oci_layout(self, stack: Stack, scratch: Path) -> None:
        image = busybox.busybox_image(tags=("busybox:1.36",))
        path = busybox.write_oci_layout([image], scratch / "oci.tar")
        (record,) = await self.import_file(stack, path)
        assert record.id == image.id
        assert record.repo_tags == ("docker.io/library/busybox:1.36",)
        assert record.layers[0].media_type.endswith("+gzip")
        assert record.layers[0].digest != record.layers[0].diff_id == image.diff_ids[0]
        assert record.chain_id == image.chain_ids()[-1]

    async def test_import_again_reuses_chains(self, stack: Stack, scratch: Path) -> None:
        image = busybox.busybox_image()
        path = busybox.write_docker_save([image], scratch / "a.tar")
        (first,) = await self.import_file(stack, path)
        created = (await stack.snapshotter.stat(first.chain_id)).created_at_ns
        (second,) = await self.import_file(stack, path)
        assert second == first
        assert (await stack.snapshotter.stat(first.chain_id)).created_at_ns == created

    async def test_export_round_trip(self, stack: Stack, scratch: Path) -> None:
        extra = tar_bytes([d("srv"), f("srv/data", b"payload")])
        image = busybox.busybox_image(tags=("busybox:latest",), extra_layers=[extra])
        # OCI input: layers stored gzipped, so export must gunzip them on the fly.
        (record,) = await self.import_file(stack, busybox.write_oci_layout([image], scratch / "in.tar"))
        exported = await collect(stack.images.export_archive(
            [ExportImage(id=record.id, repo_tags=("busybox:latest",), layers=record.layers)]))
        files = read_tar(exported)
        manifest = json.loads(files["manifest.json"])
        assert manifest == [{"Config": f"blobs/sha256/{image.id[7:]}", "RepoTags": ["busybox:latest"],
                             "Layers": [f"blobs/sha256/{x[7:]}" for x in image.diff_ids]}]
        for name, data in files.items():
            if name.startswith("blobs/sha256/") and data:
                assert _digest(data) == "sha256:" + name.rsplit("/", 1)[1]  # every blob is what it claims
        assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
        assert json.loads(files["repositories"]) == {"busybox": {"latest": image.diff_ids[-1][7:]}}
        index = json.loads(files["index.json"])
        assert index["manifests"][0]["annotations"] == {
            "io.containerd.image.name": "docker.io/library/busybox:latest",
            "org.opencontainers.image.ref.name": "latest"}

        (again,) = await stack.images.import_archive(chunks_of(exported))
        assert again.id == record.id and again.repo_tags == ("busybox:latest",)
        # The OCI half of the export stands on its own too.
        oci_only = {k: v for k, v in files.items() if k not in ("manifest.json", "repositories") and v}
        (oci,) = await self.import_file(stack, write_archive(oci_only, scratch / "oci-only.tar"))
        assert oci.id == record.id and oci.repo_tags == ("docker.io/library/busybox:latest",)
        assert await collect(stack.images.export_archive(
            [ExportImage(id=record.id, repo_tags=("busybox:latest",), layers=record.layers)])) == exported

    async def test_unpack_stored_layers(self, stack: Stack) -> None:
        tars = [tar_bytes([d("a"), f("a/one", b"1")]), tar_bytes([d("a"), f("a/two", b"2")])]
        layers = await store_layers(stack.content, tars)
        top = await stack.images.unpack(layers)
        assert top == busybox.Image(layers=tars).chain_ids()[-1]
        assert await stack.images.unpack(layers) == top
        assert (await stack.snapshotter.stat(top)).parent == busybox.sha256(tars[0])
        with pytest.raises(BlobNotFound):
            await stack.images.unpack([layers[0].__class__(
                digest=_digest(b"missing"), diff_id=_digest(b"x"), media_type="", size=1)])

    async def test_unpack_wrong_diff_id_fails_cleanly(self, stack: Stack) -> None:
        (layer,) = await store_layers(stack.content, [tar_bytes([f("x")])])
        wrong = layer.__class__(digest=layer.digest, diff_id=_digest(b"not it"), media_type=layer.media_type,
                                size=layer.size)
        with pytest.raises(DigestMismatch, match="invalid diffID for layer 0"):
            await stack.images.unpack([wrong])
        assert await keys_of(stack) == set()

    async def test_hostile_layer_leaves_nothing(self, stack: Stack, scratch: Path) -> None:
        bad = tar_bytes([f("../../escaped", b"x")])
        image = busybox.Image(layers=[tar_bytes([d("ok")]), bad], tags=["evil:latest"])
        path = busybox.write_docker_save([image], scratch / "evil.tar")
        with pytest.raises(UnsafeArchive, match="escaped"):
            await self.import_file(stack, path)
        assert await _everything(stack) == ([], set())
        assert not (scratch.parent / "escaped").exists()
        assert os.listdir(stack.root / "tmp") == []

    async def test_wrong_diff_id_leaves_nothing(self, stack: Stack, scratch: Path) -> None:
        image = busybox.Image(layers=[tar_bytes([d("a")]), tar_bytes([f("b")])])
        config = json.loads(image.config_json())
        config["rootfs"]["diff_ids"][1] = _digest(b"something else")
        body = json.dumps(config).encode()
        files = {"cfg.json": body, "l0/layer.tar": image.layers[0], "l1/layer.tar": image.layers[1]}
        path = docker_save_blobs([{"Config": "cfg.json", "RepoTags": ["x:1"],
                                   "Layers": ["l0/layer.tar", "l1/layer.tar"]}], files, scratch / "w.tar")
        with pytest.raises(DigestMismatch, match="invalid diffID for layer 1"):
            await self.import_file(stack, path)
        assert await _everything(stack) == ([], set())

    async def test_truncated_gzip_layer_leaves_nothing(self, stack: Stack, scratch: Path) -> None:
        image = busybox.Image(layers=[tar_bytes([d("a")]), tar_bytes([f("big", os.urandom(300_000))])])
        second = gzip_bytes(image.layers[1])
        path = oci_layout(image.config_json(), [gzip_bytes(image.layers[0]), second[: len(second) // 2]],
                          scratch / "cut.tar", name="docker.io/library/cut:1")
        with pytest.raises(InvalidArgument, match="truncated"):
            await self.import_file(stack, path)
        assert await _everything(stack) == ([], set())

    async def test_corrupt_gzip_layer_leaves_nothing(self, stack: Stack, scratch: Path) -> None:
        image = busybox.Image(layers=[tar_bytes([f("big", os.urandom(300_000))])])
        blob = bytearray(gzip_bytes(image.layers[0]))
        blob[len(blob) // 2:len(blob) // 2 + 64] = b"\0" * 64
        path = oci_layout(image.config_json(), [bytes(blob)], scratch / "bad.tar")
        with pytest.raises(InvalidArgument, match="gzip"):
            await self.import_file(stack, path)
        assert await _everything(stack) == ([], set())

    async def test_malformed_archives(self, stack: Stack, scratch: Path) -> None:
        with pytest.raises(InvalidArgument):
            await stack.images.import_archive(chunks_of(b"this is not a tar archive" * 40))
        with pytest.raises(InvalidArgument, match="unrecognized image format"):
            await self.import_file(stack, write_archive({}, scratch / "empty.tar"))
        path = docker_save_blobs([{"Config": "missing.json", "Layers": []}], {}, scratch / "m.tar")
        with pytest.raises(InvalidArgument, match="not found"):
            await self.import_file(stack, path)
        assert await _everything(stack) == ([], set())
