from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class NamespaceMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NAMESPACE_MODE_PRIVATE: _ClassVar[NamespaceMode]
    NAMESPACE_MODE_HOST: _ClassVar[NamespaceMode]

class Status(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STATUS_UNKNOWN: _ClassVar[Status]
    STATUS_CREATED: _ClassVar[Status]
    STATUS_RUNNING: _ClassVar[Status]
    STATUS_PAUSED: _ClassVar[Status]
    STATUS_STOPPED: _ClassVar[Status]
    STATUS_RESTARTING: _ClassVar[Status]

class EventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_TYPE_UNKNOWN: _ClassVar[EventType]
    EVENT_TYPE_START: _ClassVar[EventType]
    EVENT_TYPE_EXIT: _ClassVar[EventType]
    EVENT_TYPE_OOM: _ClassVar[EventType]
    EVENT_TYPE_DELETE: _ClassVar[EventType]
    EVENT_TYPE_PAUSE: _ClassVar[EventType]
    EVENT_TYPE_RESUME: _ClassVar[EventType]
    EVENT_TYPE_UPDATE: _ClassVar[EventType]
    EVENT_TYPE_EXEC_START: _ClassVar[EventType]
    EVENT_TYPE_EXEC_EXIT: _ClassVar[EventType]
    EVENT_TYPE_HEALTH_CHECK: _ClassVar[EventType]
    EVENT_TYPE_HEALTH_STATUS: _ClassVar[EventType]
NAMESPACE_MODE_PRIVATE: NamespaceMode
NAMESPACE_MODE_HOST: NamespaceMode
STATUS_UNKNOWN: Status
STATUS_CREATED: Status
STATUS_RUNNING: Status
STATUS_PAUSED: Status
STATUS_STOPPED: Status
STATUS_RESTARTING: Status
EVENT_TYPE_UNKNOWN: EventType
EVENT_TYPE_START: EventType
EVENT_TYPE_EXIT: EventType
EVENT_TYPE_OOM: EventType
EVENT_TYPE_DELETE: EventType
EVENT_TYPE_PAUSE: EventType
EVENT_TYPE_RESUME: EventType
EVENT_TYPE_UPDATE: EventType
EVENT_TYPE_EXEC_START: EventType
EVENT_TYPE_EXEC_EXIT: EventType
EVENT_TYPE_HEALTH_CHECK: EventType
EVENT_TYPE_HEALTH_STATUS: EventType

class Mount(_message.Message):
    __slots__ = ("type", "source", "options")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    type: str
    source: str
    options: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, type: _Optional[str] = ..., source: _Optional[str] = ..., options: _Optional[_Iterable[str]] = ...) -> None: ...

class ProcessSpec(_message.Message):
    __slots__ = ("args", "env", "cwd", "user", "terminal", "open_stdin", "stdin_once", "console_height", "console_width")
    ARGS_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    CWD_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    TERMINAL_FIELD_NUMBER: _ClassVar[int]
    OPEN_STDIN_FIELD_NUMBER: _ClassVar[int]
    STDIN_ONCE_FIELD_NUMBER: _ClassVar[int]
    CONSOLE_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    CONSOLE_WIDTH_FIELD_NUMBER: _ClassVar[int]
    args: _containers.RepeatedScalarFieldContainer[str]
    env: _containers.RepeatedScalarFieldContainer[str]
    cwd: str
    user: str
    terminal: bool
    open_stdin: bool
    stdin_once: bool
    console_height: int
    console_width: int
    def __init__(self, args: _Optional[_Iterable[str]] = ..., env: _Optional[_Iterable[str]] = ..., cwd: _Optional[str] = ..., user: _Optional[str] = ..., terminal: _Optional[bool] = ..., open_stdin: _Optional[bool] = ..., stdin_once: _Optional[bool] = ..., console_height: _Optional[int] = ..., console_width: _Optional[int] = ...) -> None: ...

class Resources(_message.Message):
    __slots__ = ("memory", "memory_swap", "memory_reservation", "nano_cpus", "cpu_shares", "cpu_period", "cpu_quota", "cpuset_cpus", "cpuset_mems", "pids_limit", "oom_kill_disable")
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    MEMORY_SWAP_FIELD_NUMBER: _ClassVar[int]
    MEMORY_RESERVATION_FIELD_NUMBER: _ClassVar[int]
    NANO_CPUS_FIELD_NUMBER: _ClassVar[int]
    CPU_SHARES_FIELD_NUMBER: _ClassVar[int]
    CPU_PERIOD_FIELD_NUMBER: _ClassVar[int]
    CPU_QUOTA_FIELD_NUMBER: _ClassVar[int]
    CPUSET_CPUS_FIELD_NUMBER: _ClassVar[int]
    CPUSET_MEMS_FIELD_NUMBER: _ClassVar[int]
    PIDS_LIMIT_FIELD_NUMBER: _ClassVar[int]
    OOM_KILL_DISABLE_FIELD_NUMBER: _ClassVar[int]
    memory: int
    memory_swap: int
    memory_reservation: int
    nano_cpus: int
    cpu_shares: int
    cpu_period: int
    cpu_quota: int
    cpuset_cpus: str
    cpuset_mems: str
    pids_limit: int
    oom_kill_disable: bool
    def __init__(self, memory: _Optional[int] = ..., memory_swap: _Optional[int] = ..., memory_reservation: _Optional[int] = ..., nano_cpus: _Optional[int] = ..., cpu_shares: _Optional[int] = ..., cpu_period: _Optional[int] = ..., cpu_quota: _Optional[int] = ..., cpuset_cpus: _Optional[str] = ..., cpuset_mems: _Optional[str] = ..., pids_limit: _Optional[int] = ..., oom_kill_disable: _Optional[bool] = ...) -> None: ...

class RestartPolicy(_message.Message):
    __slots__ = ("name", "maximum_retry_count")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MAXIMUM_RETRY_COUNT_FIELD_NUMBER: _ClassVar[int]
    name: str
    maximum_retry_count: int
    def __init__(self, name: _Optional[str] = ..., maximum_retry_count: _Optional[int] = ...) -> None: ...

class Healthcheck(_message.Message):
    __slots__ = ("test", "interval_ns", "timeout_ns", "start_period_ns", "start_interval_ns", "retries", "shell")
    TEST_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_NS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_NS_FIELD_NUMBER: _ClassVar[int]
    START_PERIOD_NS_FIELD_NUMBER: _ClassVar[int]
    START_INTERVAL_NS_FIELD_NUMBER: _ClassVar[int]
    RETRIES_FIELD_NUMBER: _ClassVar[int]
    SHELL_FIELD_NUMBER: _ClassVar[int]
    test: _containers.RepeatedScalarFieldContainer[str]
    interval_ns: int
    timeout_ns: int
    start_period_ns: int
    start_interval_ns: int
    retries: int
    shell: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, test: _Optional[_Iterable[str]] = ..., interval_ns: _Optional[int] = ..., timeout_ns: _Optional[int] = ..., start_period_ns: _Optional[int] = ..., start_interval_ns: _Optional[int] = ..., retries: _Optional[int] = ..., shell: _Optional[_Iterable[str]] = ...) -> None: ...

class Ulimit(_message.Message):
    __slots__ = ("name", "soft", "hard")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SOFT_FIELD_NUMBER: _ClassVar[int]
    HARD_FIELD_NUMBER: _ClassVar[int]
    name: str
    soft: int
    hard: int
    def __init__(self, name: _Optional[str] = ..., soft: _Optional[int] = ..., hard: _Optional[int] = ...) -> None: ...

class ContainerSpec(_message.Message):
    __slots__ = ("id", "rootfs", "process", "hostname", "domainname", "network", "ipc", "pid", "uts", "readonly_rootfs", "privileged", "cap_add", "cap_drop", "resources", "shm_size", "labels", "restart_policy", "healthcheck", "ulimits", "sysctls", "group_add", "init", "no_new_privileges", "seccomp_profile", "networking", "netns_path", "binds", "mounts")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class SysctlsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    ROOTFS_FIELD_NUMBER: _ClassVar[int]
    PROCESS_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    DOMAINNAME_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    IPC_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    UTS_FIELD_NUMBER: _ClassVar[int]
    READONLY_ROOTFS_FIELD_NUMBER: _ClassVar[int]
    PRIVILEGED_FIELD_NUMBER: _ClassVar[int]
    CAP_ADD_FIELD_NUMBER: _ClassVar[int]
    CAP_DROP_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    SHM_SIZE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    RESTART_POLICY_FIELD_NUMBER: _ClassVar[int]
    HEALTHCHECK_FIELD_NUMBER: _ClassVar[int]
    ULIMITS_FIELD_NUMBER: _ClassVar[int]
    SYSCTLS_FIELD_NUMBER: _ClassVar[int]
    GROUP_ADD_FIELD_NUMBER: _ClassVar[int]
    INIT_FIELD_NUMBER: _ClassVar[int]
    NO_NEW_PRIVILEGES_FIELD_NUMBER: _ClassVar[int]
    SECCOMP_PROFILE_FIELD_NUMBER: _ClassVar[int]
    NETWORKING_FIELD_NUMBER: _ClassVar[int]
    NETNS_PATH_FIELD_NUMBER: _ClassVar[int]
    BINDS_FIELD_NUMBER: _ClassVar[int]
    MOUNTS_FIELD_NUMBER: _ClassVar[int]
    id: str
    rootfs: _containers.RepeatedCompositeFieldContainer[Mount]
    process: ProcessSpec
    hostname: str
    domainname: str
    network: NamespaceMode
    ipc: NamespaceMode
    pid: NamespaceMode
    uts: NamespaceMode
    readonly_rootfs: bool
    privileged: bool
    cap_add: _containers.RepeatedScalarFieldContainer[str]
    cap_drop: _containers.RepeatedScalarFieldContainer[str]
    resources: Resources
    shm_size: int
    labels: _containers.ScalarMap[str, str]
    restart_policy: RestartPolicy
    healthcheck: Healthcheck
    ulimits: _containers.RepeatedCompositeFieldContainer[Ulimit]
    sysctls: _containers.ScalarMap[str, str]
    group_add: _containers.RepeatedScalarFieldContainer[str]
    init: bool
    no_new_privileges: bool
    seccomp_profile: str
    networking: Networking
    netns_path: str
    binds: _containers.RepeatedCompositeFieldContainer[BindMount]
    mounts: _containers.RepeatedCompositeFieldContainer[ContainerMount]
    def __init__(self, id: _Optional[str] = ..., rootfs: _Optional[_Iterable[_Union[Mount, _Mapping]]] = ..., process: _Optional[_Union[ProcessSpec, _Mapping]] = ..., hostname: _Optional[str] = ..., domainname: _Optional[str] = ..., network: _Optional[_Union[NamespaceMode, str]] = ..., ipc: _Optional[_Union[NamespaceMode, str]] = ..., pid: _Optional[_Union[NamespaceMode, str]] = ..., uts: _Optional[_Union[NamespaceMode, str]] = ..., readonly_rootfs: _Optional[bool] = ..., privileged: _Optional[bool] = ..., cap_add: _Optional[_Iterable[str]] = ..., cap_drop: _Optional[_Iterable[str]] = ..., resources: _Optional[_Union[Resources, _Mapping]] = ..., shm_size: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ..., restart_policy: _Optional[_Union[RestartPolicy, _Mapping]] = ..., healthcheck: _Optional[_Union[Healthcheck, _Mapping]] = ..., ulimits: _Optional[_Iterable[_Union[Ulimit, _Mapping]]] = ..., sysctls: _Optional[_Mapping[str, str]] = ..., group_add: _Optional[_Iterable[str]] = ..., init: _Optional[bool] = ..., no_new_privileges: _Optional[bool] = ..., seccomp_profile: _Optional[str] = ..., networking: _Optional[_Union[Networking, _Mapping]] = ..., netns_path: _Optional[str] = ..., binds: _Optional[_Iterable[_Union[BindMount, _Mapping]]] = ..., mounts: _Optional[_Iterable[_Union[ContainerMount, _Mapping]]] = ...) -> None: ...

class HealthLogEntry(_message.Message):
    __slots__ = ("start_ns", "end_ns", "exit_code", "output")
    START_NS_FIELD_NUMBER: _ClassVar[int]
    END_NS_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    start_ns: int
    end_ns: int
    exit_code: int
    output: str
    def __init__(self, start_ns: _Optional[int] = ..., end_ns: _Optional[int] = ..., exit_code: _Optional[int] = ..., output: _Optional[str] = ...) -> None: ...

class Health(_message.Message):
    __slots__ = ("status", "failing_streak", "log")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    FAILING_STREAK_FIELD_NUMBER: _ClassVar[int]
    LOG_FIELD_NUMBER: _ClassVar[int]
    status: str
    failing_streak: int
    log: _containers.RepeatedCompositeFieldContainer[HealthLogEntry]
    def __init__(self, status: _Optional[str] = ..., failing_streak: _Optional[int] = ..., log: _Optional[_Iterable[_Union[HealthLogEntry, _Mapping]]] = ...) -> None: ...

class ContainerState(_message.Message):
    __slots__ = ("id", "status", "pid", "exit_code", "started_at_ns", "finished_at_ns", "oom_killed", "error", "log_path", "restart_count", "health")
    ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_NS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_NS_FIELD_NUMBER: _ClassVar[int]
    OOM_KILLED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    LOG_PATH_FIELD_NUMBER: _ClassVar[int]
    RESTART_COUNT_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    id: str
    status: Status
    pid: int
    exit_code: int
    started_at_ns: int
    finished_at_ns: int
    oom_killed: bool
    error: str
    log_path: str
    restart_count: int
    health: Health
    def __init__(self, id: _Optional[str] = ..., status: _Optional[_Union[Status, str]] = ..., pid: _Optional[int] = ..., exit_code: _Optional[int] = ..., started_at_ns: _Optional[int] = ..., finished_at_ns: _Optional[int] = ..., oom_killed: _Optional[bool] = ..., error: _Optional[str] = ..., log_path: _Optional[str] = ..., restart_count: _Optional[int] = ..., health: _Optional[_Union[Health, _Mapping]] = ...) -> None: ...

class CreateRequest(_message.Message):
    __slots__ = ("spec",)
    SPEC_FIELD_NUMBER: _ClassVar[int]
    spec: ContainerSpec
    def __init__(self, spec: _Optional[_Union[ContainerSpec, _Mapping]] = ...) -> None: ...

class CreateResponse(_message.Message):
    __slots__ = ("state",)
    STATE_FIELD_NUMBER: _ClassVar[int]
    state: ContainerState
    def __init__(self, state: _Optional[_Union[ContainerState, _Mapping]] = ...) -> None: ...

class StartRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class StartResponse(_message.Message):
    __slots__ = ("state",)
    STATE_FIELD_NUMBER: _ClassVar[int]
    state: ContainerState
    def __init__(self, state: _Optional[_Union[ContainerState, _Mapping]] = ...) -> None: ...

class KillRequest(_message.Message):
    __slots__ = ("id", "signal", "all", "manual", "cancel_restart")
    ID_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    MANUAL_FIELD_NUMBER: _ClassVar[int]
    CANCEL_RESTART_FIELD_NUMBER: _ClassVar[int]
    id: str
    signal: int
    all: bool
    manual: bool
    cancel_restart: bool
    def __init__(self, id: _Optional[str] = ..., signal: _Optional[int] = ..., all: _Optional[bool] = ..., manual: _Optional[bool] = ..., cancel_restart: _Optional[bool] = ...) -> None: ...

class KillResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StopRequest(_message.Message):
    __slots__ = ("id", "signal", "timeout", "daemon_shutdown")
    ID_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    DAEMON_SHUTDOWN_FIELD_NUMBER: _ClassVar[int]
    id: str
    signal: int
    timeout: float
    daemon_shutdown: bool
    def __init__(self, id: _Optional[str] = ..., signal: _Optional[int] = ..., timeout: _Optional[float] = ..., daemon_shutdown: _Optional[bool] = ...) -> None: ...

class StopResponse(_message.Message):
    __slots__ = ("state",)
    STATE_FIELD_NUMBER: _ClassVar[int]
    state: ContainerState
    def __init__(self, state: _Optional[_Union[ContainerState, _Mapping]] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("id", "force")
    ID_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    id: str
    force: bool
    def __init__(self, id: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class DeleteResponse(_message.Message):
    __slots__ = ("state",)
    STATE_FIELD_NUMBER: _ClassVar[int]
    state: ContainerState
    def __init__(self, state: _Optional[_Union[ContainerState, _Mapping]] = ...) -> None: ...

class StateRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class StateResponse(_message.Message):
    __slots__ = ("state",)
    STATE_FIELD_NUMBER: _ClassVar[int]
    state: ContainerState
    def __init__(self, state: _Optional[_Union[ContainerState, _Mapping]] = ...) -> None: ...

class ListRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListResponse(_message.Message):
    __slots__ = ("states",)
    STATES_FIELD_NUMBER: _ClassVar[int]
    states: _containers.RepeatedCompositeFieldContainer[ContainerState]
    def __init__(self, states: _Optional[_Iterable[_Union[ContainerState, _Mapping]]] = ...) -> None: ...

class WaitRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class WaitResponse(_message.Message):
    __slots__ = ("state",)
    STATE_FIELD_NUMBER: _ClassVar[int]
    state: ContainerState
    def __init__(self, state: _Optional[_Union[ContainerState, _Mapping]] = ...) -> None: ...

class AttachRequest(_message.Message):
    __slots__ = ("id", "stdin", "stdout", "stderr", "data", "close_stdin")
    ID_FIELD_NUMBER: _ClassVar[int]
    STDIN_FIELD_NUMBER: _ClassVar[int]
    STDOUT_FIELD_NUMBER: _ClassVar[int]
    STDERR_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    CLOSE_STDIN_FIELD_NUMBER: _ClassVar[int]
    id: str
    stdin: bool
    stdout: bool
    stderr: bool
    data: bytes
    close_stdin: bool
    def __init__(self, id: _Optional[str] = ..., stdin: _Optional[bool] = ..., stdout: _Optional[bool] = ..., stderr: _Optional[bool] = ..., data: _Optional[bytes] = ..., close_stdin: _Optional[bool] = ...) -> None: ...

class AttachResponse(_message.Message):
    __slots__ = ("stream", "data", "attached")
    STREAM_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    ATTACHED_FIELD_NUMBER: _ClassVar[int]
    stream: int
    data: bytes
    attached: bool
    def __init__(self, stream: _Optional[int] = ..., data: _Optional[bytes] = ..., attached: _Optional[bool] = ...) -> None: ...

class LogsRequest(_message.Message):
    __slots__ = ("id", "stdout", "stderr", "follow", "since_ns", "until_ns", "tail")
    ID_FIELD_NUMBER: _ClassVar[int]
    STDOUT_FIELD_NUMBER: _ClassVar[int]
    STDERR_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    SINCE_NS_FIELD_NUMBER: _ClassVar[int]
    UNTIL_NS_FIELD_NUMBER: _ClassVar[int]
    TAIL_FIELD_NUMBER: _ClassVar[int]
    id: str
    stdout: bool
    stderr: bool
    follow: bool
    since_ns: int
    until_ns: int
    tail: int
    def __init__(self, id: _Optional[str] = ..., stdout: _Optional[bool] = ..., stderr: _Optional[bool] = ..., follow: _Optional[bool] = ..., since_ns: _Optional[int] = ..., until_ns: _Optional[int] = ..., tail: _Optional[int] = ...) -> None: ...

class LogEntry(_message.Message):
    __slots__ = ("stream", "time_ns", "data", "partial")
    STREAM_FIELD_NUMBER: _ClassVar[int]
    TIME_NS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_FIELD_NUMBER: _ClassVar[int]
    stream: int
    time_ns: int
    data: bytes
    partial: bool
    def __init__(self, stream: _Optional[int] = ..., time_ns: _Optional[int] = ..., data: _Optional[bytes] = ..., partial: _Optional[bool] = ...) -> None: ...

class LogsResponse(_message.Message):
    __slots__ = ("entries", "streams", "times_ns", "ends", "data")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    STREAMS_FIELD_NUMBER: _ClassVar[int]
    TIMES_NS_FIELD_NUMBER: _ClassVar[int]
    ENDS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[LogEntry]
    streams: bytes
    times_ns: _containers.RepeatedScalarFieldContainer[int]
    ends: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, entries: _Optional[_Iterable[_Union[LogEntry, _Mapping]]] = ..., streams: _Optional[bytes] = ..., times_ns: _Optional[_Iterable[int]] = ..., ends: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class ResizePtyRequest(_message.Message):
    __slots__ = ("id", "height", "width")
    ID_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    id: str
    height: int
    width: int
    def __init__(self, id: _Optional[str] = ..., height: _Optional[int] = ..., width: _Optional[int] = ...) -> None: ...

class ResizePtyResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CloseStdinRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class CloseStdinResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class EventsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class EventsResponse(_message.Message):
    __slots__ = ("type", "state", "exec")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    EXEC_FIELD_NUMBER: _ClassVar[int]
    type: EventType
    state: ContainerState
    exec: ExecState
    def __init__(self, type: _Optional[_Union[EventType, str]] = ..., state: _Optional[_Union[ContainerState, _Mapping]] = ..., exec: _Optional[_Union[ExecState, _Mapping]] = ...) -> None: ...

class PauseRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class PauseResponse(_message.Message):
    __slots__ = ("state",)
    STATE_FIELD_NUMBER: _ClassVar[int]
    state: ContainerState
    def __init__(self, state: _Optional[_Union[ContainerState, _Mapping]] = ...) -> None: ...

class ResumeRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ResumeResponse(_message.Message):
    __slots__ = ("state",)
    STATE_FIELD_NUMBER: _ClassVar[int]
    state: ContainerState
    def __init__(self, state: _Optional[_Union[ContainerState, _Mapping]] = ...) -> None: ...

class UpdateRequest(_message.Message):
    __slots__ = ("id", "resources", "restart_policy")
    ID_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    RESTART_POLICY_FIELD_NUMBER: _ClassVar[int]
    id: str
    resources: Resources
    restart_policy: RestartPolicy
    def __init__(self, id: _Optional[str] = ..., resources: _Optional[_Union[Resources, _Mapping]] = ..., restart_policy: _Optional[_Union[RestartPolicy, _Mapping]] = ...) -> None: ...

class UpdateResponse(_message.Message):
    __slots__ = ("state",)
    STATE_FIELD_NUMBER: _ClassVar[int]
    state: ContainerState
    def __init__(self, state: _Optional[_Union[ContainerState, _Mapping]] = ...) -> None: ...

class CPUUsage(_message.Message):
    __slots__ = ("total_ns", "percpu_ns", "kernel_ns", "user_ns", "throttling_periods", "throttled_periods", "throttled_ns")
    TOTAL_NS_FIELD_NUMBER: _ClassVar[int]
    PERCPU_NS_FIELD_NUMBER: _ClassVar[int]
    KERNEL_NS_FIELD_NUMBER: _ClassVar[int]
    USER_NS_FIELD_NUMBER: _ClassVar[int]
    THROTTLING_PERIODS_FIELD_NUMBER: _ClassVar[int]
    THROTTLED_PERIODS_FIELD_NUMBER: _ClassVar[int]
    THROTTLED_NS_FIELD_NUMBER: _ClassVar[int]
    total_ns: int
    percpu_ns: _containers.RepeatedScalarFieldContainer[int]
    kernel_ns: int
    user_ns: int
    throttling_periods: int
    throttled_periods: int
    throttled_ns: int
    def __init__(self, total_ns: _Optional[int] = ..., percpu_ns: _Optional[_Iterable[int]] = ..., kernel_ns: _Optional[int] = ..., user_ns: _Optional[int] = ..., throttling_periods: _Optional[int] = ..., throttled_periods: _Optional[int] = ..., throttled_ns: _Optional[int] = ...) -> None: ...

class BlkioEntry(_message.Message):
    __slots__ = ("kind", "major", "minor", "op", "value")
    KIND_FIELD_NUMBER: _ClassVar[int]
    MAJOR_FIELD_NUMBER: _ClassVar[int]
    MINOR_FIELD_NUMBER: _ClassVar[int]
    OP_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    kind: str
    major: int
    minor: int
    op: str
    value: int
    def __init__(self, kind: _Optional[str] = ..., major: _Optional[int] = ..., minor: _Optional[int] = ..., op: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...

class NetworkCounters(_message.Message):
    __slots__ = ("rx_bytes", "rx_packets", "rx_errors", "rx_dropped", "tx_bytes", "tx_packets", "tx_errors", "tx_dropped")
    RX_BYTES_FIELD_NUMBER: _ClassVar[int]
    RX_PACKETS_FIELD_NUMBER: _ClassVar[int]
    RX_ERRORS_FIELD_NUMBER: _ClassVar[int]
    RX_DROPPED_FIELD_NUMBER: _ClassVar[int]
    TX_BYTES_FIELD_NUMBER: _ClassVar[int]
    TX_PACKETS_FIELD_NUMBER: _ClassVar[int]
    TX_ERRORS_FIELD_NUMBER: _ClassVar[int]
    TX_DROPPED_FIELD_NUMBER: _ClassVar[int]
    rx_bytes: int
    rx_packets: int
    rx_errors: int
    rx_dropped: int
    tx_bytes: int
    tx_packets: int
    tx_errors: int
    tx_dropped: int
    def __init__(self, rx_bytes: _Optional[int] = ..., rx_packets: _Optional[int] = ..., rx_errors: _Optional[int] = ..., rx_dropped: _Optional[int] = ..., tx_bytes: _Optional[int] = ..., tx_packets: _Optional[int] = ..., tx_errors: _Optional[int] = ..., tx_dropped: _Optional[int] = ...) -> None: ...

class ContainerStats(_message.Message):
    __slots__ = ("read_ns", "cpu", "system_cpu_ns", "online_cpus", "memory_usage", "memory_max_usage", "memory_limit", "memory_failcnt", "memory_stats", "pids_current", "pids_limit", "blkio", "networks", "cgroup_v2")
    class MemoryStatsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class NetworksEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: NetworkCounters
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[NetworkCounters, _Mapping]] = ...) -> None: ...
    READ_NS_FIELD_NUMBER: _ClassVar[int]
    CPU_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_CPU_NS_FIELD_NUMBER: _ClassVar[int]
    ONLINE_CPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_USAGE_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MAX_USAGE_FIELD_NUMBER: _ClassVar[int]
    MEMORY_LIMIT_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FAILCNT_FIELD_NUMBER: _ClassVar[int]
    MEMORY_STATS_FIELD_NUMBER: _ClassVar[int]
    PIDS_CURRENT_FIELD_NUMBER: _ClassVar[int]
    PIDS_LIMIT_FIELD_NUMBER: _ClassVar[int]
    BLKIO_FIELD_NUMBER: _ClassVar[int]
    NETWORKS_FIELD_NUMBER: _ClassVar[int]
    CGROUP_V2_FIELD_NUMBER: _ClassVar[int]
    read_ns: int
    cpu: CPUUsage
    system_cpu_ns: int
    online_cpus: int
    memory_usage: int
    memory_max_usage: int
    memory_limit: int
    memory_failcnt: int
    memory_stats: _containers.ScalarMap[str, int]
    pids_current: int
    pids_limit: int
    blkio: _containers.RepeatedCompositeFieldContainer[BlkioEntry]
    networks: _containers.MessageMap[str, NetworkCounters]
    cgroup_v2: bool
    def __init__(self, read_ns: _Optional[int] = ..., cpu: _Optional[_Union[CPUUsage, _Mapping]] = ..., system_cpu_ns: _Optional[int] = ..., online_cpus: _Optional[int] = ..., memory_usage: _Optional[int] = ..., memory_max_usage: _Optional[int] = ..., memory_limit: _Optional[int] = ..., memory_failcnt: _Optional[int] = ..., memory_stats: _Optional[_Mapping[str, int]] = ..., pids_current: _Optional[int] = ..., pids_limit: _Optional[int] = ..., blkio: _Optional[_Iterable[_Union[BlkioEntry, _Mapping]]] = ..., networks: _Optional[_Mapping[str, NetworkCounters]] = ..., cgroup_v2: _Optional[bool] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class StatsResponse(_message.Message):
    __slots__ = ("stats",)
    STATS_FIELD_NUMBER: _ClassVar[int]
    stats: ContainerStats
    def __init__(self, stats: _Optional[_Union[ContainerStats, _Mapping]] = ...) -> None: ...

class TopRequest(_message.Message):
    __slots__ = ("id", "ps_args")
    ID_FIELD_NUMBER: _ClassVar[int]
    PS_ARGS_FIELD_NUMBER: _ClassVar[int]
    id: str
    ps_args: str
    def __init__(self, id: _Optional[str] = ..., ps_args: _Optional[str] = ...) -> None: ...

class TopRow(_message.Message):
    __slots__ = ("fields",)
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    fields: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, fields: _Optional[_Iterable[str]] = ...) -> None: ...

class TopResponse(_message.Message):
    __slots__ = ("titles", "processes")
    TITLES_FIELD_NUMBER: _ClassVar[int]
    PROCESSES_FIELD_NUMBER: _ClassVar[int]
    titles: _containers.RepeatedScalarFieldContainer[str]
    processes: _containers.RepeatedCompositeFieldContainer[TopRow]
    def __init__(self, titles: _Optional[_Iterable[str]] = ..., processes: _Optional[_Iterable[_Union[TopRow, _Mapping]]] = ...) -> None: ...

class ExecSpec(_message.Message):
    __slots__ = ("exec_id", "process", "privileged", "detach")
    EXEC_ID_FIELD_NUMBER: _ClassVar[int]
    PROCESS_FIELD_NUMBER: _ClassVar[int]
    PRIVILEGED_FIELD_NUMBER: _ClassVar[int]
    DETACH_FIELD_NUMBER: _ClassVar[int]
    exec_id: str
    process: ProcessSpec
    privileged: bool
    detach: bool
    def __init__(self, exec_id: _Optional[str] = ..., process: _Optional[_Union[ProcessSpec, _Mapping]] = ..., privileged: _Optional[bool] = ..., detach: _Optional[bool] = ...) -> None: ...

class ExecState(_message.Message):
    __slots__ = ("exec_id", "container_id", "pid", "running", "exit_code", "error", "args")
    EXEC_ID_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    exec_id: str
    container_id: str
    pid: int
    running: bool
    exit_code: int
    error: str
    args: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, exec_id: _Optional[str] = ..., container_id: _Optional[str] = ..., pid: _Optional[int] = ..., running: _Optional[bool] = ..., exit_code: _Optional[int] = ..., error: _Optional[str] = ..., args: _Optional[_Iterable[str]] = ...) -> None: ...

class ExecRequest(_message.Message):
    __slots__ = ("id", "spec", "data", "close_stdin")
    ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    CLOSE_STDIN_FIELD_NUMBER: _ClassVar[int]
    id: str
    spec: ExecSpec
    data: bytes
    close_stdin: bool
    def __init__(self, id: _Optional[str] = ..., spec: _Optional[_Union[ExecSpec, _Mapping]] = ..., data: _Optional[bytes] = ..., close_stdin: _Optional[bool] = ...) -> None: ...

class ExecResponse(_message.Message):
    __slots__ = ("started", "stream", "data")
    STARTED_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    started: ExecState
    stream: int
    data: bytes
    def __init__(self, started: _Optional[_Union[ExecState, _Mapping]] = ..., stream: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class ExecChannelRequest(_message.Message):
    __slots__ = ("tag", "start", "credit", "cancel")
    TAG_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    CREDIT_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    tag: int
    start: ExecRequest
    credit: int
    cancel: bool
    def __init__(self, tag: _Optional[int] = ..., start: _Optional[_Union[ExecRequest, _Mapping]] = ..., credit: _Optional[int] = ..., cancel: _Optional[bool] = ...) -> None: ...

class ExecChannelResponse(_message.Message):
    __slots__ = ("tag", "response", "end", "code", "message", "error_class")
    TAG_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ERROR_CLASS_FIELD_NUMBER: _ClassVar[int]
    tag: int
    response: ExecResponse
    end: bool
    code: int
    message: str
    error_class: str
    def __init__(self, tag: _Optional[int] = ..., response: _Optional[_Union[ExecResponse, _Mapping]] = ..., end: _Optional[bool] = ..., code: _Optional[int] = ..., message: _Optional[str] = ..., error_class: _Optional[str] = ...) -> None: ...

class ResizeExecRequest(_message.Message):
    __slots__ = ("id", "exec_id", "height", "width")
    ID_FIELD_NUMBER: _ClassVar[int]
    EXEC_ID_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    id: str
    exec_id: str
    height: int
    width: int
    def __init__(self, id: _Optional[str] = ..., exec_id: _Optional[str] = ..., height: _Optional[int] = ..., width: _Optional[int] = ...) -> None: ...

class ResizeExecResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class BindMount(_message.Message):
    __slots__ = ("source", "destination", "readonly")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    READONLY_FIELD_NUMBER: _ClassVar[int]
    source: str
    destination: str
    readonly: bool
    def __init__(self, source: _Optional[str] = ..., destination: _Optional[str] = ..., readonly: _Optional[bool] = ...) -> None: ...

class BridgeNetwork(_message.Message):
    __slots__ = ("id", "name", "bridge", "subnet", "gateway", "internal", "icc", "masquerade", "mtu", "embedded_dns")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    BRIDGE_FIELD_NUMBER: _ClassVar[int]
    SUBNET_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_FIELD_NUMBER: _ClassVar[int]
    INTERNAL_FIELD_NUMBER: _ClassVar[int]
    ICC_FIELD_NUMBER: _ClassVar[int]
    MASQUERADE_FIELD_NUMBER: _ClassVar[int]
    MTU_FIELD_NUMBER: _ClassVar[int]
    EMBEDDED_DNS_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    bridge: str
    subnet: str
    gateway: str
    internal: bool
    icc: bool
    masquerade: bool
    mtu: int
    embedded_dns: bool
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., bridge: _Optional[str] = ..., subnet: _Optional[str] = ..., gateway: _Optional[str] = ..., internal: _Optional[bool] = ..., icc: _Optional[bool] = ..., masquerade: _Optional[bool] = ..., mtu: _Optional[int] = ..., embedded_dns: _Optional[bool] = ...) -> None: ...

class Endpoint(_message.Message):
    __slots__ = ("network", "id", "address", "mac", "names")
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    MAC_FIELD_NUMBER: _ClassVar[int]
    NAMES_FIELD_NUMBER: _ClassVar[int]
    network: BridgeNetwork
    id: str
    address: str
    mac: str
    names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, network: _Optional[_Union[BridgeNetwork, _Mapping]] = ..., id: _Optional[str] = ..., address: _Optional[str] = ..., mac: _Optional[str] = ..., names: _Optional[_Iterable[str]] = ...) -> None: ...

class PortRequest(_message.Message):
    __slots__ = ("container_port", "protocol", "host_ip", "host_port", "host_port_end")
    CONTAINER_PORT_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    HOST_IP_FIELD_NUMBER: _ClassVar[int]
    HOST_PORT_FIELD_NUMBER: _ClassVar[int]
    HOST_PORT_END_FIELD_NUMBER: _ClassVar[int]
    container_port: int
    protocol: str
    host_ip: str
    host_port: int
    host_port_end: int
    def __init__(self, container_port: _Optional[int] = ..., protocol: _Optional[str] = ..., host_ip: _Optional[str] = ..., host_port: _Optional[int] = ..., host_port_end: _Optional[int] = ...) -> None: ...

class Networking(_message.Message):
    __slots__ = ("mode", "endpoints", "container", "dns", "dns_search", "dns_options", "extra_hosts", "ports")
    MODE_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_FIELD_NUMBER: _ClassVar[int]
    DNS_FIELD_NUMBER: _ClassVar[int]
    DNS_SEARCH_FIELD_NUMBER: _ClassVar[int]
    DNS_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    EXTRA_HOSTS_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    mode: str
    endpoints: _containers.RepeatedCompositeFieldContainer[Endpoint]
    container: str
    dns: _containers.RepeatedScalarFieldContainer[str]
    dns_search: _containers.RepeatedScalarFieldContainer[str]
    dns_options: _containers.RepeatedScalarFieldContainer[str]
    extra_hosts: _containers.RepeatedScalarFieldContainer[str]
    ports: _containers.RepeatedCompositeFieldContainer[PortRequest]
    def __init__(self, mode: _Optional[str] = ..., endpoints: _Optional[_Iterable[_Union[Endpoint, _Mapping]]] = ..., container: _Optional[str] = ..., dns: _Optional[_Iterable[str]] = ..., dns_search: _Optional[_Iterable[str]] = ..., dns_options: _Optional[_Iterable[str]] = ..., extra_hosts: _Optional[_Iterable[str]] = ..., ports: _Optional[_Iterable[_Union[PortRequest, _Mapping]]] = ...) -> None: ...

class EnsureNetworkRequest(_message.Message):
    __slots__ = ("network",)
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    network: BridgeNetwork
    def __init__(self, network: _Optional[_Union[BridgeNetwork, _Mapping]] = ...) -> None: ...

class EnsureNetworkResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RemoveNetworkRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class RemoveNetworkResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ConnectRequest(_message.Message):
    __slots__ = ("container_id", "endpoint")
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    endpoint: Endpoint
    def __init__(self, container_id: _Optional[str] = ..., endpoint: _Optional[_Union[Endpoint, _Mapping]] = ...) -> None: ...

class ConnectResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DisconnectRequest(_message.Message):
    __slots__ = ("container_id", "network_id")
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    NETWORK_ID_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    network_id: str
    def __init__(self, container_id: _Optional[str] = ..., network_id: _Optional[str] = ...) -> None: ...

class DisconnectResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ContainerMount(_message.Message):
    __slots__ = ("type", "destination", "source", "readonly", "propagation", "recursive", "data", "copy_up", "create_source")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    READONLY_FIELD_NUMBER: _ClassVar[int]
    PROPAGATION_FIELD_NUMBER: _ClassVar[int]
    RECURSIVE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    COPY_UP_FIELD_NUMBER: _ClassVar[int]
    CREATE_SOURCE_FIELD_NUMBER: _ClassVar[int]
    type: str
    destination: str
    source: str
    readonly: bool
    propagation: str
    recursive: bool
    data: str
    copy_up: bool
    create_source: bool
    def __init__(self, type: _Optional[str] = ..., destination: _Optional[str] = ..., source: _Optional[str] = ..., readonly: _Optional[bool] = ..., propagation: _Optional[str] = ..., recursive: _Optional[bool] = ..., data: _Optional[str] = ..., copy_up: _Optional[bool] = ..., create_source: _Optional[bool] = ...) -> None: ...

class FileStat(_message.Message):
    __slots__ = ("name", "size", "mode", "mtime", "link_target")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    MTIME_FIELD_NUMBER: _ClassVar[int]
    LINK_TARGET_FIELD_NUMBER: _ClassVar[int]
    name: str
    size: int
    mode: int
    mtime: str
    link_target: str
    def __init__(self, name: _Optional[str] = ..., size: _Optional[int] = ..., mode: _Optional[int] = ..., mtime: _Optional[str] = ..., link_target: _Optional[str] = ...) -> None: ...

class FilesStatRequest(_message.Message):
    __slots__ = ("id", "path")
    ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    id: str
    path: str
    def __init__(self, id: _Optional[str] = ..., path: _Optional[str] = ...) -> None: ...

class FilesStatResponse(_message.Message):
    __slots__ = ("stat",)
    STAT_FIELD_NUMBER: _ClassVar[int]
    stat: FileStat
    def __init__(self, stat: _Optional[_Union[FileStat, _Mapping]] = ...) -> None: ...

class ReadArchiveRequest(_message.Message):
    __slots__ = ("id", "path")
    ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    id: str
    path: str
    def __init__(self, id: _Optional[str] = ..., path: _Optional[str] = ...) -> None: ...

class ReadArchiveResponse(_message.Message):
    __slots__ = ("stat", "data")
    STAT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    stat: FileStat
    data: bytes
    def __init__(self, stat: _Optional[_Union[FileStat, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class WriteArchiveRequest(_message.Message):
    __slots__ = ("id", "path", "no_overwrite_dir_non_dir", "chown", "uid", "gid", "data")
    ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    NO_OVERWRITE_DIR_NON_DIR_FIELD_NUMBER: _ClassVar[int]
    CHOWN_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    GID_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    id: str
    path: str
    no_overwrite_dir_non_dir: bool
    chown: bool
    uid: int
    gid: int
    data: bytes
    def __init__(self, id: _Optional[str] = ..., path: _Optional[str] = ..., no_overwrite_dir_non_dir: _Optional[bool] = ..., chown: _Optional[bool] = ..., uid: _Optional[int] = ..., gid: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class WriteArchiveResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PopulateRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class PopulateResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CreateVolumeRequest(_message.Message):
    __slots__ = ("name", "options")
    class OptionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    name: str
    options: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., options: _Optional[_Mapping[str, str]] = ...) -> None: ...

class CreateVolumeResponse(_message.Message):
    __slots__ = ("mountpoint", "created_at_ns")
    MOUNTPOINT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_NS_FIELD_NUMBER: _ClassVar[int]
    mountpoint: str
    created_at_ns: int
    def __init__(self, mountpoint: _Optional[str] = ..., created_at_ns: _Optional[int] = ...) -> None: ...

class RemoveVolumeRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class RemoveVolumeResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class VolumeUsageRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class VolumeUsageResponse(_message.Message):
    __slots__ = ("size",)
    SIZE_FIELD_NUMBER: _ClassVar[int]
    size: int
    def __init__(self, size: _Optional[int] = ...) -> None: ...

class CheckUserRequest(_message.Message):
    __slots__ = ("id", "user")
    ID_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    id: str
    user: str
    def __init__(self, id: _Optional[str] = ..., user: _Optional[str] = ...) -> None: ...

class CheckUserResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
