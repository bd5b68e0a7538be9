"""Pull, push, login and import: the image operations that talk to registries.

The bytes move on the node (its snapshotter pulls and pushes through ``registry_client``); the
API server frames Docker's progress stream around them and records tags and digests in Redis.
Errors before the first message are HTTP errors (moby only switches to in-stream errors once it
has written output), so a missing image is a 404 that docker-py maps to ``ImageNotFound``.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import redis.asyncio as aioredis

from apiserver.images.progress import progress_message, status
from apiserver.images.store import ImageRecord, ImageStore
from apiserver.nodes import NodeDirectory
from common.events import append_event
from common.keys import Keys, text
from protos.errors import BerthError, ImageNotFound, InvalidArgument
from registry_client import reference
from registry_client.auth import Credentials, decode_registry_auth
from registry_client.client import RegistryClient, registry_host
from registry_client.hosts import RegistryTLS
from registry_client.reference import Reference
from snapshotter.api import ImageRecord as HostImage
from snapshotter.api import Progress, PullResult, PushResult, RegistryAuth

Message = dict[str, Any]


def registry_auth(header: str | None) -> RegistryAuth:
    creds, _ = decode_registry_auth(header)
    return RegistryAuth(username=creds.username, password=creds.password, identity_token=creds.identity_token,
                        registry_token=creds.registry_token)


def pull_reference(from_image: str, tag: str) -> Reference:
    """``fromImage`` (normalised by the CLI, as typed by docker-py) plus ``tag`` (a tag or a
    digest) → the reference to pull."""
    ref = reference.parse(from_image)
    if tag:
        if reference.is_digest(tag):
            ref = Reference(ref.domain, ref.path, "", tag)
        else:
            reference.parse(f"{ref.repository}:{tag}")  # validates the tag
            ref = Reference(ref.domain, ref.path, tag, ref.digest)
    if not ref.tag and not ref.digest:
        raise InvalidArgument("pulling every tag of a repository (docker pull -a) is not supported by Berth; "
                              "name a tag")
    return ref


def _repo_path(ref: Reference) -> str:
    """What ``Pulling from`` names: the path without the registry (``library/busybox``)."""
    return ref.path


def host_record(image: HostImage) -> ImageRecord:
    return ImageRecord(
        id=image.id, config=json.loads(image.config),
        layers=[{"digest": layer.digest, "diff_id": layer.diff_id, "media_type": layer.media_type, "size": layer.size}
                for layer in image.layers],
        chain_id=image.chain_id, size=image.size, raw_config=image.config)


def _created_ns(config: dict[str, Any]) -> int:
    from apiserver.containers.views import parse_rfc3339

    try:
        return parse_rfc3339(str(config.get("created", ""))) or time.time_ns()
    except ValueError:
        return time.time_ns()


@dataclass(frozen=True, slots=True)
class RegistrySettings:
    """How the API server itself reaches registries (``docker login``): the same insecure list
    and certs.d as the snapshotters use."""

    insecure: Callable[[str], bool]
    tls: RegistryTLS
    session_factory: Callable[[], aiohttp.ClientSession]


class DistributionBackend:
    def __init__(self, *, redis: aioredis.Redis, keys: Keys, store: ImageStore, nodes: NodeDirectory,
                 registries: RegistrySettings) -> None:
        self._redis = redis
        self._keys = keys
        self._store = store
        self._nodes = nodes
        self._registries = registries

    async def _event(self, action: str, id: str, name: str) -> None:
        await append_event(self._redis, self._keys, "image", action, name or id, {"name": name} if name else {})

    # -- pull --------------------------------------------------------------------------------------
    async def pull(self, from_image: str, tag: str, auth: RegistryAuth, platform: str = "") -> AsyncIterator[Message]:
        ref = pull_reference(from_image, tag)
        node = await self._nodes.place(candidates=None, load=Counter())
        host = await self._nodes.host(node.id)
        events = aiter(host.images.pull(ref.canonical, auth, platform))
        first = await anext(events)  # manifest resolved: errors so far are HTTP errors
        return self._pull_stream(ref, first, events, node.id)

    async def _pull_stream(self, ref: Reference, first: Progress | PullResult,
                           events: AsyncIterator[Progress | PullResult], node: str) -> AsyncIterator[Message]:
        yield status(f"Pulling from {_repo_path(ref)}", ref.tag or ref.digest)
        event: Progress | PullResult | None = first
        while event is not None:
            if isinstance(event, PullResult):
                async for message in self._record_pull(ref, event, node):
                    yield message
                return
            yield progress_message(event)
            event = await anext(events, None)
        raise BerthError("pull ended without a result")

    async def _record_pull(self, ref: Reference, result: PullResult, node: str) -> AsyncIterator[Message]:
        record = host_record(result.image)
        previous = None
        if ref.tag:
            owner = await self._redis.hget(self._keys.tags, ref.canonical)
            previous = text(owner) if owner else None
        await self._store.add(record, node, _created_ns(record.config))
        if ref.tag:
            await self._store.tag(ref.canonical, record.id)
        await self._redis.hset(self._keys.digests, f"{ref.repository}@{result.manifest_digest}", record.id)
        name = ref.familiar
        await self._event("pull", record.id, name)
        yield status(f"Digest: {result.manifest_digest}")
        if previous == record.id:
            yield status(f"Status: Image is up to date for {name}")
        else:
            yield status(f"Status: Downloaded newer image for {name}")

    # -- push --------------------------------------------------------------------------------------
    async def push(self, name: str, tag: str, auth: RegistryAuth) -> AsyncIterator[Message]:
        repo = reference.parse(name)
        if repo.digest:
            raise InvalidArgument("cannot push a digest reference")
        if tag:
            targets = [Reference(repo.domain, repo.path, tag)]
        elif repo.tag:
            targets = [repo]
        else:
            prefix = repo.repository + ":"
            targets = sorted((reference.parse(t) for refs in (await self._store.tags_by_image()).values()
                              for t in refs if t.startswith(prefix)), key=lambda r: r.tag)
        if not targets:
            raise ImageNotFound(f"An image does not exist locally with the tag: {repo.familiar_repository}")
        resolved: list[tuple[Reference, ImageRecord]] = []
        for target in targets:
            record = await self._store.find(target.canonical)
            if record is None:
                raise ImageNotFound(f"An image does not exist locally with the tag: {target.familiar}")
            resolved.append((target, record))
        return self._push_stream(repo, resolved, auth)

    async def _push_stream(self, repo: Reference, targets: list[tuple[Reference, ImageRecord]],
                           auth: RegistryAuth) -> AsyncIterator[Message]:
        yield status(f"The push refers to repository [{repo.repository}]")
        for target, record in targets:
            host = await self._nodes.host(sorted(record.nodes)[0])
            tags = [target.familiar]
            image = record.export(tuple(tags))
            async for event in host.images.push(image, target.canonical, auth):
                if isinstance(event, PushResult):
                    await self._redis.hset(self._keys.digests, f"{target.repository}@{event.digest}", record.id)
                    await self._event("push", record.id, target.familiar)
                    yield status(f"{target.tag}: digest: {event.digest} size: {event.size}")
                    yield {"progressDetail": {}, "aux": {"Tag": target.tag, "Digest": event.digest,
                                                        "Size": event.size}}
                else:
                    yield progress_message(event)

    # -- login -------------------------------------------------------------------------------------
    async def login(self, body: Any) -> Message:
        if not isinstance(body, dict):
            raise InvalidArgument("invalid JSON: expected an object")
        server = str(body.get("serveraddress") or "https://index.docker.io/v1/")
        host = server.removeprefix("https://").removeprefix("http://").split("/", 1)[0]
        if host in ("index.docker.io", "docker.io"):
            host = registry_host("docker.io")
        creds = Credentials(username=str(body.get("username") or ""), password=str(body.get("password") or ""),
                            identity_token=str(body.get("identitytoken") or ""))
        async with self._registries.session_factory() as session:
            client = RegistryClient(session, insecure=self._registries.insecure, tls=self._registries.tls.context)
            await client.ping(host, creds)
        return {"Status": "Login Succeeded", "IdentityToken": ""}

    # -- import ------------------------------------------------------------------------------------
    async def import_image(self, chunks: AsyncIterator[bytes], *, repo: str, tag: str, message: str,
                           changes: list[str], platform: str = "") -> Message:
        from apiserver.images.changes import apply_changes, image_config

        target: Reference | None = None
        if repo:
            target = reference.parse(f"{repo}:{tag}" if tag else repo).with_default_tag()
        config = image_config(apply_changes({}, changes), comment=message, platform=platform)
        node = await self._nodes.place(candidates=None, load=Counter())
        host = await self._nodes.host(node.id)
        imported = await host.images.import_rootfs(chunks, json.dumps(config, separators=(",", ":")).encode())
        record = host_record(imported)
        await self._store.add(record, node.id, _created_ns(record.config))
        if target is not None:
            await self._store.tag(target.canonical, record.id)
        await self._event("import", record.id, target.familiar if target else "")
        return status(record.id)

    async def distribution_inspect(self, name: str, auth: RegistryAuth) -> Message:
        raise InvalidArgument("distribution inspect needs the registry; not available yet")


__all__ = ["DistributionBackend", "RegistrySettings", "pull_reference", "registry_auth"]
