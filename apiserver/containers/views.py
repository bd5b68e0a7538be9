"""Container records rendered in Docker's JSON shapes (swagger ``ContainerInspectResponse``,
``ContainerSummary``) and status strings (``Up 3 minutes``, ``Exited (0) 2 seconds ago``)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from apiserver.containers.store import ContainerRecord
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
    now = time.time_ns() if now_ns is None else now_ns
    state = record.state
    status = docker_status(record)
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
        "Status": status_string(record, now_ns),
        "HostConfig": {"NetworkMode": cfg["HostConfig"].get("NetworkMode", "bridge")},
        "NetworkSettings": {"Networks": network_views.networks(record)},
        "Mounts": mount_views(record),
    }
