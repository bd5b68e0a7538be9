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

class EventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_TYPE_UNKNOWN: _ClassVar[EventType]
    EVENT_TYPE_START: _ClassVar[EventType]
    EVENT_TYPE_EXIT: _ClassVar[EventType]
    EVENT_TYPE_OOM: _ClassVar[EventType]
    EVENT_TYPE_DELETE: _ClassVar[EventType]
NAMESPACE_MODE_PRIVATE: NamespaceMode
NAMESPACE_MODE_HOST: NamespaceMode
STATUS_UNKNOWN: Status
STATUS_CREATED: Status
STATUS_RUNNING: Status
STATUS_PAUSED: Status
STATUS_STOPPED: Status
EVENT_TYPE_UNKNOWN: EventType
EVENT_TYPE_START: EventType
EVENT_TYPE_EXIT: EventType
EVENT_TYPE_OOM: EventType
EVENT_TYPE_DELETE: EventType

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
    __slots__ = ("memory", "memory_swap", "memory_reservation", "nano_cpus", "cpu_shares", "cpu_period", "cpu_quota", "cpuset_cpus", "cpuset_mems", "pids_limit")
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
    def __init__(self, memory: _Optional[int] = ..., memory_swap: _Optional[int] = ..., memory_reservation: _Optional[int] = ..., nano_cpus: _Optional[int] = ..., cpu_shares: _Optional[int] = ..., cpu_period: _Optional[int] = ..., cpu_quota: _Optional[int] = ..., cpuset_cpus: _Optional[str] = ..., cpuset_mems: _Optional[str] = ..., pids_limit: _Optional[int] = ...) -> None: ...

class ContainerSpec(_message.Message):
    __slots__ = ("id", "rootfs", "process", "hostname", "domainname", "network", "ipc", "pid", "uts", "readonly_rootfs", "privileged", "cap_add", "cap_drop", "resources", "shm_size", "labels")
    class LabelsEntry(_message.Message):
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
    def __init__(self, id: _Optional[str] = ..., rootfs: _Optional[_Iterable[_Union[Mount, _Mapping]]] = ..., process: _Optional[_Union[ProcessSpec, _Mapping]] = ..., hostname: _Optional[str] = ..., domainname: _Optional[str] = ..., network: _Optional[_Union[NamespaceMode, str]] = ..., ipc: _Optional[_Union[NamespaceMode, str]] = ..., pid: _Optional[_Union[NamespaceMode, str]] = ..., uts: _Optional[_Union[NamespaceMode, str]] = ..., readonly_rootfs: _Optional[bool] = ..., privileged: _Optional[bool] = ..., cap_add: _Optional[_Iterable[str]] = ..., cap_drop: _Optional[_Iterable[str]] = ..., resources: _Optional[_Union[Resources, _Mapping]] = ..., shm_size: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ContainerState(_message.Message):
    __slots__ = ("id", "status", "pid", "exit_code", "started_at_ns", "finished_at_ns", "oom_killed", "error", "log_path")
    ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_NS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_NS_FIELD_NUMBER: _ClassVar[int]
    OOM_KILLED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    LOG_PATH_FIELD_NUMBER: _ClassVar[int]
    id: str
    status: Status
    pid: int
    exit_code: int
    started_at_ns: int
    finished_at_ns: int
    oom_killed: bool
    error: str
    log_path: str
    def __init__(self, id: _Optional[str] = ..., status: _Optional[_Union[Status, str]] = ..., pid: _Optional[int] = ..., exit_code: _Optional[int] = ..., started_at_ns: _Optional[int] = ..., finished_at_ns: _Optional[int] = ..., oom_killed: _Optional[bool] = ..., error: _Optional[str] = ..., log_path: _Optional[str] = ...) -> None: ...

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
    __slots__ = ("id", "signal", "all")
    ID_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    id: str
    signal: int
    all: bool
    def __init__(self, id: _Optional[str] = ..., signal: _Optional[int] = ..., all: _Optional[bool] = ...) -> None: ...

class KillResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StopRequest(_message.Message):
    __slots__ = ("id", "signal", "timeout")
    ID_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    id: str
    signal: int
    timeout: float
    def __init__(self, id: _Optional[str] = ..., signal: _Optional[int] = ..., timeout: _Optional[float] = ...) -> None: ...

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
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[LogEntry]
    def __init__(self, entries: _Optional[_Iterable[_Union[LogEntry, _Mapping]]] = ...) -> None: ...

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
    __slots__ = ("type", "state")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    type: EventType
    state: ContainerState
    def __init__(self, type: _Optional[_Union[EventType, str]] = ..., state: _Optional[_Union[ContainerState, _Mapping]] = ...) -> None: ...
