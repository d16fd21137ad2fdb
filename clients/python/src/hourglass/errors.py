"""Exceptions raised by the SDK: one class per gRPC status code under :class:`HourglassError`.

Every error a call can end with is an :class:`HourglassError`. Errors the cluster answered
carry the gRPC ``code``, the server's ``message`` and, when the server gave them, hints:
``leader`` (the address of the partition's leader), ``retry_after`` (seconds to wait before
retrying) and, for :class:`InvalidArgument`, ``field`` (the request field at fault, as the API
spells it). Which errors are retried is decided in ``hourglass._status``.
"""

from __future__ import annotations

from typing import ClassVar

import grpc

__all__ = [
    "Aborted",
    "AlreadyExists",
    "Cancelled",
    "ClientClosed",
    "DataLoss",
    "DeadlineExceeded",
    "FailedPrecondition",
    "HourglassError",
    "InternalError",
    "InvalidArgument",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "UnknownError",
    "error_class",
]


class HourglassError(Exception):
    """Base class of every error of this SDK.

    Attributes:
        code: The gRPC status code, or ``None`` for errors raised before any call was made.
        message: The server's message (or the SDK's, for local errors).
        leader: Address (``HOST:PORT``) of the leader the server pointed to, if any.
        leader_id: Node id of that leader, if the server named it.
        retry_after: Seconds the server asked to wait before retrying, if it did.
        reason: The machine-readable reason of a ``google.rpc.ErrorInfo`` detail, if any.
        target: The endpoint whose answer this is, if a call was made.
    """

    code: grpc.StatusCode | None
    CODE: ClassVar[grpc.StatusCode | None] = None

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        leader: str | None = None,
        leader_id: int | None = None,
        retry_after: float | None = None,
        reason: str | None = None,
        target: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code if code is not None else self.CODE
        self.leader = leader
        self.leader_id = leader_id
        self.retry_after = retry_after
        self.reason = reason
        self.target = target

    def __str__(self) -> str:
        name = self.code.name if self.code is not None else type(self).__name__
        where = f" (from {self.target})" if self.target else ""
        return f"{name}: {self.message}{where}"


class Cancelled(HourglassError):
    """CANCELLED: the call was cancelled before it completed."""

    CODE = grpc.StatusCode.CANCELLED


class UnknownError(HourglassError):
    """UNKNOWN: the connection failed without saying why; retried when no node made it."""

    CODE = grpc.StatusCode.UNKNOWN


class InvalidArgument(HourglassError, ValueError):
    """INVALID_ARGUMENT: a request field is malformed; ``field`` names it when known.

    Also raised before any call for arguments the SDK can check itself (a naive datetime, both
    ``delay`` and ``at``, ...). Subclasses :class:`ValueError` too.
    """

    CODE = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        code: grpc.StatusCode | None = None,
        leader: str | None = None,
        leader_id: int | None = None,
        retry_after: float | None = None,
        reason: str | None = None,
        target: str | None = None,
    ) -> None:
        super().__init__(
            message,
            code=code,
            leader=leader,
            leader_id=leader_id,
            retry_after=retry_after,
            reason=reason,
            target=target,
        )
        self.field = field


class DeadlineExceeded(HourglassError):
    """DEADLINE_EXCEEDED: no answer in time. For writes the outcome is unknown; retrying is
    safe because schedule and cancel are idempotent."""

    CODE = grpc.StatusCode.DEADLINE_EXCEEDED


class NotFound(HourglassError):
    """NOT_FOUND: no timer (nor tombstone) has that name."""

    CODE = grpc.StatusCode.NOT_FOUND


class AlreadyExists(HourglassError):
    """ALREADY_EXISTS: a timer of that name exists with a different definition."""

    CODE = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(HourglassError):
    """PERMISSION_DENIED."""

    CODE = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(HourglassError):
    """RESOURCE_EXHAUSTED: a limit was hit (for example a message too large)."""

    CODE = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(HourglassError):
    """FAILED_PRECONDITION: the cluster is not in a state that allows the call."""

    CODE = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(HourglassError):
    """ABORTED."""

    CODE = grpc.StatusCode.ABORTED


class OutOfRange(HourglassError):
    """OUT_OF_RANGE."""

    CODE = grpc.StatusCode.OUT_OF_RANGE


class Unimplemented(HourglassError):
    """UNIMPLEMENTED: the server does not offer this call (an older server?)."""

    CODE = grpc.StatusCode.UNIMPLEMENTED


class InternalError(HourglassError):
    """INTERNAL: the server failed (final), or the connection did (no node's ``reason``;
    retried)."""

    CODE = grpc.StatusCode.INTERNAL


class Unavailable(HourglassError):
    """UNAVAILABLE: no node answered, or the partition has no leader or quorum yet; retried,
    following ``leader`` when the server names it."""

    CODE = grpc.StatusCode.UNAVAILABLE


class DataLoss(HourglassError):
    """DATA_LOSS."""

    CODE = grpc.StatusCode.DATA_LOSS


class Unauthenticated(HourglassError):
    """UNAUTHENTICATED."""

    CODE = grpc.StatusCode.UNAUTHENTICATED


class ClientClosed(HourglassError):
    """The :class:`~hourglass.Client` was closed before or during the call."""


_BY_CODE: dict[grpc.StatusCode, type[HourglassError]] = {
    cls.CODE: cls
    for cls in (
        Cancelled,
        UnknownError,
        InvalidArgument,
        DeadlineExceeded,
        NotFound,
        AlreadyExists,
        PermissionDenied,
        ResourceExhausted,
        FailedPrecondition,
        Aborted,
        OutOfRange,
        Unimplemented,
        InternalError,
        Unavailable,
        DataLoss,
        Unauthenticated,
    )
    if cls.CODE is not None
}


def error_class(code: grpc.StatusCode) -> type[HourglassError]:
    """The exception class raised for a gRPC status code."""
    return _BY_CODE.get(code, HourglassError)
