"""Container records rendered in Docker's JSON shapes (swagger ``ContainerInspectResponse``,
``ContainerSummary``) and status strings (``Up 3 minutes``, ``Exited (0) 2 seconds ago``)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from apiserver.containers.store import CachedRecord, ContainerRecord
from apiserver.fastjson import dumps
from apiserver.networks import views as network_views
from apiserver.volumes import mounts as volume_mounts

ZERO_TIME = "0001-01-01T00:00:00Z"


def rfc3339_nano(ns: int) -> str:
    """Go's RFC3339Nano (trailing zeros of the fraction trimmed); the zero time for 0."""
    if ns <= 0:
        return ZERO_TIME
    seconds, frac = divmod(ns, 1_000_000_000)
    base = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    fraction = f"{frac:09d}".rstrip("0")
    return f"{base}.{fraction}Z" if fraction else f"{base}Z"


def parse_rfc3339(value: str) -> int:
    """Nanoseconds of an RFC3339 timestamp (0 for empty or the zero time)."""
    if not value or value.startswith("0001-01-01"):
        return 0
    main, _, frac = value.rstrip("Z").partition(".")
    frac_digits = "".join(c for c in frac if c.isdigit())[:9].ljust(9, "0")
    tz = "+00:00"
    if "+" in frac:
        tz = "+" + frac.split("+", 1)[1]
    dt = datetime.fromisoformat(main + tz)
    return int(dt.timestamp()) * 1_000_000_000 + int(frac_digits or "0")


def human_duration(seconds: float) -> str:
    """go-units HumanDuration."""
    if seconds < 1:
        return "Less than a second"
    if seconds < 2:
        return "1 second"
    if seconds < 60:
        return f"{int(seconds)} seconds"
    minutes = int(seconds / 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = int(seconds / 3600 + 0.5)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{hours // 24 // 365} years"


def docker_status(record: ContainerRecord) -> str:
    """``State.Status``: created, running, paused, restarting, removing, exited or dead."""
    status = record.status
    if status == "stopped":
        return "exited"
    return status if status in ("created", "running", "paused", "restarting", "removing", "dead") else "created"


def status_string(record: ContainerRecord, now_ns: int | None = None) -> str:
    return status_text(docker_status(record), record.state, time.time_ns() if now_ns is None else now_ns)


def status_text(status: str, state: Mapping[str, Any], now: int) -> str:
    """``docker ps``'s STATUS of a container in Docker ``status`` with shim ``state`` at ``now``."""
    if status == "restarting":
        ago = human_duration((now - int(state.get("finished_at_ns", 0))) / 1e9)
        return f"Restarting ({state.get('exit_code', 0)}) {ago} ago"
    if status in ("running", "paused"):
        text = f"Up {human_duration((now - int(state.get('started_at_ns', 0))) / 1e9)}"
        if status == "paused":
            return text + " (Paused)"
        health = state.get("health")
        if isinstance(health, dict) and health.get("status"):
            label = "health: starting" if health["status"] == "starting" else health["status"]
            return f"{text} ({label})"
        return text
    if status == "exited":
        ago = human_duration((now - int(state.get("finished_at_ns", 0))) / 1e9)
        return f"Exited ({state.get('exit_code', 0)}) {ago} ago"
    if status == "dead":
        return "Dead"
    return "Created"


def state_view(record: ContainerRecord) -> dict[str, Any]:
    state = record.state
    status = docker_status(record)
    return {
        "Status": status,
        "Running": status in ("running", "paused", "restarting"),
        "Paused": status == "paused",
        "Restarting": status == "restarting",
        "OOMKilled": bool(state.get("oom_killed")),
        "Dead": status == "dead",
        "Pid": int(state.get("pid", 0)) if status in ("running", "paused") else 0,
        "ExitCode": int(state.get("exit_code", 0)),
        "Error": state.get("error", ""),
        "StartedAt": rfc3339_nano(int(state.get("started_at_ns", 0))),
        "FinishedAt": rfc3339_nano(int(state.get("finished_at_ns", 0))),
        **health_view(state.get("health")),
    }


def health_view(health: Any) -> dict[str, Any]:
    """``State.Health`` (omitted without a healthcheck)."""
    if not isinstance(health, dict):
        return {}
    log = [{"Start": rfc3339_nano(int(e.get("start_ns", 0))), "End": rfc3339_nano(int(e.get("end_ns", 0))),
            "ExitCode": int(e.get("exit_code", 0)), "Output": e.get("output", "")} for e in health.get("log") or ()]
    return {"Health": {"Status": health.get("status", "starting"),
                       "FailingStreak": int(health.get("failing_streak", 0)), "Log": log}}


def inspect_view(record: ContainerRecord, *, size_rw: int | None = None,
                 size_rootfs: int | None = None, exec_ids: list[str] | None = None) -> dict[str, Any]:
    cfg = record.config
    out: dict[str, Any] = {
        "Id": record.id,
        "Created": cfg["Created"],
        "Path": cfg["Path"],
        "Args": cfg["Args"],
        "State": state_view(record),
        "Image": cfg["Image"],
        **network_views.file_paths(record),
        "LogPath": record.state.get("log_path", ""),
        "Name": cfg["Name"],
        "RestartCount": int(record.state.get("restart_count", 0)),
        "Driver": "overlay2",
        "Platform": "linux",
        "MountLabel": "",
        "ProcessLabel": "",
        "AppArmorProfile": "",
        "ExecIDs": exec_ids or None,
        "HostConfig": cfg["HostConfig"],
        "GraphDriver": {"Data": None, "Name": "overlay2"},
        "Mounts": mount_views(record),
        "Config": cfg["Config"],
        "NetworkSettings": network_views.network_settings(record),
        "Node": cfg.get("Node"),
    }
    if size_rw is not None:
        out["SizeRw"] = size_rw
        out["SizeRootFs"] = size_rootfs or 0
    return out


def mount_views(record: ContainerRecord) -> list[dict[str, Any]]:
    """``Mounts``: the container's volumes, binds and tmpfs mounts (not ``--tmpfs``, as Docker)."""
    return [volume_mounts.view(m) for m in record.config.get("MountPoints") or []]


def command_string(record: ContainerRecord) -> str:
    """``docker ps``'s COMMAND as moby's list builds it: args with a space are put in single quotes."""
    args = record.config["Args"]
    if not args:
        return str(record.config["Path"])
    quoted = [f"'{a}'" if " " in a else a for a in args]
    return f"{record.config['Path']} {' '.join(quoted)}"


def summary_view(record: ContainerRecord, now_ns: int | None = None) -> dict[str, Any]:
    return {**_summary_head(record), "Status": status_string(record, now_ns), **_summary_tail(record)}


def _summary_head(record: ContainerRecord) -> dict[str, Any]:
    """``ContainerSummary`` up to ``Status``, which changes with the time alone."""
    cfg = record.config
    return {
        "Id": record.id,
        "Names": [cfg["Name"]],
        "Image": cfg["Config"].get("Image", ""),
        "ImageID": cfg["Image"],
        "Command": command_string(record),
        "Created": int(cfg.get("CreatedNs", 0)) // 1_000_000_000,
        "Ports": network_views.port_list(record),
        "Labels": cfg["Config"].get("Labels") or {},
        "State": docker_status(record),
    }


def _summary_tail(record: ContainerRecord) -> dict[str, Any]:
    """``ContainerSummary`` after ``Status``."""
    cfg = record.config
    return {
        "HostConfig": {"NetworkMode": cfg["HostConfig"].get("NetworkMode", "bridge")},
        "NetworkSettings": {"Networks": network_views.networks(record)},
        "Mounts": mount_views(record),
    }


_STATUS_INPUTS = ("finished_at_ns", "started_at_ns", "exit_code", "health")


@dataclass(frozen=True, slots=True)
class SummaryJSON:
    """A container's ``ContainerSummary``, encoded once per version of its record: ``head`` and
    ``tail`` are the JSON before and after the value of ``Status``, which is spliced in per list
    (``fixed`` holds the whole object when ``Status`` does not depend on the time)."""

    running: bool
    status: str  # State.Status
    state: dict[str, Any]  # what status_text reads of the shim's state
    head: bytes
    tail: bytes
    fixed: bytes | None

    def encode(self, now: int) -> bytes:
        if self.fixed is not None:
            return self.fixed
        return self.head + dumps(status_text(self.status, self.state, now)) + self.tail


def summary_json(cached: CachedRecord) -> SummaryJSON:
    """The :class:`SummaryJSON` of ``cached``, computed once and kept with it."""
    derived = cached.derived
    if isinstance(derived, SummaryJSON):
        return derived
    record = cached.record()
    status = docker_status(record)
    head = dumps(_summary_head(record))[:-1] + b',"Status":'
    tail = b"," + dumps(_summary_tail(record))[1:]
    fixed = None
    if status in ("created", "dead", "removing"):  # no time in their Status
        fixed = head + dumps(status_text(status, record.state, 0)) + tail
    state = {k: record.state[k] for k in _STATUS_INPUTS if k in record.state}
    if isinstance(state.get("health"), dict):  # its status, not the log of probes
        state["health"] = {"status": state["health"].get("status")}
    derived = SummaryJSON(running=record.running, status=status, state=state, head=head, tail=tail, fixed=fixed)
    cached.derived = derived
    return derived


def summaries_body(items: list[SummaryJSON], now_ns: int) -> bytes:
    """The JSON array of ``items`` as :func:`apiserver.httputil.json_response` writes it."""
    return b"[" + b",".join([item.encode(now_ns) for item in items]) + b"]\n"
