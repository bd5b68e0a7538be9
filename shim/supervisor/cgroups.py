"""Control groups of containers, on cgroup v1, v2 and hybrid hosts.

Each container gets ``<parent>/<id>`` in every hierarchy the host mounts: every v1 hierarchy
(memory, cpu, cpuacct, cpuset, pids, freezer, blkio, devices, named ones) and the v2 hierarchy,
whether it is the whole of ``/sys/fs/cgroup`` (v2 host) or a side mount owning few controllers
(hybrid host, ``/sys/fs/cgroup/unified``). Limits go to whichever hierarchy owns the controller.

Everything here is small blocking file I/O run by the single-threaded supervisor; the forked
child only writes ``0`` to the ``cgroup.procs`` files it is given.
"""

from __future__ import annotations

import errno
import os
import signal
from dataclasses import dataclass

from shim.api import Resources

# Docker's defaults when only one of the CPU quota knobs is given.
DEFAULT_CPU_PERIOD = 100_000

# Docker's default device rules (moby daemon/oci_linux.go + runc's default allow list): mknod
# of anything, use of the standard nodes and ptys only.
DEFAULT_DEVICE_RULES = (
    "c *:* m", "b *:* m",
    "c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm", "c 1:9 rwm",
    "c 5:0 rwm", "c 5:1 rwm", "c 5:2 rwm", "c 136:* rwm",
)

V2_CONTROLLERS = ("cpu", "cpuset", "io", "memory", "pids")
# Super options of a v1 mount that are not controllers.
_V1_OPTIONS = frozenset({"rw", "ro", "xattr", "noprefix", "clone_children", "cpuset_v2_mode", "favordynmods"})


@dataclass(frozen=True, slots=True)
class Hierarchy:
    """One mounted cgroup hierarchy. ``name`` is its directory under a container's
    ``/sys/fs/cgroup`` (``memory``, ``cpu,cpuacct``, ``systemd``, ``unified``; ``""`` when the
    host is pure v2 and the hierarchy *is* ``/sys/fs/cgroup``)."""

    mount: str
    controllers: frozenset[str]
    v2: bool
    name: str


@dataclass(frozen=True, slots=True)
class Layout:
    hierarchies: tuple[Hierarchy, ...]

    @property
    def mode(self) -> str:
        v1 = any(not h.v2 for h in self.hierarchies)
        v2 = any(h.v2 for h in self.hierarchies)
        return "hybrid" if v1 and v2 else "v2" if v2 else "v1"

    def owner(self, controller: str) -> Hierarchy | None:
        for h in self.hierarchies:
            if controller in h.controllers:
                return h
        return None

    @classmethod
    def detect(cls, mountinfo: str = "/proc/self/mountinfo") -> Layout:
        found: list[Hierarchy] = []
        seen: set[str] = set()  # superblocks: a hierarchy mounted twice is one hierarchy
        with open(mountinfo) as f:
            for line in f:
                left, _, right = line.partition(" - ")
                fstype, _, super_opts = [*right.split(), "", "", ""][:3]
                fields = left.split()
                device, root, mount_point = fields[2], fields[3], _unescape(fields[4])
                # A mount of a subtree (root != "/") is someone's delegated view, not the hierarchy.
                if fstype not in ("cgroup", "cgroup2") or root != "/" or device in seen:
                    continue
                seen.add(device)
                if fstype == "cgroup2":
                    try:
                        with open(os.path.join(mount_point, "cgroup.controllers")) as c:
                            controllers = frozenset(c.read().split())
                    except OSError:
                        controllers = frozenset()
                    name = "" if mount_point == "/sys/fs/cgroup" else os.path.basename(mount_point)
                    found.append(Hierarchy(mount_point, controllers, True, name))
                else:
                    opts = super_opts.split(",")
                    controllers = frozenset(o for o in opts if (o not in _V1_OPTIONS and "=" not in o)
                                            or o.startswith("name="))
                    names = sorted(c.removeprefix("name=") for c in controllers)
                    found.append(Hierarchy(mount_point, controllers, False, ",".join(names)))
        return cls(tuple(found))


def _unescape(path: str) -> str:
    return path.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def _write(path: str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _mkdir(path: str) -> bool:
    try:
        os.mkdir(path, 0o755)
        return True
    except FileExistsError:
        return False


def _init_cpuset(path: str) -> None:
    """A new v1 cpuset cgroup is empty and refuses tasks: inherit the parent's cpus and mems."""
    for name in ("cpuset.cpus", "cpuset.mems"):
        target = os.path.join(path, name)
        if not _read(target).strip():
            _write(target, _read(os.path.join(os.path.dirname(path), name)).strip())


def ensure_parent(layout: Layout, parent: str) -> None:
    """Create ``parent`` (may be nested, ``a/b``) in every hierarchy and prepare it for children."""
    parts = [p for p in parent.strip("/").split("/") if p]
    for h in layout.hierarchies:
        path = h.mount
        for part in parts:
            if h.v2 and h.name == "":
                _enable_controllers(path, h.controllers)
            path = os.path.join(path, part)
            _mkdir(path)
            if "cpuset" in h.controllers and not h.v2:
                _init_cpuset(path)
        if h.v2 and h.name == "":
            _enable_controllers(path, h.controllers)


def _enable_controllers(path: str, available: frozenset[str]) -> None:
    for c in V2_CONTROLLERS:
        if c in available:
            try:
                _write(os.path.join(path, "cgroup.subtree_control"), f"+{c}")
            except OSError:
                pass  # not delegatable here (e.g. processes in an inner node): limits just fail


def remove_tree(layout: Layout, parent: str) -> list[str]:
    """Kill everything under ``parent`` and remove it in every hierarchy (tests, uninstall).
    Returns the directories that could not be removed."""
    left: list[str] = []
    for h in layout.hierarchies:
        top = os.path.join(h.mount, parent.strip("/"))
        if not os.path.isdir(top):
            continue
        for dirpath, _, _ in sorted(os.walk(top), key=lambda w: -len(w[0])):
            kill_all(dirpath)
            if not _rmdir(dirpath):
                left.append(dirpath)
    return left


def cgroup_pids(path: str) -> set[int]:
    try:
        return {int(p) for p in _read(os.path.join(path, "cgroup.procs")).split()}
    except FileNotFoundError:
        return set()


def kill_all(path: str, sig: int = signal.SIGKILL) -> set[int]:
    pids = cgroup_pids(path)
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    return pids


def _rmdir(path: str) -> bool:
    try:
        os.rmdir(path)
    except FileNotFoundError:
        return True
    except OSError as exc:
        if exc.errno in (errno.EBUSY, errno.ENOTEMPTY):
            return False
        raise
    return True


class ContainerCgroup:
    """The cgroup of one container, ``<parent>/<id>`` in every hierarchy."""

    def __init__(self, layout: Layout, parent: str, id: str) -> None:
        self.layout = layout
        self.dirs: tuple[tuple[Hierarchy, str], ...] = tuple(
            (h, os.path.join(h.mount, parent.strip("/"), id)) for h in layout.hierarchies)

    def path(self, controller: str) -> str | None:
        for h, d in self.dirs:
            if controller in h.controllers:
                return d
        return None

    @property
    def procs_files(self) -> tuple[str, ...]:
        return tuple(os.path.join(d, "cgroup.procs") for _, d in self.dirs)

    @property
    def any_dir(self) -> str | None:
        """A directory listing every process of the container (pids/freezer/memory or v2)."""
        for controller in ("pids", "freezer", "memory"):
            if (p := self.path(controller)) is not None:
                return p
        return self.dirs[0][1] if self.dirs else None

    def create(self, resources: Resources, *, privileged: bool) -> None:
        for h, d in self.dirs:
            _mkdir(d)
            if h.v2:
                if h.name == "":
                    self._apply_v2(d, h.controllers, resources)
                continue
            if "cpuset" in h.controllers:
                _init_cpuset(d)
            if "devices" in h.controllers and not privileged:
                _write(os.path.join(d, "devices.deny"), "a")
                for rule in DEFAULT_DEVICE_RULES:
                    _write(os.path.join(d, "devices.allow"), rule)
        self._apply_v1(resources)

    def update(self, resources: Resources) -> None:
        """Write a running container's new limits; unset values become "no limit" again."""
        for h, d in self.dirs:
            if h.v2 and h.name == "":
                self._apply_v2(d, h.controllers, resources, update=True)
        self._apply_v1(resources, update=True)

    def _apply_v1(self, r: Resources, *, update: bool = False) -> None:
        if (d := self._v1("memory")) is not None:
            limit = os.path.join(d, "memory.limit_in_bytes")
            memsw = os.path.join(d, "memory.memsw.limit_in_bytes")
            if r.memory > 0 or update:
                swap = r.memory_swap if r.memory_swap != 0 else 2 * r.memory
                writes = [(limit, str(r.memory) if r.memory > 0 else "-1")]
                if os.path.exists(memsw):
                    writes.append((memsw, "-1" if swap <= 0 else str(swap)))
                    # The kernel keeps memory <= memory+swap at every step: raise the larger first.
                    if update and _v1_bytes(_read(memsw)) < (r.memory if r.memory > 0 else 1 << 62):
                        writes.reverse()
                for path, value in writes:
                    _write(path, value)
            if r.memory_reservation > 0 or update:
                _write(os.path.join(d, "memory.soft_limit_in_bytes"),
                       str(r.memory_reservation) if r.memory_reservation > 0 else "-1")
            if r.oom_kill_disable or update:
                _write(os.path.join(d, "memory.oom_control"), "1" if r.oom_kill_disable else "0")
        if (d := self._v1("cpu")) is not None:
            if r.cpu_shares > 0 or update:
                _write(os.path.join(d, "cpu.shares"), str(r.cpu_shares or 1024))
            period, quota = _cpu_quota(r)
            if period or update:
                _write(os.path.join(d, "cpu.cfs_period_us"), str(period or DEFAULT_CPU_PERIOD))
            if quota or update:
                _write(os.path.join(d, "cpu.cfs_quota_us"), str(quota or -1))
        if (d := self._v1("cpuset")) is not None:
            if r.cpuset_cpus:
                _write(os.path.join(d, "cpuset.cpus"), r.cpuset_cpus)
            if r.cpuset_mems:
                _write(os.path.join(d, "cpuset.mems"), r.cpuset_mems)
        if (d := self._v1("pids")) is not None and (r.pids_limit > 0 or update):
            _write(os.path.join(d, "pids.max"), str(r.pids_limit) if r.pids_limit > 0 else "max")

    def _v1(self, controller: str) -> str | None:
        for h, d in self.dirs:
            if controller in h.controllers and not h.v2:
                return d
        return None

    @staticmethod
    def _apply_v2(d: str, controllers: frozenset[str], r: Resources, *, update: bool = False) -> None:
        def put(name: str, value: str) -> None:
            _write(os.path.join(d, name), value)

        if "memory" in controllers:
            if r.memory > 0:
                put("memory.max", str(r.memory))
                # Docker's MemorySwap is memory + swap; v2 limits swap alone.
                swap = r.memory_swap - r.memory if r.memory_swap > 0 else r.memory
                put("memory.swap.max", "max" if r.memory_swap < 0 else str(max(swap, 0)))
            elif update:
                put("memory.max", "max")
                put("memory.swap.max", "max")
            if r.memory_reservation > 0 or update:
                put("memory.low", str(r.memory_reservation) if r.memory_reservation > 0 else "0")
        if "cpu" in controllers:
            if r.cpu_shares > 0 or update:
                # runc's conversion of v1 shares [2, 262144] to v2 weight [1, 10000].
                shares = r.cpu_shares or 1024
                put("cpu.weight", str(1 + ((shares - 2) * 9999) // 262142))
            period, quota = _cpu_quota(r)
            if period or quota or update:
                put("cpu.max", f"{quota or 'max'} {period or DEFAULT_CPU_PERIOD}")
        if "cpuset" in controllers:
            if r.cpuset_cpus:
                put("cpuset.cpus", r.cpuset_cpus)
            if r.cpuset_mems:
                put("cpuset.mems", r.cpuset_mems)
        if "pids" in controllers and (r.pids_limit > 0 or update):
            put("pids.max", str(r.pids_limit) if r.pids_limit > 0 else "max")

    # Freezer ------------------------------------------------------------------------------------

    def _freezer(self) -> tuple[str, bool] | None:
        """(directory, is v2) of the hierarchy that freezes: v1 freezer, else cgroup v2's
        ``cgroup.freeze`` (a core file of every non-root v2 cgroup)."""
        if (d := self._v1("freezer")) is not None:
            return d, False
        for h, d in self.dirs:
            if h.v2:
                return d, True
        return None

    def set_frozen(self, frozen: bool) -> None:
        where = self._freezer()
        if where is None:
            raise OSError(errno.ENOTSUP, "no freezer cgroup on this host")
        d, v2 = where
        if v2:
            _write(os.path.join(d, "cgroup.freeze"), "1" if frozen else "0")
        else:
            _write(os.path.join(d, "freezer.state"), "FROZEN" if frozen else "THAWED")

    def frozen(self) -> bool:
        """Whether every process is frozen now (v1 FREEZING is not yet)."""
        where = self._freezer()
        if where is None:
            return False
        d, v2 = where
        if v2:
            return _flat_value(_read(os.path.join(d, "cgroup.events")), "frozen") == "1"
        return _read(os.path.join(d, "freezer.state")).strip() == "FROZEN"

    def oom_kills(self) -> int:
        """The kernel's count of OOM kills in this cgroup (v1 ``memory.oom_control``, v2
        ``memory.events``)."""
        for h, d in self.dirs:
            if "memory" not in h.controllers:
                continue
            name = "memory.events" if h.v2 else "memory.oom_control"
            try:
                text = _read(os.path.join(d, name))
            except OSError:
                return 0
            for line in text.splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        return 0

    def oom_notifier(self) -> int | None:
        """An eventfd that becomes readable on each OOM in this cgroup (v1 only), or None."""
        d = self._v1("memory")
        if d is None:
            return None
        efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        try:
            ofd = os.open(os.path.join(d, "memory.oom_control"), os.O_RDONLY | os.O_CLOEXEC)
            try:
                _write(os.path.join(d, "cgroup.event_control"), f"{efd} {ofd}")
            finally:
                os.close(ofd)  # the registration holds its own reference
        except OSError:
            os.close(efd)
            return None
        return efd

    def signal_all(self, sig: int) -> set[int]:
        d = self.any_dir
        return kill_all(d, sig) if d else set()

    def remove(self) -> bool:
        """Remove every directory, killing stragglers where one is busy; False while some
        still are. (A stopped container's cgroups are empty: one rmdir each.)"""
        done = True
        for _, d in self.dirs:
            if not _rmdir(d):
                kill_all(d)
                done = False
        return done


def _v1_bytes(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        return 0


def _flat_value(text: str, key: str) -> str:
    for line in text.splitlines():
        k, _, v = line.partition(" ")
        if k == key:
            return v.strip()
    return ""


def _cpu_quota(r: Resources) -> tuple[int, int]:
    """(period, quota) in µs; ``nano_cpus`` wins as in Docker (they are mutually exclusive)."""
    if r.nano_cpus > 0:
        period = r.cpu_period or DEFAULT_CPU_PERIOD
        return period, r.nano_cpus * period // 1_000_000_000
    return r.cpu_period, r.cpu_quota

