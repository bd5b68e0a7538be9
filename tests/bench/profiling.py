"""Where Berth's time goes in a scenario that misses its goal: CPU time per operation of each Berth
process (from /proc) and py-spy samples of every Python process while the scenario loops."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.bench.engines import Engine
from tests.bench.procstat import cpu_by_role

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
PROJECT = ("apiserver/", "shim/", "snapshotter/", "common/", "protos/", "registry_client/")
# Leaves that mean "waiting", which py-spy sometimes samples as running: dropped.
IDLE = (".select (selectors.py", "select (selectors.py", ".poll (selectors.py")


@dataclass
class Profile:
    scenario: str
    ops: int
    wall_ms_per_op: float
    cpu_ms_per_op: dict[str, float]
    samples: dict[str, int] = field(default_factory=dict)  # role -> on-CPU samples
    top_self: dict[str, list[tuple[str, float]]] = field(default_factory=dict)  # role -> (frame, %)
    top_project: dict[str, list[tuple[str, float]]] = field(default_factory=dict)  # nearest Berth frame
    raw_files: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        cpu = ", ".join(f"{role} {ms:.1f}" for role, ms in sorted(self.cpu_ms_per_op.items(), key=lambda i: -i[1]))
        lines = [f"#### {self.scenario}",
                 f"{self.ops} operations, {self.wall_ms_per_op:.1f} ms wall each; CPU ms per operation: {cpu}."]
        for role in sorted(self.samples, key=lambda r: -self.samples[r]):
            if not self.samples[role]:
                continue
            top = "; ".join(f"{frame} {pct:.0f}%" for frame, pct in self.top_self.get(role, [])[:6])
            proj = "; ".join(f"{frame} {pct:.0f}%" for frame, pct in self.top_project.get(role, [])[:6])
            lines.append(f"- **{role}** ({self.samples[role]} on-CPU samples)")
            if proj:
                lines.append(f"  - under Berth's code: {proj}")
            lines.append(f"  - leaf frames: {top}")
        return "\n".join(lines)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Profile:
        return cls(doc["scenario"], doc["ops"], doc["wall_ms_per_op"], doc["cpu_ms_per_op"], doc["samples"],
                   {k: [(f, p) for f, p in v] for k, v in doc["top_self"].items()},
                   {k: [(f, p) for f, p in v] for k, v in doc["top_project"].items()}, doc["raw_files"])

    def as_dict(self) -> dict[str, object]:
        return {"scenario": self.scenario, "ops": self.ops, "wall_ms_per_op": self.wall_ms_per_op,
                "cpu_ms_per_op": self.cpu_ms_per_op, "samples": self.samples, "top_self": self.top_self,
                "top_project": self.top_project, "raw_files": self.raw_files}


def _short(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m.group("file")
    for marker in PROJECT:
        if marker in path:
            path = path[path.index(marker):]
            break
    else:
        path = os.path.basename(path)
    return f"{m.group('func')} ({path}:{m.group('line') or '?'})"


def parse_raw(path: Path) -> tuple[int, Counter[str], Counter[str]]:
    """py-spy's raw (collapsed) output → on-CPU samples, counts by leaf frame, and counts by the
    nearest Berth frame (the deepest frame in Berth's own code: which of our lines the time is
    spent under, library calls included)."""
    total = 0
    self_counts: Counter[str] = Counter()
    nearest: Counter[str] = Counter()
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return 0, self_counts, nearest
    for line in text.splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        frames = [f for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        if not frames or any(marker in _short(frames[-1]) for marker in IDLE):
            continue
        total += count
        self_counts[_short(frames[-1])] += count
        ours = [s for s in map(_short, frames) if any(f" ({p}" in s for p in PROJECT)]
        if not ours:
            nearest["(outside Berth's code)"] += count
        elif ours[-1].startswith("main (") and "/__main__.py" in ours[-1]:
            nearest["(event loop: asyncio, aiohttp, grpc callbacks)"] += count
        else:
            nearest[ours[-1]] += count
    return total, self_counts, nearest


def profile(engine: Engine, scenario: str, op: Callable[[], float], out_dir: Path, *,
            seconds: float = 8.0, max_ops: int = 2000) -> Profile:
    """Loop ``op`` (bounded by ``seconds`` and ``max_ops``) under py-spy; one raw file per process."""
    out_dir.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^a-z0-9]+", "-", scenario.lower()).strip("-")[:60]
    pyspy = shutil.which("py-spy")
    spies: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
    if pyspy:
        for role, pid in engine.python_pids().items():
            raw = out_dir / f"{slug}.{role}.txt"
            proc = subprocess.Popen([pyspy, "record", "--pid", str(pid), "--rate", "250", "--format", "raw",
                                     "--output", str(raw), "--nonblocking"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            spies[role] = (proc, raw)
        time.sleep(1.0)  # let py-spy attach before the first operation
    roles = engine.processes()
    cpu0 = cpu_by_role(roles)
    children0 = os.times()
    ops = 0
    t0 = time.perf_counter()
    while ops < max_ops and time.perf_counter() - t0 < seconds:
        op()
        ops += 1
    wall = time.perf_counter() - t0
    cpu1 = cpu_by_role(roles)
    children1 = os.times()
    # The bench's own children are the docker CLI processes of the operation (and py-spy, which
    # is still running and so not counted yet).
    cpu1["docker CLI"] = children1.children_user + children1.children_system
    cpu0["docker CLI"] = children0.children_user + children0.children_system
    for proc, _ in spies.values():
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGINT)  # py-spy writes its output on SIGINT
    for proc, _ in spies.values():
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    result = Profile(scenario, ops, wall * 1000 / max(ops, 1),
                     {role: (cpu1.get(role, 0) - cpu0.get(role, 0)) * 1000 / max(ops, 1) for role in cpu0})
    for role, (_, raw) in spies.items():
        total, self_counts, inclusive = parse_raw(raw)
        result.samples[role] = total
        if total:
            result.top_self[role] = [(f, 100 * c / total) for f, c in self_counts.most_common(8)]
            result.top_project[role] = [(f, 100 * c / total) for f, c in inclusive.most_common(8)]
        if raw.exists():
            result.raw_files.append(raw.name)
    return result
