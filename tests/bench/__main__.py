"""``python -m tests.bench`` (``make bench``): Berth against dockerd, side by side.

Starts Berth and — when Debian's docker.io is installed, or ``BENCH_DOCKER_HOST`` names one — a
dockerd on private sockets and roots, loads the same images into both, runs the scenarios of
issue 7 interleaved, profiles Berth where it misses a goal, and writes results.md, results.json
and ratios.png under ``bench-results/<timestamp>/``. Everything it starts is stopped by PID and
everything it creates is removed, even when interrupted; what could not be is listed in the report.
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import logging
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from tests.bench import scenarios
from tests.bench.engines import CLI, BerthEngine, Engine, ExternalDockerd, PrivateDockerd
from tests.bench.images import RegistryUploader, big_image
from tests.bench.measure import Deadline, Row
from tests.bench.report import render, write
from tests.support import busybox
from tests.support.daemon import REPO, unmount_below
from tests.support.registry import Registry

log = logging.getLogger("bench")

GROUPS: dict[str, Callable[[scenarios.Bench], Any]] = {
    "memory-idle": scenarios.memory_idle,
    "run": scenarios.run_rm,
    "phases": scenarios.create_start_rm,
    "exec": scenarios.exec_true,
    "stop": scenarios.stop_trapping,
    "logs": scenarios.logs_100k,
    "ps": scenarios.ps_many,
    "throughput": scenarios.throughput,
    "memory-containers": scenarios.memory_per_container,
    "shim": scenarios.shim_latency,
    "images": scenarios.pull_push_build,
    "memory-after": lambda b: scenarios.memory_idle(b, "idle after the run", goal=None),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__.splitlines()[0] if __doc__ else "")
    p.add_argument("--iterations", type=int, default=10, help="interleaved rounds per scenario (default 10)")
    p.add_argument("--heavy-iterations", type=int, default=3,
                   help="rounds of the 100-container throughput scenarios (default 3: ~20 s each on dockerd)")
    p.add_argument("--transfer-iterations", type=int, default=5,
                   help="rounds of the 100 MB pull and push scenarios (default 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds per engine first (default 2)")
    p.add_argument("--budget", type=float, default=840, help="seconds for the whole run (default 840)")
    p.add_argument("--only", default="", help=f"comma-separated groups: {','.join(GROUPS)}")
    p.add_argument("--results", type=Path, default=REPO / "bench-results", help="results parent directory")
    p.add_argument("--no-docker", action="store_true", help="Berth alone, even if dockerd is installed")
    p.add_argument("--no-profile", action="store_true", help="do not profile missed goals")
    p.add_argument("--render", type=Path, metavar="DIR", help="only rewrite DIR's results.md and ratios.png "
                   "from its results.json")
    return p.parse_args(argv)


def machine() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass
    debian = Path("/etc/debian_version").read_text().strip() if Path("/etc/debian_version").exists() else "?"
    return (f"{os.cpu_count()} cores, {model or platform.machine()}, {mem_kb / 1024 / 1024:.0f} GiB, "
            f"Linux {platform.release()}, Debian {debian}, Python {platform.python_version()}")


def commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("+changes" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def start_docker(args: argparse.Namespace, root: Path, token: str) -> tuple[Engine | None, str]:
    external = os.environ.get("BENCH_DOCKER_HOST", "")
    if args.no_docker:
        return None, "--no-docker"
    if external:
        return ExternalDockerd.connect(external), ""
    if not shutil.which("dockerd"):
        return None, "docker.io not installed (apt-get install docker.io; see README, Benchmarks)"
    return PrivateDockerd.start(root / "dockerd", token), ""


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        return 0 if render(args.render) else 1
    if os.geteuid() != 0:
        print("make bench needs root (namespaces, overlayfs, cgroups), as make test does", file=sys.stderr)
        return 2
    only = {g.strip() for g in args.only.split(",") if g.strip()}
    unknown = only - set(GROUPS)
    if unknown:
        print(f"unknown groups: {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    started = datetime.datetime.now(datetime.UTC)
    results = args.results / started.strftime("%Y%m%d-%H%M%S")
    results.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S",
                        handlers=[logging.StreamHandler(sys.stdout), logging.FileHandler(results / "bench.log")])
    signal.signal(signal.SIGTERM, _interrupt)
    deadline = Deadline(args.budget)
    token = secrets.token_hex(3)
    root = Path(f"/tmp/berth-bench-{token}")
    root.mkdir(mode=0o700)
    meta: dict[str, Any] = {"started": started.strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
                            "cores": os.cpu_count(), "load_start": load(), "commit": commit(),
                            "iterations": args.iterations, "warmup": args.warmup, "results": str(results)}
    log.info("bench %s: root %s, results %s, load %s", token, root, results, meta["load_start"])
    engines: list[Engine] = []
    registry: Registry | None = None
    bench: scenarios.Bench | None = None
    leftovers: list[str] = []
    status = 0
    try:
        cli = CLI(root / "docker-config")
        meta["cli"] = cli.version()
        tar = busybox.write_docker_save([busybox.busybox_image()], root / "busybox.tar")
        registry = Registry(root / "registry").start()
        t0 = time.monotonic()
        big = big_image(f"{registry.host}/bench/big:latest")
        uploader = RegistryUploader(registry.host)
        uploader.push("bench/big", "latest", big.image, big.compressed)
        small = busybox.busybox_image()
        uploader.push("bench/busybox", "latest", small, [gzip.compress(t, mtime=0) for t in small.layers])
        log.info("registry %s: big image %.0f MB (%.0f MB compressed, %d layers) in %.1fs", registry.host,
                 big.size / 1e6, big.compressed_size / 1e6, len(big.compressed), time.monotonic() - t0)
        try:
            berth = BerthEngine.start(root / "berth", token)
        except RuntimeError as err:  # a start-up failure is a finding, but should not cost the run
            first = str(err).splitlines()[0]
            log.warning("berthd failed to start, trying once more: %s", first)
            meta["berth_start_failure"] = str(err)[-1500:]
            berth = BerthEngine.start(root / "berth-2", token)
        engines.append(berth)
        meta["berth"] = berth.version
        docker, why = start_docker(args, root, token)
        if docker is not None:
            engines.append(docker)
            meta["dockerd"] = docker.version + (f" (bridge {docker.bridge} {docker.subnet})"
                                                if isinstance(docker, PrivateDockerd) else " (BENCH_DOCKER_HOST)")
        else:
            meta["dockerd_skipped"] = why
            log.info("dockerd comparison skipped: %s", why)
        for engine in engines:
            cli.run(engine.host, "load", "-i", str(tar))
        bench = scenarios.Bench(berth=berth, docker=docker, cli=cli, root=root, deadline=deadline,
                                registry=registry.host, big=big, iterations=args.iterations,
                                heavy_iterations=args.heavy_iterations,
                                transfer_iterations=args.transfer_iterations, warmup=args.warmup,
                                profile_dir=None if args.no_profile else results / "profiles")
        for name, fn in GROUPS.items():
            if only and name not in only:
                continue
            if deadline.left() < 30:
                bench.add(Row(name, "-", "", note="skipped: time budget spent"))
                continue
            t0 = time.monotonic()
            try:
                fn(bench)
            except Exception as err:
                log.exception("scenario group %s failed", name)
                bench.add(Row(f"{name}", "-", "", note=f"error: {str(err)[:200]}"))
                status = 1
                for engine in engines:
                    try:
                        scenarios.remove_all(engine)
                    except Exception:
                        log.exception("clean-up after %s failed", name)
            log.info("group %s: %.0fs (elapsed %.0fs)", name, time.monotonic() - t0, deadline.elapsed())
    except KeyboardInterrupt:
        log.warning("interrupted: cleaning up")
        meta["error"] = "interrupted"
        status = 130
    except Exception as err:
        log.exception("bench set-up failed")
        meta["error"] = f"set-up failed: {str(err).splitlines()[0][:300]}"
        status = 1
    finally:
        for engine in reversed(engines):
            try:
                leftovers += [f"{engine.name}: {item}" for item in engine.stop()]
            except Exception as err:
                log.exception("stopping %s failed", engine.name)
                leftovers.append(f"{engine.name}: stop failed: {err}")
        if registry is not None:
            registry.stop()
        unmount_below(root)
        shutil.rmtree(root, ignore_errors=True)
        if root.exists():
            leftovers.append(f"directory {root}")
    meta.update(load_end=load(), elapsed_s=deadline.elapsed(), leftovers=leftovers,
                skipped=bench.missing if bench else {})
    rows = bench.rows if bench else []
    profiles = bench.profiles if bench else []
    drew = write(results, meta, rows, profiles)
    latest = args.results / "latest"
    if latest.is_symlink() or not latest.exists():
        latest.unlink(missing_ok=True)
        latest.symlink_to(results.name)
    log.info("results: %s/results.md%s", results, "" if drew else " (no PNG: pip install -e '.[bench]')")
    for item in leftovers:
        log.warning("left on the host: %s", item)
    print((results / "results.md").read_text())
    return status or (1 if leftovers else 0)


if __name__ == "__main__":
    sys.exit(main())
