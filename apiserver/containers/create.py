"""``POST /containers/create``: validate the body, merge the image's config as moby does, and
derive the shim's ``ContainerSpec``.

Options Berth does not implement yet are refused with a 400 that names them, never accepted and
ignored; empty values (which the CLI always sends) are fine.
"""

from __future__ import annotations

import re
import signal as signal_module
from dataclasses import dataclass
from typing import Any

from apiserver.containers import runtime_options
from apiserver.images.store import ImageRecord
from common.mounts import Mount
from protos.errors import InvalidArgument
from shim.api import ContainerSpec, NamespaceMode, ProcessSpec

_NAME_RE = re.compile(r"^/?[a-zA-Z0-9][a-zA-Z0-9_.-]+$")

# HostConfig keys that later issues implement; a non-empty value is refused until then.
_NOT_YET = ("Links", "Devices", "DeviceRequests",
            "CgroupParent", "BlkioWeight",
            "BlkioWeightDevice", "BlkioDeviceReadBps", "BlkioDeviceWriteBps",
            "StorageOpt", "Runtime", "MaskedPaths", "ReadonlyPaths", "DeviceCgroupRules",
            "CgroupnsMode", "OomScoreAdj", "KernelMemory", "MemorySwappiness")

DEFAULT_STOP_TIMEOUT = 10


def validate_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise InvalidArgument(
            f"Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")
    return name.lstrip("/")


def _list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise InvalidArgument(f"expected a list, got {type(value).__name__}")
    return [str(v) for v in value]


def _merge_env(image_env: list[str], env: list[str]) -> list[str]:
    merged: dict[str, str] = {}
    for item in [*image_env, *env]:
        key = item.split("=", 1)[0]
        merged[key] = item
    return list(merged.values())


def parse_signal(value: str | int | None, default: int = signal_module.SIGTERM) -> int:
    """``SIGTERM``, ``TERM``, ``15`` → 15; ``InvalidArgument`` for anything else."""
    if value is None or value == "":
        return default
    if isinstance(value, int) or str(value).isdigit():
        num = int(value)
        if 0 < num < 65:
            return num
        raise InvalidArgument(f"Invalid signal: {value}")
    name = str(value).upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        return int(signal_module.Signals[name])
    except KeyError:
        if name.startswith("SIGRTMIN") or name.startswith("SIGRTMAX"):
            base = signal_module.SIGRTMIN if name.startswith("SIGRTMIN") else signal_module.SIGRTMAX
            offset = name[8:]
            try:
                return int(base) + int(offset or 0)
            except ValueError:
                pass
        raise InvalidArgument(f"Invalid signal: {value}") from None


@dataclass(frozen=True, slots=True)
class CreatePlan:
    config: dict[str, Any]
    host_config: dict[str, Any]
    path: str
    args: list[str]
    warnings: list[str]


def _namespace(mode: str, what: str) -> NamespaceMode:
    if mode in ("", "private", "default", "shareable"):
        return NamespaceMode.PRIVATE
    if mode == "host":
        return NamespaceMode.HOST
    raise InvalidArgument(f"{what} mode {mode!r} is not supported by Berth yet")


def plan(body: dict[str, Any], image: ImageRecord, image_ref: str) -> CreatePlan:
    """Merge the create body with the image config; validate what Berth can run."""
    if not isinstance(body, dict):
        raise InvalidArgument("invalid JSON: expected an object")
    host_config: dict[str, Any] = dict(body.get("HostConfig") or {})
    for key in _NOT_YET:
        value = host_config.get(key)
        if value not in (None, "", 0, False, [], {}) and not (key == "MemorySwappiness" and value == -1):
            raise InvalidArgument(f"HostConfig.{key} is not supported by Berth yet")
    log_type = (host_config.get("LogConfig") or {}).get("Type") or "json-file"
    if log_type != "json-file":
        raise InvalidArgument(f"logging driver {log_type!r} is not supported by Berth (only json-file)")

    # The network itself is resolved (404 `network x not found`) by the network backend.
    network_mode = host_config.get("NetworkMode") or "default"
    if network_mode == "default":
        network_mode = "bridge"
    if network_mode == "container:":
        raise InvalidArgument("invalid network mode: container:")
    host_config["NetworkMode"] = network_mode
    for key in ("PidMode", "IpcMode", "UTSMode"):
        _namespace(host_config.get(key) or "", key.removesuffix("Mode").upper())
    host_config.setdefault("LogConfig", {"Type": "json-file", "Config": {}})
    host_config["LogConfig"] = {"Type": "json-file", "Config": host_config["LogConfig"].get("Config") or {}}
    host_config.setdefault("RestartPolicy", {"Name": "no", "MaximumRetryCount": 0})

    image_config: dict[str, Any] = dict(image.config.get("config") or {})
    entrypoint = body.get("Entrypoint")
    cmd = body.get("Cmd")
    if isinstance(entrypoint, str):
        entrypoint = [entrypoint]
    if isinstance(cmd, str):
        cmd = [cmd]
    if entrypoint is None:
        entrypoint = image_config.get("Entrypoint") or None
        if not cmd:
            cmd = image_config.get("Cmd") or None
    elif entrypoint == [] or entrypoint == [""]:
        # `--entrypoint ""` clears the image's entrypoint and keeps its command.
        entrypoint = None
        if not cmd:
            cmd = image_config.get("Cmd") or None
    argv = [*(entrypoint or []), *(cmd or [])]
    if not argv:
        raise InvalidArgument("no command specified")

    labels = {**(image_config.get("Labels") or {}), **(body.get("Labels") or {})}
    config: dict[str, Any] = {
        "Hostname": body.get("Hostname") or "",
        "Domainname": body.get("Domainname") or "",
        "User": body.get("User") if body.get("User") is not None else (image_config.get("User") or ""),
        "AttachStdin": bool(body.get("AttachStdin")),
        "AttachStdout": bool(body.get("AttachStdout")),
        "AttachStderr": bool(body.get("AttachStderr")),
        "ExposedPorts": {**(image_config.get("ExposedPorts") or {}), **(body.get("ExposedPorts") or {}),
                         **{k: {} for k in (host_config.get("PortBindings") or {})}} or None,
        "Tty": bool(body.get("Tty")),
        "OpenStdin": bool(body.get("OpenStdin")),
        "StdinOnce": bool(body.get("StdinOnce")),
        "Env": _merge_env(_list(image_config.get("Env")), _list(body.get("Env"))),
        "Cmd": cmd,
        "Image": image_ref,
        "Volumes": {**(image_config.get("Volumes") or {}), **(body.get("Volumes") or {})} or None,
        "WorkingDir": body.get("WorkingDir") or image_config.get("WorkingDir") or "",
        "Entrypoint": entrypoint,
        "OnBuild": image_config.get("OnBuild"),
        "Labels": labels,
    }
    if config["User"] == "" and body.get("User") is None:
        config["User"] = image_config.get("User") or ""
    stop_signal = body.get("StopSignal") or image_config.get("StopSignal")
    if stop_signal:
        parse_signal(stop_signal)
        config["StopSignal"] = stop_signal
    if body.get("StopTimeout") is not None:
        config["StopTimeout"] = int(body["StopTimeout"])
    if config["WorkingDir"] and not config["WorkingDir"].startswith("/"):
        raise InvalidArgument(
            f"the working directory '{config['WorkingDir']}' is invalid, it needs to be an absolute path")
    health = runtime_options.merge_healthcheck(body.get("Healthcheck"), image_config.get("Healthcheck"))
    if health is not None:
        config["Healthcheck"] = health
    if image_config.get("Shell"):
        config["Shell"] = image_config["Shell"]
    if not host_config["RestartPolicy"].get("Name"):
        host_config["RestartPolicy"] = {**host_config["RestartPolicy"], "Name": "no"}
    warnings = runtime_options.validate(host_config, config)
    if network_mode == "host" and (host_config.get("PortBindings") or host_config.get("PublishAllPorts")):
        warnings.append("Published ports are discarded when using host network mode")
    return CreatePlan(config=config, host_config=host_config, path=argv[0], args=argv[1:], warnings=warnings)


def _cpus() -> int:
    import os

    return os.cpu_count() or 1


DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def runtime_env(config: dict[str, Any]) -> list[str]:
    """moby's CreateDaemonEnvironment: PATH, HOSTNAME and (with a TTY) TERM, each overridden by
    the container's own Env."""
    defaults = [f"PATH={DEFAULT_PATH}", f"HOSTNAME={config.get('Hostname', '')}"]
    if config.get("Tty"):
        defaults.append("TERM=xterm")
    return _merge_env(defaults, list(config.get("Env") or ()))


def container_spec(id: str, record_config: dict[str, Any], rootfs: list[Mount]) -> ContainerSpec:
    """The shim's view of a stored container record."""
    config = record_config["Config"]
    host = record_config["HostConfig"]
    console = host.get("ConsoleSize") or [0, 0]
    process = ProcessSpec(
        args=(record_config["Path"], *record_config["Args"]),
        env=tuple(runtime_env(config)),
        cwd=config.get("WorkingDir") or "/",
        user=config.get("User") or "",
        terminal=bool(config.get("Tty")),
        open_stdin=bool(config.get("OpenStdin")),
        stdin_once=bool(config.get("StdinOnce")),
        console_height=int(console[0] or 0),
        console_width=int(console[1] or 0),
    )
    resources = runtime_options.resources(host)
    return ContainerSpec(
        id=id,
        rootfs=tuple(rootfs),
        process=process,
        hostname=config.get("Hostname") or id[:12],
        domainname=config.get("Domainname") or "",
        network=NamespaceMode.HOST if host.get("NetworkMode") == "host" else NamespaceMode.PRIVATE,
        ipc=_namespace(host.get("IpcMode") or "", "IPC"),
        pid=_namespace(host.get("PidMode") or "", "PID"),
        uts=_namespace(host.get("UTSMode") or "", "UTS"),
        readonly_rootfs=bool(host.get("ReadonlyRootfs")),
        privileged=bool(host.get("Privileged")),
        cap_add=tuple(host.get("CapAdd") or ()),
        cap_drop=tuple(host.get("CapDrop") or ()),
        resources=resources,
        shm_size=int(host.get("ShmSize") or 0) or 64 * 1024 * 1024,
        labels=dict(config.get("Labels") or {}),
        **runtime_options.spec_options(config, host),
    )
