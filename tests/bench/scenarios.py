"""The scenarios of issue 7. Each adds rows to ``Bench.rows``; each measured operation does its own
set-up and clean-up untimed and returns only the timed part. Capabilities Berth may not have yet
(exec, pull, push, build) are probed, never assumed: a missing one gives a row that says so, with
dockerd's figure alone as the reference."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import secrets
import shutil
import statistics
import tarfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tests.bench import api
from tests.bench.canned import CONTAINER_ID, CannedEngine
from tests.bench.engines import CLI, Engine
from tests.bench.images import MB, BuiltImage, ceilings
from tests.bench.measure import Better, Deadline, Goal, Row, Series, interleave
from tests.bench.procstat import MiB, total_memory
from tests.bench.profiling import Profile, profile
from tests.support import busybox

log = logging.getLogger("bench")

SLOWER = 0.8  # rows without a goal where Berth takes 1.25 times dockerd's time or more get profiled too

LABEL = "berth-bench=1"
IMAGE = "busybox"
TRAP = "trap 'exit 0' TERM; echo ready; sleep 3600 & wait"

# Goals of issue 7 (ratio = dockerd ÷ Berth for times and memory, Berth ÷ dockerd for rates).
GOAL_RUN = Goal(2.0)
GOAL_EXEC = Goal(2.0)
GOAL_STOP = Goal(2.0)
GOAL_PS = Goal(2.0)
GOAL_THROUGHPUT = Goal(2.0)
GOAL_MEM_PER_CONTAINER = Goal(5.0, absolute=1.0)  # MiB
GOAL_IDLE = Goal(1.0)
GOAL_PULL = Goal(1.0)
GOAL_REBUILD = Goal(2.0)
MEMORY_FLOOR = 0.01  # MiB per container: the resolution of (RSS at 100 - idle RSS) / 100


@dataclass
class Bench:
    berth: Engine
    docker: Engine | None
    cli: CLI
    root: Path
    deadline: Deadline
    registry: str  # host:port of the local registry
    big: BuiltImage
    iterations: int = 10
    heavy_iterations: int = 3  # 100-container rounds: ~20 s each on dockerd
    transfer_iterations: int = 5  # 70 MB pulls and pushes
    warmup: int = 2
    rows: list[Row] = field(default_factory=list)
    profile_dir: Path | None = None  # None: no profiling
    profiles: list[Profile] = field(default_factory=list)
    missing: dict[str, str] = field(default_factory=dict)  # capability -> why Berth lacks it

    @property
    def engines(self) -> list[Engine]:
        return [self.berth] if self.docker is None else [self.berth, self.docker]

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        b = f"{row.berth.median:.4g}" if row.berth else "-"
        d = f"{row.docker.median:.4g}" if row.docker else "-"
        ratio = f"{row.ratio:.2f}" if row.ratio is not None else "-"
        log.info("%-48s %-5s berth %8s  dockerd %8s %-12s ratio %s %s", row.scenario, row.via, b, d, row.unit,
                 ratio, row.note)
        return row

    def measure(self, scenario: str, via: str, unit: str, op: Callable[[Engine], float], *,
                goal: Goal | None = None, better: Better = Better.LOWER, scale: float = 1000.0,
                iterations: int | None = None, warmup: int | None = None, note: str = "",
                berth: bool = True) -> Row:
        """Interleave ``op`` over the engines (``berth=False``: dockerd alone, Berth lacks it)."""
        engines = self.engines if berth else ([self.docker] if self.docker else [])
        row = Row(scenario, via, unit, better=better, goal=goal, note=note)
        if not engines:
            return self.add(row)
        rounds = self.warmup if warmup is None else warmup
        series = interleave(engines, op, iterations or self.iterations, rounds, self.deadline)
        for s in series:
            s.samples = [v * scale for v in s.samples]
        if berth:
            row.berth = series[0]
        if self.docker is not None:
            row.docker = series[-1]
        self.add(row)
        if berth:
            self.maybe_profile(row, lambda: op(self.berth))
        return row

    def maybe_profile(self, row: Row, op: Callable[[], float], prepare: Callable[[], int] | None = None) -> None:
        """Profile Berth on a row that misses its goal, or (no goal) where Berth is clearly slower
        than dockerd — right away, while the scenario's set-up (1000 containers …) still exists.
        ``prepare`` (untimed, unprofiled) sets up what ``op`` consumes and returns how many ops it may run."""
        slower = row.goal is None and row.ratio is not None and row.ratio < SLOWER
        if self.profile_dir is None or not (row.met is False or slower):
            return
        if self.deadline.left() < 60:
            log.info("no time left to profile %s [%s]", row.scenario, row.via)
            return
        log.info("profiling Berth: %s [%s]", row.scenario, row.via)
        max_ops = prepare() if prepare else 2000
        self.profiles.append(profile(self.berth, f"{row.scenario} [{row.via}]", op, self.profile_dir,
                                     max_ops=max_ops))

    def cli_op(self, *args: str) -> Callable[[Engine], float]:
        return lambda e: self.cli.timed(e.host, *args)


# ---------------------------------------------------------------------------------------------
# Helpers


_local = threading.local()


def _client(engine: Engine) -> api.Client:
    """One keep-alive connection per engine per thread."""
    clients: dict[str, api.Client] = getattr(_local, "clients", None) or {}
    _local.clients = clients
    if engine.socket not in clients:
        clients[engine.socket] = engine.client()
    return clients[engine.socket]


def parallel(n: int, jobs: Iterable[Any], fn: Callable[[Any], Any]) -> list[Any]:
    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(fn, jobs))


def create_many(engine: Engine, count: int, cmd: list[str], start: bool, workers: int = 10,
                network: str = "default") -> list[str]:
    def one(_: int) -> str:
        c = _client(engine)
        cid = c.create(IMAGE, cmd, network=network, labels={"berth-bench": "1"})
        if start:
            c.start(cid)
        return cid

    return parallel(workers, range(count), one)


def remove_all(engine: Engine, workers: int = 10) -> None:
    """Force-remove every container the bench made on ``engine`` (bounded retries)."""
    for _ in range(3):
        ids = _client(engine).ids(LABEL)
        if not ids:
            return
        parallel(workers, ids, lambda cid: _client(engine).remove(cid, force=True))
    left = _client(engine).ids(LABEL)
    if left:
        raise RuntimeError(f"{engine.name}: {len(left)} containers could not be removed")


@contextmanager
def containers(bench: Bench, count: int, cmd: list[str], start: bool) -> Iterator[None]:
    for engine in bench.engines:
        create_many(engine, count, cmd, start)
    try:
        yield
    finally:
        for engine in bench.engines:
            remove_all(engine)


def http_run_rm(network: str) -> Callable[[Engine], float]:
    """What ``docker run --rm`` asks of the engine: create (AutoRemove), wait for removal, start."""

    def op(engine: Engine) -> float:
        c = _client(engine)
        t0 = time.perf_counter()
        cid = c.create(IMAGE, ["true"], network=network, auto_remove=True)
        with c.pending("POST", f"/containers/{cid}/wait?condition=removed") as waiting:
            c.start(cid)
            body = waiting.read()
        elapsed = time.perf_counter() - t0
        if waiting.status != 200 or json.loads(body).get("StatusCode") != 0:
            raise RuntimeError(f"{engine.name}: run --rm over HTTP: {waiting.status} {body[:200]!r}")
        return elapsed

    return op


def _trapping_container(engine: Engine) -> str:
    c = _client(engine)
    cid = c.create(IMAGE, ["sh", "-c", TRAP], labels={"berth-bench": "1"})
    c.start(cid)
    c.wait_for_log(cid, b"ready")
    return cid


def _probe(bench: Bench, capability: str, fn: Callable[[], object]) -> str:
    """"" when ``fn`` works; else a short reason for the table, the engine's own error text being
    kept in ``bench.missing`` for the notes under it."""
    try:
        fn()
        return ""
    except api.APIError as err:
        short = f"not implemented yet ({err.status})" if err.status in (404, 405, 501) else f"fails ({err.status})"
        bench.missing[capability] = " ".join(str(err).split())[:300]
    except Exception as err:  # any failure means "not there yet" for a probe
        short = "fails"
        bench.missing[capability] = " ".join(str(err).split())[:300]
    log.info("Berth %s: %s", capability, bench.missing[capability])
    return short


def _read_stream(c: api.Client, method: str, path: str, body: Any = None, raw: bytes | None = None,
                 headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """A JSON-lines progress stream (pull, push, build); raises on an ``error`` message."""
    data = c.call(method, path, body, raw=raw, headers=headers)
    messages = [json.loads(line) for line in data.splitlines() if line.strip()]
    for m in messages:
        if m.get("error") or m.get("errorDetail"):
            raise RuntimeError(str(m.get("error") or m.get("errorDetail"))[:300])
    return messages


# ---------------------------------------------------------------------------------------------
# Scenarios


def run_rm(bench: Bench) -> None:
    for network in ("default", "none"):
        flags = ("--network", "none") if network == "none" else ()
        label = "run --rm busybox true" + (" --network none" if flags else "")
        bench.measure(label, "cli", "ms", bench.cli_op("run", "--rm", *flags, IMAGE, "true"), goal=GOAL_RUN)
        bench.measure(label, "http", "ms", http_run_rm(network))


def create_start_rm(bench: Bench) -> None:
    series: dict[tuple[str, str, str], Series] = {}

    def cli_phases(engine: Engine) -> dict[str, float]:
        t0 = time.perf_counter()
        cid = bench.cli.run(engine.host, "create", "--label", LABEL, IMAGE, "true").stdout.strip()
        t1 = time.perf_counter()
        bench.cli.run(engine.host, "start", cid, capture=False)
        t2 = time.perf_counter()
        _client(engine).wait(cid)
        t3 = time.perf_counter()
        bench.cli.run(engine.host, "rm", cid, capture=False)
        t4 = time.perf_counter()
        return {"create": t1 - t0, "start": t2 - t1, "rm": t4 - t3}

    def http_phases(engine: Engine) -> dict[str, float]:
        c = _client(engine)
        t0 = time.perf_counter()
        cid = c.create(IMAGE, ["true"], labels={"berth-bench": "1"})
        t1 = time.perf_counter()
        c.start(cid)
        t2 = time.perf_counter()
        c.wait(cid)
        t3 = time.perf_counter()
        c.remove(cid)
        t4 = time.perf_counter()
        return {"create": t1 - t0, "start": t2 - t1, "rm": t4 - t3}

    for via, phases in (("cli", cli_phases), ("http", http_phases)):
        for _ in range(bench.warmup):
            for engine in bench.engines:
                phases(engine)
        for i in range(bench.iterations):
            if i >= 3 and bench.deadline.left() < 30:
                break
            for engine in bench.engines:
                for phase, value in phases(engine).items():
                    series.setdefault((via, phase, engine.name), Series()).samples.append(value * 1000)
        for phase in ("create", "start", "rm"):
            row = Row(f"{phase} (busybox true)", via, "ms", berth=series.get((via, phase, "berth")),
                      docker=series.get((via, phase, "dockerd")))
            bench.add(row)
            if via == "http":
                _profile_phase(bench, row, phase)


def _profile_phase(bench: Bench, row: Row, phase: str, count: int = 60) -> None:
    """Profile one phase alone: the containers it acts on are made before py-spy starts."""
    pool: list[str] = []
    c = _client(bench.berth)

    def prepare() -> int:
        if phase != "create":
            pool.extend(create_many(bench.berth, count, ["true"], start=phase == "rm"))
            for cid in pool:
                if phase == "rm":
                    c.wait(cid)
        return count

    def op() -> float:
        t0 = time.perf_counter()
        if phase == "create":
            c.create(IMAGE, ["true"], labels={"berth-bench": "1"})
        elif phase == "start":
            c.start(pool.pop())
        else:
            c.remove(pool.pop())
        return time.perf_counter() - t0

    try:
        bench.maybe_profile(row, op, prepare)
    finally:
        remove_all(bench.berth)


def exec_true(bench: Bench) -> None:
    running = {e.name: create_many(e, 1, ["sleep", "3600"], start=True, workers=1)[0] for e in bench.engines}

    def http_exec(engine: Engine) -> float:
        c = _client(engine)
        cid = running[engine.name]
        t0 = time.perf_counter()
        exec_id = c.json("POST", f"/containers/{cid}/exec",
                         {"Cmd": ["true"], "AttachStdout": True, "AttachStderr": True})["Id"]
        c.call("POST", f"/exec/{exec_id}/start", {"Detach": False, "Tty": False})
        code = c.json("GET", f"/exec/{exec_id}/json")["ExitCode"]
        elapsed = time.perf_counter() - t0
        if code != 0:
            raise RuntimeError(f"{engine.name}: exec exit code {code}")
        return elapsed

    reason = _probe(bench, "exec", lambda: http_exec(bench.berth))
    try:
        note = f"Berth: {reason}" if reason else ""
        cli = bench.measure("exec <c> true", "cli", "ms",
                            lambda e: bench.cli.timed(e.host, "exec", running[e.name], "true"),
                            goal=GOAL_EXEC, note=note, berth=not reason)
        floor = _cli_floor(bench)
        bench.add(Row("docker exec against a canned API that does no work (the CLI's own floor)", "cli", "ms",
                      note="the client alone", extra={"value": floor}))
        if cli.berth and cli.docker:
            bench.add(Row("exec <c> true: the engine's share (CLI time minus that floor)", "cli", "ms",
                          berth=Series([s - floor for s in cli.berth.samples]),
                          docker=Series([s - floor for s in cli.docker.samples])))
        bench.measure("exec <c> true", "http", "ms", http_exec, note=note, berth=not reason)
    finally:
        for engine in bench.engines:
            remove_all(engine)


def _cli_floor(bench: Bench) -> float:
    """Median ms of ``docker exec <c> true`` against :class:`CannedEngine`: what the CLI costs
    by itself, which dilutes every engine's CLI figure alike."""
    with CannedEngine(bench.root / "canned.sock") as canned:
        samples = [bench.cli.timed(canned.host, "exec", CONTAINER_ID[:12], "true")
                   for _ in range(bench.warmup + bench.iterations)]
    return statistics.median(samples[bench.warmup:]) * 1000


def stop_trapping(bench: Bench) -> None:
    def via_cli(engine: Engine) -> float:
        cid = _trapping_container(engine)
        elapsed = bench.cli.timed(engine.host, "stop", cid)
        _client(engine).remove(cid)
        return elapsed

    def via_http(engine: Engine) -> float:
        c = _client(engine)
        cid = _trapping_container(engine)
        t0 = time.perf_counter()
        c.call("POST", f"/containers/{cid}/stop")
        elapsed = time.perf_counter() - t0
        c.remove(cid)
        return elapsed

    bench.measure("stop (container traps TERM)", "cli", "ms", via_cli, goal=GOAL_STOP)
    bench.measure("stop (container traps TERM)", "http", "ms", via_http)


def ps_many(bench: Bench) -> None:
    def http_list(engine: Engine) -> float:
        t0 = time.perf_counter()
        _client(engine).call("GET", "/containers/json?all=1")
        return time.perf_counter() - t0

    have = 0
    try:
        for count in (0, 100, 1000):
            if count > have:
                t0 = time.perf_counter()
                for engine in bench.engines:
                    create_many(engine, count - have, ["true"], start=False, network="none")
                log.info("created %d containers per engine in %.1fs", count - have, time.perf_counter() - t0)
                have = count
            for engine in bench.engines:
                n = len(_client(engine).ids(LABEL))
                if n != count:
                    raise RuntimeError(f"{engine.name}: {n} containers listed, expected {count}")
            bench.measure(f"ps -a, {count} containers", "cli", "ms", bench.cli_op("ps", "-a"),
                          goal=GOAL_PS if count == 1000 else None)
            bench.measure(f"GET /containers/json?all=1, {count} containers", "http", "ms", http_list)
    finally:
        for engine in bench.engines:
            remove_all(engine)


def logs_100k(bench: Bench) -> None:
    lines = 100_000
    made = {}
    for engine in bench.engines:
        c = _client(engine)
        cid = c.create(IMAGE, ["seq", "1", str(lines)], labels={"berth-bench": "1"})
        c.start(cid)
        c.wait(cid)
        out = bench.cli.run(engine.host, "logs", cid, timeout=120).stdout
        if out.count("\n") != lines:
            raise RuntimeError(f"{engine.name}: docker logs gave {out.count(chr(10))} lines, not {lines}")
        made[engine.name] = cid

    def http_logs(engine: Engine) -> float:
        t0 = time.perf_counter()
        _client(engine).logs(made[engine.name])
        return time.perf_counter() - t0

    try:
        bench.measure("logs, 100,000 lines", "cli", "ms", lambda e: bench.cli.timed(e.host, "logs", made[e.name]))
        bench.measure("logs, 100,000 lines", "http", "ms", http_logs)
    finally:
        for engine in bench.engines:
            remove_all(engine)


def throughput(bench: Bench, count: int = 100, clients: int = 10) -> None:
    def via_http(engine: Engine) -> float:
        t0 = time.perf_counter()
        create_many(engine, count, ["sleep", "600"], start=True, workers=clients)
        rate = count / (time.perf_counter() - t0)
        remove_all(engine)
        return rate

    def via_cli(engine: Engine) -> float:
        t0 = time.perf_counter()
        parallel(clients, range(count),
                 lambda _: bench.cli.run(engine.host, "run", "-d", "--label", LABEL, IMAGE, "sleep", "600"))
        rate = count / (time.perf_counter() - t0)
        remove_all(engine)
        return rate

    name = f"create+start {count} containers, {clients} clients"
    # No warm-up round: every engine is warm from the scenarios before, and a round is 100 containers.
    bench.measure(name, "http", "containers/s", via_http, goal=GOAL_THROUGHPUT, better=Better.HIGHER, scale=1.0,
                  iterations=bench.heavy_iterations, warmup=0)
    bench.measure(name, "cli", "containers/s", via_cli, goal=GOAL_THROUGHPUT, better=Better.HIGHER, scale=1.0,
                  iterations=bench.heavy_iterations, warmup=0)


def _memory_samples(engine: Engine, n: int = 5) -> tuple[Series, Series, dict[str, int]]:
    rss, pss = Series(), Series()
    roles: dict[str, int] = {}
    for _ in range(n):
        total, per_role = total_memory(engine.processes())
        rss.samples.append(total.rss / MiB)
        pss.samples.append(total.pss / MiB)
        roles = {role: m.rss for role, m in per_role.items()}
        time.sleep(0.2)
    return rss, pss, roles


def memory_idle(bench: Bench, label: str = "idle", goal: Goal | None = GOAL_IDLE) -> dict[str, Series]:
    found: dict[str, Series] = {}
    rss_row = Row(f"memory {label}: RSS of all engine processes", "proc", "MiB", goal=goal)
    pss_row = Row(f"memory {label}: PSS of all engine processes", "proc", "MiB")
    for engine in bench.engines:
        rss, pss, roles = _memory_samples(engine)
        found[engine.name] = rss
        side = "berth" if engine is bench.berth else "docker"
        setattr(rss_row, side, rss)
        setattr(pss_row, side, pss)
        rss_row.extra[engine.name] = {role: round(v / MiB, 1) for role, v in roles.items()}
        found[engine.name + "-pss"] = pss
    bench.add(rss_row)
    bench.add(pss_row)
    return found


def memory_per_container(bench: Bench, count: int = 100) -> None:
    idle = {e.name: _memory_samples(e) for e in bench.engines}
    name = f"memory per running container ({count} sleep containers)"
    rss_row = Row(name, "proc", "MiB", goal=GOAL_MEM_PER_CONTAINER)
    pss_row = Row(name + ", PSS", "proc", "MiB")
    with containers(bench, count, ["sleep", "600"], start=True):
        time.sleep(1.0)  # let the engines settle after the burst
        for engine in bench.engines:
            running = _client(engine).json("GET", "/containers/json?filters=" + quote(json.dumps({"label": [LABEL]})))
            if len(running) < count:
                raise RuntimeError(f"{engine.name}: {len(running)} of {count} containers running")
        for engine in bench.engines:
            rss, pss, roles = _memory_samples(engine)
            base_rss, base_pss, _ = idle[engine.name]
            # A few KiB per container is below what RSS sampling resolves: floor it there.
            per_rss = Series([max((v - base_rss.median) / count, MEMORY_FLOOR) for v in rss.samples])
            per_pss = Series([max((v - base_pss.median) / count, MEMORY_FLOOR) for v in pss.samples])
            side = "berth" if engine is bench.berth else "docker"
            setattr(rss_row, side, per_rss)
            setattr(pss_row, side, per_pss)
            rss_row.extra[engine.name] = {"idle_rss_mib": round(base_rss.median, 1),
                                          "total_rss_mib": round(rss.median, 1),
                                          "by_role_mib": {r: round(v / MiB, 1) for r, v in roles.items()}}
    bench.add(rss_row)
    bench.add(pss_row)


# ---------------------------------------------------------------------------------------------
# Pull, push, build: probed


def _pull(engine: Engine, ref: str) -> None:
    name, _, tag = ref.rpartition(":")
    _read_stream(_client(engine), "POST", f"/images/create?fromImage={name}&tag={tag}")
    _client(engine).json("GET", f"/images/{ref}/json")


def _rmi(engine: Engine, ref: str) -> None:
    """Remove the image and every reference to it (by id: ``rmi <repo:tag>`` of a pulled image
    leaves it in Berth, held by its ``repo@digest``), so the next pull is cold."""
    c = _client(engine)
    resp = c.send("GET", f"/images/{ref}/json")
    body = resp.read()
    if resp.status == 404:
        return
    if resp.status != 200:
        raise api.APIError("GET", f"/images/{ref}/json", resp.status, body)
    c.call("DELETE", f"/images/{json.loads(body)['Id']}?force=1", ok=(200, 404))


def pull_push_build(bench: Bench) -> None:
    big = f"{bench.registry}/bench/big:latest"
    small = f"{bench.registry}/bench/busybox:latest"
    reason = _probe(bench, "pull", lambda: _pull(bench.berth, small))
    mb = bench.big.compressed_size / MB
    note = f"Berth: {reason}" if reason else ""

    for tool, rate in ceilings(bench.big.compressed, bench.root / "ceiling").items():
        bench.add(Row(f"{tool} of the same layers (ceiling)", "shell", "MB/s", better=Better.HIGHER,
                      note="the machine's own tools, no engine", extra={"value": rate}))

    def cold(engine: Engine) -> float:
        _rmi(engine, big)
        t0 = time.perf_counter()
        bench.cli.run(engine.host, "pull", "-q", big, timeout=300, capture=False)
        return mb / (time.perf_counter() - t0)

    def warm(engine: Engine) -> float:
        return bench.cli.timed(engine.host, "pull", "-q", big, timeout=300)

    pull_iters = bench.transfer_iterations
    bench.measure(f"pull cold ({mb:.0f} MB compressed, 5 layers)", "cli", "MB/s", cold, goal=GOAL_PULL,
                  better=Better.HIGHER, scale=1.0, iterations=pull_iters, warmup=1, note=note, berth=not reason)
    bench.measure("pull warm (image present)", "cli", "ms", warm, goal=GOAL_PULL, note=note, berth=not reason)

    _push(bench, big, mb, reason, pull_iters)
    _build(bench)


def _push(bench: Bench, big: str, mb: float, pull_reason: str, iterations: int) -> None:
    """Push the big image to a registry started empty for each push (a new port each time, so no
    engine can skip an upload by knowing the blobs are already there)."""
    from tests.support.registry import Registry

    def op(engine: Engine) -> float:
        target = Registry(bench.root / f"push-registry-{secrets.token_hex(3)}").start()
        try:
            dest = f"{target.host}/bench/pushed:latest"
            bench.cli.run(engine.host, "tag", big, dest)
            t0 = time.perf_counter()
            bench.cli.run(engine.host, "push", "-q", dest, timeout=300, capture=False)
            elapsed = time.perf_counter() - t0
            _client(engine).call("DELETE", f"/images/{dest}", ok=(200, 404))
            return mb / elapsed
        finally:
            target.stop()
            shutil.rmtree(target.root, ignore_errors=True)

    for engine in bench.engines:
        if engine is bench.docker or not pull_reason:
            _pull(engine, big)
    reason = "needs pull" if pull_reason else _probe(bench, "push", lambda: op(bench.berth))
    note = f"Berth: {reason}" if reason else ""
    bench.measure(f"push ({mb:.0f} MB compressed, to an empty registry)", "cli", "MB/s", op,
                  better=Better.HIGHER, scale=1.0, iterations=iterations, warmup=1, note=note, berth=not reason)


def _context(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = busybox.MTIME
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _build(bench: Bench) -> None:
    dockerfile = (b"FROM busybox\nRUN echo one > /one\nCOPY payload /payload\n"
                  b"RUN wc -c /payload > /size\n")
    context_dir = bench.root / "build-context"
    context_dir.mkdir(exist_ok=True)
    (context_dir / "Dockerfile").write_bytes(dockerfile)
    (context_dir / "payload").write_bytes(b"x" * 100_000)
    ctx = _context({"Dockerfile": dockerfile, "payload": b"x" * 100_000})
    reason = _probe(bench, "build", lambda: _read_stream(
        _client(bench.berth), "POST", "/build?t=bench-probe:latest&q=1", raw=ctx,
        headers={"Content-Type": "application/x-tar"}))
    note = f"Berth: {reason}" if reason else ""

    def cold(engine: Engine) -> float:
        tag = f"bench-build-{secrets.token_hex(3)}"
        elapsed = bench.cli.timed(engine.host, "build", "-q", "--no-cache", "-t", tag, str(context_dir))
        _client(engine).call("DELETE", f"/images/{tag}?force=1", ok=(200, 404))
        return elapsed

    def cached(engine: Engine) -> float:
        return bench.cli.timed(engine.host, "build", "-q", "-t", "bench-build:cached", str(context_dir))

    bench.measure("build cold (3 steps, --no-cache)", "cli", "ms", cold, note=note, berth=not reason)
    bench.measure("build cached (3 steps, all cached)", "cli", "ms", cached, goal=GOAL_REBUILD, note=note,
                  berth=not reason)
    for engine in bench.engines:
        _client(engine).call("DELETE", "/images/bench-build:cached?force=1", ok=(200, 404, 409))


# ---------------------------------------------------------------------------------------------
# Shim level (Berth only): create + start through the shim's gRPC API, no HTTP, no apiserver.


def shim_latency(bench: Bench) -> None:
    from common.mounts import Mount
    from protos.rpc import insecure_channel
    from shim.api import ContainerSpec, ProcessSpec
    from shim.client import RemoteRuntime

    berth_run = Path(bench.berth.socket).parent / "run"
    snaps = bench.root / "shim-snapshots"
    lowerdir = busybox.populate_rootfs(bench.root / "shim-lower")

    async def main() -> tuple[list[float], list[float]]:
        channel = insecure_channel(str(berth_run / "shim.sock"))
        runtime = RemoteRuntime(channel)
        start_times: list[float] = []
        totals: list[float] = []
        try:
            for i in range(bench.warmup + bench.iterations):
                cid = secrets.token_hex(32)
                snap = snaps / cid[:16]
                (snap / "fs").mkdir(parents=True)
                (snap / "work").mkdir()
                rootfs = Mount("overlay", "overlay", (f"lowerdir={lowerdir}", f"upperdir={snap / 'fs'}",
                                                      f"workdir={snap / 'work'}", "index=off"))
                spec = ContainerSpec(id=cid, rootfs=(rootfs,), process=ProcessSpec(args=("true",),
                                                                                    env=(busybox.PATH_ENV,)))
                t0 = time.perf_counter()
                await runtime.create(spec)
                await runtime.start(cid)
                t1 = time.perf_counter()
                await runtime.wait(cid)
                await runtime.delete(cid)
                t2 = time.perf_counter()
                if i >= bench.warmup:
                    start_times.append((t1 - t0) * 1000)
                    totals.append((t2 - t0) * 1000)
        finally:
            await channel.close()
        return start_times, totals

    starts, totals = asyncio.run(main())
    bench.add(Row("shim create+start busybox true", "grpc", "ms", berth=Series(starts),
                  note="Berth only: the shim's gRPC API, bypassing berthd"))
    bench.add(Row("shim create+start+wait+delete busybox true", "grpc", "ms", berth=Series(totals),
                  note="Berth only"))
