"""Cold pull throughput of the snapshotter against the local docker-registry, next to what the
same layers cost with the system's tools: ``python -m tests.bench.pull_snapshotter``.

A ~100 MB (uncompressed) image of five gzip layers — many small files, random data, compressible
text — is pushed to Debian's ``docker-registry`` on 127.0.0.1, then pulled cold (fresh content
store and snapshots each round) through ``LocalImages.pull``. References on the same blobs:
``gzip -dc`` (decompression alone, one layer after another) and ``tar -xzf`` (decompression and
file creation, what any pull must at least do). Throughput is compressed MB per second (as
``make bench`` reports pulls), and uncompressed MB/s alongside. Everything started is stopped by
PID; the work directory is removed.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import redis.asyncio as aioredis

from common import redis_server
from common.keys import Keys
from snapshotter.api import PullResult, RegistryAuth
from snapshotter.content import LocalContentStore
from snapshotter.distribution import RegistryOptions
from snapshotter.images import LocalImages
from snapshotter.overlay import OverlaySnapshotter
from tests.snapshotter.registries import build, publish
from tests.support import busybox
from tests.support.registry import Registry

MB = 1_000_000


def _text(size: int, seed: int) -> bytes:
    words = [f"word{(i * 7919 + seed) % 5003}" for i in range(4096)]
    line = (" ".join(words) + "\n").encode()
    return (line * (size // len(line) + 1))[:size]


def make_image() -> busybox.Image:
    small = [busybox.Entry("usr/share/doc", tarfile.DIRTYPE, mode=0o755)]
    small += [busybox.Entry(f"usr/share/doc/f{i:04d}", data=_text(4000, i)) for i in range(2000)]
    layers = [
        busybox.layer_tar([*busybox.busybox_entries(), *small]),
        busybox.layer_tar([busybox.Entry("opt", tarfile.DIRTYPE, mode=0o755),
                           busybox.Entry("opt/random.bin", data=os.urandom(25 * MB))]),
        busybox.layer_tar([busybox.Entry("srv", tarfile.DIRTYPE, mode=0o755),
                           *(busybox.Entry(f"srv/log{i}.txt", data=_text(5 * MB, 100 + i)) for i in range(5))]),
        busybox.layer_tar([busybox.Entry("var/lib", tarfile.DIRTYPE, mode=0o755),
                           *(busybox.Entry(f"var/lib/r{i}", data=os.urandom(2 * MB)) for i in range(10))]),
        busybox.layer_tar([busybox.Entry("data", tarfile.DIRTYPE, mode=0o755),
                           busybox.Entry("data/corpus.txt", data=_text(20 * MB, 7))]),
    ]
    return busybox.Image(layers=layers)


def _best(seconds: list[float]) -> float:
    return min(seconds)


def write_layers(blobs: list[bytes], work: Path) -> list[Path]:
    work.mkdir(parents=True, exist_ok=True)
    files = []
    for i, blob in enumerate(blobs):
        path = work / f"layer{i}.tar.gz"
        path.write_bytes(blob)
        files.append(path)
    subprocess.run(["sync", "-f", str(work)], check=True)
    return files


def gunzip_time(files: list[Path]) -> float:
    """Seconds of ``gzip -dc`` over all layers, one after another (decompression alone)."""
    start = time.perf_counter()
    for path in files:
        subprocess.run(["gzip", "-dc", str(path)], stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def untar_time(files: list[Path], target: Path) -> float:
    """Seconds of ``tar -xzf`` of all layers into one directory, synced (as a pull's must be)."""
    target.mkdir()
    start = time.perf_counter()
    for path in files:
        subprocess.run(["tar", "-xzf", str(path), "-C", str(target), "--no-same-owner"], check=True)
    subprocess.run(["sync", "-f", str(target)], check=True)
    seconds = time.perf_counter() - start
    shutil.rmtree(target)
    subprocess.run(["sync", "-f", str(target.parent)], check=True)  # no writeback left for the next one
    return seconds


async def pull_time(host: str, ref: str, work: Path, redis_socket: Path, n: int) -> float:
    """Seconds of one cold pull (fresh store and snapshots), synced."""
    client = aioredis.Redis(unix_socket_path=str(redis_socket))
    try:
        root = work / f"pull{n}"
        keys = Keys(ns=f"bench{n}")
        overlay = await OverlaySnapshotter.open(root=root, redis=client, keys=keys, node="bench")
        content = await LocalContentStore.open(root=root / "content")
        images = LocalImages(snapshotter=overlay, content=content, spool_dir=root / "tmp",
                             registry=RegistryOptions(insecure=lambda h: h == host))
        try:
            start = time.perf_counter()
            result = None
            async for event in images.pull(ref, RegistryAuth()):
                if isinstance(event, PullResult):
                    result = event
            await asyncio.to_thread(subprocess.run, ["sync", "-f", str(root)], check=True)
            seconds = time.perf_counter() - start
            assert result is not None
        finally:
            await images.aclose()
            await client.flushdb()
            await asyncio.to_thread(shutil.rmtree, root, True)
            await asyncio.to_thread(subprocess.run, ["sync", "-f", str(work)], check=True)
    finally:
        await client.aclose()
    return seconds


async def main_async(rounds: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="berth-pull-bench-"))
    registry = Registry(work / "registry", "plain")
    redis_cfg = redis_server.RedisConfig(dir=work / "redis", socket=work / "redis.sock", appendonly=False)
    redis_proc = None
    try:
        redis_proc = redis_server.spawn(redis_cfg)
        await redis_server.wait_ready(redis_cfg.socket, proc=redis_proc)
        registry.start()
        print("building the image…", file=sys.stderr)
        image = await asyncio.to_thread(make_image)
        blobs = await asyncio.to_thread(lambda: [gzip.compress(layer, compresslevel=6, mtime=0)
                                                 for layer in image.layers])
        built = build(image, blobs=blobs)
        await publish(registry.host, "bench/big", "v1", built)
        compressed = sum(len(b) for b in blobs)
        uncompressed = sum(len(layer) for layer in image.layers)
        files = await asyncio.to_thread(write_layers, blobs, work / "tools")
        gunzips, untars, pulls = [], [], []
        for n in range(rounds):  # interleaved, so no one runs in another's writeback
            gunzips.append(await asyncio.to_thread(gunzip_time, files))
            untars.append(await asyncio.to_thread(untar_time, files, work / "x"))
            pulls.append(await pull_time(registry.host, f"{registry.host}/bench/big:v1", work, redis_cfg.socket, n))
        gunzip, untar, best = _best(gunzips), _best(untars), _best(pulls)
        print(f"image: {len(blobs)} layers, {compressed / MB:.1f} MB compressed, {uncompressed / MB:.1f} MB "
              f"uncompressed; best of {rounds}; {os.cpu_count()} CPUs")
        print(f"{'':32}{'seconds':>9}{'MB/s (gz)':>11}{'MB/s (tar)':>12}")
        for name, seconds in (("gzip -dc (decompress only)", gunzip), ("tar -xzf (decompress+write)", untar),
                              ("berth cold pull", best)):
            print(f"{name:32}{seconds:9.2f}{compressed / MB / seconds:11.1f}{uncompressed / MB / seconds:12.1f}")
        print(f"pull / gzip -dc: {gunzip / best:.2f}x   pull / tar -xzf: {untar / best:.2f}x")
        for name, times in (("gzip -dc", gunzips), ("tar -xzf", untars), ("pull", pulls)):
            print(f"  {name} rounds: {', '.join(f'{t:.2f}s' for t in times)}")
    finally:
        registry.stop()
        if redis_proc is not None:
            redis_server.stop(redis_proc)
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    asyncio.run(main_async(parser.parse_args().rounds))


if __name__ == "__main__":
    main()
