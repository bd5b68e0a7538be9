"""``/version``, ``/info`` and ``/events`` contents, gathered from the cluster state in Redis."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import AsyncIterator
from typing import Any

from apiserver import API_VERSION, BERTH_VERSION, MIN_API_VERSION
from apiserver.containers.store import ContainerStore
from apiserver.containers.views import rfc3339_nano
from apiserver.events import Event, EventBus
from apiserver.httputil import Filters
from apiserver.images.store import ImageStore
from apiserver.nodes import NodeDirectory
from protos.errors import InvalidArgument

EVENT_FILTERS = ("type", "event", "container", "image", "label", "network", "volume", "daemon", "node",
                 "service", "scope", "plugin", "config", "secret")
EVENT_TYPES = ("container", "image", "volume", "network", "daemon", "plugin", "service", "node", "secret",
               "config", "builder")


def _cgroup_version() -> str:
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == "/sys/fs/cgroup":
                return "2" if " - cgroup2 " in line else "1"
    return "1"


class SystemBackend:
    def __init__(self, *, containers: ContainerStore, images: ImageStore, nodes: NodeDirectory, bus: EventBus,
                 daemon_id: str, data_root: str, debug: bool = False, labels: tuple[str, ...] = ()) -> None:
        self._containers = containers
        self._images = images
        self._nodes = nodes
        self._bus = bus
        self._daemon_id = daemon_id
        self._data_root = data_root
        self._debug = debug
        self._labels = labels

    def version(self) -> dict[str, Any]:
        uname = os.uname()
        details = {
            "ApiVersion": API_VERSION, "MinAPIVersion": MIN_API_VERSION, "GitCommit": "berth",
            "GoVersion": f"python{platform.python_version()}", "Os": "linux", "Arch": _arch(),
            "KernelVersion": uname.release, "BuildTime": "", "Experimental": "false",
        }
        return {
            "Platform": {"Name": f"Berth {BERTH_VERSION}"},
            "Components": [{"Name": "Engine", "Version": BERTH_VERSION, "Details": details}],
            "Version": BERTH_VERSION, **{k: v for k, v in details.items() if k != "Experimental"},
        }

    async def info(self) -> dict[str, Any]:
        records = await self._containers.all()
        running = sum(1 for r in records if r.status == "running")
        paused = sum(1 for r in records if r.status == "paused")
        images = await self._images.all()
        nodes = await self._nodes.records()
        uname = os.uname()
        ncpu = sum(n.cpus for n in nodes) or (os.cpu_count() or 1)
        mem = sum(n.memory for n in nodes) or os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return {
            "ID": self._daemon_id,
            "Containers": len(records),
            "ContainersRunning": running,
            "ContainersPaused": paused,
            "ContainersStopped": len(records) - running - paused,
            "Images": len(images),
            "Driver": "overlay2",
            "DriverStatus": [["Backing Filesystem", "extfs"], ["Supports d_type", "true"]],
            "Plugins": {"Volume": ["local"], "Network": ["host", "null"], "Authorization": None,
                        "Log": ["json-file"]},
            "MemoryLimit": True, "SwapLimit": True, "CpuCfsPeriod": True, "CpuCfsQuota": True,
            "CPUShares": True, "CPUSet": True, "PidsLimit": True, "IPv4Forwarding": True,
            "Debug": self._debug, "NFd": len(os.listdir("/proc/self/fd")), "OomKillDisable": False,
            "NGoroutines": 0, "SystemTime": rfc3339_nano(time.time_ns()), "LoggingDriver": "json-file",
            "CgroupDriver": "cgroupfs", "CgroupVersion": _cgroup_version(), "NEventsListener": 0,
            "KernelVersion": uname.release, "OperatingSystem": _os_name(), "OSVersion": _os_version(),
            "OSType": "linux", "Architecture": uname.machine,
            "IndexServerAddress": "https://index.docker.io/v1/",
            "RegistryConfig": {"IndexConfigs": {}, "InsecureRegistryCIDRs": ["127.0.0.0/8", "::1/128"],
                               "Mirrors": []},
            "NCPU": ncpu, "MemTotal": mem, "DockerRootDir": self._data_root,
            "HttpProxy": "", "HttpsProxy": "", "NoProxy": "", "Name": uname.nodename,
            "Labels": list(self._labels), "ExperimentalBuild": False, "ServerVersion": BERTH_VERSION,
            "Runtimes": {"berth": {"path": "berth-shim"}}, "DefaultRuntime": "berth",
            "Swarm": {"NodeID": "", "NodeAddr": "", "LocalNodeState": "inactive", "ControlAvailable": False,
                      "Error": "", "RemoteManagers": None},
            "LiveRestoreEnabled": True, "Isolation": "", "InitBinary": "",
            "ContainerdCommit": {"ID": "berth"}, "RuncCommit": {"ID": "berth"}, "InitCommit": {"ID": ""},
            "SecurityOptions": [], "Warnings": [],
            "Nodes": [{"ID": n.id, "Hostname": n.hostname} for n in nodes],
        }

    async def events(self, *, since_ns: int | None, until_ns: int | None,
                     filters: Filters) -> AsyncIterator[dict[str, Any]]:
        for t in filters.get("type", []):
            if t not in EVENT_TYPES:
                raise InvalidArgument(f"invalid filter 'type={t}'")
        match = _event_matcher(filters)
        return self._events(since_ns, until_ns, match)

    async def _events(self, since_ns: int | None, until_ns: int | None, match: Any) -> AsyncIterator[dict[str, Any]]:
        now = time.time_ns()
        async with self._bus.subscribe(match) as sub:
            last_id = ""
            if since_ns is not None:
                for past in await self._bus.history(since_ns, until_ns):
                    if match(past):
                        last_id = past.stream_id
                        yield past.message
            if until_ns is not None and until_ns <= now:
                return
            # ``until`` ends the follow of new events, never the replay above (moby writes the
            # buffered events before it starts its timer's select).
            while (event := await sub.next(until_ns)) is not None:
                if last_id and _stream_id_le(event.stream_id, last_id):
                    continue
                if until_ns is not None and event.time_ns > until_ns:
                    return
                yield event.message


def _stream_id_le(a: str, b: str) -> bool:
    am, _, aseq = a.partition("-")
    bm, _, bseq = b.partition("-")
    return (int(am), int(aseq or 0)) <= (int(bm), int(bseq or 0))


def _event_matcher(filters: Filters) -> Any:
    def matches(event: Event) -> bool:
        attrs = event.attributes
        if "type" in filters and event.type not in filters["type"]:
            return False
        if "event" in filters and not any(
                event.action == f or event.action.split(":", 1)[0] == f for f in filters["event"]):
            return False
        if "scope" in filters and event.message.get("scope") not in filters["scope"]:
            return False
        for key in ("container", "network", "volume", "node", "service", "plugin", "config", "secret", "daemon"):
            if key in filters:
                if event.type != key:
                    return False
                names = {event.actor_id, attrs.get("name", "")}
                if not any(v in names or (len(v) >= 1 and event.actor_id.startswith(v)) for v in filters[key]):
                    return False
        if "image" in filters:
            image = attrs.get("image", "") if event.type == "container" else event.actor_id
            candidates = {image, attrs.get("name", ""), image.split(":", 1)[0]}
            if not any(v in candidates or v.split(":", 1)[0] in candidates for v in filters["image"]):
                return False
        for want in filters.get("label", []):
            key, sep, value = want.partition("=")
            if key not in attrs or (sep and attrs[key] != value):
                return False
        return True

    return matches


def _arch() -> str:
    machine = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def _os_release() -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        with open("/etc/os-release") as f:
            for line in f:
                key, _, value = line.strip().partition("=")
                out[key] = value.strip('"')
    except OSError:
        pass
    return out


def _os_name() -> str:
    return _os_release().get("PRETTY_NAME", "Linux")


def _os_version() -> str:
    return _os_release().get("VERSION_ID", "")
