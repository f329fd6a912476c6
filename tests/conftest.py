"""Shared fixtures: real local backends and a pool factory with short timings."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from wsclient import Backend, Connection, WebSocketPool
from wsclient.config import TransportName
from wsclient.testing import BackendServer

# Timings short enough for tests, long enough for a loaded 2-core machine.
FAST: dict[str, Any] = {
    "reconnect": {"initial_delay": 0.02, "max_delay": 0.1, "jitter": 0.2},
    "health_check": {"enabled": False},
    "connect_timeout": 2.0,
    "acquire_timeout": 5.0,
    "shutdown_timeout": 2.0,
}


@pytest.fixture
async def servers() -> AsyncIterator[list[BackendServer]]:
    """Three running in-process backends."""
    started = [BackendServer(name=f"s{i}") for i in range(3)]
    await asyncio.gather(*(s.start() for s in started))
    yield started
    await asyncio.gather(*(s.stop() for s in started))


#: Every transport the connection and pool behaviour is checked on (picows comes with
#: the ``fast`` extra, which ``make install`` installs: these tests never skip).
TRANSPORTS: tuple[TransportName, ...] = ("aiohttp", "picows")


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> TransportName:
    """The transport under test: each requesting test runs once per transport."""
    name: TransportName = request.param
    return name


PoolFactory = Callable[..., Awaitable[WebSocketPool]]


@pytest.fixture
async def make_pool(transport: TransportName) -> AsyncIterator[PoolFactory]:
    """Start pools with FAST defaults on each transport (a test using it runs once per
    transport); every pool is closed (and checked) at teardown."""
    pools: list[WebSocketPool] = []

    async def factory(
        servers: list[BackendServer], weights: list[int] | None = None, **options: Any
    ) -> WebSocketPool:
        weights = weights or [1] * len(servers)
        backends = [
            Backend(id=f"b{i}", url=s.url, weight=w)
            for i, (s, w) in enumerate(zip(servers, weights, strict=True))
        ]
        pool = WebSocketPool(**{**FAST, "transport": transport, "backends": backends, **options})
        await pool.start()
        pools.append(pool)
        return pool

    yield factory
    for pool in pools:
        await pool.close(timeout=1.0)
        assert pool.size == 0


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Yield to the loop until ``predicate`` holds (bounded); for state with no event."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"condition not reached within {timeout} s")
        await asyncio.sleep(0.001)


async def worst_loop_stall(seconds: float, step: float = 0.01) -> float:
    """The longest lateness of ``asyncio.sleep(step)`` over ``seconds``, with the garbage
    collector paused: a full collection of the whole suite's heap can stall the loop
    for a few hundred ms, which is the test process's doing, not the pool's."""
    loop = asyncio.get_running_loop()
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        worst, end = 0.0, loop.time() + seconds
        while loop.time() < end:
            before = loop.time()
            await asyncio.sleep(step)
            worst = max(worst, loop.time() - before - step)
        return worst
    finally:
        if was_enabled:  # leave it as the caller had it
            gc.enable()


async def assert_echo(conn: Connection, data: str | bytes) -> None:
    """Send ``data`` and assert the echo backend sends exactly it back."""
    await conn.send(data)
    assert (await conn.receive(timeout=5)).data == data
