"""Routes of containers' files: ``docker diff``, ``export``, ``cp`` and ``commit``. Parse → call the
backend → write; errors are raised, never written here."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from apiserver.app import add_route
from apiserver.containers.archive import CommitOptions, ContainerFilesBackend, stat_header
from apiserver.httputil import bool_value, json_response, read_json
from protos.errors import InvalidArgument

FILES: web.AppKey[ContainerFilesBackend] = web.AppKey("container_files", ContainerFilesBackend)

STAT_HEADER = "X-Docker-Container-Path-Stat"
TAR_TYPE = "application/x-tar"
_BODY_CHUNK = 1 << 20


def _backend(request: web.Request) -> ContainerFilesBackend:
    return request.app[FILES]


async def get_container_changes(request: web.Request) -> web.StreamResponse:
    return json_response(await _backend(request).changes(request.match_info["id"]))


async def _stream(request: web.Request, chunks: AsyncIterator[bytes], headers: dict[str, str]) -> web.StreamResponse:
    resp = web.StreamResponse(status=200, headers=headers)
    resp.content_type = TAR_TYPE
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    try:
        async for chunk in chunks:
            await resp.write(chunk)
        await resp.write_eof()
    finally:
        closer = getattr(chunks, "aclose", None)
        if closer is not None:
            await closer()
    return resp


async def get_container_export(request: web.Request) -> web.StreamResponse:
    return await _stream(request, await _backend(request).export(request.match_info["id"]), {})


def _path(request: web.Request) -> str:
    path = request.query.get("path", "")
    if not path:
        raise InvalidArgument("bad parameter: path cannot be empty")
    return path


async def head_container_archive(request: web.Request) -> web.StreamResponse:
    st = await _backend(request).stat(request.match_info["id"], _path(request))
    return web.Response(status=200, headers={STAT_HEADER: stat_header(st)})


async def get_container_archive(request: web.Request) -> web.StreamResponse:
    st, chunks = await _backend(request).get(request.match_info["id"], _path(request))
    return await _stream(request, chunks, {STAT_HEADER: stat_header(st)})


async def _body(request: web.Request) -> AsyncIterator[bytes]:
    async for chunk in request.content.iter_chunked(_BODY_CHUNK):
        yield chunk


async def put_container_archive(request: web.Request) -> web.StreamResponse:
    await _backend(request).put(request.match_info["id"], _path(request), _body(request),
                                copy_uid_gid=bool_value(request, "copyUIDGID"),
                                no_overwrite_dir_non_dir=bool_value(request, "noOverwriteDirNonDir"))
    return web.Response(status=200)


async def post_commit(request: web.Request) -> web.StreamResponse:
    config = await read_json(request, required=False)
    if config is not None and not isinstance(config, dict):
        raise InvalidArgument("invalid JSON: expected an object")
    options = CommitOptions(
        repo=request.query.get("repo", ""), tag=request.query.get("tag", ""),
        comment=request.query.get("comment", ""), author=request.query.get("author", ""),
        pause=bool_value(request, "pause", default=True), changes=tuple(request.query.getall("changes", [])),
        config=config or None)
    image_id = await _backend(request).commit(request.query.get("container", ""), options)
    return json_response({"Id": image_id}, status=201)


def register(app: web.Application) -> None:
    add_route(app, "GET", "/containers/{id}/changes", get_container_changes)
    add_route(app, "GET", "/containers/{id}/export", get_container_export)
    add_route(app, "HEAD", "/containers/{id}/archive", head_container_archive)
    add_route(app, "GET", "/containers/{id}/archive", get_container_archive)
    add_route(app, "PUT", "/containers/{id}/archive", put_container_archive)
    add_route(app, "POST", "/commit", post_commit)
