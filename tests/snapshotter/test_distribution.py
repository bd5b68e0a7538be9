"""Pull and push beyond the contract, against the local implementation: client certificates from
certs.d, the download limit, walking away from a pull (alone, and while another pull shares its
download), mounts a registry refuses, mounts under token auth, and what the content store keeps."""

from __future__ import annotations

import asyncio
import os
import shutil
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from protos.errors import Unavailable
from snapshotter.api import ExportImage, Progress, PullResult
from snapshotter.distribution import SOURCE_LABEL, RegistryOptions
from snapshotter.images import LocalImages
from snapshotter.unpack import aclose
from tests.snapshotter.conftest import Stack
from tests.snapshotter.distribution_contract import ANON, CREDS, USER, everything, small
from tests.snapshotter.layers import chunks_of, d, f, tar_bytes
from tests.snapshotter.registries import (
    CountingProxy,
    FakeRegistry,
    build,
    drain,
    drain_push,
    publish,
    sha,
    statuses,
)
from tests.support import busybox
from tests.support.registry import Registry
from tests.support.tls import TLSFiles, make_tls


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSFiles]:
    yield make_tls(tmp_path_factory.mktemp("mtls"))


@pytest.fixture
async def fake(local_stack: Stack) -> AsyncIterator[FakeRegistry]:
    reg = await FakeRegistry().start()
    local_stack.insecure.add(reg.host)
    yield reg
    await reg.stop()


async def test_client_certificate_from_certs_dir(local_stack: Stack, tls_files: TLSFiles) -> None:
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(tls_files.server_cert, tls_files.server_key)
    server.load_verify_locations(cafile=str(tls_files.ca))
    server.verify_mode = ssl.CERT_REQUIRED  # a registry that wants client certificates
    reg = await FakeRegistry().start(tls=server)
    try:
        image = small("mtls")
        reg.add("berth/mtls", "v1", build(image))
        host_dir = local_stack.certs_dir / reg.host
        host_dir.mkdir(parents=True)
        shutil.copy(tls_files.ca, host_dir / "ca.crt")
        with pytest.raises(Unavailable):  # the server hangs up on a client without a certificate
            await drain(local_stack.images.pull(f"{reg.host}/berth/mtls:v1", ANON))
        shutil.copy(tls_files.client_cert, host_dir / "client.cert")
        shutil.copy(tls_files.client_key, host_dir / "client.key")
        _, result = await drain(local_stack.images.pull(f"{reg.host}/berth/mtls:v1", ANON))
        assert result.image.id == image.id
    finally:
        await reg.stop()


async def test_downloads_beyond_the_limit_wait(local_stack: Stack, fake: FakeRegistry) -> None:
    images = LocalImages(snapshotter=local_stack.snapshotter, content=local_stack.content,  # type: ignore[arg-type]
                         spool_dir=local_stack.root / "tmp2",
                         registry=RegistryOptions(insecure=local_stack.insecure.__contains__,
                                                  max_concurrent_downloads=1))
    try:
        image = small("limit", tar_bytes([f("third", os.urandom(100_000))]))
        built = build(image)
        fake.add("berth/limit", "v1", built)
        fake.blob_delay = 0.01
        progress, result = await drain(images.pull(f"{fake.host}/berth/limit:v1", ANON))
        assert result.image.id == image.id
        waited = [sha(b)[7:19] for b in built.blobs if "Waiting" in statuses(progress, sha(b)[7:19])]
        assert len(waited) == 2  # one downloads, the other two wait their turn
        for blob in built.blobs:
            seen = statuses(progress, sha(blob)[7:19])
            assert seen[0] == "Pulling fs layer" and seen[-1] == "Pull complete"
    finally:
        await images.aclose()


async def _until_downloading(events: AsyncIterator[Progress | PullResult], pid: str) -> None:
    async for event in events:
        if isinstance(event, Progress) and event.id == pid and event.status == "Downloading" and event.current:
            return
    raise AssertionError("the pull ended before downloading")


async def test_a_shared_download_outlives_the_pull_that_started_it(local_stack: Stack,
                                                                  fake: FakeRegistry) -> None:
    shared = tar_bytes([d("base"), f("base/blob", os.urandom(1_500_000))])
    one = busybox.Image(layers=[shared, tar_bytes([f("one")])])
    two = busybox.Image(layers=[shared, tar_bytes([f("two")])])
    b1, b2 = build(one), build(two)
    fake.add("berth/one", "v1", b1)
    fake.add("berth/two", "v1", b2)
    fake.blob_delay = 0.02
    shared_digest = sha(b1.blobs[0])
    first = local_stack.images.pull(f"{fake.host}/berth/one:v1", ANON)
    await _until_downloading(first, shared_digest[7:19])
    second = asyncio.ensure_future(drain(local_stack.images.pull(f"{fake.host}/berth/two:v1", ANON)))
    while not any(p.endswith(sha(b2.config)) for _, p, _ in fake.requests):
        await asyncio.sleep(0.01)  # the second pull has its config: it is about to join the download
    await asyncio.sleep(0.05)
    await aclose(first)
    progress, result = await second
    assert result.image.id == two.id
    assert "Downloading" in statuses(progress, shared_digest[7:19])  # it joined, it did not start over
    assert [p for m, p, _ in fake.requests if m == "GET" and p.endswith(shared_digest)] == \
        [f"/v2/berth/one/blobs/{shared_digest}"]
    blobs, snapshots, ingest = await everything(local_stack)
    assert blobs == {sha(b2.config), *(sha(b) for b in b2.blobs)}  # nothing of the abandoned pull's own
    assert snapshots == set(two.chain_ids()) and ingest == []


async def test_a_refused_mount_falls_back_to_upload(local_stack: Stack, plain_registry: Registry,
                                                   scratch: Path) -> None:
    local_stack.insecure.add(plain_registry.host)
    proxy = await CountingProxy(plain_registry.host).start()
    local_stack.insecure.add(proxy.host)
    try:
        image = small("refused")
        data = await asyncio.to_thread(busybox.write_docker_save([image], scratch / "r.tar").read_bytes)
        (loaded,) = await local_stack.images.import_archive(chunks_of(data))
        for layer in loaded.layers:  # this host believes another repository holds the blobs; it does not
            await local_stack.content.update_labels(  # type: ignore[attr-defined]
                layer.digest, {SOURCE_LABEL + proxy.host: "berth/elsewhere"})
        progress, _ = await drain_push(local_stack.images.push(
            ExportImage(id=loaded.id, repo_tags=(), layers=loaded.layers), f"{proxy.host}/berth/refused:v1", ANON))
        for layer in loaded.layers:
            assert statuses(progress, layer.diff_id[7:19]) == ["Preparing", "Pushing", "Pushed"]
        mounts = [p for m, p in proxy.requests if m == "POST" and "/blobs/uploads/" in p]
        assert len(mounts) == 3  # a mount attempt per layer, then the config's plain session
        labels = await local_stack.content.labels(loaded.layers[0].digest)  # type: ignore[attr-defined]
        assert labels[SOURCE_LABEL + proxy.host] == "berth/elsewhere,berth/refused"
    finally:
        await proxy.stop()


async def test_mount_under_token_auth(local_stack: Stack, token_registry: Registry) -> None:
    local_stack.insecure.add(token_registry.host)
    image = small("token-mount")
    await publish(token_registry.host, "berth/tok-src", "v1", build(image), CREDS)
    _, pulled = await drain(local_stack.images.pull(f"{token_registry.host}/berth/tok-src:v1", USER))
    export = ExportImage(id=pulled.image.id, repo_tags=(), layers=pulled.image.layers)
    progress, _ = await drain_push(local_stack.images.push(export, f"{token_registry.host}/berth/tok-dst:v1", USER))
    # One token must carry pull on the source and push on the target, or the registry uploads.
    for layer in pulled.image.layers:
        assert statuses(progress, layer.diff_id[7:19]) == ["Preparing", "Mounted from berth/tok-src"]
