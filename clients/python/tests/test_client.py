"""The Client against a real 3-node cluster."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta, timezone

import grpc
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from localcluster import LocalCluster, free_port

import hourglass
from hourglass import _status
from hourglass._pb import timers_pb2, timers_pb2_grpc


async def test_schedule_get_list_cancel_round_trip(client: hourglass.Client, unique: str) -> None:
    workflow = f"{unique}-order"
    before = datetime.now(timezone.utc)
    first = await client.schedule(workflow, "reminder", delay=timedelta(hours=1), payload=b"hi")
    assert first.created
    timer = first.timer
    assert (timer.workflow_id, timer.timer_id, timer.queue) == (workflow, "reminder", "default")
    assert timer.state is hourglass.TimerState.SCHEDULED
    assert timer.payload == b"hi"
    assert before + timedelta(minutes=59) < timer.fire_at < before + timedelta(minutes=61)
    assert timer.fire_at.tzinfo is not None
    assert timer.created_at is not None and timer.fired_at is None

    # Idempotent: the identical request returns the same timer.
    again = await client.schedule(workflow, "reminder", delay=timedelta(hours=1), payload=b"hi")
    assert not again.created
    assert again.timer == timer

    at = datetime(2031, 5, 17, 8, 30, 15, 250000, tzinfo=timezone(timedelta(hours=2)))
    renewal = await client.schedule(
        workflow, "renewal", at=at, queue="billing", payload=b"\x00\xff"
    )
    assert renewal.timer.fire_at == at  # same instant, kept to the millisecond
    assert renewal.timer.fire_at.utcoffset() == timedelta(0)
    await client.schedule(workflow, "survey", delay=7200.0)

    got = await client.get(workflow, "renewal")
    assert got.queue == "billing" and got.payload == b"\x00\xff"
    assert got.partition == renewal.timer.partition

    pages = [page async for page in client.list(workflow, page_size=2)]
    assert [len(p) for p in pages] == [2, 1]
    assert pages[0].next_page_token and not pages[-1].next_page_token
    assert [t.timer_id for p in pages for t in p] == ["reminder", "renewal", "survey"]

    cancelled = await client.cancel(workflow, "reminder")
    assert cancelled.outcome is hourglass.CancelOutcome.CANCELLED
    assert cancelled.timer.state is hourglass.TimerState.CANCELLED
    assert (await client.get(workflow, "reminder")).state is hourglass.TimerState.CANCELLED
    # Cancelling again is idempotent.
    assert (await client.cancel(workflow, "reminder")).outcome is hourglass.CancelOutcome.CANCELLED

    with pytest.raises(hourglass.NotFound):
        await client.cancel(workflow, "no-such-timer")


async def test_schedule_batch(client: hourglass.Client, unique: str) -> None:
    await client.schedule(f"{unique}-w0", "taken", delay=60.0)
    requests = [
        hourglass.ScheduleRequest(f"{unique}-w{i}", "t", delay=timedelta(minutes=i + 1))
        for i in range(6)
    ] + [
        hourglass.ScheduleRequest(f"{unique}-w0", "bad", delay=1.0, queue="no spaces"),
        hourglass.ScheduleRequest(f"{unique}-w0", "taken", delay=120.0),  # other definition
        hourglass.ScheduleRequest(f"{unique}-w1", "t", delay=timedelta(minutes=2)),  # repeat
    ]
    outcomes = await client.schedule_batch(requests)
    assert len(outcomes) == len(requests)
    scheduled = outcomes[:6]
    assert all(isinstance(o, hourglass.ScheduleResult) and o.created for o in scheduled)
    partitions = {o.timer.partition for o in scheduled if isinstance(o, hourglass.ScheduleResult)}
    assert len(partitions) > 1, "the batch should span partitions"
    bad = outcomes[6]
    assert isinstance(bad, hourglass.InvalidArgument) and bad.field == "queue"
    assert isinstance(outcomes[7], hourglass.AlreadyExists)
    repeat = outcomes[8]
    assert isinstance(repeat, hourglass.ScheduleResult) and not repeat.created
    assert (await client.get(f"{unique}-w5", "t")).state is hourglass.TimerState.SCHEDULED

    assert await client.schedule_batch([]) == []
    naive = datetime(2030, 1, 1)
    with pytest.raises(hourglass.InvalidArgument) as error:
        await client.schedule_batch([hourglass.ScheduleRequest(f"{unique}-x", "t", at=naive)])
    assert error.value.field == "at"
    with pytest.raises(hourglass.NotFound):
        await client.get(f"{unique}-x", "t")


async def test_bad_input_raises_typed_exceptions(client: hourglass.Client, unique: str) -> None:
    # Checked by the server, which names the field.
    with pytest.raises(hourglass.InvalidArgument) as error:
        await client.schedule("", "t", delay=1.0)
    assert error.value.field == "workflow_id"
    assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert isinstance(error.value, ValueError)
    with pytest.raises(hourglass.InvalidArgument) as error:
        await client.schedule(unique, "t", delay=1.0, payload=b"x" * (64 * 1024 + 1))
    assert error.value.field == "payload"
    with pytest.raises(hourglass.InvalidArgument) as error:
        await client.list_page(unique, page_size=5000)
    assert error.value.field == "page_size"
    with pytest.raises(hourglass.InvalidArgument) as error:
        await client.schedule(unique, "t", at=datetime(1960, 1, 1, tzinfo=timezone.utc))
    assert error.value.field == "fire_at"

    # Checked by the SDK before anything is sent.
    with pytest.raises(hourglass.InvalidArgument, match="naive datetime") as error:
        await client.schedule(unique, "t", at=datetime(2030, 1, 1, 12, 0))
    assert error.value.field == "at" and error.value.code == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(hourglass.InvalidArgument, match="not both"):
        await client.schedule(unique, "t", delay=1.0, at=datetime.now(timezone.utc))
    with pytest.raises(hourglass.InvalidArgument, match="delay= or at="):
        await client.schedule(unique, "t")
    with pytest.raises(hourglass.InvalidArgument, match="negative"):
        await client.schedule(unique, "t", delay=timedelta(seconds=-1))
    with pytest.raises(hourglass.InvalidArgument, match="must be bytes"):
        await client.schedule(unique, "t", delay=1.0, payload="text")  # type: ignore[arg-type]
    with pytest.raises(hourglass.NotFound):
        await client.get(unique, "t")

    await client.schedule(unique, "same", delay=timedelta(hours=1))
    with pytest.raises(hourglass.AlreadyExists) as exists:
        await client.schedule(unique, "same", delay=timedelta(hours=2))
    assert isinstance(exists.value, hourglass.HourglassError)
    with pytest.raises(hourglass.NotFound) as missing:
        await client.get(unique, "missing")
    assert missing.value.code == grpc.StatusCode.NOT_FOUND and missing.value.target


async def test_a_non_leader_node_serves_calls(cluster: LocalCluster, unique: str) -> None:
    async with cluster.client() as client:
        timer = (await client.schedule(unique, "t", delay=3600.0)).timer
    leader = await cluster.leader_address(timer.partition)
    follower = next(n for n in cluster.nodes if n.address != leader)
    async with cluster.client(follower.id) as client:
        assert (await client.get(unique, "t")).partition == timer.partition
        assert (await client.cancel(unique, "t")).outcome is hourglass.CancelOutcome.CANCELLED


async def test_follows_the_leader_hint_of_a_real_node(
    cluster: LocalCluster, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with cluster.client() as client:
        timer = (await client.schedule(unique, "t", delay=3600.0)).timer
    leader = await cluster.leader_address(timer.partition)
    follower = next(n for n in cluster.nodes if n.address != leader)

    # A request that says it was already forwarded twice may not be forwarded again: the
    # follower answers UNAVAILABLE naming the leader in google.rpc details instead.
    hops = (("x-hourglass-hops", "2"),)
    channel = grpc.aio.insecure_channel(follower.address)
    try:
        stub = timers_pb2_grpc.TimersStub(channel)
        request = timers_pb2.GetRequest(workflow_id=unique, timer_id="t")
        with pytest.raises(grpc.aio.AioRpcError) as raw:
            await stub.Get(request, metadata=hops, timeout=10)
    finally:
        await channel.close(None)
    error = _status.error_from_rpc(raw.value, follower.address)
    assert isinstance(error, hourglass.Unavailable)
    assert error.leader == leader and error.retry_after == pytest.approx(0.2)
    assert error.reason == "NOT_LEADER"
    leader_node = next(n for n in cluster.nodes if n.address == leader)
    assert error.leader_id == leader_node.id
    assert _status.is_retryable(error)
    # Only the standard details trailer: no custom hint metadata.
    trailers = [key for key, _ in _status._pairs(raw.value.trailing_metadata())]
    assert _status.DETAILS_KEY in trailers
    assert not [key for key in trailers if key.startswith("x-hourglass")], trailers

    # The client, given only the follower, goes where the hint points and gets the answer.
    caplog.set_level(logging.DEBUG, logger="hourglass.client")
    async with cluster.client(follower.id, metadata=hops) as client:
        got = await client.get(unique, "t")
    assert got.timer_id == "t"
    assert f"at the leader {leader}" in caplog.text


class _RichErrorTimers:
    """A stand-in node answering every Get with UNAVAILABLE and google.rpc details naming the
    leader, as nodes do."""

    def __init__(self, leader: str) -> None:
        self.leader = leader
        self.calls = 0

    def handler(self) -> grpc.GenericRpcHandler[timers_pb2.GetRequest, timers_pb2.GetResponse]:
        return grpc.method_handlers_generic_handler(
            "hourglass.v1.Timers",
            {
                "Get": grpc.unary_unary_rpc_method_handler(
                    self.get,
                    request_deserializer=timers_pb2.GetRequest.FromString,
                    response_serializer=timers_pb2.GetResponse.SerializeToString,
                )
            },
        )

    async def get(
        self, request: timers_pb2.GetRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> timers_pb2.GetResponse:
        self.calls += 1
        info = any_pb2.Any()
        info.Pack(
            error_details_pb2.ErrorInfo(
                reason="NOT_LEADER",
                domain=_status.ERROR_DOMAIN,
                metadata={"leader_address": self.leader},
            )
        )
        retry = any_pb2.Any()
        retry.Pack(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(nanos=10**8)))
        status = status_pb2.Status(
            code=code_pb2.UNAVAILABLE, message="not the leader", details=[info, retry]
        )
        await context.abort(
            grpc.StatusCode.UNAVAILABLE,
            "not the leader",
            (("grpc-status-details-bin", status.SerializeToString()),),
        )
        raise AssertionError("abort returns by raising")


async def test_follows_a_leader_named_in_google_rpc_details(
    cluster: LocalCluster, unique: str
) -> None:
    async with cluster.client() as client:
        timer = (await client.schedule(unique, "t", delay=3600.0)).timer
    leader = await cluster.leader_address(timer.partition)
    server = grpc.aio.server()
    fake = _RichErrorTimers(leader)
    server.add_generic_rpc_handlers((fake.handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with hourglass.Client([f"127.0.0.1:{port}"]) as client:
            got = await client.get(unique, "t")
        assert got.partition == timer.partition
        assert fake.calls == 1
    finally:
        await server.stop(None)


async def test_retries_unavailable_endpoints_until_the_deadline(
    cluster: LocalCluster, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    dead = f"127.0.0.1:{free_port()}"
    policy = hourglass.RetryPolicy(deadline=1.5, initial_backoff=0.05, max_backoff=0.2)
    caplog.set_level(logging.DEBUG, logger="hourglass.client")
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with hourglass.Client([dead], retry=policy) as client:
        with pytest.raises(hourglass.Unavailable) as error:
            await client.schedule(unique, "t", delay=60.0)
    elapsed = loop.time() - started
    assert 1.0 < elapsed < 3.0, elapsed
    assert error.value.target == dead
    assert caplog.text.count("retrying") >= 4

    # With a live endpoint next to the dead one, the retry lands on it.
    async with hourglass.Client([dead, cluster.nodes[0].address], retry=policy) as client:
        for i in range(3):
            assert (await client.schedule(unique, f"t{i}", delay=60.0)).created


async def test_closed_client_raises(cluster: LocalCluster) -> None:
    client = cluster.client()
    await client.cluster_status()
    await client.close()
    with pytest.raises(hourglass.ClientClosed):
        await client.cluster_status()

    # Closed while a call is in flight (against a node that never answers).
    server = grpc.aio.server()
    answered = asyncio.Event()

    async def hang(request: timers_pb2.GetRequest, context: object) -> timers_pb2.GetResponse:
        answered.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "hourglass.v1.Timers",
                {
                    "Get": grpc.unary_unary_rpc_method_handler(
                        hang,
                        request_deserializer=timers_pb2.GetRequest.FromString,
                        response_serializer=timers_pb2.GetResponse.SerializeToString,
                    )
                },
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        client = hourglass.Client([f"127.0.0.1:{port}"])
        call = asyncio.create_task(client.get("w", "t"))
        await asyncio.wait_for(answered.wait(), 10)
        await client.close()
        with pytest.raises(hourglass.ClientClosed):
            await asyncio.wait_for(call, 10)
    finally:
        await server.stop(None)


async def test_cluster_status(client: hourglass.Client, cluster: LocalCluster) -> None:
    status = await client.cluster_status()
    assert sorted(n.address for n in status.nodes) == sorted(cluster.endpoints)
    assert status.partition_count == 4 and len(status.partitions) == 4
    assert all(len(p.replicas) == 3 and p.leader for p in status.partitions)
    leader = status.leader_of(0)
    assert leader is not None and leader.address in cluster.endpoints
