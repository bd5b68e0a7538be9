"""Docker's security defaults and their switches, through the real CLI: capabilities,
--privileged, masked and read-only paths, --read-only, no-new-privileges, the default seccomp
profile (and unconfined, and a profile file), --user with groups, --userns=host; and what a
default container cannot do: mount, load modules, set the clock, see host processes."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tests.acceptance.conftest import Docker

pytestmark = pytest.mark.acceptance

DEFAULT_CAPS = 0xA80425FB  # CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID SETPCAP NET_BIND_SERVICE NET_RAW
#                            SYS_CHROOT MKNOD AUDIT_WRITE SETFCAP


def run(dkr: Docker, *args: str) -> str:
    out = dkr("run", "--rm", *args)
    assert out.returncode == 0, out.stderr
    return out.stdout


def status_field(text: str, name: str) -> str:
    return next(line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith(name + ":"))


def host_bounding() -> int:
    with open("/proc/self/status") as f:
        return int(status_field(f.read(), "CapBnd"), 16)


def test_capabilities(dkr: Docker, loaded: str) -> None:
    status = run(dkr, "busybox", "cat", "/proc/self/status")
    assert int(status_field(status, "CapEff"), 16) == DEFAULT_CAPS
    assert int(status_field(status, "CapBnd"), 16) == DEFAULT_CAPS and status_field(status, "CapInh") == "0" * 16
    tweaked = run(dkr, "--cap-add", "NET_ADMIN", "--cap-drop", "chown", "busybox", "cat", "/proc/self/status")
    assert int(status_field(tweaked, "CapEff"), 16) == (DEFAULT_CAPS | 1 << 12) & ~1
    only = run(dkr, "--cap-drop", "ALL", "--cap-add", "CAP_KILL", "busybox", "cat", "/proc/self/status")
    assert int(status_field(only, "CapEff"), 16) == 1 << 5
    nobody = run(dkr, "-u", "nobody", "busybox", "cat", "/proc/self/status")
    assert status_field(nobody, "CapEff") == "0" * 16


def test_privileged(dkr: Docker, loaded: str) -> None:
    script = ("grep -E '^(CapEff|Seccomp):' /proc/self/status; grep ' /sys ' /proc/mounts | cut -d' ' -f4;"
              " wc -c < /proc/interrupts; ls /dev")
    out = run(dkr, "--privileged", "busybox", "sh", "-c", script).splitlines()
    assert int(out[0].split()[1], 16) == host_bounding()
    assert out[1].split() == ["Seccomp:", "0"]
    assert out[2].startswith("rw,")
    assert int(out[3]) > 0  # not masked
    devices = [n for n in sorted(os.listdir("/dev")) if n not in ("console",) and not os.path.isdir(f"/dev/{n}")
               and (os.stat(f"/dev/{n}").st_mode & 0o170000) in (0o020000, 0o060000)]
    assert devices and set(devices[:8]) <= set(out[4:])
    plain = run(dkr, "busybox", "ls", "/dev").split()
    assert not set(devices) - {"null", "zero", "full", "random", "urandom", "tty", "ptmx"} <= set(plain)


def test_masked_readonly_and_read_only_rootfs(dkr: Docker, loaded: str) -> None:
    # masked: files are /dev/null, directories an empty read-only tmpfs (those this kernel has)
    script = ("stat -c %t:%T /proc/keys /proc/timer_list; stat -f -c %T /proc/acpi; ls -A /proc/acpi | wc -l;"
              " (echo 1 > /proc/sys/kernel/domainname) 2>/dev/null || echo proc-sys-ro;"
              " (echo 1 > /proc/sysrq-trigger) 2>/dev/null || echo sysrq-ro")
    assert run(dkr, "busybox", "sh", "-c", script).split() == ["1:3", "1:3", "tmpfs", "0", "proc-sys-ro",
                                                               "sysrq-ro"]
    out = dkr("run", "--rm", "--read-only", "busybox", "sh", "-c", "touch /x || echo rootfs-ro; echo ok > /dev/shm/y"
              " && cat /dev/shm/y")
    assert out.stdout.split() == ["rootfs-ro", "ok"]
    assert "Read-only file system" in out.stderr


def test_no_new_privileges_and_seccomp(dkr: Docker, loaded: str, tmp_path: Path) -> None:
    assert status_field(run(dkr, "busybox", "cat", "/proc/self/status"), "NoNewPrivs") == "0"
    nnp = run(dkr, "--security-opt", "no-new-privileges", "busybox", "cat", "/proc/self/status")
    assert status_field(nnp, "NoNewPrivs") == "1" and status_field(nnp, "Seccomp") == "2"
    # unshare(CLONE_NEWUSER) needs no capability: only the default profile stops it
    blocked = dkr("run", "--rm", "busybox", "unshare", "-U", "true")
    assert blocked.returncode == 1 and "Operation not permitted" in blocked.stderr
    unconfined = dkr("run", "--rm", "--security-opt", "seccomp=unconfined", "busybox", "unshare", "-U", "true")
    assert unconfined.returncode == 0
    personality = dkr("run", "--rm", "busybox", "linux32", "true")  # personality(PER_LINUX32) is allowed
    assert personality.returncode == 0
    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}))
    custom = dkr("run", "--rm", "--security-opt", f"seccomp={profile}", "busybox", "sh", "-c",
                 "mkdir /made || echo refused; unshare -U true && echo unshared")
    assert custom.stdout.split() == ["refused", "unshared"]


def test_what_a_container_cannot_do(dkr: Docker, loaded: str) -> None:
    mount = dkr("run", "--rm", "busybox", "mount", "-t", "tmpfs", "none", "/mnt")
    assert mount.returncode != 0 and "permission denied" in mount.stderr  # busybox's words for EPERM
    module = dkr("run", "--rm", "busybox", "sh", "-c", "head -c 64 /dev/zero > /tmp/m.ko; insmod /tmp/m.ko")
    assert module.returncode != 0 and "Operation not permitted" in module.stderr + module.stdout
    clock = dkr("run", "--rm", "busybox", "date", "-s", "2001-01-01")
    assert "can't set date: Operation not permitted" in clock.stderr
    assert time.gmtime().tm_year > 2001
    processes = run(dkr, "busybox", "ps", "-o", "pid,args").splitlines()[1:]
    assert [p.split(None, 1)[1] for p in processes] == ["ps -o pid,args"]


def test_user_groups_and_userns_host(dkr: Docker, loaded: str) -> None:
    out = run(dkr, "-u", "33:33", "--group-add", "100", "busybox", "sh", "-c", "id -u; id -g; id -G")
    assert out.split("\n")[:3] == ["33", "33", "33 100"]
    assert run(dkr, "--userns", "host", "busybox", "id", "-u").strip() == "0"
    bad = dkr("run", "--rm", "--userns", "remap", "busybox", "true")
    assert bad.returncode == 125
