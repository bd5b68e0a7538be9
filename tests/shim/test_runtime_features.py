# ruff: noqa: ASYNC240 - tests read small files of the container's directories inline
"""The runtime beyond the basic lifecycle (issue 3): exec, pause, update, stats, top, restart
policies, healthchecks and the per-container options of the child (sysctls, ulimits,
supplementary groups, --init, no_new_privs, seccomp, privileged devices). One contract, run
against ``LinuxRuntime`` and against ``RemoteRuntime`` through a live gRPC server.
"""

from __future__ import annotations

import asyncio
import os
import re
import resource
import secrets
import signal
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from protos.errors import BerthError, Conflict, ContainerNotRunning, InvalidArgument, NotModified, StartFailed
from shim.api import (
    AttachInput,
    EventType,
    ExecSpec,
    ExecState,
    Healthcheck,
    HealthStatus,
    NamespaceMode,
    ProcessSpec,
    Resources,
    RestartPolicy,
    Runtime,
    Status,
    Stream,
    Ulimit,
)
from shim.supervisor import caps
from shim.supervisor.cgroups import Layout
from tests.shim.conftest import Containers, Recorder, collect, eventually
from tests.shim.contract import attached_run, inputs, log_text, logged, run
from tests.support.busybox import PATH_ENV

TIMEOUT = 30


def xspec(*args: str, **process: object) -> ExecSpec:
    detach = bool(process.pop("detach", False))
    privileged = bool(process.pop("privileged", False))
    env = tuple(process.pop("env", ())) or (PATH_ENV,)  # type: ignore[call-overload]
    return ExecSpec(exec_id=secrets.token_hex(32), process=ProcessSpec(args=args, env=env, **process),  # type: ignore[arg-type]
                    privileged=privileged, detach=detach)


async def run_exec(runtime: Runtime, id: str, spec: ExecSpec, stdin: Sequence[AttachInput] = ()
                   ) -> tuple[ExecState, bytes, bytes]:
    state, outputs = await runtime.exec(id, spec, inputs(stdin))
    items = await asyncio.wait_for(collect(outputs), TIMEOUT)
    out = b"".join(o.data for o in items if o.stream == Stream.STDOUT)
    err = b"".join(o.data for o in items if o.stream == Stream.STDERR)
    return state, out, err


def exits(recorder: Recorder, exec_id: str) -> list[int]:
    return [e.exec.exit_code for e in recorder.events
            if e.type is EventType.EXEC_EXIT and e.exec is not None and e.exec.exec_id == exec_id]


async def running(runtime: Runtime, containers: Containers, *args: str, **kwargs: object) -> str:
    spec = containers.spec(*(args or ("sleep", "1000")), **kwargs)
    await runtime.create(spec)
    await runtime.start(spec.id)
    return spec.id


class FeatureContract:
    # exec -----------------------------------------------------------------------------------------

    async def test_exec_output_exit_code_and_events(self, runtime: Runtime, containers: Containers,
                                                    recorder: Recorder) -> None:
        id = await running(runtime, containers)
        spec = xspec("sh", "-c", "echo out; echo err >&2; exit 5")
        state, out, err = await run_exec(runtime, id, spec)
        assert state.running and state.pid > 0 and state.exec_id == spec.exec_id
        assert (out, err) == (b"out\n", b"err\n")
        assert exits(recorder, spec.exec_id) == [5]  # recorded before the output ended
        assert await log_text(runtime, id) == []  # an exec's output never goes to the container's log

    async def test_exec_that_closes_its_output_and_runs_on(self, runtime: Runtime, containers: Containers,
                                                           recorder: Recorder) -> None:
        """Its output's end is not its exit (the supervisor reaps there only what has exited)."""
        id = await running(runtime, containers)
        spec = xspec("sh", "-c", "echo before; exec >&- 2>&-; sleep 0.3; exit 4")
        began = time.monotonic()
        _, out, _ = await run_exec(runtime, id, spec)
        assert out == b"before\n" and time.monotonic() - began >= 0.3
        assert exits(recorder, spec.exec_id) == [4]

    async def test_exec_start_events(self, runtime: Runtime, containers: Containers, recorder: Recorder) -> None:
        """An attached exec that ends within the supervisor's hold is recorded by its exit alone;
        one that runs on gets its start recorded too; a detached one's start is recorded before
        its start returns."""
        id = await running(runtime, containers)

        def kinds(exec_id: str) -> list[EventType]:
            return [e.type for e in recorder.events if e.exec is not None and e.exec.exec_id == exec_id]

        shorts = [xspec("true") for _ in range(5)]
        for short in shorts:
            await run_exec(runtime, id, short)
        seen = [kinds(short.exec_id) for short in shorts]
        # each ended, recorded once; and (most take ~1 ms of the 5 ms hold, even on a busy machine)
        # some by their exit alone
        assert all(k in ([EventType.EXEC_EXIT], [EventType.EXEC_START, EventType.EXEC_EXIT]) for k in seen), seen
        assert [EventType.EXEC_EXIT] in seen, seen
        long = xspec("sleep", "0.3")
        state, outputs = await runtime.exec(id, long, inputs([]))
        await eventually(lambda: kinds(long.exec_id) == [EventType.EXEC_START], within=5)
        started = next(e.exec for e in recorder.events if e.exec is not None and e.exec.exec_id == long.exec_id)
        assert started.running and started.pid == state.pid > 0
        await asyncio.wait_for(collect(outputs), TIMEOUT)
        assert kinds(long.exec_id) == [EventType.EXEC_START, EventType.EXEC_EXIT]
        detached = xspec("sleep", "0.3", detach=True)
        await runtime.exec(id, detached, inputs([]))
        assert kinds(detached.exec_id) == [EventType.EXEC_START]

    async def test_exec_joins_every_namespace_and_the_cgroups(self, runtime: Runtime, containers: Containers) -> None:
        id = await running(runtime, containers)
        script = ("echo $$; for n in ipc mnt net pid uts; do readlink /proc/self/ns/$n; readlink /proc/1/ns/$n; done;"
                  " cat /proc/self/cgroup; hostname; ls -d /proc/[0-9]* | wc -l")
        _, out, _ = await run_exec(runtime, id, xspec("sh", "-c", script))
        lines = out.decode().split("\n")
        assert 1 < int(lines[0]) < 100  # a pid of the container's namespace, not the host's
        pairs = lines[1:11]
        assert all(pairs[i] == pairs[i + 1] for i in range(0, 10, 2)), pairs
        assert any(line.endswith(id) for line in lines[11:]), "not in the container's cgroup"
        assert id[:12] in lines
        assert int(lines[-2]) <= 5  # sleep, sh, ls, wc: nothing of the host

    async def test_exec_stdin_user_env_and_workdir(self, runtime: Runtime, containers: Containers) -> None:
        id = await running(runtime, containers)
        _, out, _ = await run_exec(runtime, id, xspec("cat", open_stdin=True, stdin_once=True),
                                   [AttachInput(b"one\n"), AttachInput(b"two\n"), AttachInput(close=True)])
        assert out == b"one\ntwo\n"
        spec = xspec("sh", "-c", "id -u; pwd; echo $GREETING; grep CapEff /proc/self/status", user="nobody",
                     cwd="/tmp", env=(PATH_ENV, "GREETING=ahoy"))
        _, out, _ = await run_exec(runtime, id, spec)
        assert out.decode().split("\n")[:4] == ["65534", "/tmp", "ahoy", "CapEff:\t0000000000000000"]

    async def test_check_user(self, runtime: Runtime, containers: Containers) -> None:
        id = await running(runtime, containers)
        for user in ("root", "nobody", "nobody:users", "4321", "4321:8765", "www-data:33"):
            await runtime.check_user(id, user)
        with pytest.raises(InvalidArgument, match="unable to find user ghost: no matching entries in passwd file"):
            await runtime.check_user(id, "ghost")
        with pytest.raises(InvalidArgument, match="unable to find group ghosts: no matching entries in group file"):
            await runtime.check_user(id, "nobody:ghosts")
        # the lookup stays in the container: a symlink to the host's /etc/passwd is the container's own
        _, out, _ = await run_exec(runtime, id, xspec("sh", "-c", "echo host-only:x:5555:5555::/:/bin/sh > /hostp;"
                                                      " ln -sf /hostp /etc/passwd && echo linked"))
        assert out == b"linked\n"
        await runtime.check_user(id, "host-only")
        with pytest.raises(InvalidArgument):
            await runtime.check_user(id, "root")  # this container's passwd has no root any more
        stopped = containers.spec("true")
        await run(runtime, stopped)
        with pytest.raises(ContainerNotRunning):
            await runtime.check_user(stopped.id, "root")

    async def test_exec_privileged_gets_every_capability(self, runtime: Runtime, containers: Containers) -> None:
        id = await running(runtime, containers)
        default = caps.container_caps(privileged=False, add=(), drop=(), bounding=caps.bounding_set())
        for privileged, expected in ((False, default), (True, caps.bounding_set())):
            _, out, _ = await run_exec(runtime, id, xspec("grep", "CapEff", "/proc/self/status", privileged=privileged))
            assert int(out.decode().split()[1], 16) == sum(1 << c for c in expected)

    async def test_exec_tty_and_resize(self, runtime: Runtime, containers: Containers) -> None:
        id = await running(runtime, containers)
        spec = xspec("sh", "-c", "tty; stty size; read x; stty size", terminal=True, open_stdin=True,
                     console_height=30, console_width=100)
        gate = asyncio.Event()
        _, outputs = await runtime.exec(id, spec, inputs([AttachInput(b"go\n")], gate))
        seen = b""
        async for output in outputs:  # the first size is printed before we resize
            seen += output.data
            if b"30 100\r\n" in seen:
                break
        await runtime.resize_exec(id, spec.exec_id, 40, 120)
        gate.set()
        seen += b"".join(o.data for o in await asyncio.wait_for(collect(outputs), TIMEOUT))
        assert re.match(rb"/dev/pts/\d+\r\n30 100\r\n", seen), seen
        assert seen.rstrip().endswith(b"40 120")
        await runtime.resize_exec(id, spec.exec_id, 10, 10)  # exited: a no-op

    async def test_exec_failures(self, runtime: Runtime, containers: Containers, recorder: Recorder) -> None:
        id = await running(runtime, containers)
        spec = xspec("no-such-binary")
        with pytest.raises(StartFailed, match='exec: "no-such-binary": executable file not found in \\$PATH'):
            await runtime.exec(id, spec, inputs([]))
        assert exits(recorder, spec.exec_id) == [127]
        spec = xspec("true", cwd="/no/such/dir")
        with pytest.raises(StartFailed, match="no such file or directory"):
            await runtime.exec(id, spec, inputs([]))
        await runtime.pause(id)
        with pytest.raises(Conflict, match="is paused, unpause the container before exec"):
            await runtime.exec(id, xspec("true"), inputs([]))
        await runtime.resume(id)
        stopped = containers.spec("true")
        await run(runtime, stopped)
        with pytest.raises(ContainerNotRunning):
            await runtime.exec(stopped.id, xspec("true"), inputs([]))

    async def test_exec_is_set_up_as_the_first_process_is(self, runtime: Runtime, containers: Containers) -> None:
        """The container's first process (the Python child) and an exec (the native helper) get
        the same user, groups, HOME, cwd, umask, rlimits, capabilities, no_new_privs, seccomp,
        namespaces, cgroups and nothing but stdio."""
        probe = ("id -u; id -g; id -G; echo $HOME; pwd; umask; ulimit -n; ulimit -Hn; ulimit -u;"
                 " grep -E '^(Cap(Inh|Prm|Eff|Bnd|Amb)|NoNewPrivs|Seccomp):' /proc/self/status;"
                 " ls /proc/self/fd | tr '\\n' ' '; echo;"
                 " for n in ipc mnt net pid uts; do readlink /proc/self/ns/$n; done; cat /proc/self/cgroup")
        options = {"user": "nobody:users", "cwd": "/tmp", "group_add": ("www-data", "4321"),
                   "no_new_privileges": True, "ulimits": (Ulimit("nofile", 100, 200), Ulimit("nproc", 50, 60))}
        id = await running(runtime, containers, "sh", "-c", f"{probe}; echo END; exec sleep 1000", **options)
        await eventually(lambda: logged(runtime, id, "END\n"), what="the first process's probe")
        first = "".join(await log_text(runtime, id)).removesuffix("END\n")
        _, out, err = await run_exec(runtime, id, xspec("sh", "-c", probe, user="nobody:users", cwd="/tmp"))
        assert err == b""
        assert out.decode() == first
        lines = first.split("\n")
        assert lines[:9] == ["65534", "100", "100 33 4321", "/home", "/tmp", "0022", "100", "200", "50"]
        assert "NoNewPrivs:\t1" in lines and "Seccomp:\t2" in lines and "0 1 2 3 " in lines

    async def test_detached_exec(self, runtime: Runtime, containers: Containers, recorder: Recorder) -> None:
        id = await running(runtime, containers)
        spec = xspec("sh", "-c", "echo nobody-reads-this; touch /tmp/done; exit 3", detach=True)
        state, outputs = await runtime.exec(id, spec, inputs([]))
        assert state.pid > 0 and await collect(outputs) == []
        await eventually(lambda: exits(recorder, spec.exec_id) == [3])
        _, out, _ = await run_exec(runtime, id, xspec("ls", "/tmp/done"))
        assert out == b"/tmp/done\n"

    # pause ------------------------------------------------------------------------------------------

    async def test_pause_freezes_and_resume_thaws(self, runtime: Runtime, containers: Containers,
                                                  recorder: Recorder) -> None:
        id = await running(runtime, containers, "sh", "-c",
                           "i=0; while true; do i=$((i+1)); echo $i; usleep 20000; done")
        await eventually(lambda: logged(runtime, id, "3\n"))
        paused = await runtime.pause(id)
        assert paused.status == Status.PAUSED == (await runtime.state(id)).status
        frozen = len(await log_text(runtime, id))
        with pytest.raises(Conflict, match=f"Container {id} is already paused"):
            await runtime.pause(id)
        await asyncio.sleep(0.3)
        assert len(await log_text(runtime, id)) in (frozen, frozen + 1)  # at most a line already in flight
        assert (await runtime.resume(id)).status == Status.RUNNING
        await eventually(lambda: logged(runtime, id, f"{frozen + 5}\n"))
        with pytest.raises(BerthError, match=f"Container {id} is not paused"):
            await runtime.resume(id)
        assert [e.type for e in recorder.of(id) if e.type in (EventType.PAUSE, EventType.RESUME)] == \
            [EventType.PAUSE, EventType.RESUME]
        await runtime.pause(id)
        state = await asyncio.wait_for(runtime.stop(id, signal.SIGTERM, 0.5), TIMEOUT)  # thawed to be killed
        assert state.status == Status.STOPPED

    # update, stats, top -----------------------------------------------------------------------------

    async def test_update_limits_of_a_running_container(self, runtime: Runtime, containers: Containers,
                                                        cgroup_parent: str) -> None:
        id = await running(runtime, containers, resources=Resources(memory=64 << 20, pids_limit=50))
        memory = Layout.detect().owner("memory")
        assert memory is not None and not memory.v2
        directory = Path(memory.mount, cgroup_parent, id)
        new = Resources(memory=128 << 20, memory_swap=256 << 20, pids_limit=20, cpu_shares=512)
        state = await runtime.update(id, new, RestartPolicy("on-failure", 3))
        assert state.status == Status.RUNNING
        assert (directory / "memory.limit_in_bytes").read_text().strip() == str(128 << 20)
        assert (directory / "memory.memsw.limit_in_bytes").read_text().strip() == str(256 << 20)
        pids = Layout.detect().owner("pids")
        assert pids is not None
        assert Path(pids.mount, cgroup_parent, id, "pids.max").read_text().strip() == "20"
        await runtime.update(id, Resources(memory=32 << 20), RestartPolicy())  # lowering works too
        assert (directory / "memory.limit_in_bytes").read_text().strip() == str(32 << 20)
        assert Path(pids.mount, cgroup_parent, id, "pids.max").read_text().strip() == "max"

    async def test_stats(self, runtime: Runtime, containers: Containers) -> None:
        id = await running(runtime, containers, "sh", "-c", "head -c 5000000 /dev/urandom | md5sum; sleep 1000",
                           resources=Resources(memory=64 << 20, pids_limit=30))
        await eventually(lambda: _printed(runtime, id, "  -\n"), what="md5sum to finish")
        s = await runtime.stats(id)
        assert s.cpu.total_ns > 0 and s.system_cpu_ns > s.cpu.total_ns
        assert s.online_cpus == os.cpu_count() and len(s.cpu.percpu_ns) >= s.online_cpus
        assert 0 < s.memory_usage <= s.memory_limit == 64 << 20
        assert "total_rss" in s.memory_stats and "cache" in s.memory_stats
        assert (s.pids_current, s.pids_limit) == (1, 30)
        assert s.networks == {}  # only lo in its namespace, which Docker does not report
        with pytest.raises(ContainerNotRunning):
            await runtime.stats((await run(runtime, containers.spec("true"))).id)

    async def test_top(self, runtime: Runtime, containers: Containers) -> None:
        id = await running(runtime, containers, "sh", "-c", "sleep 1001 & sleep 1002 & wait")
        await eventually(lambda: _pids_of(runtime, id, 3))
        result = await runtime.top(id, "")
        assert result.titles == ("UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD")
        commands = sorted(row[-1] for row in result.processes)
        assert commands == ["sh -c sleep 1001 & sleep 1002 & wait", "sleep 1001", "sleep 1002"]
        result = await runtime.top(id, "-o pid,comm")
        assert result.titles == ("PID", "COMMAND") and len(result.processes) == 3

    # restart policies -------------------------------------------------------------------------------

    async def test_on_failure_restarts_with_a_maximum(self, runtime: Runtime, containers: Containers,
                                                      recorder: Recorder) -> None:
        spec = containers.spec("sh", "-c", "echo ran; exit 3", restart_policy=RestartPolicy("on-failure", 2))
        await runtime.create(spec)
        await runtime.start(spec.id)

        def done() -> bool:
            exits = [e.state for e in recorder.of(spec.id) if e.type is EventType.EXIT]
            return len(exits) == 3 and exits[-1].status == Status.STOPPED

        await eventually(done)
        history = [(e.type, e.state.status, e.state.restart_count) for e in recorder.of(spec.id)]
        assert history == [(EventType.START, Status.RUNNING, 0), (EventType.EXIT, Status.RESTARTING, 1),
                           (EventType.START, Status.RUNNING, 1), (EventType.EXIT, Status.RESTARTING, 2),
                           (EventType.START, Status.RUNNING, 2), (EventType.EXIT, Status.STOPPED, 2)]
        assert await log_text(runtime, spec.id) == ["ran\n"] * 3
        await runtime.start(spec.id)  # a start by hand resets the count
        await eventually(lambda: recorder.of(spec.id)[-1].state.status == Status.STOPPED
                         and len(recorder.of(spec.id)) == 12)
        assert recorder.of(spec.id)[6].state.restart_count == 0

    async def test_stop_cancels_restarts_and_unless_stopped_stays_down(
            self, runtime: Runtime, containers: Containers, recorder: Recorder) -> None:
        for policy in ("always", "unless-stopped"):
            spec = containers.spec("sh", "-c", "exit 1", restart_policy=RestartPolicy(policy))
            await runtime.create(spec)
            await runtime.start(spec.id)
            await eventually(lambda s=spec: (st := recorder.of(s.id)[-1].state).restart_count >= 4  # type: ignore[misc]
                             and st.status == Status.RESTARTING)
            assert (await runtime.state(spec.id)).status in (Status.RESTARTING, Status.RUNNING)
            state = await asyncio.wait_for(runtime.stop(spec.id, signal.SIGTERM, 5), TIMEOUT)
            assert state.status == Status.STOPPED
            count = len(recorder.of(spec.id))
            await asyncio.sleep(1.0)  # longer than the next back-off: nothing may happen any more
            assert len(recorder.of(spec.id)) == count
            with pytest.raises(NotModified):
                await runtime.stop(spec.id)

    # healthchecks -----------------------------------------------------------------------------------

    async def test_healthcheck_states(self, runtime: Runtime, containers: Containers, recorder: Recorder) -> None:
        check = Healthcheck(test=("CMD-SHELL", "cat /tmp/health"), interval_ns=100_000_000, retries=2)
        id = await running(runtime, containers, healthcheck=check)
        started = await runtime.state(id)
        assert started.health is not None and started.health.status == HealthStatus.STARTING

        def status() -> HealthStatus | None:
            h = recorder.of(id)[-1].state.health
            return h.status if h is not None else None

        await eventually(lambda: status() == HealthStatus.UNHEALTHY)
        health = (await runtime.state(id)).health
        assert health is not None and health.failing_streak >= 2
        assert health.log[-1].exit_code == 1 and "No such file or directory" in health.log[-1].output
        await run_exec(runtime, id, xspec("sh", "-c", "echo fine > /tmp/health"))
        await eventually(lambda: status() == HealthStatus.HEALTHY)
        health = (await runtime.state(id)).health
        assert health is not None and health.failing_streak == 0 and health.log[-1].output == "fine\n"
        assert len(health.log) <= 5
        changes = [e.state.health.status for e in recorder.of(id)  # type: ignore[union-attr]
                   if e.type is EventType.HEALTH_STATUS]
        assert changes == [HealthStatus.UNHEALTHY, HealthStatus.HEALTHY]

    async def test_healthcheck_timeout(self, runtime: Runtime, containers: Containers, recorder: Recorder) -> None:
        check = Healthcheck(test=("CMD", "sleep", "10"), interval_ns=50_000_000, timeout_ns=200_000_000, retries=1)
        id = await running(runtime, containers, healthcheck=check)
        await eventually(lambda: (h := recorder.of(id)[-1].state.health) is not None
                         and h.status == HealthStatus.UNHEALTHY)
        health = (await runtime.state(id)).health
        assert health is not None
        assert (health.log[-1].exit_code, health.log[-1].output) == (-1, "Health check exceeded timeout (200ms)")

    # what the child sets up ----------------------------------------------------------------------

    async def test_sysctls(self, runtime: Runtime, containers: Containers) -> None:
        spec = containers.spec("sh", "-c", "cat /proc/sys/net/ipv4/ip_forward /proc/sys/kernel/shmmni"
                                           " /proc/sys/net/ipv4/ip_unprivileged_port_start",
                               sysctls={"net.ipv4.ip_forward": "1", "kernel.shmmni": "1234"})
        state, out, _ = await attached_run(runtime, spec)
        assert (state.exit_code, out) == (0, b"1\n1234\n0\n")  # and Docker's default unprivileged ports
        for sysctls, kwargs, text in (
                ({"kernel.hostname": "x"}, {}, 'conflicts with the OCI "hostname" field'),
                ({"vm.swappiness": "1"}, {}, 'sysctl "vm.swappiness" is not in a separate kernel namespace'),
                ({"net.ipv4.ip_forward": "1"}, {"network": NamespaceMode.HOST},
                 "not allowed in host network namespace"),
                ({"kernel.shmmax": "1"}, {"ipc": NamespaceMode.HOST}, "not allowed in the hosts ipc namespace")):
            bad = containers.spec("true", sysctls=sysctls, **kwargs)
            await runtime.create(bad)
            with pytest.raises(BerthError, match=re.escape(text)):
                await runtime.start(bad.id)
            assert (await runtime.state(bad.id)).status == Status.CREATED

    async def test_ulimits(self, runtime: Runtime, containers: Containers) -> None:
        spec = containers.spec("sh", "-c", "ulimit -n; ulimit -Hn; ulimit -u",
                               ulimits=(Ulimit("nofile", 100, 200), Ulimit("nproc", 50, 60)))
        _, out, _ = await attached_run(runtime, spec)
        assert out == b"100\n200\n50\n"
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        spec = containers.spec("true", ulimits=(Ulimit("nofile", hard + 1, hard + 1),))
        await runtime.create(spec)
        with pytest.raises(BerthError, match="error setting rlimit type 7: operation not permitted"):
            await runtime.start(spec.id)

    async def test_group_add_init_and_no_new_privileges(self, runtime: Runtime, containers: Containers) -> None:
        spec = containers.spec("sh", "-c", "id -G; grep NoNewPrivs /proc/self/status",
                               group_add=("www-data", "4321"), no_new_privileges=True)
        _, out, _ = await attached_run(runtime, spec)
        assert out.decode().split("\n")[:2] == ["0 10 33 4321", "NoNewPrivs:\t1"]
        spec = containers.spec("true", group_add=("no-such-group",))
        await runtime.create(spec)
        with pytest.raises(StartFailed, match="Unable to find group no-such-group"):
            await runtime.start(spec.id)
        spec = containers.spec("sh", "-c", "cat /proc/1/cmdline | tr '\\0' ' '; echo; echo $$", init=True)
        _, out, _ = await attached_run(runtime, spec)
        first, second = out.decode().split("\n")[:2]
        assert first.startswith("/sbin/docker-init -- sh -c ") and second != "1"

    async def test_seccomp_default_unconfined_and_privileged(self, runtime: Runtime, containers: Containers) -> None:
        script = "grep Seccomp: /proc/self/status; unshare -U true && echo unshared || echo refused"
        cases = (({}, "2", "refused"), ({"seccomp_profile": "unconfined"}, "0", "unshared"),
                 ({"privileged": True}, "0", "unshared"))
        for kwargs, mode, unshare in cases:
            _, out, _ = await attached_run(runtime, containers.spec("sh", "-c", script, **kwargs))
            assert out.decode().split() == ["Seccomp:", mode, unshare], kwargs
        profile = '{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir", "mkdirat"], ' \
                  '"action": "SCMP_ACT_ERRNO", "errnoRet": 13}]}'
        spec = containers.spec("sh", "-c", "mkdir /x || echo denied", seccomp_profile=profile)
        _, out, err = await attached_run(runtime, spec)
        assert out == b"denied\n" and b"Permission denied" in err

    async def test_privileged_sees_host_devices(self, runtime: Runtime, containers: Containers) -> None:
        host = sorted(n for n in os.listdir("/dev") if os.path.exists(f"/dev/{n}") and not os.path.isdir(f"/dev/{n}")
                      and os.stat(f"/dev/{n}").st_mode & 0o170000 in (0o020000, 0o060000) and n != "console")[:5]
        _, out, _ = await attached_run(runtime, containers.spec("ls", "/dev", privileged=True))
        assert set(host) <= set(out.decode().split())
        _, out, _ = await attached_run(runtime, containers.spec("ls", "/dev"))
        assert not set(host) - {"null", "zero", "full", "random", "urandom", "tty", "ptmx"} <= set(out.decode().split())


async def _printed(runtime: Runtime, id: str, suffix: str) -> bool:
    return any(line.endswith(suffix) for line in await log_text(runtime, id))


async def _pids_of(runtime: Runtime, id: str, n: int) -> bool:
    return len((await runtime.top(id, "")).processes) >= n


class TestLinuxFeatures(FeatureContract):
    @pytest.fixture
    def runtime(self, local_runtime: Runtime) -> Runtime:
        return local_runtime


class TestRemoteFeatures(FeatureContract):
    @pytest.fixture
    def runtime(self, remote_runtime: Runtime) -> Runtime:
        return remote_runtime


class TestDirectFeatures(FeatureContract):
    @pytest.fixture
    def runtime(self, direct_runtime: Runtime) -> Runtime:
        return direct_runtime
