"""Docker seccomp profiles compiled to classic BPF, for ``prctl(PR_SET_SECCOMP)`` in the child.

A profile is Docker's JSON (``defaultAction``, ``archMap``/``architectures``, ``syscalls`` with
``names``, ``action``, ``errnoRet``, ``args`` and ``includes``/``excludes`` on ``arches``,
``caps`` and ``minKernel``). Rules are chosen as moby's ``setupSeccomp`` chooses them (for the
native architecture, the container's capabilities and the running kernel), then compiled as
runc/libseccomp would apply them:

* the filter checks ``seccomp_data.arch`` first: the native architecture and the profile's
  sub-architectures (x86: i386 and x32) each get their own syscall numbers; any other
  architecture is killed (libseccomp's bad-arch action);
* per system call, rules apply in profile order, first match wins; the conditions of one rule
  are ANDed, except that several conditions on the same argument become one rule each (ORed),
  as runc does; a call no rule matches gets the default action;
* the syscall dispatch is a binary search over runs of numbers that share their code (gaps
  included, as the default action), so the program stays small (≈8 comparisons per call); runs
  that only return share one ``ret`` per action, which the comparisons jump to (the kernel
  checks and JITs the program at every start and exec: Docker's profile, 666 instructions
  without that sharing, loads in ~230 µs instead of ~290);
* arguments compare as 64-bit values on 64-bit architectures, 32-bit on i386.

Docker's default profile ships as ``shim/seccomp/default.json`` (Apache-2.0, see its NOTICE).
Everything here runs in the supervisor before it forks; the child only installs the bytes.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import platform
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shim.supervisor import syscalls

DEFAULT_PROFILE_PATH = Path(__file__).resolve().parents[1] / "seccomp" / "default.json"

# seccomp return values (linux/seccomp.h)
RET_KILL_PROCESS = 0x80000000
RET_KILL_THREAD = 0x00000000
RET_TRAP = 0x00030000
RET_ERRNO = 0x00050000
RET_TRACE = 0x7FF00000
RET_LOG = 0x7FFC0000
RET_ALLOW = 0x7FFF0000

AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_I386 = 0x40000003
AUDIT_ARCH_AARCH64 = 0xC00000B7

# classic BPF opcodes
_LD_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
_JEQ = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_JGT = 0x25
_JGE = 0x35
_JA = 0x05
_RET = 0x06  # BPF_RET | BPF_K
_AND = 0x54  # BPF_ALU | BPF_AND | BPF_K

BPF_MAXINSNS = 4096
_NR, _ARCH, _ARGS = 0, 4, 16  # offsets in struct seccomp_data


class ProfileError(ValueError):
    """The profile cannot be applied (Docker's wording where it has one)."""


@dataclass(frozen=True, slots=True)
class _Arch:
    audit: int
    table: Mapping[str, int]
    offset: int  # added to every number (x32)
    bits: int


# libseccomp architecture names → how the kernel reports them and their numbers.
_ARCHES: dict[str, _Arch] = {
    "SCMP_ARCH_X86_64": _Arch(AUDIT_ARCH_X86_64, syscalls.X86_64, 0, 64),
    "SCMP_ARCH_X32": _Arch(AUDIT_ARCH_X86_64, syscalls.X32, syscalls.X32_SYSCALL_BIT, 64),
    "SCMP_ARCH_X86": _Arch(AUDIT_ARCH_I386, syscalls.I386, 0, 32),
    "SCMP_ARCH_AARCH64": _Arch(AUDIT_ARCH_AARCH64, syscalls.AARCH64, 0, 64),
}
# uname machine → (libseccomp name, the arch string Docker profiles use in includes/excludes)
_NATIVE = {"x86_64": ("SCMP_ARCH_X86_64", "amd64"), "aarch64": ("SCMP_ARCH_AARCH64", "arm64")}

_OPS = frozenset({"SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT",
                  "SCMP_CMP_MASKED_EQ"})

Insn = tuple[int, int, int, int]  # code, jt, jf, k
# an instruction of a rule block: a jump offset, or "F" for "to the end of this rule"
_Pending = tuple[int, int | str, int | str, int]


@dataclass(frozen=True, slots=True)
class _Cond:
    index: int
    op: str
    value: int
    value_two: int


@dataclass(frozen=True, slots=True)
class _Rule:
    conds: tuple[_Cond, ...]
    action: int


def native() -> tuple[str, str]:
    try:
        return _NATIVE[platform.machine()]
    except KeyError:
        raise ProfileError(f"seccomp: architecture {platform.machine()} is not supported by Berth") from None


def kernel_version(release: str | None = None) -> tuple[int, int]:
    parts = (release or os.uname().release).split("-", 1)[0].split(".")
    try:
        return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        return 0, 0


@functools.cache
def default_profile_text() -> str:
    return DEFAULT_PROFILE_PATH.read_text()


def load(text: str) -> dict[str, Any]:
    """Parse a profile as moby's ``LoadProfile`` does (same error prefix)."""
    try:
        profile = json.loads(text)
    except ValueError as exc:
        raise ProfileError(f"Decoding seccomp profile failed: {exc}") from None
    if not isinstance(profile, dict):
        raise ProfileError("Decoding seccomp profile failed: json: cannot unmarshal into Go value of type "
                           "seccomp.Seccomp")
    return profile


def _action(name: Any, errno_ret: Any, default_errno: int = errno.EPERM) -> int:
    code = default_errno if errno_ret is None else int(errno_ret)
    if name in ("SCMP_ACT_KILL", "SCMP_ACT_KILL_THREAD"):
        return RET_KILL_THREAD
    if name == "SCMP_ACT_KILL_PROCESS":
        return RET_KILL_PROCESS
    if name == "SCMP_ACT_TRAP":
        return RET_TRAP
    if name == "SCMP_ACT_ERRNO":
        return RET_ERRNO | (code & 0xFFFF)
    if name == "SCMP_ACT_TRACE":
        return RET_TRACE | (code & 0xFFFF)
    if name == "SCMP_ACT_LOG":
        return RET_LOG
    if name == "SCMP_ACT_ALLOW":
        return RET_ALLOW
    raise ProfileError(f"seccomp: unsupported action {name!r}")


def _selected(call: Mapping[str, Any], arch: str, caps: frozenset[str], kernel: tuple[int, int]) -> bool:
    """moby's includes/excludes filter."""
    def kernel_at_least(value: Any) -> bool:
        return kernel >= kernel_version(str(value))

    excludes = call.get("excludes") or {}
    if arch in (excludes.get("arches") or ()):
        return False
    if any(c in caps for c in excludes.get("caps") or ()):
        return False
    if excludes.get("minKernel") and kernel_at_least(excludes["minKernel"]):
        return False
    includes = call.get("includes") or {}
    if includes.get("arches") and arch not in includes["arches"]:
        return False
    if any(c not in caps for c in includes.get("caps") or ()):
        return False
    return not (includes.get("minKernel") and not kernel_at_least(includes["minKernel"]))


def _rules(call: Mapping[str, Any], action: int) -> list[_Rule]:
    conds = []
    for arg in call.get("args") or ():
        op = arg.get("op")
        if op not in _OPS:
            raise ProfileError(f"seccomp: unknown comparison operator {op!r}")
        index = int(arg.get("index", 0))
        if not 0 <= index < 6:
            raise ProfileError(f"seccomp: argument index {index} out of range")
        conds.append(_Cond(index, str(op), int(arg.get("value", 0)), int(arg.get("valueTwo", 0))))
    indexes = [c.index for c in conds]
    if len(set(indexes)) != len(indexes):  # runc: one rule per condition, ORed
        return [_Rule((c,), action) for c in conds]
    return [_Rule(tuple(conds), action)]


def compile_profile(text: str, caps: Iterable[str], *, machine: str | None = None,
                    release: str | None = None, merge: bool = True) -> bytes:
    """The BPF program (``struct sock_filter`` array) for ``text`` and capabilities ``caps``
    (``CAP_…`` names); ``ProfileError`` if it cannot be built. ``merge=False`` gives every
    call its own branch (the same verdicts; the tests compare the two)."""
    profile = load(text)
    if machine is not None:
        try:
            native_scmp, arch = _NATIVE[machine]
        except KeyError:
            raise ProfileError(f"seccomp: architecture {machine} is not supported by Berth") from None
    else:
        native_scmp, arch = native()
    kernel = kernel_version(release)
    cap_set = frozenset(caps)
    if profile.get("architectures") and profile.get("archMap"):
        raise ProfileError("both 'architectures' and 'archMap' are specified in the seccomp profile, "
                           "use either 'architectures' or 'archMap'")
    arches = [native_scmp]
    for entry in profile.get("archMap") or ():
        if entry.get("architecture") == native_scmp:
            arches += list(entry.get("subArchitectures") or ())
            break
    for name in profile.get("architectures") or ():
        if name not in arches:
            arches.append(name)
    default = _action(profile.get("defaultAction") or "SCMP_ACT_ALLOW", profile.get("defaultErrnoRet"))
    default_errno = int(profile.get("defaultErrnoRet") or errno.EPERM)

    # (audit arch) → {number: [rules]}, in profile order
    per_arch: dict[int, dict[int, list[_Rule]]] = {}
    x32_allowed: set[int] = set()
    bits: dict[int, int] = {}
    for name in arches:
        spec = _ARCHES.get(name)
        if spec is None:
            continue  # an architecture this host cannot run: nothing to filter
        per_arch.setdefault(spec.audit, {})
        bits[spec.audit] = spec.bits
        if spec.offset:
            x32_allowed.add(spec.audit)
    for call in profile.get("syscalls") or ():
        if call.get("name") and call.get("names"):
            raise ProfileError("both 'name' and 'names' are specified in the seccomp profile, use either "
                               "'name' or 'names'")
        if not _selected(call, arch, cap_set, kernel):
            continue
        action = _action(call.get("action"), call.get("errnoRet"), default_errno)
        if action == default:
            continue  # runc skips rules that repeat the default
        rules = _rules(call, action)
        names = call.get("names") or ([call["name"]] if call.get("name") else [])
        for name in arches:
            spec = _ARCHES.get(name)
            if spec is None:
                continue
            table = per_arch[spec.audit]
            for syscall in names:
                number = spec.table.get(syscall)
                if number is None:
                    continue  # not a call of this architecture (runc ignores these too)
                table.setdefault(number + spec.offset, []).extend(rules)
    program = _assemble(per_arch, bits, x32_allowed, default, merge=merge)
    if len(program) > BPF_MAXINSNS:
        raise ProfileError(f"seccomp: the profile compiles to {len(program)} instructions, more than the "
                           f"kernel's {BPF_MAXINSNS}")
    return b"".join(struct.pack("=HBBI", *insn) for insn in program)


def _assemble(per_arch: Mapping[int, Mapping[int, Sequence[_Rule]]], bits: Mapping[int, int],
              x32_allowed: set[int], default: int, *, merge: bool) -> list[Insn]:
    bad_arch = RET_KILL_THREAD
    sections = []
    for audit, table in per_arch.items():
        code: list[Insn] = [(_LD_ABS, 0, 0, _NR)]
        if audit == AUDIT_ARCH_X86_64 and audit not in x32_allowed:
            code += [(_JGE, 0, 1, syscalls.X32_SYSCALL_BIT), (_RET, 0, 0, bad_arch)]
        handlers = {nr: _handler(rules, bits[audit], default) for nr, rules in table.items()}
        code += _tree(_runs(handlers, default, merge=merge))
        sections.append((audit, code))
    header_len = 1 + 2 * len(sections) + 1
    program: list[Insn] = [(_LD_ABS, 0, 0, _ARCH)]
    start = header_len
    for audit, code in sections:
        here = len(program)
        program += [(_JEQ, 0, 1, audit), (_JA, 0, 0, start - (here + 2))]
        start += len(code)
    program.append((_RET, 0, 0, bad_arch))
    for _, code in sections:
        program += code
    return program


def _runs(table: Mapping[int, list[Insn]], default: int, *, merge: bool = True) -> list[tuple[int, list[Insn]]]:
    """The whole number space as (first number, handler) runs, in order: the gaps between the
    profile's calls return the default action. With ``merge``, neighbours whose code is the same
    make one run: Docker's allowlist is mostly contiguous, so a few dozen runs stand for hundreds
    of calls, and the kernel checks (and JITs) a program a fraction of the size at every start."""
    default_code: list[Insn] = [(_RET, 0, 0, default)]
    runs: list[tuple[int, list[Insn]]] = []

    def add(first: int, code: list[Insn]) -> None:
        if not (merge and runs and runs[-1][1] == code):
            runs.append((first, code))

    after = 0  # the first number not covered yet
    for nr in sorted(table):
        if nr > after:
            add(after, default_code)
        add(nr, table[nr])
        after = nr + 1
    if after <= 0xFFFFFFFF:
        add(after, default_code)
    return runs


def _tree(runs: Sequence[tuple[int, list[Insn]]]) -> list[Insn]:
    """Binary search on the syscall number (in A) down to the one run it falls in. A subtree
    whose jumps all reach its end is one block (:func:`_block`); a bigger one is split in two."""
    block = _block(runs)
    if block is not None:
        return block
    mid = len(runs) // 2
    left, right = _tree(runs[:mid]), _tree(runs[mid:])
    if len(left) <= 255:
        return [(_JGE, len(left), 0, runs[mid][0]), *left, *right]
    return [(_JGE, 0, 1, runs[mid][0]), (_JA, 0, 0, len(left)), *left, *right]


# In a block under construction: a jump offset, or ("ret", action) for the block's shared return.
_Target = int | tuple[str, int]


def _block(runs: Sequence[tuple[int, list[Insn]]]) -> list[Insn] | None:
    """The search as one block whose runs that only return (most of them: allowed, refused) share
    one ``ret`` per action at the block's end, reached by the comparisons themselves: the search
    costs a comparison per run, not two. None if a jump would not reach (classic BPF's
    conditional jumps go at most 255 instructions forward)."""
    def search(part: Sequence[tuple[int, list[Insn]]]) -> tuple[list[tuple[int, _Target, _Target, int]], _Target]:
        """The code for ``part`` and where it ends up: a shared return, or 0 (fall into its code)."""
        if len(part) == 1:
            code = part[0][1]
            if len(code) == 1 and code[0][0] == _RET:
                return [], ("ret", code[0][3])
            return [(op, jt, jf, k) for op, jt, jf, k in code], 0
        mid = len(part) // 2
        (left, left_to), (right, right_to) = search(part[:mid]), search(part[mid:])
        # JGE: taken (A >= k) to the right part, else to the left one; code laid out left, right.
        jt: _Target = right_to if not right else len(left)
        jf: _Target = left_to if not left else 0
        return [(_JGE, jt, jf, part[mid][0]), *left, *right], 0

    body, whole = search(runs)
    if not body:  # a single run that only returns
        assert isinstance(whole, tuple)
        return [(_RET, 0, 0, whole[1])]
    returns = list(dict.fromkeys(t[1] for _, jt, jf, _ in body for t in (jt, jf) if isinstance(t, tuple)))
    program: list[Insn] = []
    for i, (op, jt, jf, k) in enumerate(body):
        offsets = [len(body) + returns.index(t[1]) - (i + 1) if isinstance(t, tuple) else t for t in (jt, jf)]
        if max(offsets) > 255:
            return None
        program.append((op, offsets[0], offsets[1], k))
    return program + [(_RET, 0, 0, action) for action in returns]


def _handler(rules: Sequence[_Rule], bits: int, default: int) -> list[Insn]:
    """Code for one syscall: each rule's conditions, first match returns its action."""
    code: list[Insn] = []
    for rule in rules:
        if not rule.conds:
            code.append((_RET, 0, 0, rule.action))
            return code  # later rules are unreachable
        block: list[_Pending] = []
        for cond in rule.conds:
            block += _condition(cond, bits)
        block.append((_RET, 0, 0, rule.action))
        end = len(block)
        for i, (op, jt, jf, k) in enumerate(block):
            # "F" jumps to the end of this rule: the next rule, or the default below
            jt_off = end - (i + 1) if jt == "F" else int(jt)
            jf_off = end - (i + 1) if jf == "F" else int(jf)
            if jt_off > 255 or jf_off > 255:
                raise ProfileError("seccomp: a rule has too many conditions")
            code.append((op, jt_off, jf_off, k))
    code.append((_RET, 0, 0, default))
    return code


def _condition(c: _Cond, bits: int) -> list[_Pending]:
    """Test argument ``c.index``; on failure jump to "F", on success fall through."""
    lo_at, hi_at = _ARGS + 8 * c.index, _ARGS + 8 * c.index + 4  # little-endian halves
    lo, hi = c.value & 0xFFFFFFFF, (c.value >> 32) & 0xFFFFFFFF
    ld_lo: _Pending = (_LD_ABS, 0, 0, lo_at)
    ld_hi: _Pending = (_LD_ABS, 0, 0, hi_at)
    wide = bits == 64
    code: list[_Pending] = []
    if c.op == "SCMP_CMP_MASKED_EQ":
        want_lo, want_hi = c.value_two & 0xFFFFFFFF, (c.value_two >> 32) & 0xFFFFFFFF
        if wide:
            code += [ld_hi, (_AND, 0, 0, hi), (_JEQ, 0, "F", want_hi)]
        return [*code, ld_lo, (_AND, 0, 0, lo), (_JEQ, 0, "F", want_lo)]
    if c.op == "SCMP_CMP_EQ":
        if wide:
            code += [ld_hi, (_JEQ, 0, "F", hi)]
        return [*code, ld_lo, (_JEQ, 0, "F", lo)]
    if c.op == "SCMP_CMP_NE":
        if not wide:
            return [ld_lo, (_JEQ, "F", 0, lo)]
        return [ld_hi, (_JEQ, 0, 2, hi), ld_lo, (_JEQ, "F", 0, lo)]
    # ordered comparisons, unsigned: decide on the high word unless it is equal
    last: _Pending
    if c.op in ("SCMP_CMP_GT", "SCMP_CMP_GE"):
        last = (_JGT, 0, "F", lo) if c.op == "SCMP_CMP_GT" else (_JGE, 0, "F", lo)
        if not wide:
            return [ld_lo, last]
        return [ld_hi, (_JGT, 3, 0, hi), (_JEQ, 0, "F", hi), ld_lo, last]
    last = (_JGE, "F", 0, lo) if c.op == "SCMP_CMP_LT" else (_JGT, "F", 0, lo)
    if not wide:
        return [ld_lo, last]
    return [ld_hi, (_JGT, "F", 0, hi), (_JEQ, 0, 2, hi), ld_lo, last]
