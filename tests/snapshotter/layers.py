"""Building layer tars, blobs and archives for the tests (all with ``tarfile`` in memory)."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from snapshotter.api import ContentStore, LayerRef
from tests.support.busybox import MTIME, sha256


@dataclass
class E:
    """One tar entry. ``kind`` is a tarfile type; data only for regular files."""

    name: str
    kind: bytes = tarfile.REGTYPE
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    linkname: str = ""
    mtime: int = MTIME
    pax: dict[str, str] = field(default_factory=dict)
    devmajor: int = 0
    devminor: int = 0


def d(name: str, mode: int = 0o755, **kw: object) -> E:
    return E(name, tarfile.DIRTYPE, mode=mode, **kw)  # type: ignore[arg-type]


def f(name: str, data: bytes = b"x", mode: int = 0o644, **kw: object) -> E:
    return E(name, tarfile.REGTYPE, data=data, mode=mode, **kw)  # type: ignore[arg-type]


def sym(name: str, target: str, **kw: object) -> E:
    return E(name, tarfile.SYMTYPE, linkname=target, mode=0o777, **kw)  # type: ignore[arg-type]


def hard(name: str, target: str) -> E:
    return E(name, tarfile.LNKTYPE, linkname=target)


def tar_bytes(entries: Iterable[E]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.type = e.kind
            info.mode = e.mode
            info.uid, info.gid = e.uid, e.gid
            info.uname = info.gname = ""
            info.mtime = e.mtime
            info.linkname = e.linkname
            info.devmajor, info.devminor = e.devmajor, e.devminor
            info.pax_headers = dict(e.pax)
            if e.kind == tarfile.REGTYPE:
                info.size = len(e.data)
                tar.addfile(info, io.BytesIO(e.data))
            else:
                tar.addfile(info)
    return buf.getvalue()


async def chunks_of(data: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start:start + size]


async def collect(it: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in it])


async def store_layers(content: ContentStore, tars: Sequence[bytes], *, compress: bool = True) -> list[LayerRef]:
    """Write layer blobs (gzipped unless told) and describe them as an image would."""
    refs = []
    for raw in tars:
        blob = gzip.compress(raw, mtime=0) if compress else raw
        info = await content.write(chunks_of(blob), sha256(blob), len(blob))
        refs.append(LayerRef(digest=info.digest, diff_id=sha256(raw),
                             media_type="application/vnd.oci.image.layer.v1.tar" + ("+gzip" if compress else ""),
                             size=info.size))
    return refs


def read_tar(data: bytes) -> dict[str, bytes]:
    """Regular files of a tarball by name (directories map to b"")."""
    out = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for m in tar:
            src = tar.extractfile(m)
            out[m.name] = src.read() if src else b""
    return out


def docker_save_blobs(manifest: list[dict[str, object]], files: dict[str, bytes], path: Path) -> Path:
    """An archive with the given ``manifest.json`` and member files (any layout)."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        body = json.dumps(manifest).encode()
        info = tarfile.TarInfo("manifest.json")
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
    return path


def oci_layout(config: bytes, layer_blobs: Sequence[bytes], path: Path, *, name: str = "") -> Path:
    """An OCI image layout tarball of one image made of exactly these blobs (gzip or plain)."""
    blobs = {sha256(config): config}
    descs = []
    for blob in layer_blobs:
        blobs[sha256(blob)] = blob
        media = "application/vnd.oci.image.layer.v1.tar" + ("+gzip" if blob[:2] == b"\x1f\x8b" else "")
        descs.append({"mediaType": media, "digest": sha256(blob), "size": len(blob)})
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": sha256(config), "size": len(config)},
                           "layers": descs}).encode()
    blobs[sha256(manifest)] = manifest
    desc: dict[str, object] = {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                               "digest": sha256(manifest), "size": len(manifest)}
    if name:
        desc["annotations"] = {"io.containerd.image.name": name}
    files = {"oci-layout": b'{"imageLayoutVersion":"1.0.0"}',
             "index.json": json.dumps({"schemaVersion": 2, "manifests": [desc]}).encode()}
    files.update({f"blobs/sha256/{k[7:]}": v for k, v in blobs.items()})
    write_archive(files, path)
    return path


def write_archive(files: dict[str, bytes], path: Path) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def gzip_bytes(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)
