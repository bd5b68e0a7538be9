"""Conversions between :mod:`shim.api` and the gRPC messages: the only place fields are copied."""

from __future__ import annotations

from common.mounts import Mount
from protos.shim.v1 import shim_pb2 as pb
from shim.api import (
    AttachInput,
    AttachOptions,
    BindMount,
    BlkioEntry,
    ContainerMount,
    ContainerSpec,
    ContainerState,
    ContainerStats,
    CPUUsage,
    EventType,
    ExecSpec,
    ExecState,
    Health,
    Healthcheck,
    HealthLogEntry,
    HealthStatus,
    LogBatch,
    LogEntry,
    LogsOptions,
    NamespaceMode,
    NetworkCounters,
    Output,
    ProcessSpec,
    Resources,
    RestartPolicy,
    Status,
    Stream,
    TaskEvent,
    TopResult,
    Ulimit,
)
from shim.network import convert as network_convert

_STATUS = {Status.CREATED: pb.STATUS_CREATED, Status.RUNNING: pb.STATUS_RUNNING,
           Status.PAUSED: pb.STATUS_PAUSED, Status.STOPPED: pb.STATUS_STOPPED,
           Status.RESTARTING: pb.STATUS_RESTARTING}
_STATUS_BACK = {v: k for k, v in _STATUS.items()}
_MODE = {NamespaceMode.PRIVATE: pb.NAMESPACE_MODE_PRIVATE, NamespaceMode.HOST: pb.NAMESPACE_MODE_HOST}
_MODE_BACK = {v: k for k, v in _MODE.items()}
_EVENT = {EventType.START: pb.EVENT_TYPE_START, EventType.EXIT: pb.EVENT_TYPE_EXIT,
          EventType.OOM: pb.EVENT_TYPE_OOM, EventType.DELETE: pb.EVENT_TYPE_DELETE,
          EventType.PAUSE: pb.EVENT_TYPE_PAUSE, EventType.RESUME: pb.EVENT_TYPE_RESUME,
          EventType.UPDATE: pb.EVENT_TYPE_UPDATE, EventType.EXEC_START: pb.EVENT_TYPE_EXEC_START,
          EventType.EXEC_EXIT: pb.EVENT_TYPE_EXEC_EXIT, EventType.HEALTH_CHECK: pb.EVENT_TYPE_HEALTH_CHECK,
          EventType.HEALTH_STATUS: pb.EVENT_TYPE_HEALTH_STATUS}
_EVENT_BACK = {v: k for k, v in _EVENT.items()}


def mount_to_proto(m: Mount) -> pb.Mount:
    return pb.Mount(type=m.type, source=m.source, options=list(m.options))


def mount_from_proto(m: pb.Mount) -> Mount:
    return Mount(type=m.type, source=m.source, options=tuple(m.options))


def process_to_proto(p: ProcessSpec) -> pb.ProcessSpec:
    return pb.ProcessSpec(args=list(p.args), env=list(p.env), cwd=p.cwd, user=p.user, terminal=p.terminal,
                          open_stdin=p.open_stdin, stdin_once=p.stdin_once,
                          console_height=p.console_height, console_width=p.console_width)


def process_from_proto(p: pb.ProcessSpec) -> ProcessSpec:
    return ProcessSpec(args=tuple(p.args), env=tuple(p.env), cwd=p.cwd or "/", user=p.user, terminal=p.terminal,
                       open_stdin=p.open_stdin, stdin_once=p.stdin_once,
                       console_height=p.console_height, console_width=p.console_width)


def resources_to_proto(r: Resources) -> pb.Resources:
    return pb.Resources(memory=r.memory, memory_swap=r.memory_swap, memory_reservation=r.memory_reservation,
                        nano_cpus=r.nano_cpus, cpu_shares=r.cpu_shares, cpu_period=r.cpu_period,
                        cpu_quota=r.cpu_quota, cpuset_cpus=r.cpuset_cpus, cpuset_mems=r.cpuset_mems,
                        pids_limit=r.pids_limit, oom_kill_disable=r.oom_kill_disable)


def resources_from_proto(r: pb.Resources) -> Resources:
    return Resources(memory=r.memory, memory_swap=r.memory_swap, memory_reservation=r.memory_reservation,
                     nano_cpus=r.nano_cpus, cpu_shares=r.cpu_shares, cpu_period=r.cpu_period,
                     cpu_quota=r.cpu_quota, cpuset_cpus=r.cpuset_cpus, cpuset_mems=r.cpuset_mems,
                     pids_limit=r.pids_limit, oom_kill_disable=r.oom_kill_disable)


def restart_policy_to_proto(p: RestartPolicy) -> pb.RestartPolicy:
    return pb.RestartPolicy(name=p.name, maximum_retry_count=p.maximum_retry_count)


def restart_policy_from_proto(p: pb.RestartPolicy) -> RestartPolicy:
    return RestartPolicy(name=p.name or "no", maximum_retry_count=p.maximum_retry_count)


def healthcheck_to_proto(h: Healthcheck) -> pb.Healthcheck:
    return pb.Healthcheck(test=list(h.test), interval_ns=h.interval_ns, timeout_ns=h.timeout_ns,
                          start_period_ns=h.start_period_ns, start_interval_ns=h.start_interval_ns,
                          retries=h.retries, shell=list(h.shell))


def healthcheck_from_proto(h: pb.Healthcheck) -> Healthcheck:
    return Healthcheck(test=tuple(h.test), interval_ns=h.interval_ns, timeout_ns=h.timeout_ns,
                       start_period_ns=h.start_period_ns, start_interval_ns=h.start_interval_ns,
                       retries=h.retries, shell=tuple(h.shell))


def spec_to_proto(s: ContainerSpec) -> pb.ContainerSpec:
    return pb.ContainerSpec(
        id=s.id, rootfs=[mount_to_proto(m) for m in s.rootfs], process=process_to_proto(s.process),
        hostname=s.hostname, domainname=s.domainname, network=_MODE[s.network], ipc=_MODE[s.ipc],
        pid=_MODE[s.pid], uts=_MODE[s.uts], readonly_rootfs=s.readonly_rootfs, privileged=s.privileged,
        cap_add=list(s.cap_add), cap_drop=list(s.cap_drop), resources=resources_to_proto(s.resources),
        shm_size=s.shm_size, labels=dict(s.labels), restart_policy=restart_policy_to_proto(s.restart_policy),
        healthcheck=healthcheck_to_proto(s.healthcheck),
        ulimits=[pb.Ulimit(name=u.name, soft=u.soft, hard=u.hard) for u in s.ulimits], sysctls=dict(s.sysctls),
        group_add=list(s.group_add), init=s.init, no_new_privileges=s.no_new_privileges,
        seccomp_profile=s.seccomp_profile, networking=network_convert.networking_to_proto(s.networking),
        netns_path=s.netns_path,
        binds=[pb.BindMount(source=b.source, destination=b.destination, readonly=b.readonly) for b in s.binds],
        mounts=[container_mount_to_proto(m) for m in s.mounts])


def spec_from_proto(s: pb.ContainerSpec) -> ContainerSpec:
    return ContainerSpec(
        id=s.id, rootfs=tuple(mount_from_proto(m) for m in s.rootfs), process=process_from_proto(s.process),
        hostname=s.hostname, domainname=s.domainname, network=_MODE_BACK[s.network], ipc=_MODE_BACK[s.ipc],
        pid=_MODE_BACK[s.pid], uts=_MODE_BACK[s.uts], readonly_rootfs=s.readonly_rootfs,
        privileged=s.privileged, cap_add=tuple(s.cap_add), cap_drop=tuple(s.cap_drop),
        resources=resources_from_proto(s.resources), shm_size=s.shm_size, labels=dict(s.labels),
        restart_policy=restart_policy_from_proto(s.restart_policy), healthcheck=healthcheck_from_proto(s.healthcheck),
        ulimits=tuple(Ulimit(u.name, u.soft, u.hard) for u in s.ulimits), sysctls=dict(s.sysctls),
        group_add=tuple(s.group_add), init=s.init, no_new_privileges=s.no_new_privileges,
        seccomp_profile=s.seccomp_profile, networking=network_convert.networking_from_proto(s.networking),
        netns_path=s.netns_path, binds=tuple(BindMount(b.source, b.destination, b.readonly) for b in s.binds),
        mounts=tuple(container_mount_from_proto(m) for m in s.mounts))


def container_mount_to_proto(m: ContainerMount) -> pb.ContainerMount:
    return pb.ContainerMount(type=m.type, destination=m.destination, source=m.source, readonly=m.readonly,
                             propagation=m.propagation, recursive=m.recursive, data=m.data, copy_up=m.copy_up,
                             create_source=m.create_source)


def container_mount_from_proto(m: pb.ContainerMount) -> ContainerMount:
    return ContainerMount(type=m.type, destination=m.destination, source=m.source, readonly=m.readonly,
                          propagation=m.propagation, recursive=m.recursive, data=m.data, copy_up=m.copy_up,
                          create_source=m.create_source)


def health_to_proto(h: Health) -> pb.Health:
    return pb.Health(status=h.status.value, failing_streak=h.failing_streak,
                     log=[pb.HealthLogEntry(start_ns=e.start_ns, end_ns=e.end_ns, exit_code=e.exit_code,
                                            output=e.output) for e in h.log])


def health_from_proto(h: pb.Health) -> Health:
    return Health(status=HealthStatus(h.status or HealthStatus.STARTING), failing_streak=h.failing_streak,
                  log=tuple(HealthLogEntry(e.start_ns, e.end_ns, e.exit_code, e.output) for e in h.log))


def state_to_proto(s: ContainerState) -> pb.ContainerState:
    return pb.ContainerState(id=s.id, status=_STATUS[s.status], pid=s.pid, exit_code=s.exit_code,
                             started_at_ns=s.started_at_ns, finished_at_ns=s.finished_at_ns,
                             oom_killed=s.oom_killed, error=s.error, log_path=s.log_path,
                             restart_count=s.restart_count,
                             health=health_to_proto(s.health) if s.health is not None else None)


def state_from_proto(s: pb.ContainerState) -> ContainerState:
    return ContainerState(id=s.id, status=_STATUS_BACK.get(s.status, Status.STOPPED), pid=s.pid,
                          exit_code=s.exit_code, started_at_ns=s.started_at_ns,
                          finished_at_ns=s.finished_at_ns, oom_killed=s.oom_killed, error=s.error,
                          log_path=s.log_path, restart_count=s.restart_count,
                          health=health_from_proto(s.health) if s.HasField("health") else None)


def exec_state_to_proto(e: ExecState) -> pb.ExecState:
    return pb.ExecState(exec_id=e.exec_id, container_id=e.container_id, pid=e.pid, running=e.running,
                        exit_code=e.exit_code, error=e.error, args=list(e.args))


def exec_state_from_proto(e: pb.ExecState) -> ExecState:
    return ExecState(exec_id=e.exec_id, container_id=e.container_id, pid=e.pid, running=e.running,
                     exit_code=e.exit_code, error=e.error, args=tuple(e.args))


def exec_spec_to_proto(s: ExecSpec) -> pb.ExecSpec:
    return pb.ExecSpec(exec_id=s.exec_id, process=process_to_proto(s.process), privileged=s.privileged,
                       detach=s.detach)


def exec_spec_from_proto(s: pb.ExecSpec) -> ExecSpec:
    return ExecSpec(exec_id=s.exec_id, process=process_from_proto(s.process), privileged=s.privileged,
                    detach=s.detach)


def event_to_proto(e: TaskEvent) -> pb.EventsResponse:
    return pb.EventsResponse(type=_EVENT[e.type], state=state_to_proto(e.state),
                             exec=exec_state_to_proto(e.exec) if e.exec is not None else None)


def event_from_proto(e: pb.EventsResponse) -> TaskEvent:
    return TaskEvent(type=_EVENT_BACK[e.type], state=state_from_proto(e.state),
                     exec=exec_state_from_proto(e.exec) if e.HasField("exec") else None)


def stats_to_proto(s: ContainerStats) -> pb.ContainerStats:
    c = s.cpu
    return pb.ContainerStats(
        read_ns=s.read_ns,
        cpu=pb.CPUUsage(total_ns=c.total_ns, percpu_ns=list(c.percpu_ns), kernel_ns=c.kernel_ns, user_ns=c.user_ns,
                        throttling_periods=c.throttling_periods, throttled_periods=c.throttled_periods,
                        throttled_ns=c.throttled_ns),
        system_cpu_ns=s.system_cpu_ns, online_cpus=s.online_cpus, memory_usage=s.memory_usage,
        memory_max_usage=s.memory_max_usage, memory_limit=s.memory_limit, memory_failcnt=s.memory_failcnt,
        memory_stats=dict(s.memory_stats), pids_current=s.pids_current, pids_limit=s.pids_limit,
        blkio=[pb.BlkioEntry(kind=b.kind, major=b.major, minor=b.minor, op=b.op, value=b.value) for b in s.blkio],
        networks={name: pb.NetworkCounters(
            rx_bytes=n.rx_bytes, rx_packets=n.rx_packets, rx_errors=n.rx_errors, rx_dropped=n.rx_dropped,
            tx_bytes=n.tx_bytes, tx_packets=n.tx_packets, tx_errors=n.tx_errors, tx_dropped=n.tx_dropped)
            for name, n in s.networks.items()},
        cgroup_v2=s.cgroup_v2)


def stats_from_proto(s: pb.ContainerStats) -> ContainerStats:
    c = s.cpu
    return ContainerStats(
        read_ns=s.read_ns,
        cpu=CPUUsage(total_ns=c.total_ns, percpu_ns=tuple(c.percpu_ns), kernel_ns=c.kernel_ns, user_ns=c.user_ns,
                     throttling_periods=c.throttling_periods, throttled_periods=c.throttled_periods,
                     throttled_ns=c.throttled_ns),
        system_cpu_ns=s.system_cpu_ns, online_cpus=s.online_cpus, memory_usage=s.memory_usage,
        memory_max_usage=s.memory_max_usage, memory_limit=s.memory_limit, memory_failcnt=s.memory_failcnt,
        memory_stats=dict(s.memory_stats), pids_current=s.pids_current, pids_limit=s.pids_limit,
        blkio=tuple(BlkioEntry(b.kind, b.major, b.minor, b.op, b.value) for b in s.blkio),
        networks={name: NetworkCounters(
            rx_bytes=n.rx_bytes, rx_packets=n.rx_packets, rx_errors=n.rx_errors, rx_dropped=n.rx_dropped,
            tx_bytes=n.tx_bytes, tx_packets=n.tx_packets, tx_errors=n.tx_errors, tx_dropped=n.tx_dropped)
            for name, n in s.networks.items()},
        cgroup_v2=s.cgroup_v2)


def top_to_proto(t: TopResult) -> pb.TopResponse:
    return pb.TopResponse(titles=list(t.titles), processes=[pb.TopRow(fields=list(row)) for row in t.processes])


def top_from_proto(t: pb.TopResponse) -> TopResult:
    return TopResult(titles=tuple(t.titles), processes=tuple(tuple(row.fields) for row in t.processes))


def attach_request(id: str, o: AttachOptions) -> pb.AttachRequest:
    return pb.AttachRequest(id=id, stdin=o.stdin, stdout=o.stdout, stderr=o.stderr)


def attach_options_from_request(r: pb.AttachRequest) -> AttachOptions:
    return AttachOptions(stdin=r.stdin, stdout=r.stdout, stderr=r.stderr)


def attach_input_to_proto(i: AttachInput) -> pb.AttachRequest:
    return pb.AttachRequest(data=i.data, close_stdin=i.close)


def attach_input_from_proto(r: pb.AttachRequest) -> AttachInput:
    return AttachInput(data=r.data, close=r.close_stdin)


def output_to_proto(o: Output) -> pb.AttachResponse:
    return pb.AttachResponse(stream=int(o.stream), data=o.data)


def output_from_proto(r: pb.AttachResponse) -> Output:
    return Output(stream=Stream(r.stream), data=r.data)


def logs_request(id: str, o: LogsOptions) -> pb.LogsRequest:
    return pb.LogsRequest(id=id, stdout=o.stdout, stderr=o.stderr, follow=o.follow, since_ns=o.since_ns,
                          until_ns=o.until_ns, tail=o.tail)


def logs_options_from_request(r: pb.LogsRequest) -> LogsOptions:
    return LogsOptions(stdout=r.stdout, stderr=r.stderr, follow=r.follow, since_ns=r.since_ns,
                       until_ns=r.until_ns, tail=r.tail)


def log_entry_to_proto(e: LogEntry) -> pb.LogEntry:
    return pb.LogEntry(stream=int(e.stream), time_ns=e.time_ns, data=e.data, partial=e.partial)


def log_entry_from_proto(e: pb.LogEntry) -> LogEntry:
    return LogEntry(stream=Stream(e.stream), time_ns=e.time_ns, data=e.data, partial=e.partial)


def log_batch_to_proto(b: LogBatch) -> pb.LogsResponse:
    return pb.LogsResponse(streams=b.streams, times_ns=b.times_ns, ends=b.ends, data=b.data)


def log_batch_from_proto(r: pb.LogsResponse) -> LogBatch:
    if r.entries:  # a shim that sends entries one by one
        return LogBatch.of(log_entry_from_proto(e) for e in r.entries)
    return LogBatch(streams=r.streams, times_ns=tuple(r.times_ns), data=r.data, ends=tuple(r.ends))


def exec_request(id: str, spec: ExecSpec) -> pb.ExecRequest:
    return pb.ExecRequest(id=id, spec=exec_spec_to_proto(spec))


def exec_input_to_proto(i: AttachInput) -> pb.ExecRequest:
    return pb.ExecRequest(data=i.data, close_stdin=i.close)


def exec_input_from_proto(r: pb.ExecRequest) -> AttachInput:
    return AttachInput(data=r.data, close=r.close_stdin)


def exec_output_to_proto(o: Output) -> pb.ExecResponse:
    return pb.ExecResponse(stream=int(o.stream), data=o.data)


def exec_output_from_proto(r: pb.ExecResponse) -> Output:
    return Output(stream=Stream(r.stream), data=r.data)
