"""The runtime options of ``POST /containers/create`` and ``POST /containers/{id}/update``:
moby's validation (its error texts) and their translation to the shim's types.

Create calls :func:`validate` on the merged host config and :func:`spec_options` to fill the
``ContainerSpec``; update merges with :func:`merge_update` and reuses the same checks.
"""

from __future__ import annotations

import os
from typing import Any

from protos.errors import Conflict, InvalidArgument
from shim.api import Healthcheck, Resources, RestartPolicy, Ulimit
from shim.supervisor import caps as capabilities

MIN_MEMORY = 6 * 1024 * 1024  # moby's linuxMinMemory
MIN_DURATION_NS = 1_000_000  # containertypes.MinimumDuration (1 ms)
RESTART_POLICIES = ("no", "always", "unless-stopped", "on-failure")
# Go's ulimit names (docker/go-units) → whether Docker knows them.
ULIMIT_NAMES = frozenset({"core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue", "nice", "nofile",
                          "nproc", "rss", "rtprio", "rttime", "sigpending", "stack"})


def restart_policy(raw: Any) -> RestartPolicy:
    """moby's ValidateRestartPolicy."""
    raw = raw if isinstance(raw, dict) else {}
    name = raw.get("Name") or ""
    count = int(raw.get("MaximumRetryCount") or 0)
    if name in ("always", "unless-stopped", "no"):
        if count != 0:
            message = "invalid restart policy: maximum retry count can only be used with 'on-failure'"
            raise InvalidArgument(message + (" and cannot be negative" if count < 0 else ""))
    elif name == "on-failure":
        if count < 0:
            raise InvalidArgument("invalid restart policy: maximum retry count cannot be negative")
    elif name != "":
        raise InvalidArgument(f"invalid restart policy: unknown policy '{name}'; use one of 'no', 'always', "
                              "'on-failure', or 'unless-stopped'")
    return RestartPolicy(name=name or "no", maximum_retry_count=count)


def _capabilities(names: Any, field: str) -> None:
    for name in names or ():
        upper = str(name).upper()
        if upper == "ALL":
            continue
        key = upper.removeprefix("CAP_")
        if key not in capabilities.CAPABILITIES:
            raise InvalidArgument(f'invalid {field}: unknown capability: "CAP_{key}"')


def security_options(opts: Any) -> tuple[bool, str]:
    """(no_new_privileges, seccomp profile) from SecurityOpt, as moby's parseSecurityOpt reads
    it; AppArmor and SELinux labels are accepted (Berth applies no LSM profile)."""
    nnp, seccomp = False, ""
    for opt in opts or ():
        opt = str(opt)
        if opt == "no-new-privileges":
            nnp = True
            continue
        if opt in ("writable-cgroups", "disable"):
            continue
        if "=" in opt:
            key, _, value = opt.partition("=")
        elif ":" in opt:
            key, _, value = opt.partition(":")
        else:
            raise InvalidArgument(f'invalid --security-opt 1: "{opt}"')
        if key in ("label", "apparmor"):
            continue
        if key == "seccomp":
            seccomp = value
        elif key in ("no-new-privileges", "writable-cgroups"):
            parsed = _go_bool(value)
            if parsed is None:
                raise InvalidArgument(f'invalid --security-opt 2: "{opt}"')
            if key == "no-new-privileges":
                nnp = parsed
        else:
            raise InvalidArgument(f'invalid --security-opt 2: "{opt}"')
    return nnp, seccomp


def _go_bool(value: str) -> bool | None:
    """Go's strconv.ParseBool."""
    if value in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if value in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    return None


def healthcheck(config: Any) -> None:
    """moby's validateHealthCheck."""
    if not isinstance(config, dict):
        return
    for key, label in (("Interval", "Interval"), ("Timeout", "Timeout"), ("StartPeriod", "StartPeriod"),
                       ("StartInterval", "StartInterval")):
        value = int(config.get(key) or 0)
        if value != 0 and value < MIN_DURATION_NS:
            raise InvalidArgument(f"{label} in Healthcheck cannot be less than 1ms")
    if int(config.get("Retries") or 0) < 0:
        raise InvalidArgument("Retries in Healthcheck cannot be negative")


def merge_healthcheck(user: Any, image: Any) -> dict[str, Any] | None:
    """moby's runconfig merge of the container's Healthcheck with the image's."""
    if not isinstance(image, dict) or not image:
        return user if isinstance(user, dict) else None
    if not isinstance(user, dict):
        return dict(image)
    merged = dict(user)
    if not merged.get("Test"):
        merged["Test"] = image.get("Test")
    for key in ("Interval", "Timeout", "StartPeriod", "StartInterval", "Retries"):
        if not merged.get(key):
            merged[key] = image.get(key, 0)
    return merged


def _ulimits(raw: Any) -> tuple[Ulimit, ...]:
    out = []
    for item in raw or ():
        if not isinstance(item, dict):
            raise InvalidArgument("invalid ulimit: expected an object")
        name = str(item.get("Name") or "")
        if name not in ULIMIT_NAMES:
            raise InvalidArgument(f"invalid ulimit type: {name}")
        soft, hard = int(item.get("Soft") or 0), int(item.get("Hard") or 0)
        if soft > hard:
            raise InvalidArgument(f"ulimit soft limit must be less than or equal to hard limit: {soft} > {hard}")
        out.append(Ulimit(name=name, soft=soft, hard=hard))
    return tuple(out)


def resources(host: dict[str, Any]) -> Resources:
    return Resources(
        memory=int(host.get("Memory") or 0),
        memory_swap=int(host.get("MemorySwap") or 0),
        memory_reservation=int(host.get("MemoryReservation") or 0),
        nano_cpus=int(host.get("NanoCpus") or 0),
        cpu_shares=int(host.get("CpuShares") or 0),
        cpu_period=int(host.get("CpuPeriod") or 0),
        cpu_quota=int(host.get("CpuQuota") or 0),
        cpuset_cpus=host.get("CpusetCpus") or "",
        cpuset_mems=host.get("CpusetMems") or "",
        pids_limit=max(0, int(host.get("PidsLimit") or 0)),
        oom_kill_disable=bool(host.get("OomKillDisable")),
    )


def validate(host: dict[str, Any], config: dict[str, Any], *, update: bool = False) -> list[str]:
    """moby's validateHostConfig + verifyPlatformContainerResources (the parts Berth runs);
    returns the warnings. Sets Docker's derived defaults in ``host`` (MemorySwap)."""
    warnings: list[str] = []
    if not update:
        policy = restart_policy(host.get("RestartPolicy"))
        if host.get("AutoRemove") and policy.name != "no":
            raise InvalidArgument("can't create 'AutoRemove' container with restart policy")
        _capabilities(host.get("CapAdd"), "CapAdd")
        _capabilities(host.get("CapDrop"), "CapDrop")
        healthcheck(config.get("Healthcheck"))
        security_options(host.get("SecurityOpt"))
        _ulimits(host.get("Ulimits"))
        userns = host.get("UsernsMode") or ""
        if userns not in ("", "host"):
            raise InvalidArgument(f"invalid USER mode: {userns}")
        if int(host.get("ShmSize") or 0) < 0:
            raise InvalidArgument("SHM size can not be less than 0")
    memory = int(host.get("Memory") or 0)
    swap = int(host.get("MemorySwap") or 0)
    reservation = int(host.get("MemoryReservation") or 0)
    if memory and memory < MIN_MEMORY:
        raise InvalidArgument("Minimum memory limit allowed is 6MB")
    if memory > 0 and swap > 0 and swap < memory:
        raise InvalidArgument("Minimum memoryswap limit should be larger than memory limit, see usage")
    if memory == 0 and swap > 0 and not update:
        raise InvalidArgument("You should always set the Memory limit when using Memoryswap limit, see usage")
    if reservation > 0 and reservation < MIN_MEMORY:
        raise InvalidArgument("Minimum memory reservation allowed is 6MB")
    if memory > 0 and reservation > 0 and memory < reservation:
        raise InvalidArgument("Minimum memory limit can not be less than memory reservation limit, see usage")
    if host.get("OomKillDisable") and memory == 0:
        warnings.append("OOM killer is disabled for the container, but no memory limit is set, this can result in "
                        "the system running out of resources.")
    nano = int(host.get("NanoCpus") or 0)
    period, quota = int(host.get("CpuPeriod") or 0), int(host.get("CpuQuota") or 0)
    if nano > 0 and period > 0:
        raise InvalidArgument("Conflicting options: Nano CPUs and CPU Period cannot both be set")
    if nano > 0 and quota > 0:
        raise InvalidArgument("Conflicting options: Nano CPUs and CPU Quota cannot both be set")
    cpus = os.cpu_count() or 1
    if nano != 0 and (nano < 0 or nano > cpus * 1_000_000_000):
        raise InvalidArgument(f"range of CPUs is from 0.01 to {cpus}.00, as there are only {cpus} CPUs available")
    if period != 0 and not 1000 <= period <= 1_000_000:
        raise InvalidArgument("CPU cfs period can not be less than 1ms (i.e. 1000) or larger than 1s (i.e. 1000000)")
    if 0 < quota < 1000:
        raise InvalidArgument("CPU cfs quota can not be less than 1ms (i.e. 1000)")
    if not update and memory > 0 and swap == 0:
        host["MemorySwap"] = memory * 2  # moby's adaptContainerSettings: swap defaults to the memory again
    return warnings


def merge_update(container_id: str, current: dict[str, Any], body: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """moby's UpdateContainer: the new HostConfig, or Conflict/InvalidArgument (nothing changed)."""
    if not isinstance(body, dict):
        raise InvalidArgument("invalid JSON: expected an object")
    host = dict(current)
    new = body

    def conflict(message: str) -> None:
        raise Conflict(f"Cannot update container {container_id}: {message}")

    if int(new.get("NanoCpus") or 0) > 0 and int(host.get("CpuPeriod") or 0) > 0:
        conflict("Conflicting options: Nano CPUs cannot be updated as CPU Period has already been set")
    if int(new.get("NanoCpus") or 0) > 0 and int(host.get("CpuQuota") or 0) > 0:
        conflict("Conflicting options: Nano CPUs cannot be updated as CPU Quota has already been set")
    if int(new.get("CpuPeriod") or 0) > 0 and int(host.get("NanoCpus") or 0) > 0:
        conflict("Conflicting options: CPU Period cannot be updated as NanoCPUs has already been set")
    if int(new.get("CpuQuota") or 0) > 0 and int(host.get("NanoCpus") or 0) > 0:
        conflict("Conflicting options: CPU Quota cannot be updated as NanoCPUs has already been set")
    for key in ("BlkioWeight", "CpuShares", "NanoCpus", "CpuPeriod", "CpuQuota", "MemoryReservation",
                "CpuRealtimePeriod", "CpuRealtimeRuntime"):
        if new.get(key):
            host[key] = new[key]
    for key in ("CpusetCpus", "CpusetMems"):
        if new.get(key):
            host[key] = new[key]
    memory = int(new.get("Memory") or 0)
    if memory:
        if memory > int(host.get("MemorySwap") or 0) and not new.get("MemorySwap"):
            conflict("Memory limit should be smaller than already set memoryswap limit, update the memoryswap "
                     "at the same time")
        host["Memory"] = memory
    if new.get("MemorySwap"):
        host["MemorySwap"] = new["MemorySwap"]
    if new.get("PidsLimit") is not None:
        limit = int(new["PidsLimit"])
        host["PidsLimit"] = limit if limit > 0 else 0  # 0 and -1 both mean unlimited on update
    policy = new.get("RestartPolicy") or {}
    if policy.get("Name"):
        checked = restart_policy(policy)
        if host.get("AutoRemove") and checked.name != "no":
            conflict("Restart policy cannot be updated because AutoRemove is enabled for the container")
        host["RestartPolicy"] = {"Name": checked.name, "MaximumRetryCount": checked.maximum_retry_count}
    warnings = validate(host, {}, update=True)
    return host, warnings


def spec_options(config: dict[str, Any], host: dict[str, Any]) -> dict[str, Any]:
    """The ``ContainerSpec`` fields of this module's options."""
    nnp, seccomp = security_options(host.get("SecurityOpt"))
    check = config.get("Healthcheck") or {}
    return {
        "restart_policy": restart_policy(host.get("RestartPolicy")),
        "healthcheck": Healthcheck(
            test=tuple(check.get("Test") or ()), interval_ns=int(check.get("Interval") or 0),
            timeout_ns=int(check.get("Timeout") or 0), start_period_ns=int(check.get("StartPeriod") or 0),
            start_interval_ns=int(check.get("StartInterval") or 0), retries=int(check.get("Retries") or 0),
            shell=tuple(config.get("Shell") or ())),
        "ulimits": _ulimits(host.get("Ulimits")),
        "sysctls": {str(k): str(v) for k, v in (host.get("Sysctls") or {}).items()},
        "group_add": tuple(str(g) for g in host.get("GroupAdd") or ()),
        "init": bool(host.get("Init")),
        "no_new_privileges": nnp,
        "seccomp_profile": "" if seccomp == "builtin" else seccomp,
    }
