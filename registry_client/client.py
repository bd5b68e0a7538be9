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
  dockerd does), after HTTPS failed. TLS settings per registry (extra CAs, client certificates,
  no verification for insecure ones) come from ``tls`` (see :mod:`registry_client.hosts`).
* Every cache of credentials (Basic headers, tokens, the last ``Authorization`` per scope) is
  keyed by the caller's account, so one client can serve many users' pulls.
* A token is asked for the union of the scopes the challenge names and the scopes we need (one
  ``scope`` parameter each): a cross-repository mount needs pull on the source repository in the
  same token as push on the target.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import re
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

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
from registry_client import platforms
from registry_client.auth import ANONYMOUS, Credentials, TokenCache, account_key, basic_header, parse_challenges
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
# A blob download that receives nothing for this long is broken off and resumed with Range.
BLOB_READ_TIMEOUT = 60.0
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
TLSProvider = Callable[[str], Awaitable[ssl.SSLContext]]


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
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _upload_scope(ref: Reference, mount_from: str = "") -> str:
    scope = f"repository:{ref.path}:pull,push"
    return f"{scope} repository:{mount_from}:pull" if mount_from else scope


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
                 tokens: TokenCache | None = None, retries: int = 3, tls: TLSProvider | None = None) -> None:
        self._session = session
        self._insecure = insecure
        self._tokens = tokens or TokenCache()
        self._retries = retries
        self._tls = tls
        self._schemes: dict[str, str] = {}
        self._basic: dict[tuple[str, str], str] = {}  # (host, account) → Basic header, once asked for Basic
        self._auth: dict[tuple[str, str, str], str] = {}  # (host, scope, account) → last Authorization used

    async def _ssl(self, host: str) -> ssl.SSLContext | bool:
        return await self._tls(host) if self._tls is not None else True

    def _cached_auth(self, host: str, scope: str, creds: Credentials) -> str | None:
        account = account_key(creds)
        return self._auth.get((host, scope, account)) or self._basic.get((host, account))

    # -- plumbing ----------------------------------------------------------------------------------
    async def _scheme(self, host: str) -> str:
        if host in self._schemes:
            return self._schemes[host]
        if not self._insecure(host):
            self._schemes[host] = "https"
            return "https"
        try:
            async with self._session.get(f"https://{host}/v2/", allow_redirects=False, ssl=await self._ssl(host),
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
                self._basic[(host, account_key(creds))] = header
                return header
        raise Unauthenticated(f"unsupported authentication challenge from {host}: {challenge_header!r}")

    async def _token(self, host: str, params: dict[str, str], scope: str, creds: Credentials) -> str:
        if creds.registry_token:
            return creds.registry_token
        realm = params.get("realm", "")
        service = params.get("service", "")
        # What the challenge names plus what we need (e.g. pull on a mount's source repository).
        scopes = list(dict.fromkeys([*params.get("scope", "").split(), *scope.split()]))
        realm_host = urlsplit(realm).netloc if realm.startswith(("http://", "https://")) else ""
        if not realm_host:
            raise Unauthenticated(f"invalid token realm {realm!r} from {host}")
        account = account_key(creds)
        cached = self._tokens.get(realm, service, " ".join(scopes), account)
        if cached:
            return cached
        query = [("service", service)] if service else []
        query += [("scope", s) for s in scopes]
        headers: dict[str, str] = {}
        timeout = aiohttp.ClientTimeout(total=30)
        tls = await self._ssl(realm_host)
        try:
            if creds.identity_token:
                form = [("grant_type", "refresh_token"), ("refresh_token", creds.identity_token),
                        ("client_id", "docker"), *([("service", service)] if service else []),
                        *([("scope", " ".join(scopes))] if scopes else [])]
                ctx = self._session.post(realm, data=form, timeout=timeout, ssl=tls)
            else:
                if creds.username:
                    headers["Authorization"] = basic_header(creds)
                else:
                    query.append(("client_id", "docker"))
                ctx = self._session.get(realm, params=query, headers=headers, timeout=timeout, ssl=tls)
            async with ctx as resp:
                body = await resp.read()
                if resp.status in (401, 403):
                    raise Unauthenticated("unauthorized: incorrect username or password")
                if resp.status >= 400:
                    raise Unauthenticated(f"token server {realm} answered {resp.status}")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise Unauthenticated(f"cannot reach token server {realm}: {describe_connection_error(exc)}") from None
        try:
            doc = json.loads(body)
            token = doc.get("token") or doc.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not token:
            raise Unauthenticated(f"token server {realm} returned no token")
        expires = doc.get("expires_in")
        try:
            ttl = float(expires) if expires else None
        except (TypeError, ValueError):
            ttl = None
        self._tokens.put(realm, service, " ".join(scopes), str(token), ttl, account=account)
        return str(token)

    async def request(self, method: str, host: str, path: str, *, scope: str, creds: Credentials = ANONYMOUS,
                      headers: dict[str, str] | None = None, data: Any = None, params: dict[str, str] | None = None,
                      allow_redirects: bool = True, total_time: float | None = 300,
                      read_time: float | None = None) -> aiohttp.ClientResponse:
        """Send one registry request, answering auth challenges and retrying rate limits. The
        caller must release the response (``async with`` or ``release()``)."""
        auth = self._cached_auth(host, scope, creds)
        attempt = 0
        retried_auth = False
        url = await self._url(host, path)
        tls = await self._ssl(host)
        replayable = data is None or isinstance(data, bytes)
        while True:
            hdrs = dict(headers or {})
            if auth:
                hdrs["Authorization"] = auth
            try:
                resp = await self._session.request(
                    method, url, headers=hdrs, data=data, params=params, allow_redirects=allow_redirects, ssl=tls,
                    timeout=aiohttp.ClientTimeout(total=total_time, sock_connect=30, sock_read=read_time))
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                # A certificate the registry will keep presenting is not worth retrying.
                if attempt < self._retries and replayable and not isinstance(exc, aiohttp.ClientSSLError):
                    attempt += 1
                    await asyncio.sleep(0.2 * attempt)
                    continue
                raise Unavailable(f'{method.capitalize()} "{url}": {describe_connection_error(exc)}') from None
            if resp.status == 401 and not retried_auth:
                challenge = resp.headers.get("WWW-Authenticate", "")
                resp.release()
                if not challenge:
                    raise Unauthenticated("unauthorized: authentication required")
                auth = await self._authorize(host, challenge, scope, creds)
                self._auth[(host, scope, account_key(creds))] = auth
                retried_auth = True
                continue
            if resp.status in _RETRY_STATUSES and attempt < self._retries and replayable:
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

    async def resolve_manifest(self, ref: Reference, reference: str, creds: Credentials = ANONYMOUS,
                               accept: tuple[str, ...] = MANIFEST_TYPES) -> Descriptor | None:
        """HEAD a manifest by tag or digest: its descriptor from ``Docker-Content-Digest`` and
        ``Content-Length``, or None when the registry does not send them (then GET it). A HEAD
        does not count against Docker Hub's pull limit, and a manifest we already hold by digest
        needs no GET at all."""
        host = registry_host(ref.domain)
        resp = await self.request("HEAD", host, f"/v2/{ref.path}/manifests/{reference}",
                                  scope=f"repository:{ref.path}:pull", creds=creds,
                                  headers={"Accept": ", ".join(accept)})
        async with resp:
            if resp.status >= 400:
                await self._raise_for(resp, ref, reference, "manifest")
            digest = resp.headers.get("Docker-Content-Digest", "")
            length = resp.headers.get("Content-Length", "")
            media_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
        if not _DIGEST.fullmatch(digest) or not length.isdigit():
            return None
        if reference.startswith("sha256:") and digest != reference:
            return None  # a GET by digest decides, and verifies
        return Descriptor(media_type=media_type, digest=digest, size=int(length))

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
        if media_type == MEDIA_DOCKER_SCHEMA1 or media_type.startswith(
                "application/vnd.docker.distribution.manifest.v1"):
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
            if 0 <= size <= position:
                return  # the connection broke after the last byte: nothing left to ask for
            headers = {"Range": f"bytes={position}-"} if position else {}
            resp = await self.request("GET", host, f"/v2/{ref.path}/blobs/{digest}", scope=scope, creds=creds,
                                      headers=headers, total_time=None, read_time=BLOB_READ_TIMEOUT)
            try:
                if resp.status == 416 and position:
                    # Nothing left to send from where we are: the blob ends before its descriptor says.
                    raise Unavailable(f"downloading {digest}: unexpected EOF at {position}"
                                      + (f" of {size} bytes" if size >= 0 else " bytes"))
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
            sep = "@" if reference.startswith("sha256:") else ":"
            raise NotFound(f"manifest for {familiar}{sep}{reference} not found: manifest unknown: "
                           f"{message or 'manifest unknown'}")
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
        """POST an upload session; None if a cross-repository mount succeeded (201). A registry
        that cannot (or will not) mount answers 202 with an ordinary session: its URL is returned,
        to upload into (``upload_blob(location=…, mount_from=…)``)."""
        host = registry_host(ref.domain)
        params = {"mount": mount, "from": mount_from} if mount and mount_from else None
        scope = _upload_scope(ref, mount_from)
        resp = await self.request("POST", host, f"/v2/{ref.path}/blobs/uploads/", scope=scope, creds=creds,
                                  params=params, headers={"Content-Length": "0"})
        async with resp:
            if resp.status == 201 and mount:
                return None
            if resp.status != 202:
                await self._raise_push(resp, ref)
            location = resp.headers.get("Location", "")
        if not location:
            raise Unavailable(f"registry {ref.domain} opened an upload session without a Location")
        return self._absolute(host, location)

    def _absolute(self, host: str, location: str) -> str:
        if location.startswith(("http://", "https://")):
            return location
        return f"{self._schemes.get(host, 'https')}://{host}{location}"

    async def upload_blob(self, ref: Reference, digest: str, size: int, chunks: AsyncIterator[bytes],
                          creds: Credentials = ANONYMOUS, *, chunk_size: int = 0, location: str | None = None,
                          mount_from: str = "") -> None:
        """Upload a blob: monolithic PUT, or PATCH chunks of ``chunk_size`` then PUT. ``location``
        is a session already opened (by a mount attempt from ``mount_from``), else one is."""
        host = registry_host(ref.domain)
        if location is None:
            location = await self.start_upload(ref, creds)
            mount_from = ""
        if location is None:
            raise Unavailable(f"registry {ref.domain} opened no upload session")
        scope = _upload_scope(ref, mount_from)
        auth_header = await self._auth_for(host, scope, creds)
        tls = await self._ssl(host)
        if chunk_size <= 0:
            sep = "&" if "?" in location else "?"
            async with self._session.put(
                    f"{location}{sep}digest={digest}", data=chunks, ssl=tls,
                    headers={"Content-Type": "application/octet-stream", "Content-Length": str(size), **auth_header},
                    timeout=aiohttp.ClientTimeout(total=None, sock_connect=30)) as resp:
                if resp.status != 201:
                    await self._raise_push(resp, ref)
            return
        offset = 0
        buffer = b""

        async def send(piece: bytes, url: str) -> str:
            nonlocal offset
            end = offset + len(piece) - 1
            async with self._session.patch(
                    url, data=piece, ssl=tls,
                    headers={"Content-Type": "application/octet-stream", "Content-Range": f"{offset}-{end}",
                             "Content-Length": str(len(piece)), **auth_header}) as resp:
                if resp.status != 202:
                    await self._raise_push(resp, ref)
                following = self._absolute(host, resp.headers.get("Location", url))
            offset += len(piece)
            return following

        async for chunk in chunks:
            buffer += chunk
            while len(buffer) >= chunk_size:
                location = await send(buffer[:chunk_size], location)
                buffer = buffer[chunk_size:]
        if buffer:
            location = await send(buffer, location)
        sep = "&" if "?" in location else "?"
        async with self._session.put(f"{location}{sep}digest={digest}", ssl=tls,
                                     headers={"Content-Length": "0", **auth_header}) as resp:
            if resp.status != 201:
                await self._raise_push(resp, ref)

    async def cancel_upload(self, ref: Reference, location: str, creds: Credentials = ANONYMOUS, *,
                            mount_from: str = "") -> None:
        """DELETE an upload session we will not use; failures are ignored (spec: clients should)."""
        host = registry_host(ref.domain)
        headers = await self._auth_for(host, _upload_scope(ref, mount_from), creds)
        try:
            async with self._session.delete(location, headers=headers, ssl=await self._ssl(host),
                                            timeout=aiohttp.ClientTimeout(total=30)) as resp:
                await resp.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.debug("upload_cancel_failed", location=location, error=str(exc))

    async def _auth_for(self, host: str, scope: str, creds: Credentials) -> dict[str, str]:
        """The Authorization that opened the upload session (uploads go to the session's URL
        directly, outside ``request``; their bodies cannot be replayed after a 401)."""
        auth = self._cached_auth(host, scope, creds) or self._cached_auth(host, _upload_scope_plain(scope), creds)
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


def _upload_scope_plain(scope: str) -> str:
    """The push scope alone, from a scope that may also ask pull on a mount source."""
    return scope.split(" ", 1)[0]


def describe_connection_error(exc: BaseException) -> str:
    """A connection failure in the words Go's net package uses, without aiohttp's repr noise
    (``Cannot connect to host x:443 ssl:<ssl.SSLContext …>``)."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"tls: failed to verify certificate: {exc.certificate_error}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        host = f"{exc.host}:{exc.port}"
        inner = exc.os_error
        if isinstance(inner, OSError) and inner.errno in (-2, -3, -5):  # EAI_NONAME/EAI_AGAIN/EAI_NODATA
            return f"dial tcp: lookup {exc.host}: no such host"
        if isinstance(inner, ConnectionRefusedError):
            return f"dial tcp {host}: connect: connection refused"
        return f"dial tcp {host}: {inner.strerror or inner}" if isinstance(inner, OSError) else f"dial tcp {host}"
    if isinstance(exc, TimeoutError):
        return "net/http: request canceled (Client.Timeout exceeded)"
    return str(exc) or type(exc).__name__


def _retry_after(value: str | None, default: float) -> float:
    """Seconds to wait before retrying: the registry's ``Retry-After`` (capped at 10 s), else our
    backoff with some jitter so parallel downloads do not retry in lockstep."""
    if not value:
        return default * random.uniform(1.0, 1.25)
    try:
        return min(10.0, max(0.0, float(value)))
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            return min(10.0, max(0.0, parsedate_to_datetime(value).timestamp() - time.time()))
        except (TypeError, ValueError):
            return default


def select_platform(index: dict[str, Any], os_name: str, arch: str, variant: str = "") -> Descriptor:
    """Pick a platform's manifest from a manifest list / OCI index (see :mod:`platforms`)."""
    best = platforms.select(index, platforms.normalize(os_name, arch, variant))
    digest, size = best.get("digest"), best.get("size", 0)
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest) or not isinstance(size, int) or size < 0:
        raise InvalidArgument("invalid manifest list: malformed descriptor")
    return Descriptor(media_type=str(best.get("mediaType", MEDIA_OCI_MANIFEST)), digest=digest, size=size)


__all__ = ["INDEX_TYPES", "MANIFEST_TYPES", "BerthError", "Descriptor", "Manifest", "RegistryClient",
           "select_platform"]
