"""A worker: receives the fired timers of one queue from every node and runs a handler on each.

Each node delivers the fired timers of the partitions it leads, so a :class:`Worker` keeps one
subscription (a ``Workers.Subscribe`` stream) per node listed by ``Admin.ClusterStatus``,
reopens a stream that breaks with backoff, and follows the node list as it changes.

Flow control follows ``workers.proto``: a stream announces ``credits``, the number of
deliveries the node may have outstanding on it; the node sends no more until some are
acknowledged. Each delivery runs ``handler(delivery)`` in its own task, at most ``concurrency``
at once across all streams; a handler that returns acknowledges the delivery on the stream it
came from, one that raises does not, so the node delivers it again (with ``attempt + 1``) once
its ack timeout passes or the stream ends. Delivery is at least once: handlers must be
idempotent.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import os
import re
import socket
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType

import grpc
import grpc.aio

from . import _status
from ._pb import workers_pb2
from .client import Client, _cancelling
from .errors import ClientClosed, HourglassError, InvalidArgument
from .models import Delivery
from .retry import RetryPolicy

__all__ = ["Handler", "Worker", "WorkerStats"]

log = logging.getLogger(__name__)

#: What a worker runs for each delivery. Returning acknowledges it; raising does not.
Handler = Callable[[Delivery], Awaitable[object]]

_QUEUE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
MAX_CREDITS = 10_000


@dataclass(frozen=True)
class WorkerStats:
    """Counters of a worker since it started."""

    #: Deliveries received from any node (including ones dropped during shutdown).
    received: int
    #: Handlers that returned; their deliveries were acknowledged if their stream was up.
    succeeded: int
    #: Handlers that raised; their deliveries were not acknowledged.
    failed: int
    #: Acknowledgements handed to a stream.
    acked: int
    #: Streams currently open.
    streams: int
    #: Handlers running now.
    running: int


class _Slots:
    """At most ``size`` holders at once; waiters also return (with False) once closed."""

    def __init__(self, size: int) -> None:
        self._free = size
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False

    async def acquire(self) -> bool:
        while True:
            if self._closed:
                return False
            if self._free > 0:
                self._free -= 1
                return True
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake_one()  # pass on a wake-up this waiter can no longer use
                raise
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)

    def release(self) -> None:
        self._free += 1
        self._wake_one()

    def close(self) -> None:
        self._closed = True
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return


class _Stream:
    """One ``Subscribe`` call to one node: acks go out through a single writer task."""

    def __init__(
        self,
        address: str,
        call: grpc.aio.StreamStreamCall[workers_pb2.WorkerMessage, workers_pb2.Delivery],
    ) -> None:
        self.address = address
        self.call = call
        self._outbound: asyncio.Queue[workers_pb2.WorkerMessage | None] = asyncio.Queue()
        self.accepting = True

    def ack(self, delivery: Delivery) -> bool:
        """Queues an ack; False when this stream no longer takes any."""
        if not self.accepting:
            return False
        self._outbound.put_nowait(
            workers_pb2.WorkerMessage(
                ack=workers_pb2.Ack(workflow_id=delivery.workflow_id, timer_id=delivery.timer_id)
            )
        )
        return True

    def half_close(self) -> None:
        """Sends the queued acks, then ends the request side; the node then ends the stream
        and delivers what this stream still held to other workers."""
        if self.accepting:
            self.accepting = False
            self._outbound.put_nowait(None)

    async def write_loop(self, start: workers_pb2.WorkerMessage) -> None:
        try:
            await self.call.write(start)
            while True:
                message = await self._outbound.get()
                if message is None:
                    await self.call.done_writing()
                    return
                await self.call.write(message)
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError) as error:
            # The call ended; the reader sees why. Unsent acks mean redeliveries.
            self.accepting = False
            log.debug("stream to %s: cannot write: %s", self.address, error)


class _Subscription:
    """Keeps one stream to one node open, reopening it with backoff until closed."""

    def __init__(self, worker: Worker, address: str) -> None:
        self.worker = worker
        self.address = address
        self.current: _Stream | None = None
        self._closing = asyncio.Event()
        self.task = asyncio.create_task(self._run(), name=f"hourglass-subscription-{address}")

    async def _run(self) -> None:
        worker = self.worker
        failures = 0
        while not self._closing.is_set():
            connected = False
            try:
                connected = await self._stream_once()
                if not self._closing.is_set():
                    log.info("stream to %s ended; reconnecting", self.address)
            except HourglassError as error:
                if isinstance(error, ClientClosed) or _status.is_fatal_for_stream(error):
                    worker._fail(error)
                    return
                if not self._closing.is_set():
                    log.info("stream to %s failed (%s); reconnecting", self.address, error)
            except Exception:
                if not self._closing.is_set():
                    log.exception("stream to %s failed; reconnecting", self.address)
            if self._closing.is_set():
                return
            if connected:
                failures = 0
            delay = worker._reconnect.backoff(failures)
            failures += 1
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._closing.wait(), timeout=delay)

    async def _stream_once(self) -> bool:
        """Runs one stream until it ends; returns whether it was established."""
        worker = self.worker
        node = worker._client._node(self.address)
        try:
            call = node.workers.Subscribe(None, metadata=worker._client._metadata)
        except grpc.aio.UsageError as error:  # the channel was closed under us
            raise ClientClosed(f"cannot subscribe to {self.address}: {error}") from error
        stream = _Stream(self.address, call)
        start = workers_pb2.WorkerMessage(
            start=workers_pb2.SubscribeStart(
                queue=worker.queue, worker_id=worker.worker_id, credits=worker.credits
            )
        )
        writer = asyncio.create_task(
            stream.write_loop(start), name=f"hourglass-acks-{self.address}"
        )
        self.current = stream
        connected = False
        try:
            await call.initial_metadata()
            if not call.done():
                connected = True
                worker._streams += 1
                log.info(
                    "subscribed to %s (queue %s, %d credits)",
                    self.address,
                    worker.queue,
                    worker.credits,
                )
            while True:
                message = await call.read()
                if not isinstance(message, workers_pb2.Delivery):  # grpc.aio.EOF
                    return connected
                delivery = Delivery.from_proto(message, self.address)
                worker._received += 1
                if not await worker._slots.acquire():
                    # Stopping: not handled, not acknowledged; the node delivers it again
                    # once this stream ends.
                    continue
                worker._spawn(delivery, stream)
        except grpc.aio.AioRpcError as error:
            raise _status.error_from_rpc(error, self.address) from error
        except asyncio.CancelledError:
            # grpc cancels the calls of a channel that is closed: the client was closed under
            # the worker. Anything else (this task cancelled) propagates.
            if worker._client._closed and not _cancelling():
                raise ClientClosed(
                    f"the client was closed; stream to {self.address} ended"
                ) from None
            raise
        finally:
            if connected:
                worker._streams -= 1
            stream.accepting = False
            if self.current is stream:
                self.current = None
            if not writer.done():
                writer.cancel()
            await asyncio.wait({writer})

    async def close(self, timeout: float) -> None:
        """Ends the stream: sends pending acks, half-closes, waits up to ``timeout`` for the node
        to end it, then cancels it."""
        self._closing.set()
        stream = self.current
        if stream is not None:
            stream.half_close()
        done, _ = await asyncio.wait({self.task}, timeout=timeout)
        if not done:
            if self.current is not None:
                self.current.call.cancel()
            done, _ = await asyncio.wait({self.task}, timeout=1.0)
        if not done:
            self.task.cancel()
            await asyncio.wait({self.task})
        if not self.task.cancelled() and self.task.exception() is not None:
            log.debug("subscription to %s ended with %r", self.address, self.task.exception())


class Worker:
    """Runs ``handler`` on every fired timer of ``queue``, from every node of the cluster.

    Typical use::

        async def remind(delivery: hourglass.Delivery) -> None:
            ...  # idempotent: the same timer may come again

        async with hourglass.Client(endpoints) as client:
            worker = hourglass.Worker(client, "orders", remind, concurrency=8)
            await worker.run()  # until worker.stop() is called (e.g. from a signal handler)

    or ``async with worker: ...`` to run it in the background for the duration of a block.

    Args:
        client: The client whose endpoints, retry policy, metadata and channels it uses.
        queue: The queue to receive (1..=128 bytes of ``[A-Za-z0-9._-]``).
        handler: ``async def handler(delivery) -> None``. Returning acknowledges the delivery;
            raising leaves it unacknowledged, so it is delivered again.
        concurrency: Most handlers running at once.
        credits: Deliveries each node may have outstanding on its stream (1..=10000);
            ``concurrency`` by default. Deliveries beyond ``concurrency`` wait for a free
            handler slot, and their ack timeout runs while they wait.
        worker_id: A name for the servers' logs; ``HOSTNAME-PID`` by default.
        follow_cluster: Subscribe to every node ClusterStatus lists and follow that list
            (default). When False, subscribe to the client's endpoints only.
        refresh_interval: Seconds between reads of the node list.
        reconnect: Backoff of reopening a broken stream (its ``initial_backoff``,
            ``max_backoff`` and ``multiplier`` are used).
        shutdown_timeout: Default seconds :meth:`stop` lets running handlers finish.
        close_timeout: Seconds a stream gets to flush its acks and end at shutdown.
    """

    def __init__(
        self,
        client: Client,
        queue: str,
        handler: Handler,
        *,
        concurrency: int = 16,
        credits: int | None = None,
        worker_id: str | None = None,
        follow_cluster: bool = True,
        refresh_interval: float = 5.0,
        reconnect: RetryPolicy | None = None,
        shutdown_timeout: float = 30.0,
        close_timeout: float = 5.0,
    ) -> None:
        if not _QUEUE.match(queue):
            raise InvalidArgument(
                f"queue {queue!r} must be 1..=128 characters of [A-Za-z0-9._-]", field="queue"
            )
        if concurrency < 1:
            raise InvalidArgument("concurrency must be at least 1", field="concurrency")
        credits = concurrency if credits is None else credits
        if not 1 <= credits <= MAX_CREDITS:
            raise InvalidArgument(
                f"credits is {credits}, must be 1..={MAX_CREDITS}", field="credits"
            )
        if refresh_interval <= 0 or shutdown_timeout < 0 or close_timeout <= 0:
            raise InvalidArgument("intervals and timeouts must be positive")
        self._client = client
        self.queue = queue
        self.credits = credits
        self.concurrency = concurrency
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self._handler = handler
        self._follow = follow_cluster
        self._refresh = refresh_interval
        self._reconnect = reconnect or RetryPolicy(initial_backoff=0.1, max_backoff=5.0)
        self._shutdown_timeout = shutdown_timeout
        self._close_timeout = close_timeout
        self._slots = _Slots(concurrency)
        self._subscriptions: dict[str, _Subscription] = {}
        self._handlers: set[asyncio.Task[None]] = set()
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()
        self._shutdown_task: asyncio.Task[None] | None = None
        self._fatal: HourglassError | None = None
        self._started = False
        self._received = 0
        self._succeeded = 0
        self._failed = 0
        self._acked = 0
        self._streams = 0

    # ---- public ----------------------------------------------------------------------------

    @property
    def nodes(self) -> tuple[str, ...]:
        """The addresses this worker subscribes to."""
        return tuple(self._subscriptions)

    @property
    def stats(self) -> WorkerStats:
        """A snapshot of the worker's counters."""
        return WorkerStats(
            received=self._received,
            succeeded=self._succeeded,
            failed=self._failed,
            acked=self._acked,
            streams=self._streams,
            running=len(self._handlers),
        )

    async def start(self) -> None:
        """Reads the node list and opens a stream to every node. Raises when the cluster cannot
        be reached within the client's deadline."""
        if self._started:
            raise RuntimeError("a Worker can be started once")
        self._started = True
        try:
            addresses = await self._discover()
        except BaseException:
            self._stopping.set()
            self._stopped.set()
            raise
        for address in addresses:
            self._subscribe(address)
        if self._follow:
            self._supervisor = asyncio.create_task(
                self._follow_nodes(), name="hourglass-worker-nodes"
            )
        log.info("worker %s started on queue %s: %s", self.worker_id, self.queue, addresses)

    async def run(self) -> None:
        """Starts the worker if needed and returns once it has stopped (see :meth:`stop`).

        Raises the error that stopped it, if one did (a subscription the server refused,
        such as an invalid queue). If the task running this is cancelled, the worker shuts
        down at once: running handlers are cancelled and their deliveries come again.
        """
        if not self._started:
            await self.start()
        try:
            await self._stopped.wait()
        except asyncio.CancelledError:
            await self._shutdown_now(0.0)
            raise
        if self._fatal is not None:
            raise self._fatal

    async def stop(self, timeout: float | None = None) -> None:
        """Shuts down gracefully.

        Stops taking deliveries (those received but not started are left unacknowledged and
        come again), lets running handlers finish for up to ``timeout`` seconds (the
        ``shutdown_timeout`` by default) and then cancels the rest, sends the acks of those
        that finished, and closes every stream. Safe to call more than once and from several
        tasks; all return once the worker has stopped.
        """
        await self._shutdown_now(self._shutdown_timeout if timeout is None else timeout)

    @property
    def stopped(self) -> bool:
        """Whether the worker has stopped."""
        return self._stopped.is_set()

    async def __aenter__(self) -> Worker:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # ---- internals -------------------------------------------------------------------------

    async def _discover(self) -> builtins.list[str]:
        if not self._follow:
            return builtins.list(self._client.endpoints)
        status = await self._client.cluster_status()
        addresses = [n.address for n in status.nodes if n.address]
        return addresses or builtins.list(self._client.endpoints)

    def _subscribe(self, address: str) -> None:
        if address not in self._subscriptions:
            self._subscriptions[address] = _Subscription(self, address)

    async def _follow_nodes(self) -> None:
        while not self._stopping.is_set():
            try:
                await asyncio.wait_for(self._stopping.wait(), timeout=self._refresh)
                return
            except asyncio.TimeoutError:
                pass
            try:
                addresses = await self._discover()
            except HourglassError as error:
                log.warning("cannot read the node list (keeping %s): %s", self.nodes, error)
                continue
            if self._stopping.is_set():
                return
            for address in addresses:
                if address not in self._subscriptions:
                    log.info("node %s joined; subscribing", address)
                    self._subscribe(address)
            gone = [a for a in self._subscriptions if a not in addresses]
            for address in gone:
                log.info("node %s left the cluster; closing its stream", address)
                await self._subscriptions[address].close(self._close_timeout)
                self._subscriptions.pop(address, None)

    def _spawn(self, delivery: Delivery, stream: _Stream) -> None:
        task = asyncio.create_task(
            self._handle(delivery, stream),
            name=f"hourglass-handler-{delivery.workflow_id}/{delivery.timer_id}",
        )
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    async def _handle(self, delivery: Delivery, stream: _Stream) -> None:
        try:
            try:
                await self._handler(delivery)
            except asyncio.CancelledError:
                log.info(
                    "handler of %s/%s (attempt %d) cancelled; it will be delivered again",
                    delivery.workflow_id,
                    delivery.timer_id,
                    delivery.attempt,
                )
                raise
            except Exception:
                self._failed += 1
                log.exception(
                    "handler failed on %s/%s (attempt %d); not acknowledged, it will be "
                    "delivered again",
                    delivery.workflow_id,
                    delivery.timer_id,
                    delivery.attempt,
                )
                return
            self._succeeded += 1
            self._ack(delivery, stream)
        finally:
            self._slots.release()

    def _ack(self, delivery: Delivery, stream: _Stream) -> None:
        """Acks on the stream the delivery came from. Only that stream may: a node refuses
        an ack arriving on any other stream (its deliveries went back to the queue when it
        broke), so if it is gone the timer is delivered again."""
        if stream.ack(delivery):
            self._acked += 1
            return
        log.info(
            "cannot acknowledge %s/%s: the stream to %s is gone; it will be delivered again",
            delivery.workflow_id,
            delivery.timer_id,
            stream.address,
        )

    def _fail(self, error: HourglassError) -> None:
        """A subscription was refused for good: stop the worker, and make run() raise."""
        if self._fatal is None:
            self._fatal = error
            log.error("worker %s stopping: %s", self.worker_id, error)
        if self._shutdown_task is None:
            self._shutdown_task = asyncio.create_task(self._shutdown(self._shutdown_timeout))

    async def _shutdown_now(self, timeout: float) -> None:
        if not self._started:
            self._started = True
            self._stopping.set()
            self._stopped.set()
            return
        if self._shutdown_task is None:
            self._shutdown_task = asyncio.create_task(self._shutdown(timeout))
        await asyncio.shield(self._shutdown_task)

    async def _shutdown(self, timeout: float) -> None:
        self._stopping.set()
        self._slots.close()
        if self._supervisor is not None:
            self._supervisor.cancel()
            await asyncio.wait({self._supervisor})
        running = set(self._handlers)
        if running:
            log.info("waiting up to %.1f s for %d running handlers", timeout, len(running))
            late = running
            if timeout > 0:
                _, late = await asyncio.wait(running, timeout=timeout)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)
        await asyncio.gather(*(s.close(self._close_timeout) for s in self._subscriptions.values()))
        self._stopped.set()
        log.info("worker %s stopped", self.worker_id)
