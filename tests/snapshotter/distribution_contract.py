"""The registry half of the ``Images`` contract: pull, push and ``docker import``, run against the
local implementation and through gRPC (``test_contract.py``), with real registries (Debian's
``docker-registry`` in plain, Basic+TLS and token modes) and a lying one."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import zstandard

from protos.errors import (
    BerthError,
    DigestMismatch,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    UnsafeArchive,
)
from registry_client.auth import Credentials
from registry_client.platforms import host_platform
from snapshotter.api import ExportImage, Kind, LayerRef, Progress, PullResult, RegistryAuth
from snapshotter.unpack import aclose
from tests.snapshotter.conftest import Stack
from tests.snapshotter.contract import keys_of
from tests.snapshotter.layers import chunks_of, d, f, gzip_bytes, sym, tar_bytes
from tests.snapshotter.registries import (
    MT_DOCKER_LAYER_GZIP,
    MT_OCI_LAYER_ZSTD,
    CountingProxy,
    FakeRegistry,
    build,
    drain,
    drain_push,
    fetch_manifest,
    publish,
    publish_index,
    sha,
    statuses,
)
from tests.support import busybox
from tests.support.registry import Registry

ANON = RegistryAuth()
USER = RegistryAuth(username="berth", password="s3cret")
CREDS = Credentials(username="berth", password="s3cret")


def small(name: str, *extra: bytes) -> busybox.Image:
    """A two-layer image of its own (the session's registries serve the local and the gRPC runs
    of every test: no two images may share a blob unless a test means them to)."""
    unique = f"{name} {os.urandom(8).hex()}".encode()
    base = tar_bytes([d("etc"), f("etc/name", unique), d("bin"), sym("bin/sh", "busybox")])
    return busybox.Image(layers=[base, tar_bytes([d("app"), f("app/data", os.urandom(50_000))]), *extra],
                         config={"Cmd": ["/bin/sh"]})


async def nothing_stored(stack: Stack) -> None:
    assert [b async for b in stack.content.list()] == []
    assert await keys_of(stack) == set(), await keys_of(stack)


async def nothing_stored_but(stack: Stack, blobs: set[str]) -> None:
    assert {b.digest async for b in stack.content.list()} == blobs


async def everything(stack: Stack) -> tuple[set[str], set[str], list[str]]:
    """Blobs, snapshot keys, and files being ingested (none may outlive a failed pull)."""
    blobs = {b.digest async for b in stack.content.list()}
    return blobs, await keys_of(stack), os.listdir(stack.root / "content" / "ingest")


async def files_in(stack: Stack, chain: str) -> set[str]:
    """Relative paths in the top layer of the committed chain (via a read-only view)."""
    key = f"look-{os.urandom(4).hex()}"
    mounts = await stack.snapshotter.view(key, chain)
    try:
        source = Path(mounts[0].source) if mounts[0].type == "bind" else Path(
            dict(o.partition("=")[::2] for o in mounts[0].options)["lowerdir"].split(":")[0])
        return {str(p.relative_to(source)) for p in source.rglob("*")}
    finally:
        await stack.snapshotter.remove(key)


class DistributionContract:
    @pytest.fixture
    def stack(self) -> Stack:
        raise NotImplementedError("concrete test classes provide the stack")

    @pytest.fixture
    def plain(self, stack: Stack, plain_registry: Registry) -> Registry:
        stack.insecure.add(plain_registry.host)
        return plain_registry

    @pytest.fixture
    async def fake(self, stack: Stack) -> AsyncIterator[FakeRegistry]:
        reg = await FakeRegistry().start()
        stack.insecure.add(reg.host)
        yield reg
        await reg.stop()

    @pytest.fixture
    async def proxy(self, stack: Stack, plain: Registry) -> AsyncIterator[CountingProxy]:
        proxy = await CountingProxy(plain.host).start()
        stack.insecure.add(proxy.host)
        yield proxy
        await proxy.stop()

    # -- pull -------------------------------------------------------------------------------
    async def test_pull_from_plain_registry(self, stack: Stack, plain: Registry) -> None:
        image = busybox.busybox_image()
        built = build(image)
        digest = await publish(plain.host, "berth/busybox", "latest", built)
        progress, result = await drain(stack.images.pull(f"{plain.host}/berth/busybox:latest", ANON))
        record = result.image
        assert result.manifest_digest == digest
        assert (record.id, record.repo_tags, record.chain_id) == (image.id, (), image.chain_ids()[-1])
        assert json.loads(record.config) == json.loads(image.config_json())
        assert [(x.digest, x.diff_id, x.media_type) for x in record.layers] == \
            [(sha(b), i, MT_DOCKER_LAYER_GZIP) for b, i in zip(built.blobs, image.diff_ids, strict=True)]
        assert record.size > 1_000_000
        pid = sha(built.blobs[0])[7:19]
        seen = statuses(progress, pid)
        assert seen[0] == "Pulling fs layer" and seen[-1] == "Pull complete"
        for status in ("Downloading", "Verifying Checksum", "Download complete", "Extracting"):
            assert status in seen, seen
        assert seen.index("Download complete") < seen.index("Extracting")
        counts = [p for p in progress if p.id == pid and p.status == "Downloading"]
        assert counts[-1].total == len(built.blobs[0]) and all(p.current <= p.total for p in counts)
        assert (await stack.snapshotter.stat(record.chain_id)).kind == Kind.COMMITTED
        stored = {b.digest async for b in stack.content.list()}
        assert stored == {image.id, sha(built.blobs[0])}  # the blob as the registry has it, and the config
        assert {"bin/busybox", "etc/passwd"} <= await files_in(stack, record.chain_id)
        assert not [k for k in await keys_of(stack) if k.startswith("extract-")]

    async def test_pull_basic_auth_over_tls_with_certs_dir(self, stack: Stack, basic_registry: Registry) -> None:
        reg = basic_registry
        assert reg.tls is not None
        image = small("tls")
        await publish(reg.host, "berth/tls", "v1", build(image), CREDS, registry=reg)
        ref = f"{reg.host}/berth/tls:v1"
        # Not insecure and no CA for it yet: the certificate is checked, and fails.
        with pytest.raises(Unavailable, match="certificate verify failed"):
            await drain(stack.images.pull(ref, USER))
        (stack.certs_dir / reg.host).mkdir(parents=True)
        shutil.copy(reg.tls.ca, stack.certs_dir / reg.host / "ca.crt")
        # certs.d is read again when it changes (dockerd reads it per operation): no restart.
        with pytest.raises(NotFound, match=r"pull access denied for 127\.0\.0\.1:.*/berth/tls"):
            await drain(stack.images.pull(ref, RegistryAuth(username="berth", password="wrong")))
        _, result = await drain(stack.images.pull(ref, USER))
        assert result.image.id == image.id
        await nothing_stored_but(stack, {image.id, *(x.digest for x in result.image.layers)})

    async def test_pull_token_registry(self, stack: Stack, token_registry: Registry) -> None:
        stack.insecure.add(token_registry.host)
        image = small("token")
        await publish(token_registry.host, "berth/private", "v1", build(image), CREDS)
        ref = f"{token_registry.host}/berth/private:v1"
        with pytest.raises(NotFound, match=r"pull access denied for 127\.0\.0\.1:\d+/berth/private, repository "
                                           r"does not exist or may require 'docker login'"):
            await drain(stack.images.pull(ref, ANON))
        await nothing_stored(stack)
        _, result = await drain(stack.images.pull(ref, USER))
        assert result.image.id == image.id
        # The anonymous caller must not ride on the token the user's pull obtained.
        with pytest.raises(NotFound, match="pull access denied"):
            await drain(stack.images.pull(ref, ANON))

    async def test_pull_by_digest_and_missing_tag(self, stack: Stack, plain: Registry) -> None:
        image = small("digest")
        digest = await publish(plain.host, "berth/digest", "v1", build(image, oci=True))
        _, result = await drain(stack.images.pull(f"{plain.host}/berth/digest@{digest}", ANON))
        assert (result.image.id, result.manifest_digest) == (image.id, digest)
        assert {x.media_type for x in result.image.layers} == {"application/vnd.oci.image.layer.v1.tar+gzip"}
        with pytest.raises(NotFound, match=r"manifest for 127\.0\.0\.1:\d+/berth/digest:nope not found: "
                                           r"manifest unknown"):
            await drain(stack.images.pull(f"{plain.host}/berth/digest:nope", ANON))

    async def test_manifest_list_platform_selection(self, stack: Stack, plain: Registry) -> None:
        arch = host_platform().architecture  # the test images' configs carry the host's too
        native = small("native")
        foreign = busybox.Image(layers=[tar_bytes([f("s390x-only")])])
        foreign_config = json.loads(foreign.config_json())
        foreign_config["architecture"] = "s390x"
        foreign_built = build(foreign, config=json.dumps(foreign_config).encode())
        index = await publish_index(plain.host, "berth/multi", "v1",
                                    [(foreign_built, "linux", "s390x"), (build(native), "linux", arch)])
        ref = f"{plain.host}/berth/multi:v1"
        _, result = await drain(stack.images.pull(ref, ANON))
        assert (result.image.id, result.manifest_digest) == (native.id, index)
        _, other = await drain(stack.images.pull(ref, ANON, "linux/s390x"))
        assert other.image.id == sha(foreign_built.config) and other.manifest_digest == index
        with pytest.raises(NotFound, match=r"^no matching manifest for linux/riscv64 in the manifest list entries$"):
            await drain(stack.images.pull(ref, ANON, "linux/riscv64"))
        with pytest.raises(InvalidArgument, match="unknown operating system or architecture"):
            await drain(stack.images.pull(ref, ANON, "linux/not-an-arch"))

    async def test_repull_downloads_nothing(self, stack: Stack, proxy: CountingProxy) -> None:
        image = small("repull")
        built = build(image)
        await publish(proxy.upstream, "berth/repull", "v1", built)
        ref = f"{proxy.host}/berth/repull:v1"
        _, first = await drain(stack.images.pull(ref, ANON))
        assert proxy.count("GET", "blobs") == 3  # config and two layers
        proxy.requests.clear()
        progress, again = await drain(stack.images.pull(ref, ANON))
        assert again == first
        assert [p.status for p in progress] == ["Already exists", "Already exists"]
        assert proxy.count("GET", "blobs") == 0
        assert proxy.count("GET", "manifests") == 0  # a warm pull is a HEAD
        assert proxy.count("HEAD", "manifests") == 1

    async def test_concurrent_pulls_fetch_a_shared_layer_once(self, stack: Stack, proxy: CountingProxy) -> None:
        shared = tar_bytes([d("base"), f("base/blob", os.urandom(3_000_000))])
        one = busybox.Image(layers=[shared, tar_bytes([f("one")])])
        two = busybox.Image(layers=[shared, tar_bytes([f("two")])])
        b1, b2 = build(one), build(two)
        await publish(proxy.upstream, "berth/one", "v1", b1)
        await publish(proxy.upstream, "berth/two", "v1", b2)
        proxy.blob_delay = 0.02  # slow bodies so the two downloads overlap
        (p1, r1), (p2, r2) = await asyncio.gather(drain(stack.images.pull(f"{proxy.host}/berth/one:v1", ANON)),
                                                  drain(stack.images.pull(f"{proxy.host}/berth/two:v1", ANON)))
        assert (r1.image.id, r2.image.id) == (one.id, two.id)
        shared_digest = sha(b1.blobs[0])
        assert proxy.count("GET", "blobs", shared_digest) == 1
        for progress in (p1, p2):
            assert "Pull complete" in statuses(progress, shared_digest[7:19])
        assert (await stack.snapshotter.stat(r2.image.chain_id)).parent == one.diff_ids[0]

    async def test_zstd_layers_pull_push_and_export(self, stack: Stack, plain: Registry) -> None:
        image = small("zstd")
        blobs = [zstandard.ZstdCompressor(write_checksum=True).compress(layer) for layer in image.layers]
        built = build(image, oci=True, blobs=blobs, layer_types=[MT_OCI_LAYER_ZSTD] * len(blobs))
        await publish(plain.host, "berth/zstd", "v1", built)
        _, result = await drain(stack.images.pull(f"{plain.host}/berth/zstd:v1", ANON))
        assert result.image.id == image.id and result.image.chain_id == image.chain_ids()[-1]
        assert [(x.digest, x.media_type) for x in result.image.layers] == [(sha(b), MT_OCI_LAYER_ZSTD) for b in blobs]
        assert {"app", "app/data"} <= await files_in(stack, result.image.chain_id)
        # Pushed on as stored: the same zstd blobs under their own media type.
        export = ExportImage(id=image.id, repo_tags=(), layers=result.image.layers)
        await drain_push(stack.images.push(export, f"{plain.host}/berth/zstd-copy:v1", ANON))
        _, doc = await fetch_manifest(plain.host, "berth/zstd-copy", "v1")
        assert [(x["mediaType"], x["digest"]) for x in doc["layers"]] == [(MT_OCI_LAYER_ZSTD, sha(b)) for b in blobs]
        # docker save writes plain tars, as it does for gzip layers.
        saved = b"".join([c async for c in stack.images.export_archive([export])])
        assert all(diff_id[7:] in saved.decode("latin-1") for diff_id in image.diff_ids)

    # -- push -------------------------------------------------------------------------------
    async def test_push_then_pull_back(self, stack: Stack, plain: Registry, scratch: Path) -> None:
        image = small("roundtrip")
        data = await asyncio.to_thread(busybox.write_docker_save([image], scratch / "s.tar").read_bytes)
        (loaded,) = await stack.images.import_archive(chunks_of(data))
        export = ExportImage(id=loaded.id, repo_tags=(), layers=loaded.layers)
        ref = f"{plain.host}/berth/roundtrip:v1"
        progress, pushed = await drain_push(stack.images.push(export, ref, ANON))
        for layer in loaded.layers:
            assert statuses(progress, layer.diff_id[7:19]) == ["Preparing", "Pushing", "Pushed"]
        media_type, doc = await fetch_manifest(plain.host, "berth/roundtrip", "v1")
        assert media_type == "application/vnd.oci.image.manifest.v1+json"  # loaded images have OCI types
        assert [x["mediaType"] for x in doc["layers"]] == ["application/vnd.oci.image.layer.v1.tar"] * 2
        assert doc["config"]["digest"] == image.id
        # Forget it locally, then pull it back.
        for chain in reversed(image.chain_ids()):
            await stack.snapshotter.remove(chain)
        async for blob in stack.content.list():
            await stack.content.delete(blob.digest)
        _, pulled = await drain(stack.images.pull(ref, ANON))
        assert pulled.image.id == image.id and pulled.manifest_digest == pushed.digest
        assert [x.digest for x in pulled.image.layers] == image.diff_ids  # plain tars stay plain
        _, again = await drain_push(stack.images.push(export, ref, ANON))
        assert again == pushed

    async def test_push_mounts_from_another_repository(self, stack: Stack, plain: Registry) -> None:
        image = small("mount")
        await publish(plain.host, "berth/mount-src", "v1", build(image))
        _, pulled = await drain(stack.images.pull(f"{plain.host}/berth/mount-src:v1", ANON))
        export = ExportImage(id=pulled.image.id, repo_tags=(), layers=pulled.image.layers)
        progress, pushed = await drain_push(stack.images.push(export, f"{plain.host}/berth/mount-dst:v2", ANON))
        for layer in pulled.image.layers:
            assert statuses(progress, layer.diff_id[7:19]) == ["Preparing", "Mounted from berth/mount-src"]
        media_type, doc = await fetch_manifest(plain.host, "berth/mount-dst", "v2")
        assert media_type == "application/vnd.docker.distribution.manifest.v2+json"  # it came as schema2
        assert [x["digest"] for x in doc["layers"]] == [x.digest for x in pulled.image.layers]
        progress, again = await drain_push(stack.images.push(export, f"{plain.host}/berth/mount-dst:v3", ANON))
        assert again.digest == pushed.digest
        assert {p.status for p in progress if p.status != "Preparing"} == {"Layer already exists"}

    async def test_push_refuses_what_it_cannot_push(self, stack: Stack, plain: Registry) -> None:
        missing = ExportImage(id=sha(b"nothing"), repo_tags=(), layers=())
        with pytest.raises(NotFound):
            await drain_push(stack.images.push(missing, f"{plain.host}/berth/x:v1", ANON))
        with pytest.raises(InvalidArgument, match="digest"):
            await drain_push(stack.images.push(missing, f"{plain.host}/berth/x@{sha(b'm')}", ANON))

    # -- docker import ------------------------------------------------------------------------
    async def test_import_rootfs_from_gzip_tarball(self, stack: Stack) -> None:
        raw = tar_bytes([d("etc"), f("etc/motd", b"imported\n"), d("srv"), f("srv/big", os.urandom(200_000))])
        blob = gzip_bytes(raw)
        config = json.dumps({"architecture": "amd64", "os": "linux", "created": "2024-01-02T03:04:05Z",
                             "config": {"Cmd": ["/bin/sh"]}, "comment": "from a tarball"}).encode()
        record = await stack.images.import_rootfs(chunks_of(blob, 10_000), config)
        doc = json.loads(record.config)
        assert doc["rootfs"] == {"type": "layers", "diff_ids": [sha(raw)]}
        assert doc["history"] == [{"created": "2024-01-02T03:04:05Z", "comment": "from a tarball"}]
        assert doc["config"] == {"Cmd": ["/bin/sh"]}
        assert record.id == sha(record.config) and record.repo_tags == ()
        assert record.layers == (LayerRef(digest=sha(blob), diff_id=sha(raw), size=len(blob),
                                          media_type="application/vnd.oci.image.layer.v1.tar+gzip"),)
        assert record.chain_id == sha(raw) and record.size > 200_000
        assert {b.digest async for b in stack.content.list()} == {sha(blob), record.id}
        assert {"etc/motd", "srv/big"} <= await files_in(stack, record.chain_id)
        # The same tarball again: same image, nothing new.
        again = await stack.images.import_rootfs(chunks_of(blob), config)
        assert again == record

    async def test_import_rootfs_plain_tar_and_hostile_input(self, stack: Stack) -> None:
        raw = tar_bytes([f("hello", b"world")])
        record = await stack.images.import_rootfs(chunks_of(raw), b"{}")
        assert record.layers[0].digest == sha(raw) == record.chain_id
        assert record.layers[0].media_type == "application/vnd.oci.image.layer.v1.tar"
        assert json.loads(record.config)["history"][0]["comment"] == "Imported from -"
        before = ([b async for b in stack.content.list()], await keys_of(stack))
        with pytest.raises(UnsafeArchive, match="outside of the layer root"):
            await stack.images.import_rootfs(chunks_of(tar_bytes([f("ok"), f("../../escape")])), b"{}")
        with pytest.raises(InvalidArgument, match="invalid image config"):
            await stack.images.import_rootfs(chunks_of(raw), b"[1]")
        with pytest.raises(InvalidArgument, match="truncated"):
            await stack.images.import_rootfs(chunks_of(gzip_bytes(raw)[:40]), b"{}")

        class Broken(Exception):
            pass

        async def breaks() -> AsyncIterator[bytes]:
            yield tar_bytes([f("big", os.urandom(300_000))])[:100_000]
            raise Broken("the client went away")

        with pytest.raises(Broken):  # the caller's own error, not the extractor's complaint
            await stack.images.import_rootfs(breaks(), b"{}")
        assert ([b async for b in stack.content.list()], await keys_of(stack)) == before
        assert os.listdir(stack.root / "content" / "ingest") == []

    # -- a lying registry ---------------------------------------------------------------------
    @pytest.mark.parametrize("fault", [
        "wrong-blob-bytes", "truncated-blob", "oversized-blob", "wrong-diff-id", "wrong-config-bytes",
        "layer-count", "too-many-layers", "oversized-manifest", "bogus-realm", "unreachable-realm", "429-storm",
        "truncated-zstd-layer", "foreign-layer", "path-traversal"])
    async def test_lying_registry_leaves_nothing(self, stack: Stack, fake: FakeRegistry, fault: str) -> None:
        image = small(fault)
        built = build(image)
        good = built
        expected: tuple[type[BerthError], str]
        last = sha(built.blobs[-1])
        if fault == "wrong-blob-bytes":
            fake.blob_bytes[last] = bytes(len(built.blobs[-1]))
            expected = DigestMismatch, f"filesystem layer verification failed for digest {last}"
        elif fault == "truncated-blob":
            fake.truncate[last] = len(built.blobs[-1]) // 2
            expected = Unavailable, "unexpected EOF"
        elif fault == "oversized-blob":
            fake.blob_bytes[last] = built.blobs[-1] + b"more"
            expected = DigestMismatch, "filesystem layer verification failed"
        elif fault == "wrong-diff-id":
            config = json.loads(image.config_json())
            config["rootfs"]["diff_ids"][1] = sha(b"another layer")
            built = build(image, config=json.dumps(config).encode())
            expected = DigestMismatch, "invalid diffID for layer 1"
        elif fault == "wrong-config-bytes":
            fake.blob_bytes[sha(built.config)] = built.config.replace(b"linux", b"LINUX")
            expected = DigestMismatch, "image config verification failed"
        elif fault == "layer-count":
            built = build(image, blobs=built.blobs[:1], layer_types=[MT_DOCKER_LAYER_GZIP])
            expected = InvalidArgument, "layers from manifest don't match image configuration"
        elif fault == "too-many-layers":
            built = build(image, blobs=built.blobs * 65)
            expected = InvalidArgument, "image has 130 layers, more than the maximum of 128"
        elif fault == "oversized-manifest":
            built = build(image, padding=5 << 20)
            expected = InvalidArgument, "manifest too big"
        elif fault == "bogus-realm":
            fake.challenge = 'Bearer realm="file:///etc/passwd",service="fake"'
            expected = Unauthenticated, "invalid token realm"
        elif fault == "unreachable-realm":
            fake.challenge = 'Bearer realm="http://127.0.0.1:9/token",service="fake"'
            expected = Unauthenticated, "cannot reach token server"
        elif fault == "429-storm":
            fake.statuses = [429] * 50
            expected = ResourceExhausted, "toomanyrequests"
        elif fault == "truncated-zstd-layer":  # its digest is right: a truncated stream was published
            packed = zstandard.ZstdCompressor().compress(image.layers[-1])
            built = build(image, oci=True, blobs=[built.blobs[0], packed[:len(packed) // 2]],
                          layer_types=[MT_DOCKER_LAYER_GZIP, MT_OCI_LAYER_ZSTD])
            expected = InvalidArgument, "unexpected EOF: the zstd layer is truncated"
        elif fault == "foreign-layer":
            built = build(image, layer_types=[MT_DOCKER_LAYER_GZIP,
                                              "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"])
            expected = InvalidArgument, "foreign"
        elif fault == "path-traversal":
            evil = busybox.Image(layers=[image.layers[0], tar_bytes([f("../../../escaped", b"x")])])
            built = build(evil)
            expected = UnsafeArchive, "outside of the layer root"
        fake.add("berth/liar", "v1", built)
        ref = f"{fake.host}/berth/liar:v1"
        error, text = expected
        with pytest.raises(error, match=re.escape(text)):
            await drain(stack.images.pull(ref, ANON))
        await nothing_stored(stack)
        assert not (stack.root.parent / "escaped").exists() and not (stack.root / "escaped").exists()
        # The registry comes to its senses: the same pull now works.
        fake.blob_bytes.clear()
        fake.truncate.clear()
        fake.statuses.clear()
        fake.challenge = ""
        fake.add("berth/liar", "v1", good)
        _, result = await drain(stack.images.pull(ref, ANON))
        assert isinstance(result, PullResult) and result.image.id == image.id

    async def test_walking_away_from_a_pull_leaves_nothing(self, stack: Stack, fake: FakeRegistry) -> None:
        image = small("walk-away", tar_bytes([f("big", os.urandom(1_500_000))]))
        built = build(image)
        fake.add("berth/walk", "v1", built)
        fake.blob_delay = 0.02
        events = stack.images.pull(f"{fake.host}/berth/walk:v1", ANON)
        pid = sha(built.blobs[-1])[7:19]
        async for event in events:
            if isinstance(event, Progress) and event.id == pid and event.status == "Downloading" and event.current:
                break
        await aclose(events)  # the client went away (through gRPC: the call is cancelled)
        for _ in range(500):  # the server finishes its rollback on its own time
            if await everything(stack) == (set(), set(), []):
                break
            await asyncio.sleep(0.01)
        assert await everything(stack) == (set(), set(), [])
        fake.blob_delay = 0
        _, result = await drain(stack.images.pull(f"{fake.host}/berth/walk:v1", ANON))
        assert result.image.id == image.id

    async def test_transient_faults_are_survived(self, stack: Stack, fake: FakeRegistry) -> None:
        image = small("transient")
        built = build(image)
        fake.add("berth/flaky", "v1", built)
        last = sha(built.blobs[-1])
        fake.cut_once.add(last)  # the connection dies half-way: resumed with Range
        fake.statuses = [429, 503]  # then a rate limit and a hiccup: retried
        _, result = await drain(stack.images.pull(f"{fake.host}/berth/flaky:v1", ANON))
        assert result.image.id == image.id
        ranged = [r for m, p, r in fake.requests if p.endswith(last) and m == "GET"]
        assert ranged[0] == "" and ranged[1].startswith("bytes=") and int(ranged[1][6:-1]) > 0
        assert len(ranged) == 2
