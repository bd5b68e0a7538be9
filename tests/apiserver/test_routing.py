"""Versioned and plain paths reach the same handlers with the same match info, and what matches
nothing keeps aiohttp's answers (apiserver.routing)."""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.web_urldispatcher import UrlMappingMatchInfo

from apiserver.app import add_route, build_app
from apiserver.routing import VersionedRouter


def _echo(name: str):  # type: ignore[no-untyped-def]
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.json_response({"handler": name, "match": dict(request.match_info)})
    return handler


def _register(app: web.Application) -> None:
    add_route(app, "GET", "/containers/json", _echo("list"))
    add_route(app, "GET", "/containers/{id}/json", _echo("inspect"))
    add_route(app, "POST", "/containers/{id}/exec", _echo("exec-create"))
    add_route(app, "GET", "/exec/{id}/json", _echo("exec-inspect"))
    add_route(app, "POST", "/exec/{id}/start", _echo("exec-start"))
    add_route(app, "GET", "/images/{name:.*}/json", _echo("image-inspect"))
    add_route(app, "GET", "/_ping", _echo("ping"))


async def test_versioned_paths_resolve_like_plain_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    slow: list[str] = []  # paths that took aiohttp's own way: only unversioned ones may
    original = web.UrlDispatcher.resolve

    async def counted(self: web.UrlDispatcher, request: web.Request) -> UrlMappingMatchInfo:
        slow.append(request.path)
        return await original(self, request)

    monkeypatch.setattr(web.UrlDispatcher, "resolve", counted)
    app = build_app([_register])
    assert isinstance(app.router, VersionedRouter)
    cases = [
        ("GET", "/containers/json", "list", {}),
        ("GET", "/containers/abc/json", "inspect", {"id": "abc"}),
        ("POST", "/containers/abc/exec", "exec-create", {"id": "abc"}),
        ("GET", "/exec/e1/json", "exec-inspect", {"id": "e1"}),
        ("POST", "/exec/e1/start", "exec-start", {"id": "e1"}),
        ("GET", "/images/reg:5000/a/b:tag/json", "image-inspect", {"name": "reg:5000/a/b:tag"}),
        ("GET", "/_ping", "ping", {}),
    ]
    async with TestClient(TestServer(app)) as client:
        for method, path, handler, match in cases:
            for version in ("", "/v1.50", "/v1.24", "/v1.44"):
                resp = await client.request(method, version + path)
                assert resp.status == 200, (method, version + path)
                body = await resp.json()
                expected = {**match, "api_version": version[2:]} if version else match
                assert body == {"handler": handler, "match": expected}, (method, version + path)
    assert slow and all(not p.startswith("/v") for p in slow), slow


async def test_what_matches_nothing_keeps_its_answer() -> None:
    async with TestClient(TestServer(build_app([_register]))) as client:
        for path in ("/v1.50/containers/abc/nope", "/v1.50/nope", "/v1.50", "/v1.50/", "/vx/containers/json",
                     "/containers/abc/nope"):
            resp = await client.get(path)
            assert resp.status == 404, path
            assert await resp.json() == {"message": "page not found"}
        resp = await client.delete("/v1.50/exec/e1/json")  # a path that exists, another method
        assert resp.status == 404 and await resp.json() == {"message": "page not found"}
        resp = await client.get("/v1.99/_ping")  # matched, then refused by the version check
        assert resp.status == 400
        assert "client version 1.99 is too new" in (await resp.json())["message"]
