"""Image import/export beyond the contract: archive layouts, platform selection, bounds,
concurrent imports, and rollback that spares what other imports use."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
from pathlib import Path

import pytest

from protos.errors import DigestMismatch, InvalidArgument, UnsafeArchive
from snapshotter import images as images_module
from snapshotter.api import ExportImage, ImageRecord, Kind
from snapshotter.images import familiar_name, host_platform, normalized_name
from snapshotter.unpack import chain_ids
from tests.snapshotter.conftest import Stack
from tests.snapshotter.contract import keys_of
from tests.snapshotter.layers import (
    chunks_of,
    collect,
    d,
    docker_save_blobs,
    f,
    gzip_bytes,
    oci_layout,
    read_tar,
    tar_bytes,
    write_archive,
)
from tests.support import busybox
from tests.support.busybox import sha256


async def load(stack: Stack, path: Path) -> list[ImageRecord]:
    data = await asyncio.to_thread(path.read_bytes)
    return await stack.images.import_archive(chunks_of(data, 1 << 20))


async def nothing_left(stack: Stack) -> None:
    assert [b async for b in stack.content.list()] == []
    assert await keys_of(stack) == set()
    assert os.listdir(stack.root / "tmp") == []


def small_image(*layers: bytes, tags: tuple[str, ...] = ()) -> busybox.Image:
    return busybox.Image(layers=list(layers) or [tar_bytes([d("a"), f("a/b", b"b")])], tags=list(tags))


async def test_docker_25_layout(local_stack: Stack, scratch: Path) -> None:
    image = small_image(tar_bytes([f("one")]), tar_bytes([f("two")]), tags=("app:v1",))
    files = {f"blobs/sha256/{image.id[7:]}": image.config_json()}
    files.update({f"blobs/sha256/{x[7:]}": layer for x, layer in zip(image.diff_ids, image.layers, strict=True)})
    files["index.json"] = b'{"schemaVersion":2,"manifests":[]}'
    manifest: list[dict[str, object]] = [{"Config": f"blobs/sha256/{image.id[7:]}", "RepoTags": ["app:v1"],
                 "Layers": [f"blobs/sha256/{x[7:]}" for x in image.diff_ids]}]
    (record,) = await load(local_stack, docker_save_blobs(manifest, files, scratch / "d25.tar"))
    assert (record.id, record.repo_tags, record.chain_id) == (image.id, ("app:v1",), image.chain_ids()[-1])
    assert [x.digest for x in record.layers] == image.diff_ids  # uncompressed: digest is the diff id


async def test_legacy_layout_with_symlinked_layers_and_gzip_archive(local_stack: Stack, scratch: Path) -> None:
    base = tar_bytes([f("shared")])
    first = small_image(base, tags=("first:1",))
    second = small_image(base, tar_bytes([f("extra")]), tags=("second:1",))
    path = busybox.write_docker_save([first, second], scratch / "two.tar")
    # Re-pack with the second image's base layer as a symlink to the first one's, as docker did.
    members = read_tar(path.read_bytes())
    first_dir = first.chain_ids()[0][7:]
    manifest = json.loads(members["manifest.json"])
    manifest[1]["Layers"][0] = "dup/layer.tar"
    members["manifest.json"] = json.dumps(manifest).encode()
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            if name == "manifest.json":
                continue
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("dup/layer.tar")
        link.type, link.linkname = tarfile.SYMTYPE, f"../{first_dir}/layer.tar"
        tar.addfile(link)
        info = tarfile.TarInfo("manifest.json")
        info.size = len(members["manifest.json"])
        tar.addfile(info, io.BytesIO(members["manifest.json"]))
    records = await local_stack.images.import_archive(chunks_of(gzip.compress(buf.getvalue())))
    assert [(r.id, r.repo_tags) for r in records] == [(first.id, ("first:1",)), (second.id, ("second:1",))]
    assert records[1].chain_id == second.chain_ids()[-1]


def _platform_index(entries: list[tuple[dict[str, object], bytes, bytes]]) -> tuple[bytes, dict[str, bytes]]:
    """An image index over (platform, config, layer) triples; returns it and every blob."""
    blobs: dict[str, bytes] = {}
    descs = []
    for platform, config, layer in entries:
        blob = gzip_bytes(layer)
        blobs[sha256(config)], blobs[sha256(blob)] = config, blob
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(config),
                       "size": len(config)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha256(blob),
                        "size": len(blob)}]}).encode()
        blobs[sha256(manifest)] = manifest
        desc: dict[str, object] = {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                                   "digest": sha256(manifest), "size": len(manifest), "platform": platform}
        if platform.get("architecture") == "unknown":
            desc["annotations"] = {"vnd.docker.reference.type": "attestation-manifest"}
        descs.append(desc)
    index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                        "manifests": descs}).encode()
    return index, blobs


def _config_for(arch: str, layer: bytes) -> bytes:
    return json.dumps({"architecture": arch, "os": "linux", "rootfs": {"type": "layers",
                                                                      "diff_ids": [sha256(layer)]}}).encode()


async def test_oci_nested_index_picks_this_platform(local_stack: Stack, scratch: Path) -> None:
    _, arch, _ = host_platform()
    other = "arm64" if arch != "arm64" else "amd64"
    mine_layer, other_layer = tar_bytes([f("mine")]), tar_bytes([f("other")])
    attestation = tar_bytes([f("in-toto.json")])
    index, blobs = _platform_index([
        ({"architecture": other, "os": "linux"}, _config_for(other, other_layer), other_layer),
        ({"architecture": "unknown", "os": "unknown"}, _config_for("unknown", attestation), attestation),
        ({"architecture": arch, "os": "linux"}, _config_for(arch, mine_layer), mine_layer),
    ])
    blobs[sha256(index)] = index
    top = {"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.index.v1+json", "digest": sha256(index), "size": len(index),
        "annotations": {"io.containerd.image.name": "registry.example:5000/team/app:2.0",
                        "org.opencontainers.image.ref.name": "2.0"}}]}
    files = {"oci-layout": b'{"imageLayoutVersion":"1.0.0"}', "index.json": json.dumps(top).encode()}
    files.update({f"blobs/sha256/{k[7:]}": v for k, v in blobs.items()})
    (record,) = await load(local_stack, write_archive(files, scratch / "multi.tar"))
    assert record.id == sha256(_config_for(arch, mine_layer))
    assert record.repo_tags == ("registry.example:5000/team/app:2.0",)
    assert [b.digest async for b in local_stack.content.list()] == sorted(
        [record.id, record.layers[0].digest])  # nothing of the other platforms was stored

    index, blobs = _platform_index([({"architecture": other, "os": "linux"}, _config_for(other, other_layer),
                                     other_layer)])
    files = {"index.json": json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.index.v1+json", "digest": sha256(index), "size": len(index)}]
    }).encode(), f"blobs/sha256/{sha256(index)[7:]}": index}
    files.update({f"blobs/sha256/{k[7:]}": v for k, v in blobs.items()})
    with pytest.raises(InvalidArgument, match=f"no matching manifest for linux/{arch}"):
        await load(local_stack, write_archive(files, scratch / "foreign.tar"))


async def test_oci_blob_that_is_not_what_its_name_says(local_stack: Stack, scratch: Path) -> None:
    image = small_image()
    path = oci_layout(image.config_json(), [gzip_bytes(image.layers[0])], scratch / "x.tar")
    members = read_tar(path.read_bytes())
    layer_name = f"blobs/sha256/{sha256(gzip_bytes(image.layers[0]))[7:]}"
    members[layer_name] = gzip_bytes(tar_bytes([f("swapped")]))
    with pytest.raises(DigestMismatch):
        await load(local_stack, write_archive(members, scratch / "swapped.tar"))
    await nothing_left(local_stack)


async def test_bounds_and_malformed_configs(local_stack: Stack, scratch: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    image = small_image(tags=("ok:1",))
    path = busybox.write_docker_save([image], scratch / "ok.tar")
    monkeypatch.setattr(images_module, "MAX_JSON", 100)
    with pytest.raises(InvalidArgument, match="more than 100"):
        await load(local_stack, path)
    monkeypatch.undo()

    config = json.loads(image.config_json())
    config["os"] = "windows"
    files = {"c.json": json.dumps(config).encode(), "l.tar": image.layers[0]}
    with pytest.raises(InvalidArgument, match="cannot load windows image"):
        await load(local_stack, docker_save_blobs([{"Config": "c.json", "Layers": ["l.tar"]}], files,
                                                  scratch / "win.tar"))
    files = {"c.json": image.config_json(), "l.tar": image.layers[0]}
    with pytest.raises(InvalidArgument, match="layers length mismatch"):
        await load(local_stack, docker_save_blobs([{"Config": "c.json", "Layers": ["l.tar", "l.tar"]}], files,
                                                  scratch / "count.tar"))
    with pytest.raises(InvalidArgument, match="invalid tag"):
        await load(local_stack, docker_save_blobs([{"Config": "c.json", "RepoTags": ["UPPER case"],
                                                    "Layers": ["l.tar"]}], files, scratch / "tag.tar"))
    with pytest.raises(InvalidArgument, match="not valid JSON"):
        await load(local_stack, docker_save_blobs([{"Config": "l.tar", "Layers": []}], files, scratch / "j.tar"))
    await nothing_left(local_stack)


async def test_concurrent_imports_share_chains(local_stack: Stack, scratch: Path) -> None:
    image = busybox.busybox_image()
    path = busybox.write_docker_save([image], scratch / "bb.tar")
    results = await asyncio.gather(*(load(local_stack, path) for _ in range(4)))
    assert all(r == results[0] for r in results)
    assert await keys_of(local_stack) == {image.chain_ids()[0]}


async def test_failed_import_spares_what_a_concurrent_one_uses(local_stack: Stack, scratch: Path) -> None:
    base = tar_bytes([d("usr"), f("usr/lib", os.urandom(500_000))])
    good = small_image(base, tar_bytes([f("good")]), tags=("good:1",))
    evil = small_image(base, tar_bytes([f("../../evil")]), tags=("evil:1",))
    good_path = busybox.write_docker_save([good], scratch / "good.tar")
    evil_path = busybox.write_docker_save([evil], scratch / "evil.tar")
    outcomes = await asyncio.gather(load(local_stack, good_path), load(local_stack, evil_path),
                                    return_exceptions=True)
    assert isinstance(outcomes[1], UnsafeArchive)
    assert not isinstance(outcomes[0], BaseException)
    (record,) = outcomes[0]
    for chain in good.chain_ids():
        assert (await local_stack.snapshotter.stat(chain)).kind == Kind.COMMITTED
    stored = {b.digest async for b in local_stack.content.list()}
    assert stored == {good.id, *good.diff_ids}
    assert not any(k.startswith("extract-") for k in await keys_of(local_stack))
    # And the image is whole: it exports.
    assert await collect(local_stack.images.export_archive(
        [ExportImage(id=record.id, repo_tags=record.repo_tags, layers=record.layers)]))


async def test_cancelled_import_leaves_nothing(local_stack: Stack, scratch: Path) -> None:
    image = busybox.busybox_image()
    data = (await asyncio.to_thread(busybox.write_docker_save([image], scratch / "c.tar").read_bytes))
    started = asyncio.Event()

    async def slow() -> object:
        for start in range(0, len(data), 64 * 1024):
            yield data[start:start + 64 * 1024]
            started.set()
            await asyncio.sleep(0.01)

    task = asyncio.create_task(local_stack.images.import_archive(slow()))  # type: ignore[arg-type]
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await nothing_left(local_stack)


async def test_zero_layer_image(local_stack: Stack, scratch: Path) -> None:
    image = busybox.Image(layers=[], tags=["scratch:1"])
    path = docker_save_blobs([{"Config": "c.json", "RepoTags": ["scratch:1"], "Layers": []}],
                             {"c.json": image.config_json()}, scratch / "s.tar")
    (record,) = await load(local_stack, path)
    assert (record.id, record.chain_id, record.layers, record.size) == (image.id, "", (), 0)
    exported = await collect(local_stack.images.export_archive([ExportImage(record.id, ("scratch:1",), ())]))
    assert json.loads(read_tar(exported)["manifest.json"])[0]["Layers"] == []


async def test_export_checks_before_writing(local_stack: Stack, scratch: Path) -> None:
    image = small_image(tags=("a:1",))
    (record,) = await load(local_stack, busybox.write_docker_save([image], scratch / "a.tar"))
    with pytest.raises(InvalidArgument, match="do not match"):
        await collect(local_stack.images.export_archive([ExportImage(record.id, ("a:1",), ())]))
    with pytest.raises(InvalidArgument, match="invalid tag"):
        await collect(local_stack.images.export_archive([ExportImage(record.id, ("a",), record.layers)]))
    both = await collect(local_stack.images.export_archive(
        [ExportImage(record.id, ("a:1", "docker.io/library/a:2", "example.com/x/y:3"), record.layers)]))
    assert json.loads(read_tar(both)["manifest.json"])[0]["RepoTags"] == ["a:1", "a:2", "example.com/x/y:3"]


def test_names_and_chains() -> None:
    assert familiar_name("docker.io/library/busybox") == "busybox"
    assert familiar_name("docker.io/team/app") == "team/app"
    assert familiar_name("ghcr.io/x/y") == "ghcr.io/x/y"
    assert normalized_name("busybox") == "docker.io/library/busybox"
    assert normalized_name("team/app") == "docker.io/team/app"
    assert normalized_name("localhost:5000/app") == "localhost:5000/app"
    image = busybox.Image(layers=[b"1", b"2", b"3"])
    assert chain_ids(image.diff_ids) == image.chain_ids()
