"""One error vocabulary for every part of Berth, carried losslessly across gRPC and into HTTP.

Hierarchy (each leaf maps by MRO, so ``ContainerNotFound`` is a ``NotFound`` everywhere)::

    BerthError                      INTERNAL            500
    ├── NotFound                    NOT_FOUND           404
    ├── AlreadyExists               ALREADY_EXISTS      409
    ├── Conflict                    ALREADY_EXISTS      409
    ├── NotModified                 OK (metadata only)  304
    ├── InvalidArgument             INVALID_ARGUMENT    400
    ├── FailedPrecondition          FAILED_PRECONDITION 409
    ├── Unauthenticated             UNAUTHENTICATED     401
    ├── PermissionDenied            PERMISSION_DENIED   403
    ├── ResourceExhausted           RESOURCE_EXHAUSTED  503
    ├── Unimplemented               UNIMPLEMENTED       501
    ├── Unavailable                 UNAVAILABLE         503
    └── Internal                    INTERNAL            500

The exact class travels in gRPC trailing metadata (``berth-error-class``), so ``Conflict`` and
``AlreadyExists`` (same gRPC code) or ``NotModified`` never have to be guessed from message text.
The message is the Docker-facing text (``No such container: x``) and is passed through verbatim.
"""

from __future__ import annotations

from typing import ClassVar

import grpc

ERROR_CLASS_KEY = "berth-error-class"


class BerthError(Exception):
    """Base of every classified error. ``message`` is shown to Docker clients as is."""

    grpc_code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL
    http_status: ClassVar[int] = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class NotFound(BerthError):
    grpc_code = grpc.StatusCode.NOT_FOUND
    http_status = 404


class AlreadyExists(BerthError):
    grpc_code = grpc.StatusCode.ALREADY_EXISTS
    http_status = 409


class Conflict(BerthError):
    grpc_code = grpc.StatusCode.ALREADY_EXISTS
    http_status = 409


class NotModified(BerthError):
    """The request asked for a state the object is already in (start of a running container)."""

    grpc_code = grpc.StatusCode.FAILED_PRECONDITION
    http_status = 304


class InvalidArgument(BerthError):
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    http_status = 400


class FailedPrecondition(BerthError):
    grpc_code = grpc.StatusCode.FAILED_PRECONDITION
    http_status = 409


class Unauthenticated(BerthError):
    grpc_code = grpc.StatusCode.UNAUTHENTICATED
    http_status = 401


class PermissionDenied(BerthError):
    grpc_code = grpc.StatusCode.PERMISSION_DENIED
    http_status = 403


class ResourceExhausted(BerthError):
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    http_status = 503


class Unimplemented(BerthError):
    grpc_code = grpc.StatusCode.UNIMPLEMENTED
    http_status = 501


class Unavailable(BerthError):
    grpc_code = grpc.StatusCode.UNAVAILABLE
    http_status = 503


class Internal(BerthError):
    grpc_code = grpc.StatusCode.INTERNAL
    http_status = 500


# Leaves used across parts. Defined here so both sides of a gRPC call know them by name.
class ContainerNotFound(NotFound):
    pass


class ImageNotFound(NotFound):
    pass


class SnapshotNotFound(NotFound):
    pass


class BlobNotFound(NotFound):
    pass


class NameConflict(Conflict):
    pass


class ContainerNotRunning(FailedPrecondition):
    pass


class StartFailed(InvalidArgument):
    """The runtime could not start the process (exec not found, permission denied, bad cwd).

    Docker answers these with 400 and the CLI derives exit codes 126/127 from the text.
    """


class DigestMismatch(InvalidArgument):
    pass


class UnsafeArchive(InvalidArgument):
    """An archive entry tried to escape its root or is not allowed (devices where forbidden)."""


def _all_classes() -> dict[str, type[BerthError]]:
    found: dict[str, type[BerthError]] = {}
    stack: list[type[BerthError]] = [BerthError]
    while stack:
        cls = stack.pop()
        found[cls.__name__] = cls
        stack.extend(cls.__subclasses__())
    return found


def error_class(name: str) -> type[BerthError]:
    """The class registered under ``name``; unknown names (a newer peer) fall back to the base."""
    return _all_classes().get(name, BerthError)


_CODE_FALLBACK: dict[grpc.StatusCode, type[BerthError]] = {
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNIMPLEMENTED: Unimplemented,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: Unavailable,
}


def from_grpc(code: grpc.StatusCode, details: str, trailing: dict[str, str]) -> BerthError:
    """Rebuild the domain error a peer raised: exact class from metadata, else from the code."""
    name = trailing.get(ERROR_CLASS_KEY)
    cls = error_class(name) if name else _CODE_FALLBACK.get(code, Internal)
    return cls(details or code.name.lower())
