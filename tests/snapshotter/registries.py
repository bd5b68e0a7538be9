"""Registries for the pull/push tests: publishing images into a real ``docker-registry`` with
``RegistryClient``, a counting reverse proxy in front of one, and a lying registry (a small
aiohttp app serving images from memory, with faults switched on per test)."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import re
import ssl
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from registry_client.auth import Credentials
from registry_client.client import MEDIA_DOCKER_MANIFEST, MEDIA_OCI_INDEX, MEDIA_OCI_MANIFEST, RegistryClient
from registry_client.reference import parse
from snapshotter.api import Progress, PullResult, PushResult
from tests.support import busybox
from tests.support.registry import Registry

MT_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MT_DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
MT_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MT_OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def gz(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=1, mtime=0)


@dataclass
class Built:
    """An image as a registry holds it: manifest, config and layer blobs."""

    image: busybox.Image
    config: bytes
    blobs: list[bytes]  # compressed layers, in order
    manifest: bytes
    media_type: str

    @property
    def digest(self) -> str:
        return sha(self.manifest)


def build(image: busybox.Image, *, oci: bool = False, config: bytes | None = None,
          layer_types: Sequence[str] | None = None, blobs: Sequence[bytes] | None = None,
          padding: int = 0) -> Built:
    """A manifest for ``image`` (gzipped layers), Docker schema2 unless ``oci``; the overrides
    make lying manifests (wrong config bytes, odd layer types, a manifest bloated by
    ``padding`` bytes of annotation)."""
    config = config if config is not None else image.config_json()
    blobs = list(blobs) if blobs is not None else [gz(layer) for layer in image.layers]
    default_type = MT_OCI_LAYER_GZIP if oci else MT_DOCKER_LAYER_GZIP
    types = list(layer_types) if layer_types is not None else [default_type] * len(blobs)
    doc: dict[str, Any] = {
        "schemaVersion": 2, "mediaType": MEDIA_OCI_MANIFEST if oci else MEDIA_DOCKER_MANIFEST,
        "config": {"mediaType": MT_OCI_CONFIG if oci else MT_DOCKER_CONFIG, "size": len(config),
                   "digest": sha(config)},
        "layers": [{"mediaType": t, "size": len(b), "digest": sha(b)} for t, b in zip(types, blobs, strict=True)]}
    if padding:
        doc["annotations"] = {"padding": "x" * padding}
    return Built(image=image, config=config, blobs=blobs, manifest=json.dumps(doc).encode(),
                 media_type=doc["mediaType"])


def index_of(entries: Sequence[tuple[Built, str, str]]) -> bytes:
    """An OCI index of (image, os, architecture) entries, plus an attestation to be skipped."""
    manifests: list[dict[str, Any]] = [
        {"mediaType": b.media_type, "digest": b.digest, "size": len(b.manifest),
         "platform": {"os": os_name, "architecture": arch}} for b, os_name, arch in entries]
    first = entries[0][0]
    manifests.insert(0, {"mediaType": first.media_type, "digest": first.digest, "size": len(first.manifest),
                         "platform": {"os": "unknown", "architecture": "unknown"},
                         "annotations": {"vnd.docker.reference.type": "attestation-manifest"}})
    return json.dumps({"schemaVersion": 2, "mediaType": MEDIA_OCI_INDEX, "manifests": manifests}).encode()


def client_session(reg: Registry | None = None) -> aiohttp.ClientSession:
    ctx = ssl.create_default_context()
    if reg is not None and reg.tls is not None:
        ctx.load_verify_locations(cafile=str(reg.tls.ca))
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx), auto_decompress=False)


async def _chunks(data: bytes, size: int = 1 << 20) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


async def publish(host: str, repo: str, tag: str, built: Built, creds: Credentials | None = None, *,
                  registry: Registry | None = None) -> str:
    """Upload ``built`` to ``host/repo:tag`` with RegistryClient; returns the manifest digest."""
    ref = parse(f"{host}/{repo}:{tag}")
    creds = creds or Credentials()
    async with client_session(registry) as session:
        client = RegistryClient(session, insecure=lambda h: registry is None or registry.tls is None)
        for blob in (built.config, *built.blobs):
            if await client.blob_size(ref, sha(blob), creds) is None:
                await client.upload_blob(ref, sha(blob), len(blob), _chunks(blob), creds)
        return await client.put_manifest(ref, tag, built.manifest, built.media_type, creds)


async def publish_index(host: str, repo: str, tag: str, entries: Sequence[tuple[Built, str, str]]) -> str:
    for i, (built, _, _) in enumerate(entries):
        await publish(host, repo, f"{tag}-{i}", built)
    body = index_of(entries)
    async with client_session() as session:
        client = RegistryClient(session, insecure=lambda h: True)
        return await client.put_manifest(parse(f"{host}/{repo}:{tag}"), tag, body, MEDIA_OCI_INDEX)


async def fetch_manifest(host: str, repo: str, reference: str) -> tuple[str, dict[str, Any]]:
    async with client_session() as session:
        m = await RegistryClient(session, insecure=lambda h: True).fetch_manifest(parse(f"{host}/{repo}"), reference)
        return m.media_type, m.doc


async def drain(events: AsyncIterator[Progress | PullResult]) -> tuple[list[Progress], PullResult]:
    progress: list[Progress] = []
    result: PullResult | None = None
    async for event in events:
        assert result is None, "nothing may follow the result"
        if isinstance(event, PullResult):
            result = event
        else:
            progress.append(event)
    assert result is not None
    return progress, result


async def drain_push(events: AsyncIterator[Progress | PushResult]) -> tuple[list[Progress], PushResult]:
    progress: list[Progress] = []
    result: PushResult | None = None
    async for event in events:
        assert result is None, "nothing may follow the result"
        if isinstance(event, PushResult):
            result = event
        else:
            progress.append(event)
    assert result is not None
    return progress, result


def statuses(progress: Sequence[Progress], id: str) -> list[str]:
    """The distinct statuses of one id, in order (repeated byte counts collapsed)."""
    out: list[str] = []
    for p in progress:
        if p.id == id and (not out or out[-1] != p.status):
            out.append(p.status)
    return out


async def _serve(app: web.Application, tls: ssl.SSLContext | None = None) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, int(port)


_PATH = re.compile(r"^/v2/(?P<name>.+)/(?P<kind>manifests|blobs)/(?P<ref>[^/]+)$")


class CountingProxy:
    """A reverse proxy in front of a registry that records every request (method, path) and can
    slow blob bodies down (to make downloads overlap)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.requests: list[tuple[str, str]] = []
        self.blob_delay = 0.0
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.host = ""

    async def start(self) -> CountingProxy:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._session = aiohttp.ClientSession(auto_decompress=False)
        self._runner, port = await _serve(app)
        self.host = f"127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def count(self, method: str, kind: str, digest: str = "") -> int:
        return sum(1 for m, p in self.requests
                   if m == method and f"/{kind}/" in p and (not digest or p.endswith(digest)))

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        self.requests.append((request.method, request.path_qs))
        skip = {"host", "content-length", "transfer-encoding", "accept-encoding"}
        headers = {k: v for k, v in request.headers.items() if k.lower() not in skip}
        body = await request.read()
        async with self._session.request(request.method, f"http://{self.upstream}{request.path_qs}",
                                         headers=headers, data=body or None, allow_redirects=False) as up:
            drop = {"transfer-encoding", "content-encoding", "connection"}
            resp = web.StreamResponse(status=up.status,
                                      headers={k: v for k, v in up.headers.items() if k.lower() not in drop})
            await resp.prepare(request)
            if request.method != "HEAD":
                async for chunk in up.content.iter_chunked(256 * 1024):
                    if self.blob_delay and "/blobs/" in request.path:
                        await asyncio.sleep(self.blob_delay)
                    await resp.write(chunk)
            await resp.write_eof()
            return resp


@dataclass
class FakeRegistry:
    """A registry that serves what it is given and lies as told.

    ``blob_bytes``: digest → bytes served instead (a lying registry); ``truncate``: digest →
    bytes sent (then the body ends, with the short length announced); ``cut_once``: digests
    whose first download breaks off half-way (the connection dies), later ones honour Range;
    ``statuses``: answers given to the next requests before any real one (429 storms);
    ``challenge``: a ``WWW-Authenticate`` every request without ``Authorization`` gets."""

    manifests: dict[tuple[str, str], tuple[str, bytes]] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)
    blob_bytes: dict[str, bytes] = field(default_factory=dict)
    truncate: dict[str, int] = field(default_factory=dict)
    cut_once: set[str] = field(default_factory=set)
    statuses: list[int] = field(default_factory=list)
    challenge: str = ""
    blob_delay: float = 0.0  # seconds between 64 KiB pieces of a blob body
    requests: list[tuple[str, str, str]] = field(default_factory=list)  # method, path, Range
    host: str = ""
    _runner: web.AppRunner | None = None

    async def start(self, tls: ssl.SSLContext | None = None) -> FakeRegistry:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner, port = await _serve(app, tls)
        self.host = f"127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def add(self, repo: str, tag: str, built: Built) -> None:
        self.manifests[(repo, tag)] = (built.media_type, built.manifest)
        self.manifests[(repo, built.digest)] = (built.media_type, built.manifest)
        for blob in (built.config, *built.blobs):
            self.blobs[sha(blob)] = blob

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.method, request.path, request.headers.get("Range", "")))
        if self.statuses:
            status = self.statuses.pop(0)
            return web.Response(status=status, headers={"Retry-After": "0"},
                                text=json.dumps({"errors": [{"code": "TOOMANYREQUESTS",
                                                             "message": "slow down"}]}))
        if self.challenge and "Authorization" not in request.headers:
            return web.Response(status=401, headers={"WWW-Authenticate": self.challenge})
        if request.path == "/v2/":
            return web.json_response({})
        m = _PATH.match(request.path)
        if m is None:
            return web.Response(status=404)
        if m["kind"] == "manifests":
            found = self.manifests.get((m["name"], m["ref"]))
            if found is None:
                return web.json_response({"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]},
                                         status=404)
            media_type, body = found
            headers = {"Content-Type": media_type, "Docker-Content-Digest": sha(body)}
            if request.method == "HEAD":
                return web.Response(headers={**headers, "Content-Length": str(len(body))})
            return web.Response(body=body, headers=headers)
        digest = m["ref"]
        if digest not in self.blobs:
            return web.json_response({"errors": [{"code": "BLOB_UNKNOWN", "message": "blob unknown"}]}, status=404)
        data = self.blob_bytes.get(digest, self.blobs[digest])
        if digest in self.truncate:
            data = data[:self.truncate[digest]]
        start = 0
        ranged = re.fullmatch(r"bytes=(\d+)-", request.headers.get("Range", ""))
        if ranged:
            start = int(ranged[1])
            if start >= len(data):
                return web.Response(status=416)
        body = data[start:]
        resp = web.StreamResponse(status=206 if ranged else 200, headers={"Docker-Content-Digest": digest})
        resp.content_length = len(body)
        await resp.prepare(request)
        if digest in self.cut_once and not ranged:
            self.cut_once.discard(digest)
            await resp.write(body[:len(body) // 2])
            assert request.transport is not None
            request.transport.close()  # the connection dies mid-body
            return resp
        if self.blob_delay:
            for i in range(0, len(body), 65536):
                await asyncio.sleep(self.blob_delay)
                await resp.write(body[i:i + 65536])
        else:
            await resp.write(body)
        await resp.write_eof()
        return resp
