"""Linux capabilities: names, Docker's default set, and ``--cap-add/--cap-drop`` semantics."""

from __future__ import annotations

from collections.abc import Iterable

from common import linux

# Numbers from linux/capability.h.
CAPABILITIES = {
    "CHOWN": 0, "DAC_OVERRIDE": 1, "DAC_READ_SEARCH": 2, "FOWNER": 3, "FSETID": 4, "KILL": 5,
    "SETGID": 6, "SETUID": 7, "SETPCAP": 8, "LINUX_IMMUTABLE": 9, "NET_BIND_SERVICE": 10,
    "NET_BROADCAST": 11, "NET_ADMIN": 12, "NET_RAW": 13, "IPC_LOCK": 14, "IPC_OWNER": 15,
    "SYS_MODULE": 16, "SYS_RAWIO": 17, "SYS_CHROOT": 18, "SYS_PTRACE": 19, "SYS_PACCT": 20,
    "SYS_ADMIN": 21, "SYS_BOOT": 22, "SYS_NICE": 23, "SYS_RESOURCE": 24, "SYS_TIME": 25,
    "SYS_TTY_CONFIG": 26, "MKNOD": 27, "LEASE": 28, "AUDIT_WRITE": 29, "AUDIT_CONTROL": 30,
    "SETFCAP": 31, "MAC_OVERRIDE": 32, "MAC_ADMIN": 33, "SYSLOG": 34, "WAKE_ALARM": 35,
    "BLOCK_SUSPEND": 36, "AUDIT_READ": 37, "PERFMON": 38, "BPF": 39, "CHECKPOINT_RESTORE": 40,
}

# moby daemon/pkg/oci/caps/defaults.go
DOCKER_DEFAULTS = ("CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID",
                   "SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE")


class UnknownCapability(ValueError):
    pass


def normalize(name: str) -> str:
    """``net_admin``, ``CAP_NET_ADMIN`` → ``NET_ADMIN``; ``all`` → ``ALL``."""
    upper = name.strip().upper()
    upper = upper.removeprefix("CAP_")
    if upper != "ALL" and upper not in CAPABILITIES:
        raise UnknownCapability(f'unknown capability: "CAP_{upper}"')
    return upper


def bounding_set() -> frozenset[int]:
    """Capabilities this process may still pass on (its bounding set)."""
    caps = set()
    for number in range(last_cap() + 1):
        try:
            if linux.prctl(linux.PR_CAPBSET_READ, number) == 1:
                caps.add(number)
        except OSError:
            break
    return frozenset(caps)


def last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except OSError:
        return max(CAPABILITIES.values())


def container_caps(*, privileged: bool, add: Iterable[str], drop: Iterable[str],
                   bounding: frozenset[int]) -> frozenset[int]:
    """The container's capability set, as moby's ``caps.TweakCapabilities``, limited to what
    this host can grant (its bounding set). Raises ``UnknownCapability``."""
    adds = [normalize(c) for c in add]
    drops = [normalize(c) for c in drop]
    if privileged:
        return bounding
    if "ALL" in adds:
        names = [c for c in CAPABILITIES if c not in drops]
    elif "ALL" in drops:
        names = [c for c in adds if c != "ALL"]
    else:
        names = [c for c in DOCKER_DEFAULTS if c not in drops] + adds
    return frozenset(CAPABILITIES[n] for n in names if n != "ALL") & bounding


def to_drop(caps: frozenset[int], last: int) -> tuple[int, ...]:
    """The bounding-set entries a child must drop to end up with exactly ``caps``."""
    return tuple(c for c in range(last + 1) if c not in caps)
