"""The distribution client against Debian's docker-registry: plain, Basic+TLS, and token auth."""

from __future__ import annotations

import gzip
import hashlib
import json
import ssl
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest

from protos.errors import DigestMismatch, InvalidArgument, NotFound, Unauthenticated
from registry_client.auth import Credentials, decode_registry_auth, parse_challenges
from registry_client.client import (
    MEDIA_DOCKER_MANIFEST,
    MEDIA_OCI_INDEX,
    RegistryClient,
    select_platform,
)
from registry_client.reference import parse
from tests.support import busybox
from tests.support.registry import Registry


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    reg = Registry(tmp_path_factory.mktemp("plain"), "plain").start()
    yield reg
    reg.stop()


@pytest.fixture(scope="module")
def basic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    reg = Registry(tmp_path_factory.mktemp("basic"), "basic").start()
    yield reg
    reg.stop()


@pytest.fixture(scope="module")
def token(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    reg = Registry(tmp_path_factory.mktemp("token"), "token").start()
    yield reg
    reg.stop()


def _client(session: aiohttp.ClientSession) -> RegistryClient:
    return RegistryClient(session, insecure=lambda host: host.startswith("127.0.0.1"))


def _session(reg: Registry) -> aiohttp.ClientSession:
    ctx = ssl.create_default_context()
    if reg.tls is not None:
        ctx.load_verify_locations(cafile=str(reg.tls.ca))
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx))


async def _chunks(data: bytes, size: int = 65536) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


async def _push_image(client: RegistryClient, ref_s: str, creds: Credentials, *,
                      chunk_size: int = 0) -> tuple[str, bytes, bytes]:
    ref = parse(ref_s)
    image = busybox.busybox_image()
    layer = gzip.compress(image.layers[0], mtime=0)
    config = image.config_json()
    for blob in (layer, config):
        if await client.blob_size(ref, _sha(blob), creds) is None:
            await client.upload_blob(ref, _sha(blob), len(blob), _chunks(blob), creds, chunk_size=chunk_size)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": MEDIA_DOCKER_MANIFEST,
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": _sha(config),
                   "size": len(config)},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": _sha(layer),
                    "size": len(layer)}]}).encode()
    digest = await client.put_manifest(ref, ref.tag or "latest", manifest, MEDIA_DOCKER_MANIFEST, creds)
    return digest, manifest, layer


async def _round_trip(reg: Registry, creds: Credentials, repo: str, chunk_size: int = 0) -> None:
    async with _session(reg) as session:
        client = _client(session)
        digest, manifest, layer = await _push_image(client, f"{reg.host}/{repo}:v1", creds, chunk_size=chunk_size)
        assert digest == _sha(manifest)
        ref = parse(f"{reg.host}/{repo}:v1")
        got = await client.fetch_manifest(ref, "v1", creds)
        assert got.digest == digest and got.media_type == MEDIA_DOCKER_MANIFEST
        by_digest = await client.fetch_manifest(ref, digest, creds)
        assert by_digest.body == manifest
        data = b"".join([c async for c in client.fetch_blob(ref, _sha(layer), creds)])
        assert data == layer
        # resume from an offset: only the rest arrives
        tail = b"".join([c async for c in client.fetch_blob(ref, _sha(layer), creds, offset=1000)])
        assert tail == layer[1000:]


async def test_plain_registry_round_trip(plain: Registry) -> None:
    await _round_trip(plain, Credentials(), "berth/plain")


async def test_chunked_upload(plain: Registry) -> None:
    await _round_trip(plain, Credentials(), "berth/chunked", chunk_size=300_000)


async def test_basic_auth_over_tls(basic: Registry) -> None:
    await _round_trip(basic, Credentials(username="berth", password="s3cret"), "berth/basic")


async def test_basic_auth_rejects_wrong_password(basic: Registry) -> None:
    async with _session(basic) as session:
        client = _client(session)
        with pytest.raises((Unauthenticated, NotFound)):
            await client.fetch_manifest(parse(f"{basic.host}/berth/basic:v1"), "v1",
                                        Credentials(username="berth", password="wrong"))
        with pytest.raises(Unauthenticated):
            await client.ping(basic.host, Credentials(username="berth", password="wrong"))
        await client.ping(basic.host, Credentials(username="berth", password="s3cret"))


async def test_token_auth(token: Registry) -> None:
    await _round_trip(token, Credentials(username="berth", password="s3cret"), "berth/token")


async def test_token_auth_anonymous_is_denied(token: Registry) -> None:
    async with _session(token) as session:
        client = _client(session)
        await _push_image(client, f"{token.host}/berth/private:v1", Credentials(username="berth", password="s3cret"))
    async with _session(token) as session:
        with pytest.raises(NotFound, match=r"pull access denied for 127\.0\.0\.1:\d+/berth/private"):
            await _client(session).fetch_manifest(parse(f"{token.host}/berth/private:v1"), "v1", Credentials())


async def test_missing_tag_message(plain: Registry) -> None:
    async with _session(plain) as session:
        await _round_trip(plain, Credentials(), "berth/present")
        missing = r"manifest for 127\.0\.0\.1:\d+/berth/present:nope not found: manifest unknown"
        with pytest.raises(NotFound, match=missing):
            await _client(session).fetch_manifest(parse(f"{plain.host}/berth/present"), "nope")


async def test_manifest_digest_verified(plain: Registry) -> None:
    async with _session(plain) as session:
        client = _client(session)
        await _push_image(client, f"{plain.host}/berth/verify:v1", Credentials())
        ref = parse(f"{plain.host}/berth/verify:v1")
        wrong = "sha256:" + "0" * 64
        with pytest.raises((DigestMismatch, NotFound)):
            await client.fetch_manifest(ref, wrong)


def test_platform_selection_skips_attestations() -> None:
    index = {"mediaType": MEDIA_OCI_INDEX, "manifests": [
        {"digest": "sha256:" + "1" * 64, "size": 1, "platform": {"os": "unknown", "architecture": "unknown"},
         "annotations": {"vnd.docker.reference.type": "attestation-manifest"}},
        {"digest": "sha256:" + "2" * 64, "size": 2, "platform": {"os": "linux", "architecture": "arm64"}},
        {"digest": "sha256:" + "3" * 64, "size": 3, "platform": {"os": "linux", "architecture": "amd64"}},
    ]}
    assert select_platform(index, "linux", "amd64").digest == "sha256:" + "3" * 64
    with pytest.raises(NotFound, match="no matching manifest for linux/s390x"):
        select_platform(index, "linux", "s390x")


def test_challenges_and_registry_auth_header() -> None:
    ch = parse_challenges('Bearer realm="https://a/token",service="reg",scope="repository:x:pull"')
    assert ch[0].scheme == "bearer" and ch[0].params["service"] == "reg"
    import base64

    header = base64.urlsafe_b64encode(json.dumps({"username": "u", "password": "p", "serveraddress": "h"}).encode())
    creds, server = decode_registry_auth(header.decode().rstrip("="))
    assert (creds.username, creds.password, server) == ("u", "p", "h")
    assert decode_registry_auth("e30=")[0].empty
    with pytest.raises(InvalidArgument):
        decode_registry_auth("!!!not-base64")
