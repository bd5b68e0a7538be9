"""An OCI distribution v2 client over aiohttp.

What it does and why:

* Manifests are fetched with the full Accept list (Docker schema2, OCI, manifest lists, OCI
  indexes), capped at 4 MiB, and verified: by the requested digest when pulling by digest, else
  against ``Docker-Content-Digest`` when the registry sends it.
* Blobs are streamed; an interrupted download resumes with ``Range`` from where it stopped. The
  bytes are verified by whoever stores them (the content store refuses a mismatch), so a lying
  registry never gets a blob stored.
* 401 answers are turned into Basic or Bearer auth (token per scope, cached); 429 and 503 are
  retried honouring ``Retry-After``; redirects (blob storage) never carry our ``Authorization``.
* Plain HTTP is used only for registries the caller calls insecure (loopback by default, as
  dockerd does), after HTTPS failed.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog

from protos.errors import (
    BerthError,
    DigestMismatch,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from registry_client.auth import ANONYMOUS, Credentials, TokenCache, basic_header, parse_challenges
from registry_client.reference import DEFAULT_DOMAIN, Reference

log = structlog.get_logger()

MEDIA_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MEDIA_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+prettyjws"
MANIFEST_TYPES = (MEDIA_OCI_INDEX, MEDIA_DOCKER_LIST, MEDIA_OCI_MANIFEST, MEDIA_DOCKER_MANIFEST)
INDEX_TYPES = (MEDIA_OCI_INDEX, MEDIA_DOCKER_LIST)
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
DOCKER_HUB_REGISTRY = "registry-1.docker.io"
_RETRY_STATUSES = (429, 502, 503, 504)


@dataclass(frozen=True, slots=True)
class Descriptor:
    media_type: str
    digest: str
    size: int


@dataclass(frozen=True, slots=True)
class Manifest:
    media_type: str
    digest: str
    body: bytes

    @property
    def doc(self) -> dict[str, Any]:
        doc = json.loads(self.body)
        if not isinstance(doc, dict):
            raise InvalidArgument("manifest is not a JSON object")
        return doc


def registry_host(domain: str) -> str:
    return DOCKER_HUB_REGISTRY if domain == DEFAULT_DOMAIN else domain


def _sha256(data: bytes) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(data).hexdigest()


def _registry_error(body: bytes) -> tuple[str, str]:
    """(code, message) of the first error in a distribution error body."""
    try:
        doc = json.loads(body)
        first = doc["errors"][0]
        return str(first.get("code", "")), str(first.get("message", ""))
    except (ValueError, KeyError, IndexError, TypeError):
        return "", body.decode(errors="replace")[:200]


class RegistryClient:
    def __init__(self, session: aiohttp.ClientSession, *, insecure: Callable[[str], bool],
                 tokens: TokenCache | None = None, retries: int = 3) -> None:
        self._session = session
        self._insecure = insecure
        self._tokens = tokens or TokenCache()
        self._retries = retries
        self._schemes: dict[str, str] = {}
        self._basic: dict[str, str] = {}  # host → Basic header, once a registry asked for Basic
        self._auth: dict[tuple[str, str], str] = {}  # (host, scope) → last Authorization that worked

    # -- plumbing ----------------------------------------------------------------------------------
    async def _scheme(self, host: str) -> str:
        if host in self._schemes:
            return self._schemes[host]
        if not self._insecure(host):
            self._schemes[host] = "https"
            return "https"
        try:
            async with self._session.get(f"https://{host}/v2/", allow_redirects=False,
                                         timeout=aiohttp.ClientTimeout(total=5)) as resp:
                await resp.read()
            self._schemes[host] = "https"
        except (aiohttp.ClientError, TimeoutError, OSError):
            self._schemes[host] = "http"
        return self._schemes[host]

    async def _url(self, host: str, path: str) -> str:
        return f"{await self._scheme(host)}://{host}{path}"

    async def _authorize(self, host: str, challenge_header: str, scope: str, creds: Credentials) -> str:
        """An ``Authorization`` value answering the registry's challenge."""
        challenges = parse_challenges(challenge_header)
        for ch in challenges:
            if ch.scheme == "bearer":
                return "Bearer " + await self._token(host, ch.params, scope, creds)
        for ch in challenges:
            if ch.scheme == "basic":
                if creds.empty or not creds.username:
                    raise Unauthenticated("unauthorized: authentication required")
                header = basic_header(creds)
                self._basic[host] = header
                return header
        raise Unauthenticated(f"unsupported authentication challenge from {host}: {challenge_header!r}")

    async def _token(self, host: str, params: dict[str, str], scope: str, creds: Credentials) -> str:
        if creds.registry_token:
            return creds.registry_token
        realm = params.get("realm", "")
        service = params.get("service", "")
        scope = params.get("scope", scope)
        if not realm.startswith(("http://", "https://")):
            raise Unauthenticated(f"invalid token realm {realm!r} from {host}")
        cached = self._tokens.get(realm, service, scope)
        if cached:
            return cached
        query = {k: v for k, v in (("service", service), ("scope", scope)) if v}
        headers: dict[str, str] = {}
        try:
            if creds.identity_token:
                form = {"grant_type": "refresh_token", "refresh_token": creds.identity_token,
                        "client_id": "docker", **query}
                ctx = self._session.post(realm, data=form, timeout=aiohttp.ClientTimeout(total=30))
            else:
                if creds.username:
                    headers["Authorization"] = basic_header(creds)
                if not creds.username:
                    query["client_id"] = "docker"
                ctx = self._session.get(realm, params=query, headers=headers, timeout=aiohttp.ClientTimeout(total=30))
            async with ctx as resp:
                body = await resp.read()
                if resp.status in (401, 403):
                    raise Unauthenticated("unauthorized: incorrect username or password")
                if resp.status >= 400:
                    raise Unauthenticated(f"token server {realm} answered {resp.status}")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise Unauthenticated(f"cannot reach token server {realm}: {exc}") from None
        try:
            doc = json.loads(body)
            token = doc.get("token") or doc.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not token:
            raise Unauthenticated(f"token server {realm} returned no token")
        expires = doc.get("expires_in")
        self._tokens.put(realm, service, scope, str(token), float(expires) if expires else None)
        return str(token)

    async def request(self, method: str, host: str, path: str, *, scope: str, creds: Credentials = ANONYMOUS,
                      headers: dict[str, str] | None = None, data: Any = None, params: dict[str, str] | None = None,
                      allow_redirects: bool = True, timeout: float | None = 300) -> aiohttp.ClientResponse:
        """Send one registry request, answering auth challenges and retrying rate limits. The
        caller must release the response (``async with`` or ``release()``)."""
        auth: str | None = self._auth.get((host, scope)) or self._basic.get(host)
        attempt = 0
        retried_auth = False
        url = await self._url(host, path)
        while True:
            hdrs = dict(headers or {})
            if auth:
                hdrs["Authorization"] = auth
            try:
                resp = await self._session.request(
                    method, url, headers=hdrs, data=data, params=params, allow_redirects=allow_redirects,
                    timeout=aiohttp.ClientTimeout(total=timeout, sock_connect=30))
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                if attempt < self._retries and data is None:
                    attempt += 1
                    await asyncio.sleep(0.2 * attempt)
                    continue
                raise Unavailable(f'Get "{url}": {exc}') from None
            if resp.status == 401 and not retried_auth:
                challenge = resp.headers.get("WWW-Authenticate", "")
                resp.release()
                if not challenge:
                    raise Unauthenticated("unauthorized: authentication required")
                auth = await self._authorize(host, challenge, scope, creds)
                self._auth[(host, scope)] = auth
                retried_auth = True
                continue
            if resp.status in _RETRY_STATUSES and attempt < self._retries and data is None:
                attempt += 1
                delay = _retry_after(resp.headers.get("Retry-After"), 0.5 * attempt)
                resp.release()
                log.info("registry_retry", host=host, status=resp.status, delay=delay)
                await asyncio.sleep(delay)
                continue
            return resp

    # -- reading -----------------------------------------------------------------------------------
    async def ping(self, host: str, creds: Credentials = ANONYMOUS) -> None:
        """``GET /v2/`` with credentials: what ``docker login`` checks."""
        try:
            resp = await self.request("GET", host, "/v2/", scope="", creds=creds)
        except Unauthenticated:
            raise
        async with resp:
            if resp.status == 401:
                raise Unauthenticated(f"login attempt to {resp.url} failed with status: 401 Unauthorized")
            if resp.status >= 400:
                raise Unavailable(f"login attempt to {resp.url} failed with status: {resp.status}")

    async def fetch_manifest(self, ref: Reference, reference: str, creds: Credentials = ANONYMOUS,
                             accept: tuple[str, ...] = MANIFEST_TYPES) -> Manifest:
        """GET a manifest by tag or digest; verified and size-capped."""
        host = registry_host(ref.domain)
        scope = f"repository:{ref.path}:pull"
        resp = await self.request("GET", host, f"/v2/{ref.path}/manifests/{reference}", scope=scope, creds=creds,
                                  headers={"Accept": ", ".join(accept)})
        async with resp:
            if resp.status >= 400:
                await self._raise_for(resp, ref, reference, "manifest")
            length = resp.content_length
            if length is not None and length > MAX_MANIFEST_BYTES:
                raise InvalidArgument(f"manifest too big: {length} bytes (limit {MAX_MANIFEST_BYTES})")
            body = await resp.content.read(MAX_MANIFEST_BYTES + 1)
            if len(body) > MAX_MANIFEST_BYTES:
                raise InvalidArgument(f"manifest too big (limit {MAX_MANIFEST_BYTES} bytes)")
            media_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
            header_digest = resp.headers.get("Docker-Content-Digest", "")
        digest = _sha256(body)
        if reference.startswith("sha256:") and digest != reference:
            raise DigestMismatch(f"manifest verification failed for digest {reference}")
        if header_digest and header_digest.startswith("sha256:") and header_digest != digest:
            raise DigestMismatch(f"manifest digest {header_digest} from registry does not match its content {digest}")
        if media_type not in MANIFEST_TYPES:
            try:
                media_type = str(json.loads(body).get("mediaType") or "")
            except (ValueError, AttributeError):
                media_type = ""
        if media_type == MEDIA_DOCKER_SCHEMA1 or media_type.startswith("application/vnd.docker.distribution.manifest.v1"):
            raise InvalidArgument("Docker Image Format v1 and Docker Image manifest version 2, schema 1 "
                                  "support has been removed")
        if media_type not in MANIFEST_TYPES:
            raise InvalidArgument(f"unsupported manifest media type {media_type or '(none)'!r}")
        return Manifest(media_type=media_type, digest=digest, body=body)

    async def fetch_blob_bytes(self, ref: Reference, digest: str, creds: Credentials = ANONYMOUS,
                               limit: int = MAX_MANIFEST_BYTES) -> bytes:
        """A small blob (an image config), verified."""
        chunks = []
        size = 0
        async for chunk in self.fetch_blob(ref, digest, creds):
            size += len(chunk)
            if size > limit:
                raise InvalidArgument(f"blob {digest} too big (limit {limit} bytes)")
            chunks.append(chunk)
        data = b"".join(chunks)
        if _sha256(data) != digest:
            raise DigestMismatch(f"filesystem layer verification failed for digest {digest}")
        return data

    async def fetch_blob(self, ref: Reference, digest: str, creds: Credentials = ANONYMOUS, *,
                         offset: int = 0, size: int = -1) -> AsyncIterator[bytes]:
        """Stream a blob from ``offset``, resuming after broken connections (``Range``)."""
        host = registry_host(ref.domain)
        scope = f"repository:{ref.path}:pull"
        position = offset
        failures = 0
        while True:
            headers = {"Range": f"bytes={position}-"} if position else {}
            resp = await self.request("GET", host, f"/v2/{ref.path}/blobs/{digest}", scope=scope, creds=creds,
                                      headers=headers, timeout=None)
            try:
                if resp.status >= 400:
                    await self._raise_for(resp, ref, digest, "blob")
                skip = position if (position and resp.status == 200) else 0  # server ignored Range
                try:
                    async for chunk in resp.content.iter_chunked(1024 * 1024):
                        if skip:
                            cut = min(skip, len(chunk))
                            chunk, skip = chunk[cut:], skip - cut
                            if not chunk:
                                continue
                        position += len(chunk)
                        yield chunk
                except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError) as exc:
                    failures += 1
                    if failures > self._retries:
                        raise Unavailable(f"downloading {digest} failed: {exc}") from None
                    log.warning("blob_download_resume", digest=digest, position=position, error=str(exc))
                    continue
                if size >= 0 and position < size:
                    failures += 1
                    if failures > self._retries:
                        raise Unavailable(f"downloading {digest}: unexpected EOF at {position} of {size} bytes")
                    continue
                return
            finally:
                resp.release()

    async def _raise_for(self, resp: aiohttp.ClientResponse, ref: Reference, reference: str, what: str) -> None:
        body = await resp.read()
        code, message = _registry_error(body)
        familiar = ref.familiar_repository
        if resp.status == 404 and what == "manifest" and code in ("MANIFEST_UNKNOWN", ""):
            raise NotFound(f"manifest for {familiar}:{reference} not found: manifest unknown: {message or 'manifest unknown'}"
                           if not reference.startswith("sha256:") else
                           f"manifest for {familiar}@{reference} not found: manifest unknown: {message}")
        if resp.status in (401, 403) or code in ("NAME_UNKNOWN", "DENIED", "UNAUTHORIZED"):
            raise NotFound(f"pull access denied for {familiar}, repository does not exist or may require "
                           f"'docker login': denied: {message or 'requested access to the resource is denied'}")
        if resp.status == 404:
            raise NotFound(f"{what} {reference} not found in {familiar}: {message}")
        if resp.status == 429:
            raise ResourceExhausted(f"toomanyrequests: {message or 'rate limited by the registry'}")
        raise Unavailable(f"error from registry {ref.domain}: {resp.status} {message}")

    # -- writing -----------------------------------------------------------------------------------
    async def blob_size(self, ref: Reference, digest: str, creds: Credentials = ANONYMOUS) -> int | None:
        host = registry_host(ref.domain)
        resp = await self.request("HEAD", host, f"/v2/{ref.path}/blobs/{digest}",
                                  scope=f"repository:{ref.path}:pull,push", creds=creds)
        async with resp:
            if resp.status == 200:
                return int(resp.headers.get("Content-Length", "0"))
            if resp.status == 404:
                return None
            raise Unavailable(f"error from registry checking {digest}: {resp.status}")

    async def start_upload(self, ref: Reference, creds: Credentials, *, mount: str = "",
                           mount_from: str = "") -> str | None:
        """POST an upload session; None if a cross-repository mount succeeded (201)."""
        host = registry_host(ref.domain)
        params = {"mount": mount, "from": mount_from} if mount and mount_from else None
        scope = f"repository:{ref.path}:pull,push"
        if mount_from:
            scope += f" repository:{mount_from}:pull"
        resp = await self.request("POST", host, f"/v2/{ref.path}/blobs/uploads/", scope=scope, creds=creds,
                                  params=params, headers={"Content-Length": "0"})
        async with resp:
            if resp.status == 201 and mount:
                return None
            if resp.status != 202:
                await self._raise_push(resp, ref)
            location = resp.headers.get("Location", "")
        return self._absolute(host, location)

    def _absolute(self, host: str, location: str) -> str:
        if location.startswith(("http://", "https://")):
            return location
        return f"{self._schemes.get(host, 'https')}://{host}{location}"

    async def upload_blob(self, ref: Reference, digest: str, size: int, chunks: AsyncIterator[bytes],
                          creds: Credentials = ANONYMOUS, *, chunk_size: int = 0) -> None:
        """Upload a blob: monolithic PUT, or PATCH chunks of ``chunk_size`` then PUT."""
        host = registry_host(ref.domain)
        location = await self.start_upload(ref, creds)
        assert location is not None
        scope = f"repository:{ref.path}:pull,push"
        auth_header = await self._auth_for(host, scope, creds)
        if chunk_size <= 0:
            sep = "&" if "?" in location else "?"
            async with self._session.put(
                    f"{location}{sep}digest={digest}", data=chunks,
                    headers={"Content-Type": "application/octet-stream", "Content-Length": str(size), **auth_header},
                    timeout=aiohttp.ClientTimeout(total=None)) as resp:
                if resp.status != 201:
                    await self._raise_push(resp, ref)
            return
        offset = 0
        buffer = b""

        async def send(piece: bytes) -> None:
            nonlocal location, offset
            end = offset + len(piece) - 1
            async with self._session.patch(
                    location, data=piece,
                    headers={"Content-Type": "application/octet-stream", "Content-Range": f"{offset}-{end}",
                             "Content-Length": str(len(piece)), **auth_header}) as resp:
                if resp.status != 202:
                    await self._raise_push(resp, ref)
                location = self._absolute(host, resp.headers.get("Location", location))
            offset += len(piece)

        async for chunk in chunks:
            buffer += chunk
            while len(buffer) >= chunk_size:
                await send(buffer[:chunk_size])
                buffer = buffer[chunk_size:]
        if buffer:
            await send(buffer)
        sep = "&" if "?" in location else "?"
        async with self._session.put(f"{location}{sep}digest={digest}",
                                     headers={"Content-Length": "0", **auth_header}) as resp:
            if resp.status != 201:
                await self._raise_push(resp, ref)

    async def _auth_for(self, host: str, scope: str, creds: Credentials) -> dict[str, str]:
        """The Authorization that opened the upload session (uploads go to the session's URL
        directly, outside ``request``; their bodies cannot be replayed after a 401)."""
        auth = self._auth.get((host, scope)) or self._basic.get(host)
        return {"Authorization": auth} if auth else {}

    async def put_manifest(self, ref: Reference, reference: str, body: bytes, media_type: str,
                           creds: Credentials = ANONYMOUS) -> str:
        host = registry_host(ref.domain)
        resp = await self.request("PUT", host, f"/v2/{ref.path}/manifests/{reference}",
                                  scope=f"repository:{ref.path}:pull,push", creds=creds,
                                  headers={"Content-Type": media_type}, data=body)
        async with resp:
            if resp.status not in (200, 201):
                await self._raise_push(resp, ref)
            digest = resp.headers.get("Docker-Content-Digest") or _sha256(body)
        return digest

    async def _raise_push(self, resp: aiohttp.ClientResponse, ref: Reference) -> None:
        body = await resp.read()
        code, message = _registry_error(body)
        if resp.status in (401, 403) or code in ("DENIED", "UNAUTHORIZED"):
            raise Unauthenticated(f"denied: {message or 'requested access to the resource is denied'}")
        raise Unavailable(f"error from registry {ref.domain} during push: {resp.status} {code} {message}".strip())


def _retry_after(value: str | None, default: float) -> float:
    if not value:
        return default
    try:
        return min(10.0, max(0.0, float(value)))
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            return min(10.0, max(0.0, parsedate_to_datetime(value).timestamp() - time.time()))
        except (TypeError, ValueError):
            return default


def select_platform(index: dict[str, Any], os_name: str, arch: str, variant: str = "") -> Descriptor:
    """Pick this host's manifest from a manifest list / OCI index, skipping attestations."""
    candidates = []
    for entry in index.get("manifests") or []:
        platform = entry.get("platform") or {}
        annotations = entry.get("annotations") or {}
        if annotations.get("vnd.docker.reference.type") == "attestation-manifest":
            continue
        if platform.get("os") != os_name or platform.get("architecture") != arch:
            continue
        if variant and platform.get("variant") and platform.get("variant") != variant:
            continue
        candidates.append(entry)
    if not candidates:
        raise NotFound(f"no matching manifest for {os_name}/{arch} in the manifest list entries")
    best = candidates[0]
    return Descriptor(media_type=str(best.get("mediaType", MEDIA_OCI_MANIFEST)), digest=str(best["digest"]),
                      size=int(best.get("size", 0)))


__all__ = ["INDEX_TYPES", "MANIFEST_TYPES", "BerthError", "Descriptor", "Manifest", "RegistryClient",
           "select_platform"]
