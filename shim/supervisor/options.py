"""Docker run options the supervisor turns into child settings: sysctls and ulimits.

Errors are worded as runc words them (Docker passes them through from ``runc create``).
"""

from __future__ import annotations

import os
import re
import resource
from collections.abc import Mapping

from shim.api import NamespaceMode, Ulimit

# runc's sysctls that live in the IPC namespace (besides fs.mqueue.*).
_IPC_SYSCTLS = frozenset({"kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem", "kernel.shmall",
                          "kernel.shmmax", "kernel.shmmni", "kernel.shm_rmid_forced"})
_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")

# Docker's defaults for a container with its own network namespace (moby oci_linux.go): ping
# without CAP_NET_RAW, and ports below 1024 without CAP_NET_BIND_SERVICE.
DEFAULT_NET_SYSCTLS = (("net.ipv4.ping_group_range", "0 2147483647"), ("net.ipv4.ip_unprivileged_port_start", "0"))

# Docker's ulimit names → RLIMIT_* (asm-generic numbers; Python's resource module lacks some)
ULIMITS = {
    "cpu": 0, "fsize": 1, "data": 2, "stack": 3, "core": 4, "rss": 5, "nproc": 6, "nofile": 7, "memlock": 8,
    "locks": 10, "sigpending": 11, "msgqueue": 12, "nice": 13, "rtprio": 14, "rttime": 15,
}


class OptionError(ValueError):
    pass


def sysctls(requested: Mapping[str, str], *, network: NamespaceMode, ipc: NamespaceMode,
            uts: NamespaceMode) -> tuple[tuple[str, str], ...]:
    """The sysctls to write in the child: Docker's network defaults, then the requested ones
    (which win), each checked to live in a namespace the container has of its own."""
    out: dict[str, str] = {}
    if network == NamespaceMode.PRIVATE:
        for key, value in DEFAULT_NET_SYSCTLS:
            if os.path.exists("/proc/sys/" + key.replace(".", "/")):
                out[key] = value
    for key, value in requested.items():
        if not _KEY.fullmatch(key) or ".." in key:
            raise OptionError(f'sysctl "{key}" is not in a separate kernel namespace')
        if key in _IPC_SYSCTLS or key.startswith("fs.mqueue."):
            if ipc != NamespaceMode.PRIVATE:
                raise OptionError(f'sysctl "{key}" is not allowed in the hosts ipc namespace')
        elif key.startswith("net."):
            if network != NamespaceMode.PRIVATE:
                raise OptionError(f'sysctl "{key}" not allowed in host network namespace')
        elif key == "kernel.domainname" and uts == NamespaceMode.PRIVATE:
            pass
        elif key == "kernel.hostname" and uts == NamespaceMode.PRIVATE:
            raise OptionError(f'sysctl "{key}" is not allowed as it conflicts with the OCI "hostname" field')
        else:
            raise OptionError(f'sysctl "{key}" is not in a separate kernel namespace')
        out[key] = str(value)
    return tuple(out.items())


def rlimits(ulimits: tuple[Ulimit, ...]) -> tuple[tuple[int, int, int], ...]:
    out = []
    for u in ulimits:
        kind = ULIMITS.get(u.name.lower())
        if kind is None:
            raise OptionError(f"invalid ulimit type: {u.name}")
        soft = resource.RLIM_INFINITY if u.soft < 0 else u.soft
        hard = resource.RLIM_INFINITY if u.hard < 0 else u.hard
        out.append((kind, soft, hard))
    return tuple(out)


def _cpu_list(spec: str) -> set[int] | None:
    """A cpuset list (``0-2,5``) as numbers; None if it is not one."""
    out: set[int] = set()
    for part in spec.split(","):
        lo, sep, hi = part.strip().partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            return None
        first, last = int(lo), int(hi) if sep else int(lo)
        if last < first:
            return None
        out.update(range(first, last + 1))
    return out


def _online(path: str) -> tuple[str, set[int]]:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return "", set()
    return text, _cpu_list(text) or set()


def check_cpuset(cpus: str, mems: str) -> None:
    """moby's IsCpusetCpusAvailable/IsCpusetMemsAvailable, with its error texts."""
    for value, what, path in ((cpus, "cpus", "/sys/devices/system/cpu/online"),
                              (mems, "mems", "/sys/devices/system/node/online")):
        if not value:
            continue
        wanted = _cpu_list(value)
        if wanted is None:
            raise OptionError(f"Invalid value {value} for cpuset {what}: invalid format: {value}")
        available_text, available = _online(path)
        if what == "mems" and not available_text:
            available_text, available = "0", {0}
        if not wanted <= available:
            noun = "CPUs" if what == "cpus" else "memory nodes"
            raise OptionError(f"Requested {noun} are not available - requested {value}, available: {available_text}")
