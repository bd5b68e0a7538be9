"""Build test images from Debian's busybox-static: a rootfs directory, layer tars, and archives in
``docker save`` (manifest.json) and OCI image layout form. Deterministic: the same inputs give the
same digests, so image ids are stable across runs.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

BUSYBOX = "/bin/busybox"
MTIME = 1_700_000_000
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

PASSWD = """root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
bin:x:2:2:bin:/bin:/bin/false
www-data:x:33:33:www-data:/var/www:/bin/false
operator:x:37:37:Operator:/var:/bin/false
nobody:x:65534:65534:nobody:/home:/bin/false
"""
GROUP = """root:x:0:
daemon:x:1:
bin:x:2:
tty:x:5:
wheel:x:10:root
www-data:x:33:
operator:x:37:
users:x:100:
nogroup:x:65534:
"""


def applets() -> list[str]:
    """Install paths of every applet (``bin/sh``, ``usr/bin/env`` …) of the host's busybox."""
    out = subprocess.run([BUSYBOX, "--list-full"], check=True, capture_output=True, text=True).stdout
    return sorted(line.strip() for line in out.splitlines() if line.strip())


@dataclass
class Entry:
    """One tar entry of a layer we build: a dir, file, symlink or hardlink."""

    name: str
    kind: bytes = tarfile.REGTYPE
    data: bytes = b""
    mode: int = 0o644
    linkname: str = ""
    uid: int = 0
    gid: int = 0


def busybox_entries() -> list[Entry]:
    with open(BUSYBOX, "rb") as f:
        binary = f.read()
    entries = [Entry(d, tarfile.DIRTYPE, mode=0o755) for d in
               ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "etc", "root", "home", "var", "var/www",
                "proc", "sys", "dev")]
    entries[6].mode = 0o700  # root
    entries.append(Entry("tmp", tarfile.DIRTYPE, mode=0o1777))
    entries.append(Entry("bin/busybox", data=binary, mode=0o755))
    for path in applets():
        if path == "bin/busybox":
            continue
        directory = path.rsplit("/", 1)[0]
        target = "busybox" if directory == "bin" else "../" * path.count("/") + "bin/busybox"
        entries.append(Entry(path, tarfile.SYMTYPE, linkname=target, mode=0o777))
    entries.append(Entry("etc/passwd", data=PASSWD.encode()))
    entries.append(Entry("etc/group", data=GROUP.encode()))
    entries.append(Entry("etc/hostname", data=b"busybox\n"))
    return entries


def layer_tar(entries: Iterable[Entry]) -> bytes:
    """An uncompressed, deterministic layer tar of ``entries`` (parents must come first)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.type = e.kind
            info.mode = e.mode
            info.mtime = MTIME
            info.uid, info.gid = e.uid, e.gid
            info.uname = info.gname = ""
            if e.kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                info.linkname = e.linkname
            if e.kind == tarfile.REGTYPE:
                info.size = len(e.data)
                tar.addfile(info, io.BytesIO(e.data))
            else:
                tar.addfile(info)
    return buf.getvalue()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Image:
    """An image made of layer tars (uncompressed) plus a config."""

    layers: list[bytes]
    config: dict[str, object] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    history: list[dict[str, object]] = field(default_factory=list)

    @property
    def diff_ids(self) -> list[str]:
        return [sha256(layer) for layer in self.layers]

    def config_json(self) -> bytes:
        doc = {
            "architecture": {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine),
            "os": "linux",
            "created": "2023-11-14T22:13:20Z",
            "config": self.config,
            "rootfs": {"type": "layers", "diff_ids": self.diff_ids},
            "history": self.history or [{"created": "2023-11-14T22:13:20Z", "created_by": "berth tests"}
                                        for _ in self.layers],
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @property
    def id(self) -> str:
        return sha256(self.config_json())

    def chain_ids(self) -> list[str]:
        chain: list[str] = []
        for diff_id in self.diff_ids:
            chain.append(diff_id if not chain else sha256(f"{chain[-1]} {diff_id}".encode()))
        return chain


def busybox_image(tags: Sequence[str] = ("busybox:latest",), extra_layers: Sequence[bytes] = (),
                  config: dict[str, object] | None = None) -> Image:
    cfg: dict[str, object] = {"Env": [PATH_ENV], "Cmd": ["sh"]}
    cfg.update(config or {})
    return Image(layers=[layer_tar(busybox_entries()), *extra_layers], config=cfg, tags=list(tags))


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = MTIME
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _add_dir(tar: tarfile.TarFile, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    info.mtime = MTIME
    tar.addfile(info)


def write_docker_save(images: Sequence[Image], path: Path) -> Path:
    """A legacy ``docker save`` archive: manifest.json, repositories, <id>.json, <layer>/layer.tar."""
    manifest = []
    repositories: dict[str, dict[str, str]] = {}
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        written: set[str] = set()
        for image in images:
            config_name = image.id.split(":", 1)[1] + ".json"
            if config_name not in written:
                _add_bytes(tar, config_name, image.config_json())
                written.add(config_name)
            layer_paths = []
            for chain in image.chain_ids():
                layer_dir = chain.split(":", 1)[1]
                layer_paths.append(f"{layer_dir}/layer.tar")
            for layer_dir_path, layer in zip(layer_paths, image.layers, strict=True):
                layer_dir = layer_dir_path.split("/")[0]
                if layer_dir in written:
                    continue
                written.add(layer_dir)
                _add_dir(tar, layer_dir)
                _add_bytes(tar, f"{layer_dir}/VERSION", b"1.0")
                _add_bytes(tar, f"{layer_dir}/json", json.dumps({"id": layer_dir}).encode())
                _add_bytes(tar, layer_dir_path, layer)
            manifest.append({"Config": config_name, "RepoTags": image.tags or None, "Layers": layer_paths})
            for tag in image.tags:
                repo, _, name = tag.rpartition(":")
                repositories.setdefault(repo, {})[name] = layer_paths[-1].split("/")[0]
        _add_bytes(tar, "manifest.json", json.dumps(manifest).encode())
        if repositories:
            _add_bytes(tar, "repositories", json.dumps(repositories).encode())
    return path


def write_oci_layout(images: Sequence[Image], path: Path, *, gzip_layers: bool = True) -> Path:
    """An OCI image layout tarball (oci-layout, index.json, blobs/sha256/…), layers gzipped."""
    blobs: dict[str, bytes] = {}
    index_manifests = []
    for image in images:
        layer_descs = []
        for layer in image.layers:
            data = gzip.compress(layer, mtime=0) if gzip_layers else layer
            digest = sha256(data)
            blobs[digest] = data
            layer_descs.append({
                "mediaType": "application/vnd.oci.image.layer.v1.tar" + ("+gzip" if gzip_layers else ""),
                "digest": digest, "size": len(data)})
        config = image.config_json()
        blobs[image.id] = config
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": image.id,
                       "size": len(config)},
            "layers": layer_descs}, separators=(",", ":")).encode()
        manifest_digest = sha256(manifest)
        blobs[manifest_digest] = manifest
        for tag in image.tags or [""]:
            desc: dict[str, object] = {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                                       "digest": manifest_digest, "size": len(manifest)}
            if tag:
                desc["annotations"] = {"io.containerd.image.name": _full_name(tag),
                                       "org.opencontainers.image.ref.name": tag.rpartition(":")[2]}
            index_manifests.append(desc)
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        _add_bytes(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        _add_bytes(tar, "index.json", json.dumps({"schemaVersion": 2, "manifests": index_manifests}).encode())
        _add_dir(tar, "blobs")
        _add_dir(tar, "blobs/sha256")
        for digest, data in sorted(blobs.items()):
            _add_bytes(tar, "blobs/sha256/" + digest.split(":", 1)[1], data)
    return path


def _full_name(tag: str) -> str:
    repo, _, name = tag.rpartition(":")
    if "/" not in repo:
        repo = "library/" + repo
    first = repo.split("/", 1)[0]
    if "." not in first and ":" not in first and first != "localhost":
        repo = "docker.io/" + repo
    return f"{repo}:{name}"


def populate_rootfs(root: Path) -> Path:
    """Write the busybox image's files into a plain directory (for runtime tests without layers)."""
    for e in busybox_entries():
        target = root / e.name
        if e.kind == tarfile.DIRTYPE:
            target.mkdir(parents=True, exist_ok=True)
            os.chmod(target, e.mode)
        elif e.kind == tarfile.SYMTYPE:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(e.linkname, target)
        elif e.name == "bin/busybox":
            shutil.copy2(BUSYBOX, target)
        else:
            target.write_bytes(e.data)
            os.chmod(target, e.mode)
    return root
