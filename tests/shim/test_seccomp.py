"""The seccomp compiler: Docker's default profile compiled for this host, checked by running the
BPF program on chosen system calls with a small interpreter of classic BPF (the kernel itself is
exercised by the runtime and acceptance tests: unshare refused, personality allowed…)."""

from __future__ import annotations

import functools
import json
import random
import struct

import pytest

from shim.supervisor import seccomp, syscalls
from shim.supervisor.caps import DOCKER_DEFAULTS

DEFAULT_CAPS = ["CAP_" + c for c in DOCKER_DEFAULTS]
X86_64 = seccomp.AUDIT_ARCH_X86_64
I386 = seccomp.AUDIT_ARCH_I386
ALLOW = seccomp.RET_ALLOW
EPERM = seccomp.RET_ERRNO | 1


@functools.lru_cache(maxsize=8)
def _decode(program: bytes) -> list[tuple[int, int, int, int]]:
    return [struct.unpack_from("=HBBI", program, i) for i in range(0, len(program), 8)]


def evaluate(program: bytes, nr: int, arch: int = X86_64, args: tuple[int, ...] = ()) -> int:
    """What the kernel would return for this call."""
    insns = _decode(program)
    data = struct.pack("=iIQ6Q", nr, arch, 0, *(list(args) + [0] * (6 - len(args))))
    a, pc = 0, 0
    for _ in range(len(insns) + 1):  # classic BPF only jumps forward: at most one pass
        code, jt, jf, k = insns[pc]
        if code == 0x20:  # ld [k]
            a = struct.unpack_from("=I", data, k)[0]
            pc += 1
        elif code == 0x54:  # and #k
            a &= k
            pc += 1
        elif code in (0x15, 0x25, 0x35):  # jeq / jgt / jge
            taken = a == k if code == 0x15 else a > k if code == 0x25 else a >= k
            pc += 1 + (jt if taken else jf)
        elif code == 0x05:  # ja
            pc += 1 + k
        elif code == 0x06:  # ret
            return int(k)
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")
    raise AssertionError("the program did not return")


@pytest.fixture(scope="module")
def default() -> bytes:
    return seccomp.compile_profile(seccomp.default_profile_text(), DEFAULT_CAPS, machine="x86_64", release="6.1.0")


def nr(name: str) -> int:
    return syscalls.X86_64[name]


def test_default_profile_allows_the_usual_and_refuses_the_rest(default: bytes) -> None:
    assert len(default) % 8 == 0 and len(default) // 8 <= seccomp.BPF_MAXINSNS
    for name in ("read", "write", "openat", "execve", "clone", "mmap", "close_range", "ptrace", "socket"):
        assert evaluate(default, nr(name)) == ALLOW, name
    for name in ("mount", "umount2", "unshare", "setns", "keyctl", "add_key", "kexec_load", "init_module",
                 "finit_module", "reboot", "settimeofday", "clock_settime", "pivot_root", "bpf", "open_by_handle_at",
                 "userfaultfd", "io_uring_setup", "syslog"):
        assert evaluate(default, nr(name)) == EPERM, name
    assert evaluate(default, nr("clone3")) == seccomp.RET_ERRNO | 38  # ENOSYS, so that libc falls back to clone
    assert evaluate(default, 4000) == EPERM  # not a system call: the default action


def test_merged_runs_give_every_call_the_same_verdict(default: bytes) -> None:
    """The compact program (runs of numbers sharing their code) against one branch per call, for
    every number of both architectures, x32's, the gaps and past the end."""
    plain = seccomp.compile_profile(seccomp.default_profile_text(), DEFAULT_CAPS, machine="x86_64", release="6.1.0",
                                    merge=False)
    assert len(default) * 3 < len(plain)  # what merging is for
    assert len(default) // 8 < 420  # and sharing the returns (666 instructions without)
    numbers = [*range(0, 600), *(syscalls.X32_SYSCALL_BIT + n for n in range(0, 600)), 0x7FFFFFFF, -1]
    argsets = [(), (0x10000000,), (40,), (0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF)]
    for arch in (X86_64, I386):
        for number in numbers:
            for args in argsets:
                want = evaluate(plain, number, arch, args)
                assert evaluate(default, number, arch, args) == want, (arch, number, args)


@pytest.mark.parametrize("seed", range(12))
def test_random_profiles_compile_to_the_same_verdicts(seed: int) -> None:
    """Profiles of every size and mix (few calls to all of them, actions of several kinds, some
    with argument rules): the compact program against one branch per call, number by number."""
    rng = random.Random(seed)
    names = sorted(syscalls.X86_64)
    actions = ["SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_LOG", "SCMP_ACT_TRAP"]
    default_action = rng.choice(["SCMP_ACT_ERRNO", "SCMP_ACT_ALLOW"])
    calls = []
    for _ in range(rng.randint(1, 6)):
        with_args = rng.random() < 0.3  # few names: one branch per call must stay within the kernel's limit
        chosen = rng.sample(names, rng.randint(1, 40 if with_args else len(names)))
        call: dict[str, object] = {"names": chosen, "action": rng.choice(actions), "errnoRet": rng.randint(1, 99)}
        if with_args:
            call["args"] = [{"index": rng.randint(0, 5), "value": rng.choice([0, 2, 40, 1 << 33]),
                             "op": rng.choice(["SCMP_CMP_EQ", "SCMP_CMP_NE", "SCMP_CMP_GT", "SCMP_CMP_LE"])}]
        calls.append(call)
    text = json.dumps({"defaultAction": default_action, "syscalls": calls,
                       "archMap": [{"architecture": "SCMP_ARCH_X86_64",
                                    "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]}]})
    compact = seccomp.compile_profile(text, [], machine="x86_64", release="6.1.0")
    plain = seccomp.compile_profile(text, [], machine="x86_64", release="6.1.0", merge=False)
    numbers = [*range(0, 560), *(syscalls.X32_SYSCALL_BIT + n for n in range(0, 560)), 0x7FFFFFFF, -1]
    for arch in (X86_64, I386):
        for number in numbers:
            for args in ((), (2, 40, 1 << 33, 0, 0, 2)):
                assert evaluate(compact, number, arch, args) == evaluate(plain, number, arch, args), (arch, number)


def test_argument_conditions(default: bytes) -> None:
    clone = nr("clone")
    assert evaluate(default, clone, args=(0x01200011,)) == ALLOW  # fork-like flags
    assert evaluate(default, clone, args=(0x10000000,)) == EPERM  # CLONE_NEWUSER
    assert evaluate(default, clone, args=(0x20000000 | 0x11,)) == EPERM  # CLONE_NEWPID
    socket = nr("socket")
    assert evaluate(default, socket, args=(2,)) == ALLOW  # AF_INET
    assert evaluate(default, socket, args=(40,)) == EPERM  # AF_VSOCK
    assert evaluate(default, socket, args=(40 | 1 << 32,)) == ALLOW  # compared as 64 bits
    personality = nr("personality")
    for persona in (0, 8, 0x20000, 0x20008, 0xFFFFFFFF):
        assert evaluate(default, personality, args=(persona,)) == ALLOW, persona
    assert evaluate(default, personality, args=(1,)) == EPERM


def test_capabilities_and_kernel_version_choose_rules() -> None:
    admin = seccomp.compile_profile(seccomp.default_profile_text(), [*DEFAULT_CAPS, "CAP_SYS_ADMIN"],
                                    machine="x86_64", release="6.1.0")
    assert evaluate(admin, nr("mount")) == ALLOW and evaluate(admin, nr("unshare")) == ALLOW
    assert evaluate(admin, nr("clone"), args=(0x10000000,)) == ALLOW and evaluate(admin, nr("clone3")) == ALLOW
    old = seccomp.compile_profile(seccomp.default_profile_text(), DEFAULT_CAPS, machine="x86_64", release="4.4.0")
    assert evaluate(old, nr("ptrace")) == EPERM  # allowed from 4.8 only


def test_sub_architectures_and_unknown_ones(default: bytes) -> None:
    assert evaluate(default, syscalls.I386["read"], arch=I386) == ALLOW
    assert evaluate(default, syscalls.I386["unshare"], arch=I386) == EPERM
    assert evaluate(default, syscalls.I386["socketcall"], arch=I386) == ALLOW
    assert evaluate(default, syscalls.X32["read"] | syscalls.X32_SYSCALL_BIT) == ALLOW
    assert evaluate(default, 0, arch=0xDEADBEEF) == seccomp.RET_KILL_THREAD


def test_custom_profiles() -> None:
    profile = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
        {"names": ["kill"], "action": "SCMP_ACT_KILL_PROCESS", "args": [
            {"index": 1, "value": 9, "op": "SCMP_CMP_EQ"}]},
        {"names": ["write"], "action": "SCMP_ACT_ERRNO", "args": [
            {"index": 2, "value": 100, "op": "SCMP_CMP_GT"}, {"index": 0, "value": 2, "op": "SCMP_CMP_LE"}]},
        {"names": ["mmap"], "action": "SCMP_ACT_ERRNO", "args": [
            {"index": 3, "value": 0x20, "valueTwo": 0x20, "op": "SCMP_CMP_MASKED_EQ"}]},
        {"names": ["read"], "action": "SCMP_ACT_LOG", "args": [
            {"index": 0, "value": 1, "op": "SCMP_CMP_LT"}, {"index": 0, "value": 5, "op": "SCMP_CMP_GE"}]},
    ]}
    program = seccomp.compile_profile(json.dumps(profile), [], machine="x86_64")
    assert evaluate(program, nr("mkdir")) == seccomp.RET_ERRNO | 13
    assert evaluate(program, nr("kill"), args=(1, 9)) == seccomp.RET_KILL_PROCESS
    assert evaluate(program, nr("kill"), args=(1, 15)) == ALLOW
    assert evaluate(program, nr("write"), args=(1, 0, 101)) == seccomp.RET_ERRNO | 1  # errno defaults to EPERM
    assert evaluate(program, nr("write"), args=(3, 0, 101)) == ALLOW  # both conditions must hold
    assert evaluate(program, nr("write"), args=(1, 0, 100)) == ALLOW
    assert evaluate(program, nr("write"), args=(1, 0, 1 << 33)) == seccomp.RET_ERRNO | 1  # high word decides
    assert evaluate(program, nr("mmap"), args=(0, 0, 0, 0x22)) == seccomp.RET_ERRNO | 1
    assert evaluate(program, nr("mmap"), args=(0, 0, 0, 0x02)) == ALLOW
    # two conditions on one argument: one rule each (ORed), as runc does
    assert evaluate(program, nr("read"), args=(0,)) == seccomp.RET_LOG
    assert evaluate(program, nr("read"), args=(7,)) == seccomp.RET_LOG
    assert evaluate(program, nr("read"), args=(3,)) == ALLOW


@pytest.mark.parametrize(("text", "message"), [
    ("{not json", "Decoding seccomp profile failed"),
    ('{"defaultAction": "SCMP_ACT_NOTIFY"}', "unsupported action"),
    ('{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO",'
     ' "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_NOPE"}]}]}', "unknown comparison operator"),
    ('{"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86"], "archMap": [{"architecture": "x"}]}',
     "both 'architectures' and 'archMap'"),
])
def test_bad_profiles(text: str, message: str) -> None:
    with pytest.raises(seccomp.ProfileError, match=message):
        seccomp.compile_profile(text, [], machine="x86_64")
