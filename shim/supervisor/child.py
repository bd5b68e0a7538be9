"""The forked child: from a copy of the supervisor to the container's process, then ``execve``.

Runs between ``linux.fork_for_exec()`` and ``execve()`` in a copy of the single-threaded
supervisor, already PID 1 of its own PID namespace (the supervisor unshared CLONE_NEWPID before
forking). Rules:

* only ``os``/``common.linux`` calls and plain data handling: no logging, no asyncio, no imports
  (after ``pivot_root`` ``sys.path`` points into the container: every module used here is imported
  by the supervisor before it forks);
* mount targets that come from the image (``/proc``, ``/dev``, ``/sys``) are opened without
  following symlinks and mounted through ``/proc/self/fd``, so a hostile image cannot redirect a
  mount (CVE-2021-30465); everything below them is in filesystems this child just created;
* no fd but stdio survives ``execve`` (CVE-2024-21626); the cwd is set after ``pivot_root``;
* any failure is written, in Docker's words, to ``plan.err_fd`` (close-on-exec), and the child
  exits; a successful ``execve`` closes that pipe empty.
"""

from __future__ import annotations

import errno
import fcntl
import gc
import os
import resource
import signal
import socket
import stat
import struct
import termios
from dataclasses import dataclass
from typing import NoReturn

from common import linux
from common.mounts import Mount, mount_all
from shim.supervisor import user_mounts as mounts_mod

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_UMASK = 0o022

_PROC_FLAGS = linux.MS_NOSUID | linux.MS_NOEXEC | linux.MS_NODEV
_DEVICES = (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0))
_DEV_LINKS = (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
              ("stderr", "/proc/self/fd/2"), ("ptmx", "pts/ptmx"), ("core", "/proc/kcore"))
_SIOCSIFFLAGS = 0x8914
_IFF_UP_LOOPBACK_RUNNING = 0x1 | 0x8 | 0x40
_TIOCSPTLCK = 0x40045431
_TIOCGPTN = 0x80045430
_MAX_DB = 4 << 20  # /etc/passwd and /etc/group are read up to this size


@dataclass(frozen=True, slots=True)
class ChildPlan:
    """Everything the child needs, computed by the supervisor before it forks."""

    id: str
    rootfs: str
    mounts: tuple[Mount, ...]
    unshare_flags: int
    hostname: str
    domainname: str
    cgroup_procs: tuple[str, ...]
    cgroup_binds: tuple[tuple[str, str], ...]  # (host dir, name under /sys/fs/cgroup)
    privileged: bool
    readonly_rootfs: bool
    masked_paths: tuple[str, ...]
    readonly_paths: tuple[str, ...]
    shm_size: int
    drop_caps: tuple[int, ...]
    user: str
    args: tuple[str, ...]
    env: tuple[str, ...]
    cwd: str
    terminal: bool
    console_height: int
    console_width: int
    stdin_fd: int
    stdout_fd: int
    stderr_fd: int
    pty_socket_fd: int  # terminal: the master goes back to the supervisor through this socket
    err_fd: int
    nofile: tuple[int, int]
    netns_path: str = ""  # join this network namespace (CLONE_NEWNET is then not in unshare_flags)
    binds: tuple[tuple[str, str, bool], ...] = ()  # (host source, path in the container, read-only)
    sysctls: tuple[tuple[str, str], ...] = ()  # written in the container's namespaces
    rlimits: tuple[tuple[int, int, int], ...] = ()  # (RLIMIT_*, soft, hard)
    group_add: tuple[str, ...] = ()  # supplementary groups: names in /etc/group, or numbers
    no_new_privileges: bool = False
    seccomp: bytes = b""  # a BPF program (shim.supervisor.seccomp), installed just before execve
    # Users' volumes, binds and tmpfs mounts (shim.supervisor.user_mounts), and the rootfs
    # propagation they need (MS_SLAVE when one must receive the host's mounts).
    user_mounts: tuple[mounts_mod.MountStep, ...] = ()
    root_propagation: int = linux.MS_PRIVATE


class StartError(Exception):
    """A failure already worded for Docker clients."""


def errtext(err: int) -> str:
    """Go's wording of an errno (lower-case first letter), which Docker's CLI matches on."""
    text = os.strerror(err)
    return text[:1].lower() + text[1:]


def run(plan: ChildPlan) -> NoReturn:
    """Set up the container and exec its process; never returns."""
    gc.disable()  # a collection would touch (and copy) the whole inherited heap
    step = "init"
    try:
        os.umask(0)  # modes below are meant as written (device nodes 0666); the process gets 022
        reset_signals()
        step = "join cgroups"
        os.setsid()
        for path in plan.cgroup_procs:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            os.write(fd, b"0")
            os.close(fd)
        if plan.netns_path:
            step = "join network namespace"
            fd = os.open(plan.netns_path, os.O_RDONLY | os.O_CLOEXEC)
            linux.setns(fd, linux.CLONE_NEWNET)
            os.close(fd)
        step = "create namespaces"
        if plan.unshare_flags:
            linux.unshare(plan.unshare_flags)
        if plan.unshare_flags & linux.CLONE_NEWNET:
            _loopback_up()
        if plan.unshare_flags & linux.CLONE_NEWUTS:
            linux.sethostname(plan.hostname)
            if plan.domainname:
                linux.setdomainname(plan.domainname)
        step = "make mounts private"
        linux.mount(None, "/", None, linux.MS_REC | plan.root_propagation)
        step = "mount rootfs"
        mount_all(plan.mounts, plan.rootfs)
        if plan.user_mounts:
            step = "mount volumes"
            _user_mounts(plan, late=False)  # before the network files: a volume on /etc must not hide them
        if plan.binds:
            step = "bind mounts"
            _bind_mounts(plan)
        step = "mount filesystems"
        slave = _mount_filesystems(plan)
        if plan.user_mounts:
            step = "mount volumes"
            _user_mounts(plan, late=True)  # under /dev, /proc, /sys: on top of those filesystems
        step = "pivot_root"
        os.chdir(plan.rootfs)
        linux.pivot_root(".", ".")
        linux.umount2(".", linux.MNT_DETACH)
        os.chdir("/")
        step = "prepare process"
        _exec(plan, slave)
    except StartError as exc:
        message = str(exc)
    except OSError as exc:
        message = f"{step}: {errtext(exc.errno)}" if exc.errno else f"{step}: {exc}"
    except BaseException as exc:  # never let anything unwind into the supervisor's code
        message = f"{step}: internal error: {type(exc).__name__}: {exc}"
    try:
        os.write(plan.err_fd, message.encode(errors="replace"))
    finally:
        os._exit(1)


def reset_signals() -> None:
    # Handlers are reset by execve but ignored signals are not (Python ignores SIGPIPE/SIGXFSZ),
    # and the supervisor's wakeup fd must not see this child's signals.
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE,
                signal.SIGXFSZ, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, ())
    linux.prctl(linux.PR_SET_DUMPABLE, 0)  # execve restores it; no peeking at our memory until then


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        fcntl.ioctl(s.fileno(), _SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", _IFF_UP_LOOPBACK_RUNNING))


def _user_mounts(plan: ChildPlan, *, late: bool) -> None:
    try:
        mounts_mod.mount(plan.rootfs, plan.user_mounts, late_group=late)
    except mounts_mod.ChildMountError as exc:
        raise StartError(str(exc)) from None


def _open_mount_point(root_fd: int, name: str) -> int:
    """An O_PATH fd of directory ``name`` directly under the rootfs, created if missing; a
    symlink is refused rather than followed."""
    try:
        return os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=root_fd)
    except FileNotFoundError:
        os.mkdir(name, 0o755, dir_fd=root_fd)
        return os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=root_fd)


def _mount_at(root_fd: int, name: str, source: str, fstype: str, flags: int, data: str | None) -> None:
    try:
        fd = _open_mount_point(root_fd, name)
    except OSError as exc:
        raise StartError(f'error mounting "{source}" to rootfs at "/{name}": {errtext(exc.errno or 0)}') from None
    try:
        linux.mount(source, f"/proc/self/fd/{fd}", fstype, flags, data)
    except OSError as exc:
        raise StartError(f'error mounting "{source}" to rootfs at "/{name}": {errtext(exc.errno or 0)}') from None
    finally:
        os.close(fd)


def _bind_mounts(plan: ChildPlan) -> None:
    """Bind each source on its destination, resolved inside the rootfs by the kernel
    (``RESOLVE_IN_ROOT``: an image's symlinks cannot point the mount outside it); a missing
    destination is created, as Docker does for /etc/hosts and friends."""
    root_fd = os.open(plan.rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for source, dest, readonly in plan.binds:
            try:
                fd = _open_in_root(root_fd, dest, os.path.isdir(source))
            except OSError as exc:
                raise StartError(f'error mounting "{source}" to rootfs at "{dest}": '
                                 f"{errtext(exc.errno or 0)}") from None
            try:
                target = f"/proc/self/fd/{fd}"
                linux.mount(source, target, None, linux.MS_BIND | linux.MS_REC)
                if readonly:
                    # ``fd`` still names what is under the new mount: remount through a fresh lookup.
                    mounted = linux.openat2(root_fd, dest.strip("/"), os.O_PATH, resolve=linux.RESOLVE_IN_ROOT)
                    try:
                        linux.mount(None, f"/proc/self/fd/{mounted}", None,
                                    linux.MS_REMOUNT | linux.MS_BIND | linux.MS_RDONLY)
                    finally:
                        os.close(mounted)
            except OSError as exc:
                raise StartError(f'error mounting "{source}" to rootfs at "{dest}": '
                                 f"{errtext(exc.errno or 0)}") from None
            finally:
                os.close(fd)
    finally:
        os.close(root_fd)


def _open_in_root(root_fd: int, dest: str, directory: bool) -> int:
    """An O_PATH fd of ``dest`` inside the rootfs, creating it (and its parents) if missing."""
    rel = dest.strip("/")
    try:
        return linux.openat2(root_fd, rel, os.O_PATH, resolve=linux.RESOLVE_IN_ROOT)
    except FileNotFoundError:
        pass
    parts = rel.split("/")
    parent = os.dup(root_fd)
    try:
        for i in range(1, len(parts)):
            path = "/".join(parts[:i])
            try:
                fd = linux.openat2(root_fd, path, os.O_PATH | os.O_DIRECTORY, resolve=linux.RESOLVE_IN_ROOT)
            except FileNotFoundError:
                os.mkdir(parts[i - 1], 0o755, dir_fd=parent)
                fd = linux.openat2(root_fd, path, os.O_PATH | os.O_DIRECTORY, resolve=linux.RESOLVE_IN_ROOT)
            os.close(parent)
            parent = fd
        name = parts[-1]
        if directory:
            os.mkdir(name, 0o755, dir_fd=parent)
        else:
            os.close(os.open(name, os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=parent))
        return os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
    finally:
        os.close(parent)


def _mount_filesystems(plan: ChildPlan) -> int:
    """/proc, /dev (+ pts, shm, mqueue), /sys (+ cgroups), masks; returns the pty slave fd
    (terminal) or -1."""
    root = plan.rootfs
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _mount_at(root_fd, "proc", "proc", "proc", _PROC_FLAGS, None)
        _mount_at(root_fd, "dev", "tmpfs", "tmpfs", linux.MS_NOSUID | linux.MS_STRICTATIME,
                  "mode=755,size=65536k")
        sys_flags = linux.MS_NOSUID | linux.MS_NOEXEC | linux.MS_NODEV
        _mount_at(root_fd, "sys", "sysfs", "sysfs", sys_flags | (0 if plan.privileged else linux.MS_RDONLY), None)
    finally:
        os.close(root_fd)

    # Below here every path is inside a filesystem this child just mounted.
    dev = root + "/dev"
    for name, major, minor in _DEVICES:
        os.mknod(f"{dev}/{name}", stat.S_IFCHR | 0o666, os.makedev(major, minor))
    for name, target in _DEV_LINKS:
        os.symlink(target, f"{dev}/{name}")
    for name in ("pts", "shm", "mqueue"):
        os.mkdir(f"{dev}/{name}", 0o755)
    linux.mount("devpts", f"{dev}/pts", "devpts", linux.MS_NOSUID | linux.MS_NOEXEC,
                "newinstance,ptmxmode=0666,mode=0620,gid=5")
    linux.mount("shm", f"{dev}/shm", "tmpfs", _PROC_FLAGS, f"mode=1777,size={plan.shm_size}")
    linux.mount("mqueue", f"{dev}/mqueue", "mqueue", _PROC_FLAGS)
    if plan.privileged:
        _host_devices("/dev", dev)
    slave = _make_console(plan, dev) if plan.terminal else -1

    if plan.cgroup_binds:
        _mount_cgroups(plan, root + "/sys/fs/cgroup")
    # Before /proc/sys becomes read-only; /proc/sys resolves to this child's namespaces.
    for key, value in plan.sysctls:
        _write_sysctl(root, key, value)
    if not plan.privileged:
        null = f"{dev}/null"
        for path in plan.masked_paths:
            _mask(root + path, null)
        for path in plan.readonly_paths:
            _readonly(root + path)
    return slave


# runc's HostDevices: what a privileged container sees of the host's /dev.
_HOST_DEV_SKIP = frozenset({"pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev", "console"})


def _host_devices(host: str, target: str) -> None:
    """Copy the host's device nodes (not yet hidden: this runs before pivot_root) into the
    container's /dev, keeping mode and owner; names the container already has are kept."""
    try:
        entries = list(os.scandir(host))
    except OSError:
        return
    for entry in entries:
        if entry.name in _HOST_DEV_SKIP:
            continue
        path = f"{target}/{entry.name}"
        try:
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                try:
                    os.mkdir(path, 0o755)
                except FileExistsError:
                    pass
                _host_devices(entry.path, path)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                os.mknod(path, st.st_mode, st.st_rdev)
                os.chown(path, st.st_uid, st.st_gid, follow_symlinks=False)
        except FileExistsError:
            continue
        except OSError as exc:
            raise StartError(f"error creating device nodes: {entry.path}: {errtext(exc.errno or 0)}") from None


def _write_sysctl(root: str, key: str, value: str) -> None:
    path = f"{root}/proc/sys/{key.replace('.', '/')}"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)
    except OSError as exc:
        raise StartError(f"open /proc/sys/{key.replace('.', '/')}: {errtext(exc.errno or 0)}") from None


def _make_console(plan: ChildPlan, dev: str) -> int:
    """A pty of the container's own devpts; the master goes to the supervisor, the slave is
    also bind-mounted on /dev/console (as runc does)."""
    master = os.open(f"{dev}/pts/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    fcntl.ioctl(master, _TIOCSPTLCK, struct.pack("i", 0))
    (number,) = struct.unpack("I", fcntl.ioctl(master, _TIOCGPTN, b"\0\0\0\0"))
    slave_path = f"{dev}/pts/{number}"
    slave = os.open(slave_path, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    if plan.console_height and plan.console_width:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", plan.console_height, plan.console_width, 0, 0))
    console = f"{dev}/console"
    os.close(os.open(console, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o620))
    linux.mount(slave_path, console, None, linux.MS_BIND)
    with socket.socket(fileno=plan.pty_socket_fd) as sock:
        socket.send_fds(sock, [b"m"], [master])
    os.close(master)
    return slave


def _mount_cgroups(plan: ChildPlan, target: str) -> None:
    """Docker's view of cgroups: the container's own cgroup of each hierarchy, read-only
    (read-write when privileged), under a tmpfs at /sys/fs/cgroup."""
    ro = 0 if plan.privileged else linux.MS_RDONLY
    flags = linux.MS_NOSUID | linux.MS_NOEXEC | linux.MS_NODEV
    if len(plan.cgroup_binds) == 1 and plan.cgroup_binds[0][1] == "":  # pure v2 host
        source = plan.cgroup_binds[0][0]
        linux.mount(source, target, None, linux.MS_BIND)
        linux.mount(None, target, None, linux.MS_REMOUNT | linux.MS_BIND | flags | ro)
        return
    linux.mount("tmpfs", target, "tmpfs", flags, "mode=755")
    for source, name in plan.cgroup_binds:
        path = f"{target}/{name}"
        os.mkdir(path, 0o555)
        linux.mount(source, path, None, linux.MS_BIND)
        linux.mount(None, path, None, linux.MS_REMOUNT | linux.MS_BIND | flags | ro)
        if "," in name:  # co-mounted controllers, e.g. cpu,cpuacct: a link per controller
            for part in name.split(","):
                os.symlink(name, f"{target}/{part}")
    linux.mount(None, target, None, linux.MS_REMOUNT | flags | linux.MS_RDONLY, "mode=755")


def _mask(path: str, null: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        linux.mount("tmpfs", path, "tmpfs", linux.MS_RDONLY, None)
    else:
        linux.mount(null, path, None, linux.MS_BIND)


def _readonly(path: str) -> None:
    try:
        linux.mount(path, path, None, linux.MS_BIND | linux.MS_REC)
    except FileNotFoundError:
        return
    linux.mount(None, path, None, linux.MS_BIND | linux.MS_REMOUNT | linux.MS_RDONLY | _PROC_FLAGS)


# After pivot_root --------------------------------------------------------------------------------


def _exec(plan: ChildPlan, slave: int) -> NoReturn:
    try:
        os.makedirs(plan.cwd, 0o755, exist_ok=True)  # Docker creates a missing working dir
    except OSError as exc:
        raise StartError(f"mkdir {plan.cwd}: {errtext(exc.errno or 0)}") from None
    if plan.readonly_rootfs:
        linux.mount(None, "/", None, linux.MS_REMOUNT | linux.MS_BIND | linux.MS_RDONLY)
    exec_process(plan, slave)


def exec_process(plan: ChildPlan, slave: int) -> NoReturn:
    """From a prepared root (and namespaces) to ``execve``: user, groups, stdio, rlimits,
    capabilities, no_new_privs and seccomp, in runc's order. An exec's helper
    (shim/native/berth-exec.c) does the same in C; test_exec_is_set_up_as_the_first_process_is
    holds the two together."""
    passwd, group = _read_db("/etc/passwd"), _read_db("/etc/group")
    uid, gid, groups, home = resolve_user(plan.user, passwd, group)
    # containerd lists the primary group among the supplementary ones (its CVE-2023-25173 fix)
    groups = [gid, *(g for g in groups if g != gid)]
    groups += [g for g in additional_groups(plan.group_add, group) if g not in groups]
    env = list(plan.env)
    if not any(e.startswith("HOME=") for e in env):
        env.append(f"HOME={home}")

    if plan.terminal:
        stdio = (slave, slave, slave)
    else:
        stdio = (plan.stdin_fd, plan.stdout_fd, plan.stderr_fd)
    for target, fd in enumerate(stdio):
        os.dup2(fd, target)
    if plan.terminal:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    resource.setrlimit(resource.RLIMIT_NOFILE, plan.nofile)
    for kind, soft, hard in plan.rlimits:
        try:
            resource.setrlimit(kind, (soft, hard))
        except (OSError, ValueError) as exc:
            err = exc.errno if isinstance(exc, OSError) and exc.errno else errno.EPERM
            raise StartError("failed to create task for container: failed to create shim task: OCI runtime create "
                             "failed: runc create failed: unable to start container process: error during container "
                             f"init: error setting rlimits for ready process: error setting rlimit type {kind}: "
                             f"{errtext(err)}: unknown") from None
    # Without no_new_privs, installing a filter needs CAP_SYS_ADMIN: do it while we have it
    # (runc's order); with it, as late as possible, so that few calls run under the filter.
    if plan.seccomp and not plan.no_new_privileges:
        _install_seccomp(plan.seccomp)
    for cap in plan.drop_caps:
        linux.prctl(linux.PR_CAPBSET_DROP, cap)
    os.setgroups(groups)
    os.setgid(gid)
    os.setuid(uid)
    try:
        os.chdir(plan.cwd)
    except OSError as exc:
        raise StartError(f'chdir to cwd ("{plan.cwd}") set in config.json failed: {errtext(exc.errno or 0)}') from None

    path_env = next((e[5:] for e in reversed(env) if e.startswith("PATH=")), DEFAULT_PATH)
    name = plan.args[0]
    path = look_path(name, path_env)
    os.umask(DEFAULT_UMASK)
    if plan.no_new_privileges:
        linux.prctl(linux.PR_SET_NO_NEW_PRIVS, 1)
        if plan.seccomp:
            _install_seccomp(plan.seccomp)
    os.closerange(3, plan.err_fd)
    os.closerange(plan.err_fd + 1, 1 << 20)
    environ = {}
    for entry in env:
        key, sep, value = entry.partition("=")
        if sep and key:
            environ[key] = value
    try:
        os.execve(path, list(plan.args), environ)
    except OSError as exc:
        raise StartError(f"exec {path}: {errtext(exc.errno or 0)}") from None
    raise AssertionError("unreachable")


def _install_seccomp(program: bytes) -> None:
    try:
        linux.seccomp_set_filter(program)
    except OSError as exc:
        raise StartError("unable to start container process: error during container init: unable to init "
                         f"seccomp: error loading seccomp filter into kernel: {errtext(exc.errno or 0)}") from None


def additional_groups(names: tuple[str, ...], group: list[list[str]]) -> list[int]:
    """``--group-add``: a name in the container's /etc/group, else a number (runc's order)."""
    out: list[int] = []
    for name in names:
        for row in group:
            if len(row) >= 3 and row[0] == name and row[2].isdigit():
                out.append(int(row[2]))
                break
        else:
            if not name.isdigit():
                raise StartError(f"Unable to find group {name}: no matching entries in group file")
            out.append(int(name))
    return out


def look_path(name: str, path_env: str) -> str:
    """Go's ``exec.LookPath`` as runc uses it, with its error texts."""
    if "/" in name:
        try:
            st = os.stat(name)
        except OSError as exc:
            raise StartError(f'exec: "{name}": stat {name}: {errtext(exc.errno or 0)}') from None
        if stat.S_ISDIR(st.st_mode):
            raise StartError(f'exec: "{name}": is a directory')
        if not st.st_mode & 0o111:
            raise StartError(f'exec: "{name}": permission denied')
        return name
    for directory in path_env.split(":"):
        candidate = f"{directory or '.'}/{name}"
        try:
            st = os.stat(candidate)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode) and st.st_mode & 0o111:
            return candidate
    raise StartError(f'exec: "{name}": executable file not found in $PATH')


def _read_db(path: str) -> list[list[str]]:
    """Rows of a colon-separated database (/etc/passwd, /etc/group); missing file = empty."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return []
    try:
        chunks = []
        size = 0
        while size < _MAX_DB:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    rows = []
    for line in b"".join(chunks).decode("utf-8", "replace").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            rows.append(line.split(":"))
    return rows


def resolve_user(spec: str, passwd: list[list[str]], group: list[list[str]]) -> tuple[int, int, list[int], str]:
    """(uid, gid, supplementary gids, home) for a Docker ``--user`` value, from the container's
    own databases, as runc's ``GetExecUser``: numeric values are ids even when absent from the
    files; names must exist; supplementary groups come from /etc/group when no group is given."""
    user_arg, _, group_arg = spec.partition(":")
    uid, gid, home, name = 0, 0, "/", ""
    entry: list[str] | None = None
    for row in passwd:
        if len(row) < 6 or not row[2].isdigit() or not row[3].isdigit():
            continue
        if (user_arg == "" and row[2] == "0") or (user_arg.isdigit() and int(row[2]) == int(user_arg)) \
                or (not user_arg.isdigit() and row[0] == user_arg):
            entry = row
            break
    if entry is not None:
        name, uid, gid, home = entry[0], int(entry[2]), int(entry[3]), entry[5] or "/"
    elif user_arg.isdigit():
        uid = int(user_arg)
    elif user_arg:
        raise StartError(f"unable to find user {user_arg}: no matching entries in passwd file")
    groups: list[int] = []
    if group_arg:
        if group_arg.isdigit():
            gid = int(group_arg)
        else:
            for row in group:
                if len(row) >= 3 and row[0] == group_arg and row[2].isdigit():
                    gid = int(row[2])
                    break
            else:
                raise StartError(f"unable to find group {group_arg}: no matching entries in group file")
    elif name:
        for row in group:
            if len(row) >= 4 and row[2].isdigit() and name in row[3].split(","):
                groups.append(int(row[2]))
    return uid, gid, groups, home
