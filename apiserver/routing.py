"""The router: every route twice, as ``/path`` and ``/v{version}/path`` (moby's createMux), and
the versioned ones found as fast as the others.

aiohttp indexes a resource by the static part of its path before the first variable. Every
versioned pattern starts with one (``/v{api_version}``), so they all share one index entry, and a
request for ``/v1.50/exec/{id}/json`` — what every client sends — was tried against each of them
in turn (~45 µs of the ~180 µs an API request costs, measured). Here a versioned path is
looked up by its unversioned rest, and only the versioned twins of the resources found there
are tried; anything else (no match, wrong method) takes aiohttp's own way, for its answer.

aiohttp 3 deprecates the ``router`` argument that installs it: :func:`new_application` falls
back to aiohttp's own router (slower, same routes) where it is refused.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.web_urldispatcher import AbstractResource, UrlMappingMatchInfo

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

VERSION_PREFIX = r"/v{api_version:[0-9]+(?:\.[0-9]+)*}"
_VERSION = re.compile(r"/v[0-9]+(?:\.[0-9]+)*(?=/)")


class VersionedRouter(web.UrlDispatcher):
    def __init__(self) -> None:
        super().__init__()
        self._twins: dict[AbstractResource, AbstractResource] = {}  # plain resource → versioned

    def pair(self, plain: AbstractResource | None, versioned: AbstractResource | None) -> None:
        if plain is not None and versioned is not None:
            self._twins[plain] = versioned

    async def resolve(self, request: web.Request) -> UrlMappingMatchInfo:
        path = request.rel_url.path_safe
        version = _VERSION.match(path)
        index: dict[str, list[AbstractResource]] | None = getattr(self, "_resource_index", None)
        if version is not None and index is not None:
            part = path[version.end():]
            while part:  # the rest's prefixes, longest first, as aiohttp walks a path
                for candidate in index.get(part, ()):
                    twin = self._twins.get(candidate)
                    if twin is not None:
                        match, _ = await twin.resolve(request)
                        if match is not None:
                            return match
                if part == "/":
                    break
                part = part.rpartition("/")[0] or "/"
        return await super().resolve(request)


def add_versioned(router: web.UrlDispatcher, method: str, path: str, handler: Handler) -> None:
    """Register ``path`` and ``/v{version}path`` for ``method`` (paired for a VersionedRouter)."""
    plain = router.add_route(method, path, handler).resource
    versioned = router.add_route(method, VERSION_PREFIX + path, handler).resource
    if isinstance(router, VersionedRouter):
        router.pair(plain, versioned)


def new_application(**kwargs: Any) -> web.Application:
    """A ``web.Application`` with a :class:`VersionedRouter`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return web.Application(router=VersionedRouter(), **kwargs)
        except TypeError:
            return web.Application(**kwargs)
