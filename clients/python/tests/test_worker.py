"""The Worker against a real 3-node cluster."""

from __future__ import annotations

import asyncio

import pytest
from conftest import ACK_TIMEOUT_S, eventually
from localcluster import LocalCluster

import hourglass
from hourglass import Delivery, TimerState


async def _states(client: hourglass.Client, keys: list[tuple[str, str]]) -> list[TimerState]:
    return [(await client.get(w, t)).state for w, t in keys]


async def _all_completed(client: hourglass.Client, keys: list[tuple[str, str]]) -> bool:
    return all(s is TimerState.COMPLETED for s in await _states(client, keys))


async def test_worker_receives_and_acks(
    cluster: LocalCluster, client: hourglass.Client, unique: str
) -> None:
    seen: list[Delivery] = []

    async def handle(delivery: Delivery) -> None:
        seen.append(delivery)

    keys = [(f"{unique}-w{i}", "t") for i in range(6)]
    async with hourglass.Worker(client, unique, handle) as worker:
        assert sorted(worker.nodes) == sorted(cluster.endpoints)
        scheduled: dict[str, hourglass.Timer] = {}
        for i, (workflow, timer_id) in enumerate(keys):
            result = await client.schedule(
                workflow, timer_id, delay=0.5, queue=unique, payload=f"p{i}".encode()
            )
            scheduled[workflow] = result.timer
        await eventually(lambda: len(seen) >= len(keys), 20, "every timer delivered")
        # Acknowledged timers complete; unacknowledged ones would stay FIRED.
        await eventually(lambda: _all_completed(client, keys), 10, "every timer completed")
        assert worker.stats.acked == len(keys) and worker.stats.failed == 0
    assert worker.stopped
    assert sorted(d.workflow_id for d in seen) == sorted(w for w, _ in keys)
    for d in seen:
        timer = scheduled[d.workflow_id]
        assert d.attempt == 1
        assert d.queue == unique and d.payload == f"p{d.workflow_id.rsplit('w', 1)[1]}".encode()
        assert d.fire_at == timer.fire_at
        assert d.fired_at is not None and d.fired_at >= d.fire_at
        assert d.partition == timer.partition
        assert d.node in cluster.endpoints


async def test_a_failing_handler_gets_the_delivery_again(
    client: hourglass.Client, unique: str
) -> None:
    attempts: list[int] = []

    async def handle(delivery: Delivery) -> None:
        attempts.append(delivery.attempt)
        if delivery.attempt == 1:
            raise RuntimeError("the first attempt fails")

    async with hourglass.Worker(client, unique, handle) as worker:
        await client.schedule(unique, "flaky", delay=0.2, queue=unique)
        await eventually(lambda: len(attempts) >= 2, ACK_TIMEOUT_S + 15, "a redelivery")
        await eventually(
            lambda: _all_completed(client, [(unique, "flaky")]), 10, "the timer completed"
        )
        assert worker.stats.failed == 1 and worker.stats.acked == 1
    assert attempts == [1, 2]


async def test_concurrency_is_bounded(client: hourglass.Client, unique: str) -> None:
    running = 0
    peak = 0
    handled: list[Delivery] = []

    async def handle(delivery: Delivery) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        try:
            await asyncio.sleep(0.3)
        finally:
            running -= 1
        handled.append(delivery)

    keys = [(f"{unique}-w{i}", "t") for i in range(8)]
    async with hourglass.Worker(client, unique, handle, concurrency=2):
        await client.schedule_batch(
            [hourglass.ScheduleRequest(w, t, delay=0.5, queue=unique) for w, t in keys]
        )
        await eventually(lambda: len(handled) >= len(keys), 30, "every timer handled")
    assert peak == 2
    # Flow control kept every delivery within its ack timeout: none came twice.
    assert sorted(d.workflow_id for d in handled) == sorted(w for w, _ in keys)
    assert all(d.attempt == 1 for d in handled)


async def test_graceful_shutdown(client: hourglass.Client, unique: str) -> None:
    started = asyncio.Event()
    release = asyncio.Event()
    handled: list[str] = []

    async def slow(delivery: Delivery) -> None:
        started.set()
        await release.wait()
        handled.append(delivery.timer_id)

    worker = hourglass.Worker(client, unique, slow)
    await worker.start()
    await client.schedule(unique, "first", delay=0.2, queue=unique)
    await asyncio.wait_for(started.wait(), 20)

    stopping = asyncio.create_task(worker.stop(timeout=30))
    # Fired while the worker is stopping: it must not be handled by this worker.
    await client.schedule(unique, "second", delay=0.2, queue=unique)
    await asyncio.sleep(1.5)
    assert not stopping.done(), "stop() returned while a handler was still running"
    release.set()
    await asyncio.wait_for(stopping, 15)
    assert worker.stopped and handled == ["first"]
    # The finished handler's ack went out before the streams closed.
    await eventually(
        lambda: _all_completed(client, [(unique, "first")]), 10, "the first timer completed"
    )

    # A handler that outlives the shutdown timeout is cancelled, its delivery not acknowledged.
    cancelled = asyncio.Event()

    async def stuck(delivery: Delivery) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    seen: list[Delivery] = []

    async def record(delivery: Delivery) -> None:
        seen.append(delivery)

    worker = hourglass.Worker(client, unique, stuck)
    await worker.start()
    await eventually(lambda: worker.stats.running == 1, 20, "the second timer being handled")
    loop = asyncio.get_running_loop()
    began = loop.time()
    await worker.stop(timeout=0.5)
    assert cancelled.is_set() and loop.time() - began < 5
    assert (await client.get(unique, "second")).state is TimerState.FIRED

    # Both unacknowledged deliveries of "second" come back, to the next worker.
    async with hourglass.Worker(client, unique, record):
        await eventually(lambda: len(seen) >= 1, ACK_TIMEOUT_S + 15, "the second timer again")
        await eventually(
            lambda: _all_completed(client, [(unique, "second")]), 10, "second completed"
        )
    assert [d.timer_id for d in seen] == ["second"] and seen[0].attempt >= 3


async def test_worker_follows_the_node_list(cluster: LocalCluster, unique: str) -> None:
    async with cluster.client() as any_node:
        status = await any_node.cluster_status()
    leaders = {p.partition: status.leader_of(p.partition) for p in status.partitions}
    leading = {
        n.address: [p for p, leader in leaders.items() if leader and leader.address == n.address]
        for n in cluster.nodes
    }
    # The worker is told about one node only; pick one that does not lead every partition, so
    # some deliveries can only come from nodes it learned of through ClusterStatus.
    entry = min(cluster.nodes, key=lambda n: len(leading[n.address]))
    assert len(leading[entry.address]) < len(leaders)

    seen: list[Delivery] = []

    async def handle(delivery: Delivery) -> None:
        seen.append(delivery)

    async with (
        cluster.client(entry.id) as client,
        hourglass.Worker(client, unique, handle, refresh_interval=0.5) as worker,
    ):
        assert sorted(worker.nodes) == sorted(cluster.endpoints)
        partitions: dict[int, str] = {}
        i = 0
        while len(partitions) < len(leaders):
            workflow = f"{unique}-w{i}"
            result = await client.schedule(workflow, "t", delay=0.3, queue=unique)
            partitions.setdefault(result.timer.partition, workflow)
            i += 1
        await eventually(lambda: len(seen) >= i, 20, "every timer delivered")
    elsewhere = {d.node for d in seen} - {entry.address}
    assert elsewhere, "no delivery came from a node the worker was not given"


async def test_a_refused_subscription_stops_the_worker(
    client: hourglass.Client, unique: str
) -> None:
    async def handle(delivery: Delivery) -> None:
        raise AssertionError("nothing may be delivered")

    worker = hourglass.Worker(client, unique, handle)
    worker.credits = 20_000  # past the server's limit, which the constructor would refuse
    with pytest.raises(hourglass.InvalidArgument) as error:
        await asyncio.wait_for(worker.run(), 20)
    assert error.value.field == "credits"
    assert worker.stopped


def test_worker_arguments_are_checked(client: hourglass.Client) -> None:
    async def handle(delivery: Delivery) -> None:
        pass

    with pytest.raises(hourglass.InvalidArgument) as error:
        hourglass.Worker(client, "no spaces", handle)
    assert error.value.field == "queue"
    with pytest.raises(hourglass.InvalidArgument):
        hourglass.Worker(client, "q", handle, credits=10_001)
    with pytest.raises(hourglass.InvalidArgument):
        hourglass.Worker(client, "q", handle, concurrency=0)
    assert hourglass.Worker(client, "q", handle, concurrency=3).credits == 3


async def test_run_returns_after_stop_and_cancellation_stops(
    client: hourglass.Client, unique: str
) -> None:
    async def handle(delivery: Delivery) -> None:
        pass

    worker = hourglass.Worker(client, unique, handle)
    runner = asyncio.create_task(worker.run())
    await eventually(lambda: worker.stats.streams == 3, 20, "three streams open")
    await worker.stop()
    await asyncio.wait_for(runner, 10)
    assert worker.stats.streams == 0

    worker = hourglass.Worker(client, unique, handle)
    runner = asyncio.create_task(worker.run())
    await eventually(lambda: worker.stats.streams == 3, 20, "three streams open")
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner
    assert worker.stopped and worker.stats.streams == 0
