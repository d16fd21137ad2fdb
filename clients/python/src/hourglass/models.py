"""The SDK's values: timers, results, cluster status and deliveries, as plain dataclasses.

Times are timezone-aware :class:`~datetime.datetime` objects in UTC; payloads are ``bytes``.
The conversions to and from the protobuf messages live here too.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TypeVar

from google.protobuf import duration_pb2, timestamp_pb2
from google.protobuf.message import Message

from ._pb import admin_pb2, timers_pb2, workers_pb2
from .errors import InvalidArgument

__all__ = [
    "CancelOutcome",
    "CancelResult",
    "ClusterStatus",
    "Delivery",
    "ListPage",
    "NodeInfo",
    "PartitionStatus",
    "ScheduleRequest",
    "ScheduleResult",
    "Timer",
    "TimerState",
]

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)


class TimerState(enum.IntEnum):
    """Where a timer is in its life."""

    UNSPECIFIED = 0
    SCHEDULED = 1
    #: Fired and handed to workers, not yet acknowledged.
    FIRED = 2
    #: Fired and acknowledged; kept as a tombstone for the retention period.
    COMPLETED = 3
    #: Cancelled; kept as a tombstone for the retention period.
    CANCELLED = 4


class CancelOutcome(enum.IntEnum):
    """What a cancel did."""

    UNSPECIFIED = 0
    #: The timer is cancelled (now, or by an earlier cancel) and will never be delivered.
    CANCELLED = 1
    #: The timer fired before the cancel; it may have been delivered.
    ALREADY_FIRED = 2


_E = TypeVar("_E", bound=enum.IntEnum)


def _enum(cls: type[_E], value: int) -> _E:
    try:
        return cls(value)
    except ValueError:  # a value of a newer server
        return cls(0)


def to_timestamp(when: datetime, field_name: str) -> timestamp_pb2.Timestamp:
    """An aware datetime as a protobuf Timestamp, exactly (microsecond precision)."""
    if not isinstance(when, datetime):
        raise InvalidArgument(
            f"{field_name} must be a datetime, not {type(when).__name__}", field=field_name
        )
    if when.tzinfo is None or when.tzinfo.utcoffset(when) is None:
        raise InvalidArgument(
            f"{field_name} is a naive datetime ({when.isoformat()}): give it a timezone, for "
            "example datetime.now(timezone.utc) or dt.replace(tzinfo=timezone.utc); a naive "
            "time could mean any instant",
            field=field_name,
        )
    micros = (when - EPOCH) // _MICROSECOND
    seconds, micros = divmod(micros, 1_000_000)
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=micros * 1000)


def to_duration(delay: timedelta | float, field_name: str) -> duration_pb2.Duration:
    """A non-negative timedelta (or number of seconds) as a protobuf Duration."""
    if isinstance(delay, bool) or not isinstance(delay, (timedelta, int, float)):
        raise InvalidArgument(
            f"{field_name} must be a timedelta or a number of seconds, not {type(delay).__name__}",
            field=field_name,
        )
    if not isinstance(delay, timedelta):
        delay = timedelta(seconds=delay)
    if delay < timedelta(0):
        raise InvalidArgument(f"{field_name} must not be negative, is {delay}", field=field_name)
    micros = delay // _MICROSECOND
    seconds, micros = divmod(micros, 1_000_000)
    return duration_pb2.Duration(seconds=seconds, nanos=micros * 1000)


def from_timestamp(ts: timestamp_pb2.Timestamp) -> datetime:
    """A protobuf Timestamp as an aware UTC datetime (truncated to microseconds)."""
    return EPOCH + timedelta(seconds=ts.seconds, microseconds=ts.nanos // 1000)


def _optional_time(message: Message, name: str) -> datetime | None:
    if not message.HasField(name):
        return None
    value = getattr(message, name)
    assert isinstance(value, timestamp_pb2.Timestamp)
    return from_timestamp(value)


@dataclass(frozen=True)
class Timer:
    """One timer as the cluster stores it."""

    workflow_id: str
    timer_id: str
    queue: str
    #: When it is due.
    fire_at: datetime
    payload: bytes
    state: TimerState
    created_at: datetime | None
    fired_at: datetime | None
    #: When the timer completed or was cancelled.
    finished_at: datetime | None
    #: The attempt number stored with the timer: 0 until it fires, then the attempt of its
    #: fire. Redeliveries by the same leader are counted in :attr:`Delivery.attempt` only.
    attempt: int
    partition: int

    @classmethod
    def from_proto(cls, message: timers_pb2.Timer) -> Timer:
        """Converts the protobuf message."""
        return cls(
            workflow_id=message.workflow_id,
            timer_id=message.timer_id,
            queue=message.queue,
            fire_at=from_timestamp(message.fire_at),
            payload=bytes(message.payload),
            state=_enum(TimerState, message.state),
            created_at=_optional_time(message, "created_at"),
            fired_at=_optional_time(message, "fired_at"),
            finished_at=_optional_time(message, "finished_at"),
            attempt=message.attempt,
            partition=message.partition,
        )


@dataclass(frozen=True)
class ScheduleResult:
    """The answer to one schedule."""

    timer: Timer
    #: False when an identical timer already existed (scheduling is idempotent).
    created: bool

    @classmethod
    def from_proto(cls, message: timers_pb2.ScheduleResponse) -> ScheduleResult:
        """Converts the protobuf message."""
        return cls(timer=Timer.from_proto(message.timer), created=message.created)


@dataclass(frozen=True)
class CancelResult:
    """The answer to a cancel."""

    outcome: CancelOutcome
    timer: Timer

    @classmethod
    def from_proto(cls, message: timers_pb2.CancelResponse) -> CancelResult:
        """Converts the protobuf message."""
        return cls(
            outcome=_enum(CancelOutcome, message.outcome), timer=Timer.from_proto(message.timer)
        )


@dataclass(frozen=True)
class ListPage:
    """One page of a workflow's timers, in ``timer_id`` order. Iterating it yields its timers."""

    timers: tuple[Timer, ...]
    #: Pass it to get the next page; empty on the last page.
    next_page_token: str

    @classmethod
    def from_proto(cls, message: timers_pb2.ListResponse) -> ListPage:
        """Converts the protobuf message."""
        return cls(
            timers=tuple(Timer.from_proto(t) for t in message.timers),
            next_page_token=message.next_page_token,
        )

    def __iter__(self) -> Iterator[Timer]:
        return iter(self.timers)

    def __len__(self) -> int:
        return len(self.timers)


@dataclass(frozen=True)
class ScheduleRequest:
    """One timer to schedule, for :meth:`hourglass.Client.schedule_batch`.

    Give exactly one of ``delay`` (a :class:`~datetime.timedelta` or seconds, counted from when
    the receiving node accepts the request) or ``at`` (a timezone-aware datetime).
    ``queue`` defaults to ``"default"`` on the server.
    """

    workflow_id: str
    timer_id: str
    delay: timedelta | float | None = None
    at: datetime | None = None
    payload: bytes = b""
    queue: str = ""

    def to_proto(self) -> timers_pb2.ScheduleRequest:
        """Validates what the SDK can check locally and builds the protobuf message."""
        if self.delay is None and self.at is None:
            raise InvalidArgument(
                f"timer {self.workflow_id!r}/{self.timer_id!r}: give delay= or at=",
                field="delay",
            )
        if self.delay is not None and self.at is not None:
            raise InvalidArgument(
                f"timer {self.workflow_id!r}/{self.timer_id!r}: give delay= or at=, not both",
                field="at",
            )
        if not isinstance(self.payload, (bytes, bytearray, memoryview)):
            raise InvalidArgument(
                f"payload must be bytes, not {type(self.payload).__name__}; encode text "
                "first, for example payload=text.encode()",
                field="payload",
            )
        message = timers_pb2.ScheduleRequest(
            workflow_id=self.workflow_id,
            timer_id=self.timer_id,
            queue=self.queue,
            payload=bytes(self.payload),
        )
        if self.at is not None:
            message.fire_at.CopyFrom(to_timestamp(self.at, "at"))
        elif self.delay is not None:
            message.delay.CopyFrom(to_duration(self.delay, "delay"))
        return message


@dataclass(frozen=True)
class NodeInfo:
    """A node of the cluster as ClusterStatus reports it."""

    node_id: int
    #: The gRPC address clients and peers use.
    address: str
    reachable: bool
    http_address: str
    rss_bytes: int


@dataclass(frozen=True)
class PartitionStatus:
    """One partition: its replicas and its leader (0 when none is known)."""

    partition: int
    replicas: tuple[int, ...]
    leader: int
    term: int
    applied_index: int
    timers_pending: int
    timers_in_memory: int


@dataclass(frozen=True)
class ClusterStatus:
    """The cluster as seen from the node that answered."""

    answered_by: int
    partition_count: int
    replication_factor: int
    nodes: tuple[NodeInfo, ...]
    partitions: tuple[PartitionStatus, ...]

    @classmethod
    def from_proto(cls, message: admin_pb2.ClusterStatusResponse) -> ClusterStatus:
        """Converts the protobuf message."""
        return cls(
            answered_by=message.answered_by,
            partition_count=message.partition_count,
            replication_factor=message.replication_factor,
            nodes=tuple(
                NodeInfo(
                    node_id=n.node_id,
                    address=n.address,
                    reachable=n.reachable,
                    http_address=n.http_address,
                    rss_bytes=n.rss_bytes,
                )
                for n in message.nodes
            ),
            partitions=tuple(
                PartitionStatus(
                    partition=p.partition,
                    replicas=tuple(p.replicas),
                    leader=p.leader,
                    term=p.term,
                    applied_index=p.applied_index,
                    timers_pending=p.timers_pending,
                    timers_in_memory=p.timers_in_memory,
                )
                for p in message.partitions
            ),
        )

    def node(self, node_id: int) -> NodeInfo | None:
        """The node with that id, if listed."""
        return next((n for n in self.nodes if n.node_id == node_id), None)

    def leader_of(self, partition: int) -> NodeInfo | None:
        """The node leading ``partition``, if it has a known leader."""
        for p in self.partitions:
            if p.partition == partition and p.leader:
                return self.node(p.leader)
        return None


@dataclass(frozen=True)
class Delivery:
    """A fired timer handed to a :class:`~hourglass.Worker`'s handler.

    Delivery is at least once: the same timer may come again (same ids, higher ``attempt``)
    when an earlier delivery was not acknowledged, so handlers must be idempotent.
    """

    workflow_id: str
    timer_id: str
    queue: str
    fire_at: datetime
    #: When the partition committed the fire.
    fired_at: datetime | None
    #: When the node sent this delivery.
    delivered_at: datetime | None
    #: 1 for the first delivery; higher after a redelivery.
    attempt: int
    payload: bytes
    partition: int
    #: The address of the node this delivery came from.
    node: str = field(default="", compare=False)

    @classmethod
    def from_proto(cls, message: workers_pb2.Delivery, node: str) -> Delivery:
        """Converts the protobuf message received from ``node``."""
        return cls(
            workflow_id=message.workflow_id,
            timer_id=message.timer_id,
            queue=message.queue,
            fire_at=from_timestamp(message.fire_at),
            fired_at=_optional_time(message, "fired_at"),
            delivered_at=_optional_time(message, "delivered_at"),
            attempt=message.attempt,
            payload=bytes(message.payload),
            partition=message.partition,
            node=node,
        )
