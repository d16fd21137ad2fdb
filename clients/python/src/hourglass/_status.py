"""The one place that reads a server's error: code, leader hint, retry delay, field, retryability.

A node says what an error means beyond its code in the standard ``google.rpc`` error details
(the "rich error model"): a serialized ``google.rpc.Status`` in the ``grpc-status-details-bin``
trailer of a failed call, or, for one item of a ScheduleBatch answer, in the item's
``details``. Read here, and only here:

- ``google.rpc.ErrorInfo``: ``reason`` (``NOT_LEADER``, ``INVALID_FIELD``, ...) and, on
  UNAVAILABLE when the node knows the partition's leader, ``leader_address`` (``HOST:PORT``)
  and ``leader_id`` in its metadata. Every answer a node makes carries one, with the domain
  :data:`ERROR_DOMAIN`;
- ``google.rpc.RetryInfo``: ``retry_delay``;
- ``google.rpc.BadRequest``: the first field violation's ``field``.

Which answers are retried is decided from the code and these details, never from the message
text, by :func:`is_retryable` (unary calls), :func:`is_retryable_batch_item` (items of a batch)
and :func:`is_fatal_for_stream` (worker subscriptions).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import cast

import grpc
import grpc.aio
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

from .errors import HourglassError, InvalidArgument, error_class

__all__ = [
    "DETAILS_KEY",
    "ERROR_DOMAIN",
    "Hints",
    "error_from_code",
    "error_from_rpc",
    "hints_from_metadata",
    "is_fatal_for_stream",
    "is_retryable",
    "is_retryable_batch_item",
]

#: Trailer carrying a serialized ``google.rpc.Status``.
DETAILS_KEY = "grpc-status-details-bin"
#: ``google.rpc.ErrorInfo.domain`` of every answer a node makes.
ERROR_DOMAIN = "hourglass.dev"

# "Not now": worth retrying whoever answered.
_RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
# Codes of a call that may never have been handled, when no node made the answer (the
# connection broke, the stream was reset): gRPC itself reports these.
_RETRYABLE_WITHOUT_NODE = frozenset({grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL})
_RETRYABLE_BATCH_ITEM = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
_FATAL_FOR_STREAM = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)

MetadataItems = Iterable[tuple[str, "str | bytes"]]


@dataclass(frozen=True)
class Hints:
    """What a server's error says beyond its code and message."""

    leader: str | None = None
    leader_id: int | None = None
    retry_after: float | None = None
    field: str | None = None
    reason: str | None = None


def _from_blob(blob: bytes) -> Hints:
    """Hints from a serialized ``google.rpc.Status``; none from a corrupt one."""
    try:
        status = status_pb2.Status.FromString(blob)
    except DecodeError:
        return Hints()
    return _from_details(status.details)


def _from_details(details: Sequence[any_pb2.Any]) -> Hints:
    """Hints from ``google.rpc.Status.details``."""
    leader: str | None = None
    leader_id: int | None = None
    retry_after: float | None = None
    field: str | None = None
    reason: str | None = None
    for detail in details:
        info = error_details_pb2.ErrorInfo()
        retry = error_details_pb2.RetryInfo()
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(info):
            if info.domain != ERROR_DOMAIN:
                continue  # not made by a node (a proxy's, say): not ours to follow
            reason = info.reason or None
            leader = info.metadata.get("leader_address") or None
            with contextlib.suppress(ValueError):
                leader_id = int(info.metadata.get("leader_id", ""))
        elif detail.Unpack(retry):
            if retry.HasField("retry_delay"):
                delay = retry.retry_delay
                retry_after = max(0.0, delay.seconds + delay.nanos / 1e9)
        elif detail.Unpack(bad):
            for violation in bad.field_violations:
                if violation.field:
                    field = violation.field
                    break
    return Hints(leader, leader_id, retry_after, field, reason)


def hints_from_metadata(metadata: MetadataItems) -> Hints:
    """Reads the hints of one error from the ``google.rpc.Status`` in its trailing metadata."""
    for key, value in metadata:
        if key.lower() == DETAILS_KEY and isinstance(value, bytes):
            return _from_blob(value)
    return Hints()


def _build(code: grpc.StatusCode, message: str, hints: Hints, target: str | None) -> HourglassError:
    cls = error_class(code)
    if cls is InvalidArgument:
        return InvalidArgument(
            message,
            field=hints.field,
            code=code,
            leader=hints.leader,
            leader_id=hints.leader_id,
            retry_after=hints.retry_after,
            reason=hints.reason,
            target=target,
        )
    return cls(
        message,
        code=code,
        leader=hints.leader,
        leader_id=hints.leader_id,
        retry_after=hints.retry_after,
        reason=hints.reason,
        target=target,
    )


def _pairs(metadata: object) -> list[tuple[str, str | bytes]]:
    """(key, value) pairs of grpc metadata, whichever shape grpc hands it in."""
    pairs: list[tuple[str, str | bytes]] = []
    for item in cast("Iterable[object]", metadata or ()):
        if isinstance(item, tuple) and len(item) == 2:
            key, value = item
        else:
            key, value = getattr(item, "key", None), getattr(item, "value", None)
        if isinstance(key, str) and isinstance(value, (str, bytes)):
            pairs.append((key, value))
    return pairs


def error_from_rpc(error: grpc.aio.AioRpcError, target: str | None = None) -> HourglassError:
    """The typed exception for a failed call, with every hint the server attached."""
    code = error.code()
    message = error.details() or ""
    metadata = _pairs(error.trailing_metadata())
    return _build(code, message, hints_from_metadata(metadata), target)


def error_from_code(
    code: int,
    message: str,
    target: str | None = None,
    details: Sequence[any_pb2.Any] = (),
) -> HourglassError:
    """The typed exception for a (code, message, details) triple, as batch items report them."""
    status_code = next((c for c in grpc.StatusCode if c.value[0] == code), None)
    if status_code is None:
        return HourglassError(f"status code {code}: {message}", target=target)
    return _build(status_code, message, _from_details(details), target)


def is_retryable(error: HourglassError) -> bool:
    """Whether a unary call that ended with ``error`` is worth sending again.

    The same answers the Rust client retries, judged by code and details only: UNAVAILABLE
    and DEADLINE_EXCEEDED; any answer whose node asked to be retried (``RetryInfo``, so
    ``retry_after``); and UNKNOWN or INTERNAL when no node made the answer (it carries no
    ``ErrorInfo``: gRPC reports a broken connection that way). Every call of the API is
    idempotent.
    """
    if error.code is None:
        return False
    if error.code in _RETRYABLE or error.retry_after is not None:
        return True
    return error.code in _RETRYABLE_WITHOUT_NODE and error.reason is None


def is_retryable_batch_item(error: HourglassError) -> bool:
    """Whether one failed item of a ScheduleBatch answer is worth sending again."""
    return error.code in _RETRYABLE_BATCH_ITEM


def is_fatal_for_stream(error: HourglassError) -> bool:
    """Whether a worker subscription that ended with ``error`` must not be reopened: the
    subscription itself is wrong (bad queue or credits, not allowed, not offered)."""
    return error.code in _FATAL_FOR_STREAM
