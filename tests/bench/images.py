"""The images both engines get: busybox-static (``docker load``) and a ~100 MB multi-layer image
pushed to a local Debian docker-registry by our own small uploader (so setting up never depends on
either engine's push), plus the machine's raw ``gunzip`` speed on the same layers."""

from __future__ import annotations

import gzip
import http.client
import json
import random
import shutil
import subprocess
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support import busybox

SCHEMA2 = "application/vnd.docker.distribution.manifest.v2+json"
LAYER_GZ = "application/vnd.docker.image.rootfs.diff.tar.gzip"
CONFIG = "application/vnd.docker.container.image.v1+json"
MB = 1_000_000


@dataclass
class BuiltImage:
    image: busybox.Image
    compressed: list[bytes]

    @property
    def compressed_size(self) -> int:
        return sum(len(c) for c in self.compressed)

    @property
    def size(self) -> int:
        return sum(len(layer) for layer in self.image.layers)


def _text(rng: random.Random, size: int) -> bytes:
    """Log-like lines: gzip shrinks them several times."""
    words = [b"GET", b"POST", b"/api/v1/items", b"200", b"404", b"ok", b"cache-miss", b"user", b"latency_ms"]
    out = bytearray()
    n = 0
    while len(out) < size:
        out += b"%08d %s %s %d\n" % (n, rng.choice(words), rng.choice(words), rng.randint(0, 99999))
        n += 1
    return bytes(out[:size])


def big_image(tag: str, seed: int = 7) -> BuiltImage:
    """~100 MB in five layers: busybox, 25 MB random, 30 MB text, 20 MB random, and 2,000 small
    files (half random, half text), so both byte throughput and per-entry cost show. The base
    layer carries a marker file, so no layer is shared with the loaded busybox image and a cold
    pull must fetch every one."""
    rng = random.Random(seed)
    D, F = tarfile.DIRTYPE, tarfile.REGTYPE
    E = busybox.Entry
    layers = [
        [*busybox.busybox_entries(), E("etc/berth-bench", F, b"big image\n")],
        [E("data", D, mode=0o755), E("data/random1.bin", F, rng.randbytes(25 * MB))],
        [E("data", D, mode=0o755), E("data/app.log", F, _text(rng, 30 * MB))],
        [E("data", D, mode=0o755), E("data/random2.bin", F, rng.randbytes(20 * MB))],
        [E("data", D, mode=0o755), E("data/small", D, mode=0o755),
         *(E(f"data/small/f{i:04d}", F, rng.randbytes(12_000) if i % 2 else _text(rng, 12_000))
           for i in range(2000))],
    ]
    tars = [busybox.layer_tar(entries) for entries in layers]
    image = busybox.Image(layers=tars, config={"Env": [busybox.PATH_ENV], "Cmd": ["sh"]}, tags=[tag])
    return BuiltImage(image, [gzip.compress(t, compresslevel=6, mtime=0) for t in tars])


class RegistryUploader:
    """Monolithic blob uploads and a schema-2 manifest PUT, over plain HTTP to 127.0.0.1."""

    def __init__(self, host: str) -> None:
        self.host = host

    def _conn(self) -> http.client.HTTPConnection:
        hostname, port = self.host.rsplit(":", 1)
        return http.client.HTTPConnection(hostname, int(port), timeout=120)

    def _blob(self, repo: str, data: bytes) -> tuple[str, int]:
        digest = busybox.sha256(data)
        conn = self._conn()
        try:
            conn.request("HEAD", f"/v2/{repo}/blobs/{digest}")
            resp = conn.getresponse()
            resp.read()
            if resp.status == 200:
                return digest, len(data)
            conn.request("POST", f"/v2/{repo}/blobs/uploads/", body=b"")
            resp = conn.getresponse()
            resp.read()
            if resp.status != 202:
                raise RuntimeError(f"upload start -> {resp.status}")
            location = resp.headers["Location"]
            location = location.split(self.host, 1)[-1] if "://" in location else location
            sep = "&" if "?" in location else "?"
            conn.request("PUT", f"{location}{sep}digest={digest}", body=data,
                         headers={"Content-Type": "application/octet-stream"})
            resp = conn.getresponse()
            resp.read()
            if resp.status != 201:
                raise RuntimeError(f"blob PUT -> {resp.status}")
            return digest, len(data)
        finally:
            conn.close()

    def push(self, repo: str, tag: str, image: busybox.Image, compressed: list[bytes]) -> str:
        config = image.config_json()
        config_digest, config_size = self._blob(repo, config)
        layers = []
        for blob in compressed:
            digest, size = self._blob(repo, blob)
            layers.append({"mediaType": LAYER_GZ, "digest": digest, "size": size})
        manifest = json.dumps({"schemaVersion": 2, "mediaType": SCHEMA2,
                               "config": {"mediaType": CONFIG, "digest": config_digest, "size": config_size},
                               "layers": layers}).encode()
        conn = self._conn()
        try:
            conn.request("PUT", f"/v2/{repo}/manifests/{tag}", body=manifest, headers={"Content-Type": SCHEMA2})
            resp = conn.getresponse()
            resp.read()
            if resp.status != 201:
                raise RuntimeError(f"manifest PUT -> {resp.status}")
        finally:
            conn.close()
        return busybox.sha256(manifest)


def ceilings(blobs: list[bytes], work: Path, rounds: int = 3) -> dict[str, float]:
    """MB/s of compressed input, best of ``rounds``, one layer after another, through the system's
    ``gzip -dc`` (decompression alone) and ``tar -xzf`` (decompression and file creation, the least
    any pull must do): the ceilings for a pull on this machine."""
    work.mkdir(parents=True, exist_ok=True)
    files = []
    for i, blob in enumerate(blobs):
        path = work / f"layer{i}.tar.gz"
        path.write_bytes(blob)
        files.append(path)
    total = sum(len(b) for b in blobs) / MB
    out = {}
    for name, argv in (("gzip -dc", ["gzip", "-dc"]), ("tar -xzf", ["tar", "-xzf"])):
        best = float("inf")
        for r in range(rounds):
            target = work / f"x{r}"
            target.mkdir()
            t0 = time.perf_counter()
            for path in files:
                args = [*argv, str(path)] + (["-C", str(target)] if argv[0] == "tar" else [])
                subprocess.run(args, stdout=subprocess.DEVNULL, check=True, timeout=120)
            best = min(best, time.perf_counter() - t0)
            shutil.rmtree(target)
        out[name] = total / best
    shutil.rmtree(work)
    return out
