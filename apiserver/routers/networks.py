"""Network routes: parse → call the backend → write (moby's ``api/server/router/network``)."""

from __future__ import annotations

from aiohttp import web

from apiserver.app import add_route
from apiserver.httputil import bool_value, json_response, parse_filters, read_json
from apiserver.networks.backend import LIST_FILTERS, PRUNE_FILTERS, NetworkBackend

NETWORKS: web.AppKey[NetworkBackend] = web.AppKey("networks", NetworkBackend)


def _backend(request: web.Request) -> NetworkBackend:
    return request.app[NETWORKS]


async def get_networks(request: web.Request) -> web.StreamResponse:
    filters = parse_filters(request.query.get("filters"), LIST_FILTERS)
    return json_response(await _backend(request).list_networks(filters))


async def get_network(request: web.Request) -> web.StreamResponse:
    network = await _backend(request).inspect(request.match_info["id"], verbose=bool_value(request, "verbose"))
    return json_response(network)


async def post_networks_create(request: web.Request) -> web.StreamResponse:
    id, warning = await _backend(request).create(await read_json(request))
    return json_response({"Id": id, "Warning": warning}, status=201)


async def delete_network(request: web.Request) -> web.StreamResponse:
    await _backend(request).remove(request.match_info["id"])
    return web.Response(status=204)


async def post_network_connect(request: web.Request) -> web.StreamResponse:
    await _backend(request).connect(request.match_info["id"], await read_json(request))
    return web.Response(status=200)


async def post_network_disconnect(request: web.Request) -> web.StreamResponse:
    await _backend(request).disconnect(request.match_info["id"], await read_json(request))
    return web.Response(status=200)


async def post_networks_prune(request: web.Request) -> web.StreamResponse:
    filters = parse_filters(request.query.get("filters"), PRUNE_FILTERS)
    return json_response({"NetworksDeleted": await _backend(request).prune(filters)})


def register(app: web.Application) -> None:
    add_route(app, "GET", "/networks", get_networks)
    add_route(app, "GET", "/networks/", get_networks)
    add_route(app, "POST", "/networks/create", post_networks_create)
    add_route(app, "POST", "/networks/prune", post_networks_prune)
    add_route(app, "GET", "/networks/{id}", get_network)
    add_route(app, "DELETE", "/networks/{id}", delete_network)
    add_route(app, "POST", "/networks/{id}/connect", post_network_connect)
    add_route(app, "POST", "/networks/{id}/disconnect", post_network_disconnect)
