"""The asyncio client of an Hourglass cluster."""

from __future__ import annotations

import asyncio
import builtins
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, TypeVar

import grpc
import grpc.aio

from . import _status
from ._pb import (
    admin_pb2,
    admin_pb2_grpc,
    timers_pb2,
    timers_pb2_grpc,
    workers_pb2_grpc,
)
from .errors import ClientClosed, HourglassError, InternalError, InvalidArgument
from .models import (
    CancelResult,
    ClusterStatus,
    ListPage,
    ScheduleRequest,
    ScheduleResult,
    Timer,
)
from .retry import RetryPolicy

__all__ = ["DEFAULT_ENDPOINT", "ENDPOINTS_ENV", "Client"]

log = logging.getLogger(__name__)

#: Used when neither ``endpoints`` nor ``$HOURGLASS_ENDPOINTS`` is given.
DEFAULT_ENDPOINT = "127.0.0.1:7001"
#: Comma-separated ``HOST:PORT`` list read when no endpoints are given (as the CLI does).
ENDPOINTS_ENV = "HOURGLASS_ENDPOINTS"

_T = TypeVar("_T")
_Outcome = ScheduleResult | HourglassError
_Metadata = tuple[tuple[str, str], ...]

# Short reconnect backoff: a node that restarts is used again within a second or two instead of
# grpc's default of up to two minutes. Keepalive notices a silently dead peer under a stream.
_CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
)


def _seconds(value: float | timedelta) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def _parse_endpoints(endpoints: str | Sequence[str] | None) -> tuple[builtins.list[str], bool]:
    """Normalized ``HOST:PORT`` endpoints, and whether any was given as ``https://``."""
    if endpoints is None:
        endpoints = os.environ.get(ENDPOINTS_ENV) or DEFAULT_ENDPOINT
    raw = endpoints.split(",") if isinstance(endpoints, str) else builtins.list(endpoints)
    out: builtins.list[str] = []
    tls: set[bool] = set()
    for entry in raw:
        entry = entry.strip()
        if not entry:
            continue
        secure = entry.startswith("https://")
        for scheme in ("http://", "https://"):
            if entry.startswith(scheme):
                entry = entry[len(scheme) :]
        entry = entry.rstrip("/")
        host, _, port = entry.rpartition(":")
        if not host or not port.isdigit():
            raise InvalidArgument(
                f"invalid endpoint {entry!r}: expected HOST:PORT", field="endpoints"
            )
        tls.add(secure)
        if entry not in out:
            out.append(entry)
    if not out:
        raise InvalidArgument("no endpoints given", field="endpoints")
    if len(tls) > 1:
        raise InvalidArgument("endpoints mix http:// and https://", field="endpoints")
    return out, tls == {True}


def _cancelling() -> bool:
    """Whether the current task has been asked to cancel. Python 3.10 cannot tell; there a
    CancelledError seen after the client was closed is taken for the close's doing."""
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    return False if cancelling is None else bool(cancelling())


def _send_batch(
    batch: timers_pb2.ScheduleBatchRequest,
) -> Callable[[_Node, float, _Metadata], Awaitable[timers_pb2.ScheduleBatchResponse]]:
    return lambda node, t, md: node.timers.ScheduleBatch(batch, timeout=t, metadata=md)


class _Node:
    """The channel to one address and the stubs over it."""

    def __init__(self, address: str, channel: grpc.aio.Channel) -> None:
        self.address = address
        self.channel = channel
        self.timers = timers_pb2_grpc.TimersStub(channel)
        self.admin = admin_pb2_grpc.AdminStub(channel)
        self.workers = workers_pb2_grpc.WorkersStub(channel)


class Client:
    """An asyncio client of an Hourglass cluster.

    Any node serves any call, forwarding it to the leader of the timer's partition. While a
    partition has no leader, or a node cannot be reached, calls are retried with exponential
    backoff and full jitter (see :class:`RetryPolicy`), going to the leader the server names
    when it names one and to the next endpoint otherwise, until the call's deadline. Every call
    is idempotent (scheduling the same timer twice returns the existing one), so retrying an
    answer that never arrived is safe.

    Errors are raised as subclasses of :class:`~hourglass.HourglassError`, one per gRPC code.

    Use it as an async context manager, or call :meth:`close` when done. A client belongs to
    the event loop it is first used in.

    Args:
        endpoints: ``HOST:PORT`` addresses of some nodes (a list, or one comma-separated
            string). Defaults to ``$HOURGLASS_ENDPOINTS``, then ``127.0.0.1:7001``.
        retry: The retry policy; ``RetryPolicy()`` by default.
        metadata: gRPC metadata sent with every call (for example an authorization header).
        credentials: TLS credentials; plaintext when ``None`` unless an endpoint is written
            ``https://HOST:PORT``.
        channel_options: Extra gRPC channel options, appended to the SDK's.
        interceptors: grpc.aio client interceptors installed on every channel.
    """

    def __init__(
        self,
        endpoints: str | Sequence[str] | None = None,
        *,
        retry: RetryPolicy | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        credentials: grpc.ChannelCredentials | None = None,
        channel_options: Sequence[tuple[str, Any]] = (),
        interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
    ) -> None:
        self._endpoints, tls = _parse_endpoints(endpoints)
        if tls and credentials is None:
            credentials = grpc.ssl_channel_credentials()
        self._credentials = credentials
        self._retry = retry or RetryPolicy()
        self._metadata = tuple((k.lower(), v) for k, v in metadata)
        self._options = _CHANNEL_OPTIONS + tuple(channel_options)
        self._interceptors = tuple(interceptors)
        self._nodes: dict[str, _Node] = {}
        self._next = 0
        self._closed = False

    @property
    def endpoints(self) -> tuple[str, ...]:
        """The endpoints this client was given, normalized to ``HOST:PORT``."""
        return tuple(self._endpoints)

    @property
    def retry_policy(self) -> RetryPolicy:
        """The retry policy of every call."""
        return self._retry

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self, grace: float | None = None) -> None:
        """Closes every channel; calls in progress end with :class:`ClientClosed`.

        Args:
            grace: Seconds in-flight calls get to finish before they are cancelled.
        """
        self._closed = True
        nodes, self._nodes = builtins.list(self._nodes.values()), {}
        await asyncio.gather(*(n.channel.close(grace) for n in nodes), return_exceptions=True)

    # ---- plumbing shared with the worker -------------------------------------------------

    def _node(self, address: str) -> _Node:
        """The node at ``address``, connecting lazily."""
        if self._closed:
            raise ClientClosed("the client is closed")
        node = self._nodes.get(address)
        if node is None:
            if self._credentials is not None:
                channel = grpc.aio.secure_channel(
                    address, self._credentials, self._options, interceptors=self._interceptors
                )
            else:
                channel = grpc.aio.insecure_channel(
                    address, self._options, interceptors=self._interceptors
                )
            node = _Node(address, channel)
            self._nodes[address] = node
        return node

    def _next_endpoint(self) -> str:
        endpoint = self._endpoints[self._next % len(self._endpoints)]
        self._next += 1
        return endpoint

    def _deadline(self, timeout: float | timedelta | None) -> float:
        budget = self._retry.deadline if timeout is None else _seconds(timeout)
        if budget <= 0:
            raise InvalidArgument("timeout must be positive", field="timeout")
        return asyncio.get_running_loop().time() + budget

    async def _call(
        self,
        method: str,
        attempt: Callable[[_Node, float, _Metadata], Awaitable[_T]],
        deadline: float,
    ) -> _T:
        """Runs ``attempt`` against an endpoint, retrying answers that mean "not now"."""
        loop = asyncio.get_running_loop()
        target = self._next_endpoint()
        retry = 0
        followed = 0
        while True:
            remaining = deadline - loop.time()
            per_attempt = max(0.001, min(self._retry.attempt_timeout, remaining))
            try:
                return await attempt(self._node(target), per_attempt, self._metadata)
            except grpc.aio.AioRpcError as rpc_error:
                if self._closed:
                    raise ClientClosed("the client was closed during the call") from rpc_error
                error = _status.error_from_rpc(rpc_error, target)
                cause: BaseException = rpc_error
            except grpc.aio.UsageError as usage_error:
                if self._closed:
                    raise ClientClosed("the client was closed during the call") from usage_error
                raise
            except asyncio.CancelledError:
                # Closing a channel cancels its calls; the caller's own cancellation propagates.
                if self._closed and not _cancelling():
                    raise ClientClosed("the client was closed during the call") from None
                raise
            if not _status.is_retryable(error):
                raise error from cause
            follow = error.leader if error.leader and error.leader != target else None
            if follow is not None:
                # The server named the leader: go there at once the first time, backing off
                # only if hints keep coming (a stale or moving leader).
                delay = self._retry.backoff(followed)
                followed += 1
            else:
                delay = self._retry.backoff(retry)
                if error.retry_after is not None:
                    delay = max(delay, error.retry_after)
            if loop.time() + delay >= deadline:
                raise error from cause
            log.debug(
                "%s: %s from %s; retrying %s in %.3f s",
                method,
                error.code.name if error.code else "error",
                target,
                f"at the leader {follow}" if follow else "at the next endpoint",
                delay,
            )
            target = follow if follow is not None else self._next_endpoint()
            retry += 1
            await asyncio.sleep(delay)

    # ---- the API ---------------------------------------------------------------------------

    async def schedule(
        self,
        workflow_id: str,
        timer_id: str,
        *,
        delay: timedelta | float | None = None,
        at: datetime | None = None,
        payload: bytes = b"",
        queue: str = "",
        timeout: float | timedelta | None = None,
    ) -> ScheduleResult:
        """Schedules a timer; returns once it is committed on a majority of its replicas.

        Give exactly one of ``delay`` (a timedelta or seconds, from when the node accepts the
        request) or ``at`` (a timezone-aware datetime; a naive one raises
        :class:`InvalidArgument`). Scheduling is idempotent: repeating an identical request
        returns the existing timer with ``created=False``; the same name with a different
        definition raises :class:`AlreadyExists`.

        Args:
            workflow_id: The workflow the timer belongs to (1..=256 bytes).
            timer_id: The timer's name within the workflow (1..=256 bytes).
            delay: Fire this long after the request is accepted.
            at: Fire at this instant.
            payload: Bytes handed to the worker (at most the cluster's limit, 64 KiB by
                default).
            queue: The queue whose workers receive it; ``"default"`` when empty.
            timeout: Deadline of the call, retries included; the policy's ``deadline`` when
                ``None``.
        """
        request = ScheduleRequest(
            workflow_id=workflow_id,
            timer_id=timer_id,
            delay=delay,
            at=at,
            payload=payload,
            queue=queue,
        ).to_proto()
        response = await self._call(
            "Schedule",
            lambda node, t, md: node.timers.Schedule(request, timeout=t, metadata=md),
            self._deadline(timeout),
        )
        return ScheduleResult.from_proto(response)

    async def schedule_batch(
        self,
        requests: Iterable[ScheduleRequest],
        *,
        timeout: float | timedelta | None = None,
    ) -> builtins.list[ScheduleResult | HourglassError]:
        """Schedules up to 1000 timers in one call; returns each one's outcome, in order.

        An outcome is a :class:`ScheduleResult` or the exception that a single
        :meth:`schedule` would have raised (returned, not raised). Timers whose partition was
        unavailable are sent again until the deadline; the other outcomes are final. Timers of
        one partition commit together. Arguments the SDK can check itself (a naive datetime,
        ...) raise :class:`InvalidArgument` before anything is sent, and a failure of the call
        as a whole (more than 1000 timers, no node reachable) is raised.
        """
        items = [r.to_proto() for r in requests]
        if not items:
            return []
        loop = asyncio.get_running_loop()
        deadline = self._deadline(timeout)
        outcomes: builtins.list[_Outcome | None] = [None] * len(items)
        todo = builtins.list(range(len(items)))
        retry = 0
        while todo:
            batch = timers_pb2.ScheduleBatchRequest(timers=[items[i] for i in todo])
            response = await self._call("ScheduleBatch", _send_batch(batch), deadline)
            delay = self._retry.backoff(retry)
            may_retry = loop.time() + delay < deadline
            again: builtins.list[int] = []
            for position, index in enumerate(todo):
                if position >= len(response.results):
                    outcomes[index] = InternalError("the server answered fewer items than sent")
                    continue
                result = response.results[position]
                kind = result.WhichOneof("result")
                if kind == "scheduled":
                    outcomes[index] = ScheduleResult.from_proto(result.scheduled)
                elif kind == "error":
                    error = _status.error_from_code(
                        result.error.code, result.error.message, details=result.error.details
                    )
                    outcomes[index] = error
                    if may_retry and _status.is_retryable_batch_item(error):
                        again.append(index)
                else:
                    outcomes[index] = InternalError("the server answered an item without outcome")
            if again:
                log.debug(
                    "ScheduleBatch: %d items unavailable; retrying in %.3f s", len(again), delay
                )
                await asyncio.sleep(delay)
                retry += 1
            todo = again
        return [o if o is not None else InternalError("no outcome") for o in outcomes]

    async def cancel(
        self, workflow_id: str, timer_id: str, *, timeout: float | timedelta | None = None
    ) -> CancelResult:
        """Cancels a timer. ``CancelOutcome.CANCELLED`` guarantees it is never delivered;
        ``ALREADY_FIRED`` means it fired first and may have been delivered. Raises
        :class:`NotFound` when no such timer exists."""
        request = timers_pb2.CancelRequest(workflow_id=workflow_id, timer_id=timer_id)
        response = await self._call(
            "Cancel",
            lambda node, t, md: node.timers.Cancel(request, timeout=t, metadata=md),
            self._deadline(timeout),
        )
        return CancelResult.from_proto(response)

    async def get(
        self, workflow_id: str, timer_id: str, *, timeout: float | timedelta | None = None
    ) -> Timer:
        """Reads one timer, linearizably. Raises :class:`NotFound` when no timer (nor
        tombstone) has that name."""
        request = timers_pb2.GetRequest(workflow_id=workflow_id, timer_id=timer_id)
        response = await self._call(
            "Get",
            lambda node, t, md: node.timers.Get(request, timeout=t, metadata=md),
            self._deadline(timeout),
        )
        if not response.HasField("timer"):
            raise InternalError("the server answered Get without a timer")
        return Timer.from_proto(response.timer)

    async def list_page(
        self,
        workflow_id: str,
        *,
        page_size: int = 100,
        page_token: str = "",
        timeout: float | timedelta | None = None,
    ) -> ListPage:
        """One page of a workflow's timers in ``timer_id`` order.

        Args:
            page_size: At most 1000.
            page_token: The previous page's ``next_page_token``; empty for the first page.
        """
        request = timers_pb2.ListRequest(
            workflow_id=workflow_id, page_size=page_size, page_token=page_token
        )
        response = await self._call(
            "List",
            lambda node, t, md: node.timers.List(request, timeout=t, metadata=md),
            self._deadline(timeout),
        )
        return ListPage.from_proto(response)

    async def list(
        self,
        workflow_id: str,
        *,
        page_size: int = 100,
        timeout: float | timedelta | None = None,
    ) -> AsyncIterator[ListPage]:
        """Iterates over the pages of a workflow's timers, fetching each when it is needed::

            async for page in client.list("order-42"):
                for timer in page:
                    ...

        ``timeout`` applies to each page's call.
        """
        token = ""
        while True:
            page = await self.list_page(
                workflow_id, page_size=page_size, page_token=token, timeout=timeout
            )
            yield page
            if not page.next_page_token:
                return
            token = page.next_page_token

    async def cluster_status(self, *, timeout: float | timedelta | None = None) -> ClusterStatus:
        """The cluster as seen by the node that answers: nodes, partitions and leaders."""
        response = await self._call(
            "ClusterStatus",
            lambda node, t, md: node.admin.ClusterStatus(
                admin_pb2.ClusterStatusRequest(), timeout=t, metadata=md
            ),
            self._deadline(timeout),
        )
        return ClusterStatus.from_proto(response)
