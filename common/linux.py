"""Linux syscalls Python 3.11 lacks (mount, umount2, unshare, setns, pivot_root, prctl, fsopen…).

Thin ctypes wrappers that raise ``OSError`` with errno like the ``os`` module does. Process-wide
operations (chdir, unshare of CLONE_FS state) belong only in single-threaded processes: the
shim's supervisor and its forked children.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import errno
import os

_LIBC_NAME = ctypes.util.find_library("c") or "libc.so.6"
_libc = ctypes.CDLL(_LIBC_NAME, use_errno=True)
# The same library called with the GIL held: fork() must not let go of it in between.
_libc_held = ctypes.PyDLL(_LIBC_NAME, use_errno=True)

# mount flags
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_STRICTATIME = 1 << 24
MS_RELATIME = 1 << 21

MNT_DETACH = 0x2

# clone flags
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

# prctl
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

# x86_64 / aarch64 syscall numbers for calls glibc 2.36 does not wrap
_SYSCALLS = {
    "x86_64": {"pivot_root": 155, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "move_mount": 429,
               "capget": 125, "capset": 126},
    "aarch64": {"pivot_root": 41, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "move_mount": 429,
                "capget": 90, "capset": 91},
}
_NR = _SYSCALLS[os.uname().machine]

FSCONFIG_SET_FLAG = 0
FSCONFIG_SET_STRING = 1
FSCONFIG_CMD_CREATE = 6
FSOPEN_CLOEXEC = 0x1
FSMOUNT_CLOEXEC = 0x1
MOVE_MOUNT_F_EMPTY_PATH = 0x4
AT_FDCWD = -100


def _check(result: int, what: str, path: str | None = None) -> int:
    if result < 0:
        err = ctypes.get_errno()
        if path is not None:
            raise OSError(err, f"{what}: {os.strerror(err)}", path)
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def _b(value: str | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0, data: str | None = None) -> None:
    _check(_libc.mount(_b(source), _b(target), _b(fstype), ctypes.c_ulong(flags), _b(data)), "mount", target)


def umount2(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(_b(target), flags), "umount2", target)


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def fork_for_exec() -> int:
    """fork(2) for a child that makes system calls and then execs or ``os._exit``s, from a
    single-threaded process. Unlike ``os.fork`` no at-fork handlers run (random's reseed, the
    lock resets of threading and logging): in a copy of a 30 MiB interpreter they cost the
    child about a millisecond of copy-on-write faults before it does anything. libc's fork
    still resets its own state (malloc's locks, the cached thread id)."""
    return _check(_libc_held.fork(), "fork")


def setns(fd: int, nstype: int = 0) -> None:
    _check(_libc.setns(fd, nstype), "setns")


def pivot_root(new_root: str, put_old: str) -> None:
    _check(_libc.syscall(_NR["pivot_root"], _b(new_root), _b(put_old)), "pivot_root", new_root)


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    return _check(
        _libc.prctl(option, ctypes.c_ulong(arg2), ctypes.c_ulong(arg3), ctypes.c_ulong(arg4), ctypes.c_ulong(arg5)),
        "prctl",
    )


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(_libc.sethostname(raw, len(raw)), "sethostname")


def setdomainname(name: str) -> None:
    raw = name.encode()
    _check(_libc.setdomainname(raw, len(raw)), "setdomainname")


# New mount API (Linux >= 5.2; "lowerdir+" for overlay needs >= 6.8).
def fsopen(fstype: str) -> int:
    return _check(_libc.syscall(_NR["fsopen"], _b(fstype), FSOPEN_CLOEXEC), "fsopen")


def fsconfig_string(fd: int, key: str, value: str) -> None:
    _check(_libc.syscall(_NR["fsconfig"], fd, FSCONFIG_SET_STRING, _b(key), _b(value), 0),
           f"fsconfig {key}", value)


def fsconfig_flag(fd: int, key: str) -> None:
    _check(_libc.syscall(_NR["fsconfig"], fd, FSCONFIG_SET_FLAG, _b(key), None, 0), f"fsconfig {key}")


def fsconfig_create(fd: int) -> None:
    _check(_libc.syscall(_NR["fsconfig"], fd, FSCONFIG_CMD_CREATE, None, None, 0), "fsconfig create")


def fsmount(fd: int, attr_flags: int = 0) -> int:
    return _check(_libc.syscall(_NR["fsmount"], fd, FSMOUNT_CLOEXEC, attr_flags), "fsmount")


def move_mount(from_fd: int, target: str) -> None:
    _check(_libc.syscall(_NR["move_mount"], from_fd, b"", AT_FDCWD, _b(target), MOVE_MOUNT_F_EMPTY_PATH),
           "move_mount", target)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


_LINUX_CAPABILITY_VERSION_3 = 0x20080522


def capset(effective: int, permitted: int, inheritable: int) -> None:
    """Set this thread's capability sets (64-bit masks)."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for i in range(2):
        shift = 32 * i
        data[i].effective = (effective >> shift) & 0xFFFFFFFF
        data[i].permitted = (permitted >> shift) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> shift) & 0xFFFFFFFF
    _check(_libc.syscall(_NR["capset"], ctypes.byref(header), ctypes.byref(data)), "capset")


def capget() -> tuple[int, int, int]:
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(_libc.syscall(_NR["capget"], ctypes.byref(header), ctypes.byref(data)), "capget")
    eff = data[0].effective | (data[1].effective << 32)
    prm = data[0].permitted | (data[1].permitted << 32)
    inh = data[0].inheritable | (data[1].inheritable << 32)
    return eff, prm, inh


# openat2(2) (Linux >= 5.6): path resolution the kernel confines to a directory. 437 on every
# architecture (it was added after the syscall tables were unified).
_NR_OPENAT2 = 437

RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def openat2(dir_fd: int, path: str, flags: int, mode: int = 0, resolve: int = 0) -> int:
    """Open ``path`` relative to ``dir_fd`` with ``RESOLVE_*`` rules; returns the new fd.

    With ``RESOLVE_IN_ROOT`` every ``..`` and absolute symlink is resolved as if ``dir_fd`` were
    ``/`` (a chroot for one lookup). EAGAIN (a concurrent rename moved a component) is retried,
    as the kernel documentation asks.
    """
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    raw = _b(path)
    for _ in range(64):
        result = _libc.syscall(ctypes.c_long(_NR_OPENAT2), ctypes.c_long(dir_fd), raw, ctypes.byref(how),
                               ctypes.c_size_t(ctypes.sizeof(how)))
        if result >= 0:
            return int(result)
        err = ctypes.get_errno()
        if err not in (errno.EAGAIN, errno.EINTR):
            raise OSError(err, f"openat2: {os.strerror(err)}", path)
    raise OSError(errno.EAGAIN, "openat2: resolution kept racing with renames", path)


# inotify(7), for following files that another process appends to (container logs).
IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_DELETE_SELF = 0x00000400
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC


def inotify_init1(flags: int = IN_NONBLOCK | IN_CLOEXEC) -> int:
    return _check(_libc.inotify_init1(flags), "inotify_init1")


def inotify_add_watch(fd: int, path: str, mask: int) -> int:
    return _check(_libc.inotify_add_watch(fd, _b(path), ctypes.c_uint32(mask)), "inotify_add_watch", path)


def inotify_rm_watch(fd: int, wd: int) -> None:
    _check(_libc.inotify_rm_watch(fd, wd), "inotify_rm_watch")


# seccomp(2) filters, installed with prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &sock_fprog).
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def seccomp_set_filter(program: bytes) -> None:
    """Install a classic BPF program (an array of 8-byte ``struct sock_filter``) as this
    thread's seccomp filter; it is inherited across fork and kept across execve."""
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.cast(buffer, ctypes.c_void_p))
    _check(_libc.prctl(PR_SET_SECCOMP, ctypes.c_ulong(SECCOMP_MODE_FILTER), ctypes.byref(fprog),
                       ctypes.c_ulong(0), ctypes.c_ulong(0)), "prctl(PR_SET_SECCOMP)")



def trim_heap() -> None:
    """Give the heap's free pages back to the kernel (glibc's malloc_trim; nothing elsewhere).

    Megabyte-sized buffers of a pull or an import come from the heap once glibc has raised its
    mmap threshold, and stay there, fragmented, after the operation: the snapshotter idled 20 MiB
    larger after one pull. Trimming once the work is over costs nothing while it runs (pinning
    the threshold instead made every buffer an mmap and a pull 25% dearer in CPU)."""
    try:
        _libc.malloc_trim(0)
    except AttributeError:  # not glibc
        pass


class HeapTrimmer:
    """:func:`trim_heap` ``delay`` seconds after the last of a burst of calls to :meth:`soon`."""

    def __init__(self, delay: float = 2.0) -> None:
        self._delay = delay
        self._handle: asyncio.TimerHandle | None = None

    def soon(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = asyncio.get_running_loop().call_later(self._delay, trim_heap)
