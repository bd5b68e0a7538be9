"""docker pull / push / login / import / image prune / system df against Debian's docker-registry
(plain HTTP, htpasswd behind TLS, and token auth), through the real docker CLI and docker-py."""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import docker as docker_sdk
import pytest

from tests.acceptance.conftest import Docker
from tests.support import busybox
from tests.support.daemon import Berthd
from tests.support.registry import Registry

pytestmark = pytest.mark.acceptance


@pytest.fixture(scope="module")
def plain(session_root: Path) -> Iterator[Registry]:
    reg = Registry(session_root / "registry-plain", "plain").start()
    yield reg
    reg.stop()


@pytest.fixture(scope="module")
def basic(session_root: Path, berthd: Berthd) -> Iterator[Registry]:
    reg = Registry(session_root / "registry-basic", "basic").start()
    assert reg.tls is not None
    (berthd.certs_dir / reg.host).mkdir(parents=True, exist_ok=True)
    shutil.copy(reg.tls.ca, berthd.certs_dir / reg.host / "ca.crt")
    yield reg
    reg.stop()


@pytest.fixture(scope="module")
def token(session_root: Path) -> Iterator[Registry]:
    reg = Registry(session_root / "registry-token", "token").start()
    yield reg
    reg.stop()


def _image_id(dkr: Docker, ref: str) -> str:
    out = dkr("image", "inspect", "--format", "{{.Id}}", ref)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_push_pull_round_trip(dkr: Docker, loaded: str, plain: Registry) -> None:
    ref = f"{plain.host}/berth/bb:1"
    original = _image_id(dkr, "busybox")
    assert dkr("tag", "busybox", ref).returncode == 0
    push = dkr("push", ref)
    assert push.returncode == 0, push.stderr
    assert f"The push refers to repository [{plain.host}/berth/bb]" in push.stdout
    digest_line = [line for line in push.stdout.splitlines() if line.startswith("1: digest: sha256:")]
    assert digest_line, push.stdout
    digest = digest_line[0].split()[2]
    again = dkr("push", ref)
    assert "Layer already exists" in again.stdout
    assert dkr("rmi", ref).returncode == 0
    pull = dkr("pull", ref)
    assert pull.returncode == 0, pull.stderr
    assert f"Digest: {digest}" in pull.stdout
    assert f"Status: Downloaded newer image for {ref}" in pull.stdout
    assert _image_id(dkr, ref) == original
    assert f"Status: Image is up to date for {ref}" in dkr("pull", ref).stdout
    by_digest = dkr("pull", f"{plain.host}/berth/bb@{digest}")
    assert by_digest.returncode == 0, by_digest.stderr
    digests = dkr("images", "--digests", "--format", "{{.Repository}} {{.Digest}}", f"{plain.host}/berth/bb").stdout
    assert f"{plain.host}/berth/bb {digest}" in digests
    dkr("rmi", ref, f"{plain.host}/berth/bb@{digest}")


def test_run_pulls_a_missing_image(dkr: Docker, loaded: str, plain: Registry, tmp_path: Path) -> None:
    extra = busybox.layer_tar([busybox.Entry("etc/pulled", data=b"from the registry\n")])
    image = busybox.busybox_image(tags=(f"{plain.host}/berth/run:1",), extra_layers=[extra])
    assert dkr("load", "-i", str(busybox.write_docker_save([image], tmp_path / "i.tar"))).returncode == 0
    assert dkr("push", f"{plain.host}/berth/run:1").returncode == 0
    assert dkr("rmi", f"{plain.host}/berth/run:1").returncode == 0
    out = dkr("run", "--rm", f"{plain.host}/berth/run:1", "cat", "/etc/pulled")
    assert out.returncode == 0, out.stderr
    assert f"Unable to find image '{plain.host}/berth/run:1' locally" in out.stderr
    assert out.stdout == "from the registry\n"
    removed = dkr("rmi", f"{plain.host}/berth/run:1")
    # the last tag of the repository takes its digest reference along, and the image goes (moby)
    assert f"Untagged: {plain.host}/berth/run@sha256:" in removed.stdout
    assert f"Deleted: {image.id}" in removed.stdout
    assert dkr("image", "inspect", image.id).returncode == 1


def test_pull_errors(dkr: Docker, plain: Registry) -> None:
    missing = dkr("pull", f"{plain.host}/berth/nothing:here")
    assert missing.returncode == 1
    assert f"manifest for {plain.host}/berth/nothing:here not found: manifest unknown" in missing.stderr
    bad = dkr("pull", f"{plain.host}/berth/Upper:1")  # upper case is only legal in the registry host
    assert bad.returncode == 1 and "invalid reference format" in bad.stderr
    refused = dkr("pull", "127.0.0.1:1/berth/nothing:1")
    assert refused.returncode == 1 and "connect: connection refused" in refused.stderr


def test_login_basic_over_tls(dkr: Docker, loaded: str, basic: Registry) -> None:
    wrong = dkr("login", "-u", "berth", "--password-stdin", basic.host, input="nope\n")
    assert wrong.returncode == 1
    ok = dkr("login", "-u", "berth", "--password-stdin", basic.host, input="s3cret\n")
    assert ok.returncode == 0, ok.stderr
    assert "Login Succeeded" in ok.stdout
    try:
        ref = f"{basic.host}/berth/private:1"
        dkr("tag", "busybox", ref)
        push = dkr("push", ref)
        assert push.returncode == 0, push.stderr
        dkr("rmi", ref)
        pull = dkr("pull", ref)
        assert pull.returncode == 0, pull.stderr
        dkr("rmi", ref)
    finally:
        dkr("logout", basic.host)


def test_pull_without_credentials_is_refused(berthd: Berthd, basic: Registry) -> None:
    # Through docker-py: after a 401 the CLI would sit at its interactive login prompt.
    client = docker_sdk.DockerClient(base_url=berthd.host)
    try:
        with pytest.raises(docker_sdk.errors.APIError) as info:
            client.images.pull(f"{basic.host}/berth/private", tag="1")
        assert info.value.status_code == 401
        assert "authentication required" in str(info.value.explanation)
    finally:
        client.close()


def test_token_auth_push_and_pull(dkr: Docker, loaded: str, token: Registry) -> None:
    ref = f"{token.host}/berth/tok:1"
    dkr("tag", "busybox", ref)
    anonymous = dkr("push", ref)
    assert anonymous.returncode == 1
    assert dkr("login", "-u", "berth", "--password-stdin", token.host, input="s3cret\n").returncode == 0
    try:
        push = dkr("push", ref)
        assert push.returncode == 0, push.stderr
        dkr("rmi", ref)
        assert dkr("pull", ref).returncode == 0
    finally:
        dkr("logout", token.host)
        dkr("rmi", ref)


def test_import_with_change(dkr: Docker, loaded: str, tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs.tar"
    rootfs.write_bytes(busybox.layer_tar([*busybox.busybox_entries(),
                                          busybox.Entry("hello.txt", data=b"imported\n")]))
    out = dkr("import", "--change", 'CMD ["cat", "/hello.txt"]', "--change", "ENV PATH=/bin:/usr/bin", "-m",
              "from a tarball", str(rootfs), "berth-test/imported:1")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith("sha256:")
    try:
        assert dkr("run", "--rm", "berth-test/imported:1").stdout == "imported\n"
        doc = json.loads(dkr("image", "inspect", "berth-test/imported:1").stdout)[0]
        assert doc["Comment"] == "from a tarball" and len(doc["RootFS"]["Layers"]) == 1
    finally:
        dkr("rmi", "berth-test/imported:1")


def test_prune_and_df(dkr: Docker, loaded: str, tmp_path: Path) -> None:
    extra = busybox.layer_tar([busybox.Entry("prune-me", data=b"x" * 4096)])
    image = busybox.busybox_image(tags=("berth-test/dangling:1",), extra_layers=[extra])
    assert dkr("load", "-i", str(busybox.write_docker_save([image], tmp_path / "d.tar"))).returncode == 0
    assert dkr("tag", "busybox", "berth-test/dangling:1").returncode == 0  # moves the tag: image dangles
    assert image.id in dkr("images", "-q", "--no-trunc", "--filter", "dangling=true").stdout
    df = dkr("system", "df")
    assert df.returncode == 0, df.stderr
    assert df.stdout.splitlines()[0].split()[:2] == ["TYPE", "TOTAL"]
    pruned = dkr("image", "prune", "-f")
    assert pruned.returncode == 0, pruned.stderr
    assert f"deleted: {image.id}" in pruned.stdout
    assert image.id not in dkr("images", "-aq", "--no-trunc").stdout
    dkr("rmi", "berth-test/dangling:1")


def test_docker_py_pull(berthd: Berthd, loaded: str, plain: Registry, dkr: Docker) -> None:
    dkr("tag", "busybox", f"{plain.host}/berth/sdk:1")
    assert dkr("push", f"{plain.host}/berth/sdk:1").returncode == 0
    dkr("rmi", f"{plain.host}/berth/sdk:1")
    client = docker_sdk.DockerClient(base_url=berthd.host)
    try:
        image = client.images.pull(f"{plain.host}/berth/sdk", tag="1")
        assert f"{plain.host}/berth/sdk:1" in image.tags
        events = list(client.api.pull(f"{plain.host}/berth/sdk", tag="1", stream=True, decode=True))
        assert events[0]["status"] == "Pulling from berth/sdk" and "Image is up to date" in events[-1]["status"]
    finally:
        client.images.remove(f"{plain.host}/berth/sdk:1")
        client.close()


def test_push_after_pull_that_reused_a_loaded_layer(dkr: Docker, loaded: str, plain: Registry) -> None:
    """The pull skips the (gzip) layer blob because the loaded busybox has the same chain; the
    push must then send the plain tar it has under the diff id."""
    import asyncio
    import gzip
    import hashlib

    import aiohttp

    from registry_client.auth import Credentials
    from registry_client.client import MEDIA_DOCKER_MANIFEST, RegistryClient
    from registry_client.reference import parse

    image = busybox.busybox_image()

    def sha(data: bytes) -> str:
        return "sha256:" + hashlib.sha256(data).hexdigest()

    async def push_gzipped() -> None:
        ref = parse(f"{plain.host}/berth/gz:1")
        layer = gzip.compress(image.layers[0], mtime=0)
        config = image.config_json()
        async with aiohttp.ClientSession() as session:
            client = RegistryClient(session, insecure=lambda host: True)

            async def chunks(data: bytes) -> AsyncIterator[bytes]:
                yield data

            for blob in (layer, config):
                await client.upload_blob(ref, sha(blob), len(blob), chunks(blob), Credentials())
            manifest = json.dumps({
                "schemaVersion": 2, "mediaType": MEDIA_DOCKER_MANIFEST,
                "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": sha(config),
                           "size": len(config)},
                "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": sha(layer),
                            "size": len(layer)}]}).encode()
            await client.put_manifest(ref, "1", manifest, MEDIA_DOCKER_MANIFEST, Credentials())

    asyncio.run(push_gzipped())
    pulled = dkr("pull", f"{plain.host}/berth/gz:1")
    assert pulled.returncode == 0, pulled.stderr
    assert "Already exists" in pulled.stdout
    assert dkr("tag", f"{plain.host}/berth/gz:1", f"{plain.host}/berth/gz-copy:1").returncode == 0
    try:
        push = dkr("push", f"{plain.host}/berth/gz-copy:1")
        assert push.returncode == 0, push.stderr
        assert "1: digest: sha256:" in push.stdout
    finally:
        dkr("rmi", f"{plain.host}/berth/gz-copy:1", f"{plain.host}/berth/gz:1")
