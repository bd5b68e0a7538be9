"""Volume routes (``docker volume …``): parse → call the backend → write."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from apiserver.app import add_route
from apiserver.httputil import bool_value, json_response, parse_filters, read_json
from apiserver.volumes.backend import LIST_FILTERS, PRUNE_FILTERS, VolumeBackend
from protos.errors import InvalidArgument, Unavailable

VOLUMES: web.AppKey[VolumeBackend] = web.AppKey("volumes", VolumeBackend)


def _backend(request: web.Request) -> VolumeBackend:
    return request.app[VOLUMES]


async def get_volumes(request: web.Request) -> web.StreamResponse:
    filters = parse_filters(request.query.get("filters"), LIST_FILTERS)
    return json_response(await _backend(request).list_volumes(filters))


def _string_map(value: Any, field: str) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidArgument(f"invalid JSON: {field} must be an object")
    return {str(k): str(v) for k, v in value.items()}


async def post_volumes_create(request: web.Request) -> web.StreamResponse:
    body = await read_json(request, required=False) or {}
    if not isinstance(body, dict):
        raise InvalidArgument("invalid JSON: expected an object")
    if body.get("ClusterVolumeSpec"):
        raise InvalidArgument("cluster volumes are not supported by Berth")
    record = await _backend(request).create(
        str(body.get("Name") or ""), str(body.get("Driver") or ""), _string_map(body.get("DriverOpts"), "DriverOpts"),
        _string_map(body.get("Labels"), "Labels"))
    return json_response(VolumeBackend.view(record), status=201)


async def get_volume(request: web.Request) -> web.StreamResponse:
    return json_response(VolumeBackend.view(await _backend(request).get(request.match_info["name"])))


async def delete_volume(request: web.Request) -> web.StreamResponse:
    await _backend(request).remove(request.match_info["name"], force=bool_value(request, "force"))
    return web.Response(status=204)


async def post_volumes_prune(request: web.Request) -> web.StreamResponse:
    filters = parse_filters(request.query.get("filters"), PRUNE_FILTERS)
    version = request.match_info.get("api_version")
    if version and tuple(int(p) for p in version.split(".")) < (1, 42):
        filters.setdefault("all", ["true"])  # before API 1.42, prune removed named volumes too
    return json_response(await _backend(request).prune(filters))


async def put_volume(request: web.Request) -> web.StreamResponse:
    raise Unavailable("volume update only valid for cluster volumes, but swarm is unavailable")


def register(app: web.Application) -> None:
    add_route(app, "GET", "/volumes", get_volumes)
    add_route(app, "POST", "/volumes/create", post_volumes_create)
    add_route(app, "POST", "/volumes/prune", post_volumes_prune)
    add_route(app, "GET", "/volumes/{name}", get_volume)
    add_route(app, "PUT", "/volumes/{name}", put_volume)
    add_route(app, "DELETE", "/volumes/{name}", delete_volume)
