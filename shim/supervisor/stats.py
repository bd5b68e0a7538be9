"""One sample of a container's counters, read the way containerd's cgroups library reads them
for moby's stats (cgroup v1 and v2), plus the host's CPU time and the container's network
interfaces (its network namespace's ``/proc/<pid>/net/dev``, without ``lo``, as libnetwork
reports a sandbox's interfaces).

Small blocking reads of kernel files, done by the single-threaded supervisor.
"""

from __future__ import annotations

import os
import time

from shim.api import BlkioEntry, ContainerStats, CPUUsage, NetworkCounters
from shim.supervisor.cgroups import ContainerCgroup

_USER_HZ = 100  # clock ticks per second in cpuacct.stat and /proc/stat (fixed on Linux)
_NS = 1_000_000_000

# moby's statsV1 memory keys (always present in the response, 0 when the kernel lacks one).
V1_MEMORY_KEYS = (
    "cache", "rss", "rss_huge", "mapped_file", "dirty", "writeback", "pgpgin", "pgpgout", "pgfault", "pgmajfault",
    "inactive_anon", "active_anon", "inactive_file", "active_file", "unevictable", "hierarchical_memory_limit",
    "hierarchical_memsw_limit", "total_cache", "total_rss", "total_rss_huge", "total_mapped_file", "total_dirty",
    "total_writeback", "total_pgpgin", "total_pgpgout", "total_pgfault", "total_pgmajfault", "total_inactive_anon",
    "total_active_anon", "total_inactive_file", "total_active_file", "total_unevictable")
V2_MEMORY_KEYS = (
    "anon", "file", "kernel_stack", "slab", "sock", "shmem", "file_mapped", "file_dirty", "file_writeback",
    "anon_thp", "inactive_anon", "active_anon", "inactive_file", "active_file", "unevictable", "slab_reclaimable",
    "slab_unreclaimable", "pgfault", "pgmajfault", "workingset_refault", "workingset_activate",
    "workingset_nodereclaim", "pgrefill", "pgscan", "pgsteal", "pgactivate", "pgdeactivate", "pglazyfree",
    "pglazyfreed", "thp_fault_alloc", "thp_collapse_alloc")
# v1 blkio files → Docker's list names (CFQ/BFQ stats when the kernel keeps them, else throttle).
_BLKIO_FULL = (("io_service_bytes_recursive", "io_service_bytes_recursive"),
               ("io_serviced_recursive", "io_serviced_recursive"),
               ("io_queued_recursive", "io_queue_recursive"),
               ("io_service_time_recursive", "io_service_time_recursive"),
               ("io_wait_time_recursive", "io_wait_time_recursive"),
               ("io_merged_recursive", "io_merged_recursive"),
               ("time_recursive", "io_time_recursive"),
               ("sectors_recursive", "sectors_recursive"))
_BLKIO_THROTTLE = (("throttle.io_service_bytes_recursive", "io_service_bytes_recursive"),
                   ("throttle.io_serviced_recursive", "io_serviced_recursive"))
_UNLIMITED = 1 << 62  # a v1 "no limit" is PAGE_COUNTER_MAX pages, far above this


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _int(text: str) -> int:
    text = text.strip()
    if not text or text == "max":
        return 0
    try:
        return int(text.split()[0])
    except ValueError:
        return 0


def _flat(text: str) -> dict[str, int]:
    """``key value`` lines."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        try:
            out[key] = int(value)
        except ValueError:
            continue
    return out


def host_memory() -> int:
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return 0


def system_cpu() -> tuple[int, int]:
    """(total CPU time of the host in ns, online CPUs), from /proc/stat like moby."""
    total = cpus = 0
    for line in _read("/proc/stat").splitlines():
        if not line.startswith("cpu"):
            break
        if line.startswith("cpu "):
            total = sum(int(v) for v in line.split()[1:8]) * _NS // _USER_HZ
        elif line[3:4].isdigit():
            cpus += 1
    return total, cpus


def network(pid: int) -> dict[str, NetworkCounters]:
    out: dict[str, NetworkCounters] = {}
    for line in _read(f"/proc/{pid}/net/dev").splitlines()[2:]:
        name, _, rest = line.partition(":")
        name = name.strip()
        fields = rest.split()
        if name == "lo" or len(fields) < 16:
            continue
        v = [int(x) for x in fields[:16]]
        out[name] = NetworkCounters(rx_bytes=v[0], rx_packets=v[1], rx_errors=v[2], rx_dropped=v[3],
                                    tx_bytes=v[8], tx_packets=v[9], tx_errors=v[10], tx_dropped=v[11])
    return out


def _blkio_lines(text: str, kind: str) -> list[BlkioEntry]:
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 3 or ":" not in parts[0]:
            continue  # the "Total n" line
        major, _, minor = parts[0].partition(":")
        try:
            out.append(BlkioEntry(kind, int(major), int(minor), parts[1], int(parts[2])))
        except ValueError:
            continue
    return out


def sample(cgroup: ContainerCgroup, pid: int, *, machine_memory: int, private_network: bool) -> ContainerStats:
    """Read everything now (host CPU time right after the container's, as moby samples it)."""
    read_ns = time.time_ns()
    v2 = False
    cpu = CPUUsage()
    mem_usage = mem_max = mem_limit = failcnt = 0
    memory_stats: dict[str, int] = {}
    pids_current = pids_limit = 0
    blkio: list[BlkioEntry] = []
    for h, d in cgroup.dirs:
        if not h.v2 or h.name != "":
            continue
        # a pure v2 host: everything is in this one directory
        v2 = True
        stat = _flat(_read(os.path.join(d, "cpu.stat")))
        cpu = CPUUsage(total_ns=stat.get("usage_usec", 0) * 1000, kernel_ns=stat.get("system_usec", 0) * 1000,
                       user_ns=stat.get("user_usec", 0) * 1000, throttling_periods=stat.get("nr_periods", 0),
                       throttled_periods=stat.get("nr_throttled", 0),
                       throttled_ns=stat.get("throttled_usec", 0) * 1000)
        raw = _flat(_read(os.path.join(d, "memory.stat")))
        memory_stats = {k: raw.get(k, 0) for k in V2_MEMORY_KEYS}
        mem_usage = _int(_read(os.path.join(d, "memory.current")))
        mem_limit = _int(_read(os.path.join(d, "memory.max"))) or machine_memory
        failcnt = _flat(_read(os.path.join(d, "memory.events"))).get("oom", 0)
        pids_current = _int(_read(os.path.join(d, "pids.current")))
        pids_limit = _int(_read(os.path.join(d, "pids.max")))
        for line in _read(os.path.join(d, "io.stat")).splitlines():
            dev, *pairs = line.split()
            major, _, minor = dev.partition(":")
            values = dict(p.split("=", 1) for p in pairs if "=" in p)
            for op, key in (("read", "rbytes"), ("write", "wbytes")):
                blkio.append(BlkioEntry("io_service_bytes_recursive", int(major), int(minor), op,
                                        int(values.get(key, 0))))
    if not v2:
        cpu, mem_usage, mem_max, mem_limit, failcnt, memory_stats, pids_current, pids_limit, blkio = \
            _v1(cgroup, machine_memory)
    if machine_memory and (mem_limit == 0 or mem_limit > machine_memory):
        mem_limit = machine_memory
    system_ns, online = system_cpu()
    return ContainerStats(
        read_ns=read_ns, cpu=cpu, system_cpu_ns=system_ns, online_cpus=online, memory_usage=mem_usage,
        memory_max_usage=mem_max, memory_limit=mem_limit, memory_failcnt=failcnt, memory_stats=memory_stats,
        pids_current=pids_current, pids_limit=pids_limit, blkio=tuple(blkio),
        networks=network(pid) if private_network and pid else {}, cgroup_v2=v2)


def _v1(cgroup: ContainerCgroup, machine_memory: int) -> tuple[CPUUsage, int, int, int, int, dict[str, int], int,
                                                                 int, list[BlkioEntry]]:
    cpu = CPUUsage()
    if (d := cgroup.path("cpuacct")) is not None:
        ticks = _flat(_read(os.path.join(d, "cpuacct.stat")))
        throttle: dict[str, int] = {}
        if (c := cgroup.path("cpu")) is not None:
            throttle = _flat(_read(os.path.join(c, "cpu.stat")))
        cpu = CPUUsage(total_ns=_int(_read(os.path.join(d, "cpuacct.usage"))),
                       percpu_ns=tuple(int(x) for x in _read(os.path.join(d, "cpuacct.usage_percpu")).split()),
                       kernel_ns=ticks.get("system", 0) * _NS // _USER_HZ,
                       user_ns=ticks.get("user", 0) * _NS // _USER_HZ,
                       throttling_periods=throttle.get("nr_periods", 0),
                       throttled_periods=throttle.get("nr_throttled", 0),
                       throttled_ns=throttle.get("throttled_time", 0))
    usage = max_usage = limit = failcnt = 0
    memory_stats: dict[str, int] = {}
    if (d := cgroup.path("memory")) is not None:
        raw = _flat(_read(os.path.join(d, "memory.stat")))
        memory_stats = {k: raw.get(k, 0) for k in V1_MEMORY_KEYS}
        usage = _int(_read(os.path.join(d, "memory.usage_in_bytes")))
        max_usage = _int(_read(os.path.join(d, "memory.max_usage_in_bytes")))
        limit = _int(_read(os.path.join(d, "memory.limit_in_bytes")))
        if limit >= _UNLIMITED:
            limit = machine_memory
        failcnt = _int(_read(os.path.join(d, "memory.failcnt")))
    pids_current = pids_limit = 0
    if (d := cgroup.path("pids")) is not None:
        pids_current = _int(_read(os.path.join(d, "pids.current")))
        pids_limit = _int(_read(os.path.join(d, "pids.max")))
    blkio: list[BlkioEntry] = []
    if (d := cgroup.path("blkio")) is not None:
        files = _BLKIO_FULL if os.path.exists(os.path.join(d, "blkio.io_serviced_recursive")) else _BLKIO_THROTTLE
        for name, kind in files:
            blkio += _blkio_lines(_read(os.path.join(d, f"blkio.{name}")), kind)
    return cpu, usage, max_usage, limit, failcnt, memory_stats, pids_current, pids_limit, blkio
