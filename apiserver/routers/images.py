"""Image routes: parse → call the backend → write."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from apiserver.app import add_route
from apiserver.httputil import (
    bool_value,
    json_response,
    parse_filters,
    read_json,
    start_json_stream,
    stream_error,
    write_json_line,
)
from apiserver.images.backend import LIST_FILTERS, ImageBackend
from apiserver.images.distribution import DistributionBackend, registry_auth
from protos.errors import BerthError, InvalidArgument

IMAGES: web.AppKey[ImageBackend] = web.AppKey("images", ImageBackend)
DISTRIBUTION: web.AppKey[DistributionBackend] = web.AppKey("distribution", DistributionBackend)

_CHUNK = 1024 * 1024


def _backend(request: web.Request) -> ImageBackend:
    return request.app[IMAGES]


async def get_images_json(request: web.Request) -> web.StreamResponse:
    filters = parse_filters(request.query.get("filters"), LIST_FILTERS)
    if request.query.get("filter"):  # the pre-1.25 way to filter by reference
        filters.setdefault("reference", []).append(request.query["filter"])
    return json_response(await _backend(request).summaries(all=bool_value(request, "all"), filters=filters))


async def get_image_json(request: web.Request) -> web.StreamResponse:
    return json_response(await _backend(request).inspect(request.match_info["name"]))


async def get_image_history(request: web.Request) -> web.StreamResponse:
    return json_response(await _backend(request).history(request.match_info["name"]))


async def post_image_tag(request: web.Request) -> web.StreamResponse:
    await _backend(request).tag(request.match_info["name"], request.query.get("repo", ""),
                                request.query.get("tag", ""))
    return web.Response(status=201)


async def delete_image(request: web.Request) -> web.StreamResponse:
    results = await _backend(request).remove(request.match_info["name"], force=bool_value(request, "force"),
                                             prune=not bool_value(request, "noprune"))
    return json_response(results)


async def _body_chunks(request: web.Request) -> AsyncIterator[bytes]:
    async for chunk in request.content.iter_chunked(_CHUNK):
        yield chunk


async def post_images_load(request: web.Request) -> web.StreamResponse:
    # Import first, so a bad archive is an HTTP error the CLI prints as such.
    return await _stream_messages(request, await _backend(request).load(_body_chunks(request)))


async def _save(request: web.Request, names: list[str]) -> web.StreamResponse:
    chunks = await _backend(request).save(names)
    iterator = aiter(chunks)
    first = await anext(iterator, b"")  # surface errors before the 200 goes out
    resp = web.StreamResponse(status=200)
    resp.content_type = "application/x-tar"
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    if first:
        await resp.write(first)
    async for chunk in iterator:
        await resp.write(chunk)
    await resp.write_eof()
    return resp


async def get_images_get(request: web.Request) -> web.StreamResponse:
    names = request.query.getall("names", [])
    if not names:
        raise InvalidArgument("no images specified")
    return await _save(request, list(names))


async def get_image_get(request: web.Request) -> web.StreamResponse:
    return await _save(request, [request.match_info["name"]])


async def _stream_messages(request: web.Request, messages: AsyncIterator[dict[str, Any]]) -> web.StreamResponse:
    resp = await start_json_stream(request)
    try:
        async for message in messages:
            await write_json_line(resp, message)
    except BerthError as err:
        await write_json_line(resp, stream_error(err.message))
    await resp.write_eof()
    return resp


async def post_images_create(request: web.Request) -> web.StreamResponse:
    dist = request.app[DISTRIBUTION]
    if request.query.get("fromSrc"):
        source = request.query["fromSrc"]
        if source != "-":
            raise InvalidArgument("importing from a URL is not supported by Berth; pipe the tarball (fromSrc=-)")
        message = await dist.import_image(
            _body_chunks(request), repo=request.query.get("repo", ""), tag=request.query.get("tag", ""),
            message=request.query.get("message", ""), changes=request.query.getall("changes", []),
            platform=request.query.get("platform", ""))
        return await _stream_messages(request, _one(message))
    from_image = request.query.get("fromImage", "")
    if not from_image:
        raise InvalidArgument("fromImage or fromSrc is required")
    auth = registry_auth(request.headers.get("X-Registry-Auth"))
    messages = await dist.pull(from_image, request.query.get("tag", ""), auth, request.query.get("platform", ""))
    return await _stream_messages(request, messages)


async def _one(message: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    yield message


async def post_image_push(request: web.Request) -> web.StreamResponse:
    auth = registry_auth(request.headers.get("X-Registry-Auth"))
    messages = await request.app[DISTRIBUTION].push(request.match_info["name"], request.query.get("tag", ""), auth)
    return await _stream_messages(request, messages)


async def post_auth(request: web.Request) -> web.StreamResponse:
    return json_response(await request.app[DISTRIBUTION].login(await read_json(request)))


async def post_images_prune(request: web.Request) -> web.StreamResponse:
    filters = parse_filters(request.query.get("filters"), ("dangling", "until", "label", "label!"))
    return json_response(await _backend(request).prune(filters))


async def get_system_df(request: web.Request) -> web.StreamResponse:
    return json_response(await _backend(request).disk_usage())


def register(app: web.Application) -> None:
    add_route(app, "GET", "/images/json", get_images_json)
    add_route(app, "POST", "/images/load", post_images_load)
    add_route(app, "GET", "/images/get", get_images_get)
    add_route(app, "POST", "/images/create", post_images_create)
    add_route(app, "POST", "/images/prune", post_images_prune)
    add_route(app, "GET", "/system/df", get_system_df)
    add_route(app, "GET", "/images/{name:.+}/json", get_image_json)
    add_route(app, "GET", "/images/{name:.+}/history", get_image_history)
    add_route(app, "GET", "/images/{name:.+}/get", get_image_get)
    add_route(app, "POST", "/images/{name:.+}/tag", post_image_tag)
    add_route(app, "POST", "/images/{name:.+}/push", post_image_push)
    add_route(app, "POST", "/auth", post_auth)
    add_route(app, "DELETE", "/images/{name:.+}", delete_image)
