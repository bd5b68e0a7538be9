"""``--change`` instructions of ``docker import`` / ``docker commit`` applied to an image config.

moby accepts CMD, ENTRYPOINT, ENV, EXPOSE, HEALTHCHECK, LABEL, ONBUILD, STOPSIGNAL, USER, VOLUME
and WORKDIR here; anything else is refused with its message.
"""

from __future__ import annotations

import json
import os
import shlex
import time
from typing import Any

from protos.errors import InvalidArgument

ALLOWED = ("CMD", "ENTRYPOINT", "ENV", "EXPOSE", "HEALTHCHECK", "LABEL", "ONBUILD", "STOPSIGNAL", "USER",
           "VOLUME", "WORKDIR")


def _json_or_shell(rest: str) -> list[str]:
    stripped = rest.strip()
    if stripped.startswith("["):
        try:
            value = json.loads(stripped)
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                return value
        except json.JSONDecodeError:
            pass
    return ["/bin/sh", "-c", stripped]


def _pairs(rest: str, what: str) -> dict[str, str]:
    words = shlex.split(rest)
    if not words:
        raise InvalidArgument(f"{what} requires at least one argument")
    if "=" not in words[0]:
        # legacy form: ENV key value with spaces
        key, _, value = rest.strip().partition(" ")
        return {key: value.strip()}
    out = {}
    for word in words:
        key, sep, value = word.partition("=")
        if not sep or not key:
            if not key:
                raise InvalidArgument(f"{what} names can not be blank")
            raise InvalidArgument(f"Syntax error - can't find = in \"{word}\". Must be of the form: name=value")
        out[key] = value
    return out


def apply_changes(config: dict[str, Any], changes: list[str]) -> dict[str, Any]:
    """Apply each change line to the ``config`` part of an image config (returned updated)."""
    cfg = dict(config)
    for line in changes:
        line = line.strip()
        if not line:
            continue
        instruction, _, rest = line.partition(" ")
        word = instruction.upper()
        if word not in ALLOWED:
            raise InvalidArgument(f"{instruction} is not a valid change command")
        if word == "CMD":
            cfg["Cmd"] = _json_or_shell(rest)
        elif word == "ENTRYPOINT":
            cfg["Entrypoint"] = _json_or_shell(rest)
        elif word == "ENV":
            env = {e.split("=", 1)[0]: e for e in cfg.get("Env") or []}
            for key, value in _pairs(rest, "ENV").items():
                env[key] = f"{key}={value}"
            cfg["Env"] = list(env.values())
        elif word == "LABEL":
            cfg["Labels"] = {**(cfg.get("Labels") or {}), **_pairs(rest, "LABEL")}
        elif word == "EXPOSE":
            ports = dict(cfg.get("ExposedPorts") or {})
            for port in rest.split():
                ports[port if "/" in port else f"{port}/tcp"] = {}
            cfg["ExposedPorts"] = ports
        elif word == "VOLUME":
            volumes = dict(cfg.get("Volumes") or {})
            for path in _json_or_shell(rest) if rest.strip().startswith("[") else rest.split():
                volumes[path] = {}
            cfg["Volumes"] = volumes
        elif word == "USER":
            cfg["User"] = rest.strip()
        elif word == "WORKDIR":
            cfg["WorkingDir"] = rest.strip()
        elif word == "STOPSIGNAL":
            cfg["StopSignal"] = rest.strip()
        elif word == "ONBUILD":
            cfg["OnBuild"] = [*(cfg.get("OnBuild") or []), rest.strip()]
        elif word == "HEALTHCHECK":
            test = rest.strip()
            cfg["Healthcheck"] = {"Test": ["NONE"]} if test.upper() == "NONE" else {
                "Test": ["CMD-SHELL", test.removeprefix("CMD ").strip()]}
    return cfg


def image_config(config: dict[str, Any], *, comment: str = "", platform: str = "") -> dict[str, Any]:
    """A complete image config around ``config`` (rootfs is filled in by the snapshotter)."""
    machine = os.uname().machine
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)
    if platform:
        parts = platform.split("/")
        if parts[0] != "linux" or (len(parts) > 1 and parts[1] != arch):
            raise InvalidArgument(f"platform {platform} is not supported by this host (linux/{arch})")
    created = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{time.time_ns() % 1_000_000_000:09d}Z"
    doc: dict[str, Any] = {"architecture": arch, "os": "linux", "created": created, "config": config,
                           "rootfs": {"type": "layers", "diff_ids": []}}
    if comment:
        doc["comment"] = comment
    return doc
