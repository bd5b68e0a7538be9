"""Conversions between :mod:`shim.api` and the gRPC messages: the only place fields are copied."""

from __future__ import annotations

from common.mounts import Mount
from protos.shim.v1 import shim_pb2 as pb
from shim.api import (
    AttachInput,
    AttachOptions,
    ContainerSpec,
    ContainerState,
    EventType,
    LogEntry,
    LogsOptions,
    NamespaceMode,
    Output,
    ProcessSpec,
    Resources,
    Status,
    Stream,
    TaskEvent,
)

_STATUS = {Status.CREATED: pb.STATUS_CREATED, Status.RUNNING: pb.STATUS_RUNNING,
           Status.PAUSED: pb.STATUS_PAUSED, Status.STOPPED: pb.STATUS_STOPPED}
_STATUS_BACK = {v: k for k, v in _STATUS.items()}
_MODE = {NamespaceMode.PRIVATE: pb.NAMESPACE_MODE_PRIVATE, NamespaceMode.HOST: pb.NAMESPACE_MODE_HOST}
_MODE_BACK = {v: k for k, v in _MODE.items()}
_EVENT = {EventType.START: pb.EVENT_TYPE_START, EventType.EXIT: pb.EVENT_TYPE_EXIT,
          EventType.OOM: pb.EVENT_TYPE_OOM, EventType.DELETE: pb.EVENT_TYPE_DELETE}
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
                        pids_limit=r.pids_limit)


def resources_from_proto(r: pb.Resources) -> Resources:
    return Resources(memory=r.memory, memory_swap=r.memory_swap, memory_reservation=r.memory_reservation,
                     nano_cpus=r.nano_cpus, cpu_shares=r.cpu_shares, cpu_period=r.cpu_period,
                     cpu_quota=r.cpu_quota, cpuset_cpus=r.cpuset_cpus, cpuset_mems=r.cpuset_mems,
                     pids_limit=r.pids_limit)


def spec_to_proto(s: ContainerSpec) -> pb.ContainerSpec:
    return pb.ContainerSpec(
        id=s.id, rootfs=[mount_to_proto(m) for m in s.rootfs], process=process_to_proto(s.process),
        hostname=s.hostname, domainname=s.domainname, network=_MODE[s.network], ipc=_MODE[s.ipc],
        pid=_MODE[s.pid], uts=_MODE[s.uts], readonly_rootfs=s.readonly_rootfs, privileged=s.privileged,
        cap_add=list(s.cap_add), cap_drop=list(s.cap_drop), resources=resources_to_proto(s.resources),
        shm_size=s.shm_size, labels=dict(s.labels))


def spec_from_proto(s: pb.ContainerSpec) -> ContainerSpec:
    return ContainerSpec(
        id=s.id, rootfs=tuple(mount_from_proto(m) for m in s.rootfs), process=process_from_proto(s.process),
        hostname=s.hostname, domainname=s.domainname, network=_MODE_BACK[s.network], ipc=_MODE_BACK[s.ipc],
        pid=_MODE_BACK[s.pid], uts=_MODE_BACK[s.uts], readonly_rootfs=s.readonly_rootfs,
        privileged=s.privileged, cap_add=tuple(s.cap_add), cap_drop=tuple(s.cap_drop),
        resources=resources_from_proto(s.resources), shm_size=s.shm_size, labels=dict(s.labels))


def state_to_proto(s: ContainerState) -> pb.ContainerState:
    return pb.ContainerState(id=s.id, status=_STATUS[s.status], pid=s.pid, exit_code=s.exit_code,
                             started_at_ns=s.started_at_ns, finished_at_ns=s.finished_at_ns,
                             oom_killed=s.oom_killed, error=s.error, log_path=s.log_path)


def state_from_proto(s: pb.ContainerState) -> ContainerState:
    return ContainerState(id=s.id, status=_STATUS_BACK.get(s.status, Status.STOPPED), pid=s.pid,
                          exit_code=s.exit_code, started_at_ns=s.started_at_ns,
                          finished_at_ns=s.finished_at_ns, oom_killed=s.oom_killed, error=s.error,
                          log_path=s.log_path)


def event_to_proto(e: TaskEvent) -> pb.EventsResponse:
    return pb.EventsResponse(type=_EVENT[e.type], state=state_to_proto(e.state))


def event_from_proto(e: pb.EventsResponse) -> TaskEvent:
    return TaskEvent(type=_EVENT_BACK[e.type], state=state_from_proto(e.state))


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
