"""Timers survive the whole cluster going down: the example's scenario, on its own cluster."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio
from conftest import CLUSTER_TOML, eventually
from localcluster import LocalCluster

import hourglass
from hourglass import Delivery, TimerState

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "order_workflow.py"


@pytest_asyncio.fixture(scope="module")
async def restartable() -> AsyncIterator[LocalCluster]:
    """A cluster of its own, since these tests take every node down."""
    c = LocalCluster(nodes=3, partitions=4, extra_toml=CLUSTER_TOML)
    try:
        await c.start()
        yield c
    finally:
        c.close()


def _down(cluster: LocalCluster, sig: int) -> None:
    for node in cluster.nodes:
        cluster.stop(node.id, sig)
    assert not any(n.running for n in cluster.nodes)


async def test_a_running_worker_gets_a_timer_that_fell_due_while_every_node_was_down(
    restartable: LocalCluster, unique: str
) -> None:
    cluster = restartable
    seen: list[Delivery] = []

    async def handle(delivery: Delivery) -> None:
        seen.append(delivery)

    async with (
        cluster.client() as client,
        hourglass.Worker(client, unique, handle, refresh_interval=1.0) as worker,
    ):
        timer = (await client.schedule(unique, "wake", delay=2.0, queue=unique)).timer
        _down(cluster, signal.SIGKILL)  # a crash of every node, right after the commit
        await asyncio.sleep(4.0)  # the timer falls due while nothing runs
        assert seen == []
        for node in cluster.nodes:
            cluster.spawn(node.id)
        await eventually(lambda: len(seen) >= 1, 90, "the delivery after the restart")
        await eventually(lambda: worker.stats.acked >= 1, 10, "the delivery acknowledged")

        async def completed() -> bool:
            return (await client.get(unique, "wake")).state is TimerState.COMPLETED

        await eventually(completed, 30, "the timer completed")
    # At least once: a leader change while the cluster settles may deliver it again.
    assert {(d.workflow_id, d.timer_id) for d in seen} == {(unique, "wake")}
    assert seen[0].fire_at == timer.fire_at and seen[0].attempt == 1


def _example(cluster: LocalCluster, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HOURGLASS_ENDPOINTS=",".join(cluster.endpoints))
    return subprocess.run(
        [sys.executable, str(EXAMPLE), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


async def test_order_workflow_example_wakes_after_the_cluster_was_down(
    restartable: LocalCluster, unique: str
) -> None:
    cluster = restartable
    placed = await asyncio.to_thread(
        _example, cluster, "place", unique, "--sleep", "3s", timeout=60
    )
    assert placed.returncode == 0, placed.stderr
    assert f"order {unique}: sleeping until" in placed.stdout

    _down(cluster, signal.SIGTERM)
    await asyncio.sleep(4.0)
    for node in cluster.nodes:
        cluster.spawn(node.id)
    await cluster.wait_ready()

    woke = await asyncio.to_thread(_example, cluster, "worker", "--exit-after", "1", timeout=90)
    assert woke.returncode == 0, woke.stderr
    assert f"order {unique}: woke up after the durable sleep" in woke.stdout
    assert "stopped after 1 follow-ups" in woke.stdout

    shown = await asyncio.to_thread(_example, cluster, "status", unique, timeout=60)
    assert f"order-{unique}/follow-up: completed" in shown.stdout, shown.stdout
