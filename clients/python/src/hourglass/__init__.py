"""Python SDK for Hourglass, a Raft-replicated durable-timer service.

- :class:`Client` schedules, cancels, reads and lists timers (asyncio, gRPC), retrying with
  backoff and following leader hints while the cluster elects leaders or loses nodes.
- :class:`Worker` receives fired timers from every node and runs an async handler on each,
  acknowledging those it handled.
- Errors are :class:`HourglassError` subclasses, one per gRPC status code.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .client import Client
from .errors import (
    Aborted,
    AlreadyExists,
    Cancelled,
    ClientClosed,
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    HourglassError,
    InternalError,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    UnknownError,
)
from .models import (
    CancelOutcome,
    CancelResult,
    ClusterStatus,
    Delivery,
    ListPage,
    NodeInfo,
    PartitionStatus,
    ScheduleRequest,
    ScheduleResult,
    Timer,
    TimerState,
)
from .retry import RetryPolicy
from .worker import Handler, Worker, WorkerStats

try:
    __version__ = version("hourglass")
except PackageNotFoundError:  # pragma: no cover - imported from a source tree
    __version__ = "0.0.0"

__all__ = [
    "Aborted",
    "AlreadyExists",
    "CancelOutcome",
    "CancelResult",
    "Cancelled",
    "Client",
    "ClientClosed",
    "ClusterStatus",
    "DataLoss",
    "DeadlineExceeded",
    "Delivery",
    "FailedPrecondition",
    "Handler",
    "HourglassError",
    "InternalError",
    "InvalidArgument",
    "ListPage",
    "NodeInfo",
    "NotFound",
    "OutOfRange",
    "PartitionStatus",
    "PermissionDenied",
    "ResourceExhausted",
    "RetryPolicy",
    "ScheduleRequest",
    "ScheduleResult",
    "Timer",
    "TimerState",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "UnknownError",
    "Worker",
    "WorkerStats",
    "__version__",
]
