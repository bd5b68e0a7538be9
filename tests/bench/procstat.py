"""Memory (RSS, PSS) and CPU time of engine processes, read from /proc."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

_TICK = os.sysconf("SC_CLK_TCK")
MiB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Memory:
    rss: int  # bytes
    pss: int  # bytes; 0 when smaps_rollup is unavailable


def memory(pid: int) -> Memory:
    """RSS and PSS of one process from ``smaps_rollup`` (RSS from ``status`` as a fallback)."""
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1]) * 1024
    except OSError:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss = int(line.split()[1]) * 1024
        except OSError:
            pass
    return Memory(rss, pss)


def total_memory(roles: Mapping[str, Sequence[int]]) -> tuple[Memory, dict[str, Memory]]:
    """Sum over every process of every role; also the per-role sums."""
    per_role = {}
    for role, pids in roles.items():
        mems = [memory(p) for p in pids]
        per_role[role] = Memory(sum(m.rss for m in mems), sum(m.pss for m in mems))
    return Memory(sum(m.rss for m in per_role.values()), sum(m.pss for m in per_role.values())), per_role


def cpu_seconds(pid: int) -> float:
    """user + system time of the process itself (not of children it reaped: those are containers)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK
    except (OSError, IndexError, ValueError):
        return 0.0


def cpu_by_role(roles: Mapping[str, Sequence[int]]) -> dict[str, float]:
    return {role: sum(cpu_seconds(p) for p in pids) for role, pids in roles.items()}
