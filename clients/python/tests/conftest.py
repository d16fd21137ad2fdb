"""Fixtures: one real 3-node cluster for the session, a client of it, unique names."""

from __future__ import annotations

import asyncio
import inspect
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest
import pytest_asyncio
from localcluster import LocalCluster

import hourglass

#: Short enough that a failed handler's delivery comes again within the tests' patience.
ACK_TIMEOUT_S = 3.0
CLUSTER_TOML = f"[timers]\nack_timeout_ms = {int(ACK_TIMEOUT_S * 1000)}\n"


@pytest_asyncio.fixture(scope="session")
async def cluster() -> AsyncIterator[LocalCluster]:
    """A 3-node, 4-partition cluster shared by the tests that leave it running."""
    c = LocalCluster(nodes=3, partitions=4, extra_toml=CLUSTER_TOML)
    try:
        await c.start()
        yield c
    finally:
        c.close()


@pytest_asyncio.fixture
async def client(cluster: LocalCluster) -> AsyncIterator[hourglass.Client]:
    async with cluster.client() as c:
        yield c


@pytest.fixture
def unique() -> Iterator[str]:
    """A prefix no other test uses, for workflow ids and queue names."""
    yield f"t{uuid.uuid4().hex[:10]}"


async def eventually(
    check: Callable[[], bool | Awaitable[bool]], within: float, what: str, every: float = 0.1
) -> None:
    """Polls ``check`` (sync or async) until it holds, failing after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within

    async def holds() -> bool:
        result = check()
        return await result if inspect.isawaitable(result) else result

    while not await holds():
        if loop.time() > deadline:
            pytest.fail(f"not within {within} s: {what}")
        await asyncio.sleep(every)
