"""A container's mounts from its create request, parsed and validated as moby's linux parser does
(``volume/mounts/linux_parser.go``, ``daemon/volumes.go`` registerMountPoints), with its error
texts: ``-v``/``Binds``, ``--mount``/``Mounts``, ``--tmpfs``/``Tmpfs`` and the image's
``VOLUME`` paths. Pure functions: nothing here touches a volume or a node.

A parsed mount is a :class:`MountPoint`, stored in the container's record (``MountPoints``) in
Docker's ``MountPoint`` shape plus what Berth needs to recreate it (``Spec``, copy and create
flags).
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field, replace
from typing import Any

from protos.errors import InvalidArgument

RW_MODES = frozenset({"rw", "ro"})
LABEL_MODES = frozenset({"z", "Z"})
PROPAGATION_MODES = ("private", "rprivate", "slave", "rslave", "shared", "rshared")
COPY_MODES = {"nocopy": False}
CONSISTENCY_MODES = frozenset({"consistent", "cached", "delegated"})
DEFAULT_PROPAGATION = "rprivate"
ANONYMOUS_LABEL = "com.docker.volume.anonymous"
# moby's RestrictedNamePattern
NAME_PATTERN = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
NAME_CHARS = "[a-zA-Z0-9][a-zA-Z0-9_.-]"
VALID_TMPFS_OPTIONS = frozenset({"exec", "noexec"})
MOUNT_TYPES = ("bind", "volume", "tmpfs", "npipe", "cluster", "image")


@dataclass
class MountPoint:
    """One mount of a container, as moby's ``volumemounts.MountPoint``."""

    type: str
    destination: str
    source: str = ""  # bind: the host path; volume: the volume's data directory (once known)
    name: str = ""  # volume name ("" until an anonymous volume is created)
    driver: str = ""
    rw: bool = True
    mode: str = ""
    propagation: str = ""
    spec: dict[str, Any] = field(default_factory=dict)  # the API's Mount (Type, Source, Target…)
    copy_data: bool = False
    create_source: bool = False  # -v: a missing host directory is created
    recursive: bool = True
    tmpfs_data: str = ""
    driver_options: dict[str, str] | None = None
    labels: dict[str, str] | None = None

    @property
    def anonymous(self) -> bool:
        """A volume the user did not name (removed with the container by ``rm -v`` / ``--rm``,
        moby's ``Spec.Source == ""``)."""
        return self.type == "volume" and not self.spec.get("Source")

    def to_record(self) -> dict[str, Any]:
        return {"Type": self.type, "Name": self.name, "Source": self.source, "Destination": self.destination,
                "Driver": self.driver, "Mode": self.mode, "RW": self.rw, "Propagation": self.propagation,
                "Spec": self.spec, "CopyData": self.copy_data, "CreateSource": self.create_source,
                "Recursive": self.recursive, "TmpfsData": self.tmpfs_data}

    @classmethod
    def from_record(cls, raw: dict[str, Any]) -> MountPoint:
        return cls(type=raw["Type"], destination=raw["Destination"], source=raw.get("Source", ""),
                   name=raw.get("Name", ""), driver=raw.get("Driver", ""), rw=bool(raw.get("RW", True)),
                   mode=raw.get("Mode", ""), propagation=raw.get("Propagation", ""), spec=raw.get("Spec") or {},
                   copy_data=bool(raw.get("CopyData")), create_source=bool(raw.get("CreateSource")),
                   recursive=bool(raw.get("Recursive", True)), tmpfs_data=raw.get("TmpfsData", ""))


def view(raw: dict[str, Any]) -> dict[str, Any]:
    """The ``Mounts`` entry of ``docker inspect`` (Go's omitempty on Type, Name, Driver)."""
    out: dict[str, Any] = {}
    if raw.get("Type"):
        out["Type"] = raw["Type"]
    if raw.get("Name"):
        out["Name"] = raw["Name"]
    out["Source"] = raw.get("Source", "")
    out["Destination"] = raw["Destination"]
    if raw.get("Driver"):
        out["Driver"] = raw["Driver"]
    out.update(Mode=raw.get("Mode", ""), RW=bool(raw.get("RW", True)), Propagation=raw.get("Propagation", ""))
    return out


def _invalid_spec(raw: str) -> str:
    return f"invalid volume specification: '{raw}'"


def _mount_config(kind: str, message: str) -> InvalidArgument:
    return InvalidArgument(f'invalid mount config for type "{kind}": {message}')


def validate_not_root(path: str) -> str | None:
    if posixpath.normpath(path.replace("\\", "/")) == "/":
        return "invalid specification: destination can't be '/'"
    return None


def validate_absolute(path: str) -> str | None:
    path = path.replace("\\", "/")
    if path.startswith("/"):
        return None
    return f"invalid mount path: '{path}' mount path must be absolute"


def valid_mode(mode: str) -> bool:
    """moby's linuxValidMountMode: known words, each kind at most once."""
    if mode == "":
        return True
    counts = {"rw": 0, "label": 0, "propagation": 0, "copy": 0, "consistency": 0}
    for word in mode.split(","):
        if word in RW_MODES:
            counts["rw"] += 1
        elif word in LABEL_MODES:
            counts["label"] += 1
        elif word in PROPAGATION_MODES:
            counts["propagation"] += 1
        elif word in COPY_MODES:
            counts["copy"] += 1
        elif word in CONSISTENCY_MODES:
            counts["consistency"] += 1
        else:
            return False
    return all(n <= 1 for n in counts.values())


def read_write(mode: str) -> bool:
    return valid_mode(mode) and "ro" not in mode.split(",")


def _propagation(mode: str) -> str:
    return next((w for w in mode.split(",") if w in PROPAGATION_MODES), "")


def tmpfs_data(options: dict[str, Any] | None, readonly: bool) -> str:
    """moby's ConvertTmpfsOptions: ``ro``, ``mode=``, ``size=`` with the largest exact unit, and
    the allowed extra options."""
    raw: list[str] = ["ro"] if readonly else []
    opts = options or {}
    mode = int(opts.get("Mode") or 0)
    if mode:
        raw.append(f"mode={mode:o}")
    size = int(opts.get("SizeBytes") or 0)
    if size:
        for suffix, divisor in (("g", 1 << 30), ("m", 1 << 20), ("k", 1 << 10)):
            if size % divisor == 0:
                raw.append(f"size={size // divisor}{suffix}")
                break
        else:
            raw.append(f"size={size}")
    for item in opts.get("Options") or []:
        if not isinstance(item, list) or not 1 <= len(item) <= 2:
            raise InvalidArgument("invalid option array length")
        if item[0] not in VALID_TMPFS_OPTIONS:
            raise InvalidArgument("invalid option: " + str(item[0]))
        raw.append(str(item[0]) if len(item) == 1 else f"{item[0]}={item[1]}")
    return ",".join(raw)


def _validate_spec(spec: dict[str, Any], *, bind_source_must_exist: bool,
                   exists: Any = posixpath.lexists) -> None:
    """moby's validateMountConfigImpl; raises with its texts."""
    kind = str(spec.get("Type") or "")
    target = str(spec.get("Target") or "")
    source = str(spec.get("Source") or "")
    if not target:
        raise _mount_config(kind, "field Target must not be empty")
    for check in (validate_not_root, validate_absolute):
        problem = check(target)
        if problem:
            raise _mount_config(kind, problem)
    if kind == "bind":
        if not source:
            raise _mount_config(kind, "field Source must not be empty")
        propagation = (spec.get("BindOptions") or {}).get("Propagation") or ""
        if propagation and propagation not in PROPAGATION_MODES:
            raise _mount_config(kind, f"invalid propagation mode: {propagation}")
        for extra in ("VolumeOptions", "ImageOptions"):
            if spec.get(extra):
                raise _mount_config(kind, f"field {extra} must not be specified")
        problem = validate_absolute(source)
        if problem:
            raise _mount_config(kind, problem)
        create = bool((spec.get("BindOptions") or {}).get("CreateMountpoint"))
        if bind_source_must_exist and not create and not exists(source):
            raise _mount_config(kind, f"bind source path does not exist: {source}")
    elif kind == "volume":
        for extra in ("BindOptions", "ImageOptions"):
            if spec.get(extra):
                raise _mount_config(kind, f"field {extra} must not be specified")
        anonymous = not source
        subpath = (spec.get("VolumeOptions") or {}).get("Subpath") or ""
        if subpath:
            if anonymous:
                raise _mount_config(kind, "must not set Subpath when using anonymous volumes")
            clean = posixpath.normpath(subpath)
            if subpath.startswith("/") or clean == ".." or clean.startswith("../"):
                raise _mount_config(kind, "subpath must be a relative path within the volume")
            raise InvalidArgument("volume subpaths are not supported by Berth yet")
        if spec.get("ReadOnly") and anonymous:
            raise _mount_config(kind, "must not set ReadOnly mode when using anonymous volumes")
    elif kind == "tmpfs":
        for extra in ("BindOptions", "ImageOptions"):
            if spec.get(extra):
                raise _mount_config(kind, f"field {extra} must not be specified")
        if source:
            raise _mount_config(kind, "field Source must not be specified")
        try:
            tmpfs_data(spec.get("TmpfsOptions"), bool(spec.get("ReadOnly")))
        except InvalidArgument as exc:
            raise _mount_config(kind, exc.message) from None
    elif kind == "image":
        raise InvalidArgument("image mounts are not supported by Berth yet")
    elif kind in MOUNT_TYPES:
        raise _mount_config(kind, "mount type unknown")
    else:
        raise _mount_config(kind, "mount type unknown")


def _from_spec(spec: dict[str, Any], *, bind_source_must_exist: bool) -> MountPoint:
    """moby's parseMountSpec."""
    _validate_spec(spec, bind_source_must_exist=bind_source_must_exist)
    kind = spec["Type"]
    mp = MountPoint(type=kind, destination=posixpath.normpath(str(spec["Target"])), rw=not spec.get("ReadOnly"),
                    spec=spec)
    if kind == "volume":
        options = spec.get("VolumeOptions") or {}
        mp.name = str(spec.get("Source") or "")
        mp.copy_data = not options.get("NoCopy")
        driver_config = options.get("DriverConfig") or {}
        mp.driver = str(driver_config.get("Name") or "")
        mp.driver_options = dict(driver_config.get("Options") or {}) or None
        mp.labels = dict(options.get("Labels") or {}) or None
    elif kind == "bind":
        mp.source = posixpath.normpath(str(spec["Source"]))
        bind_options = spec.get("BindOptions") or {}
        mp.propagation = bind_options.get("Propagation") or DEFAULT_PROPAGATION
        mp.recursive = not bind_options.get("NonRecursive")
    elif kind == "tmpfs":
        mp.tmpfs_data = tmpfs_data(spec.get("TmpfsOptions"), bool(spec.get("ReadOnly")))
    return mp


def parse_bind(raw: str, volume_driver: str = "") -> MountPoint:
    """One ``-v`` / ``Binds`` entry (moby's ParseMountRaw): ``[source:]target[:mode]``."""
    parts = raw.split(":", 3)
    if not parts[0]:
        raise InvalidArgument(_invalid_spec(raw))
    spec: dict[str, Any] = {}
    mode = ""
    if len(parts) == 1:
        spec["Target"] = parts[0]
    elif len(parts) == 2:
        if valid_mode(parts[1]):
            raise InvalidArgument(_invalid_spec(raw))  # /foo:rw is no volume
        spec["Source"], spec["Target"] = parts[0], parts[1]
    elif len(parts) == 3:
        spec["Source"], spec["Target"], mode = parts
    else:
        raise InvalidArgument(_invalid_spec(raw))
    if not valid_mode(mode):
        raise InvalidArgument(f"invalid mode: {mode}")
    spec["Type"] = "bind" if str(spec.get("Source", "")).startswith("/") else "volume"
    spec["ReadOnly"] = not read_write(mode)
    if volume_driver and spec["Type"] == "volume":
        spec["VolumeOptions"] = {"DriverConfig": {"Name": volume_driver}}
    copy = next((COPY_MODES[w] for w in mode.split(",") if w in COPY_MODES), None)
    if copy is not None:
        spec.setdefault("VolumeOptions", {})["NoCopy"] = not copy
    propagation = _propagation(mode)
    if propagation:
        spec["BindOptions"] = {"Propagation": propagation}
    try:
        mp = _from_spec(spec, bind_source_must_exist=False)
    except InvalidArgument as exc:
        raise InvalidArgument(f"{_invalid_spec(raw)}: {exc.message}") from None
    mp.mode = mode
    if mp.type == "bind":
        mp.create_source = True  # dockerd creates a missing -v source directory at start
    elif not mp.mode:
        mp.mode = "z"  # moby's setBindModeIfNull for local volumes
    return mp


def parse_mount(spec: Any) -> MountPoint:
    """One ``--mount`` / ``Mounts`` entry (moby's ParseMountSpec; a bind source must exist)."""
    if not isinstance(spec, dict):
        raise InvalidArgument("invalid mount config: expected an object")
    mp = _from_spec(dict(spec), bind_source_must_exist=True)
    if mp.type == "bind":
        mp.create_source = bool((spec.get("BindOptions") or {}).get("CreateMountpoint"))
    elif mp.type == "volume":
        mp.mode = "z"
    return mp


def parse_volumes_from(spec: str) -> tuple[str, str]:
    """moby's ParseVolumesFrom: (container, mode)."""
    if not spec:
        raise InvalidArgument("volumes-from specification cannot be an empty string")
    container, _, mode = spec.partition(":")
    if not mode:
        return container, "rw"
    if not valid_mode(mode) or _propagation(mode) or any(w in COPY_MODES for w in mode.split(",")):
        raise InvalidArgument(f"invalid mode: {mode}")
    return container, mode


def validate_tmpfs(tmpfs: Any) -> dict[str, str]:
    """``HostConfig.Tmpfs`` (destination → options), destinations checked as moby does."""
    if not tmpfs:
        return {}
    if not isinstance(tmpfs, dict):
        raise InvalidArgument("invalid Tmpfs: expected an object")
    out = {}
    for dest, options in tmpfs.items():
        for check in (validate_not_root, validate_absolute):
            problem = check(str(dest))
            if problem:
                raise InvalidArgument(problem)
        out[str(dest)] = str(options or "")
    return out


def from_volume_of(other: MountPoint, mode: str) -> MountPoint:
    """``--volumes-from``: the other container's mount, read-only if either says so, never
    copied into again."""
    return replace(other, rw=other.rw and read_write(mode), copy_data=False)


def duplicate(destination: str) -> InvalidArgument:
    return InvalidArgument(f"Duplicate mount point: {destination}")


def validate_volume_name(name: str) -> str | None:
    """The local driver's name check (moby's validateName), or None."""
    if len(name) == 1:
        return "volume name is too short, names should be at least two alphanumeric characters"
    if not NAME_PATTERN.match(name):
        return (f'"{name}" includes invalid characters for a local volume name, only "{NAME_CHARS}" are allowed. '
                "If you intended to pass a host directory, use absolute path")
    return None
