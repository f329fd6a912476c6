"""pool.stats(): a PoolStats snapshot of counts by state and backend, acquires by
outcome, wait times, reconnects and ejections, against real local backends."""

from __future__ import annotations

import asyncio
import json

import pytest

from wsclient import AcquireTimeoutError, NoHealthyBackendError, PoolClosedError, WebSocketPool
from wsclient.stats import PoolStats, StatsRecorder
from wsclient.testing import BackendServer

from .conftest import FAST, PoolFactory, until


async def test_stats_count_acquires_by_outcome_and_wait_times(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """Immediate, waited, timed-out and cancelled acquires each land in their own count;
    wait times summarise only the acquires that waited."""
    pool = await make_pool(servers[:1], min_connections=1, max_connections=1)
    for _ in range(5):
        async with pool.acquire():
            pass
    held = await pool.acquire()
    waiter = asyncio.create_task(pool.acquire())
    await until(lambda: pool.waiting_count == 1)
    assert pool.stats().pending_requests == 1
    await asyncio.sleep(0.02)
    pool.release(held)
    pool.release(await waiter)
    held = await pool.acquire()
    with pytest.raises(AcquireTimeoutError):
        await pool.acquire(timeout=0.01)
    cancelled = asyncio.create_task(pool.acquire())
    await until(lambda: pool.waiting_count == 1)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    pool.release(held)

    stats = pool.stats()
    a = stats.acquires
    assert (a.immediate, a.waited, a.timeout, a.cancelled, a.no_backend, a.closed) == (
        7,
        1,
        1,
        1,
        0,
        0,
    )
    assert a.total == 10
    assert stats.wait_time.waited == 1
    assert 0.015 <= stats.wait_time.max_seconds < 5
    assert stats.wait_time.p50_seconds == stats.wait_time.max_seconds
    mean = stats.wait_time.total_seconds / 8
    assert stats.wait_time.mean_seconds == pytest.approx(mean, abs=1e-6)
    assert stats.backends["b0"].acquires == 8 and stats.backends["b0"].share == 1.0
    assert (stats.size, stats.connections.idle, stats.connections.active) == (1, 1, 0)
    assert stats.state == "running" and stats.max_connections == 1


async def test_stats_shares_follow_weights_and_json_matches_schema(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """Shares per backend follow the 2:1:1 weights; the JSON dump validates against the
    model again (what `wsclient status --json` prints)."""
    pool = await make_pool(servers, [2, 1, 1], min_connections=4, max_connections=4)
    for _ in range(400):
        async with pool.acquire():
            pass
    stats = pool.stats()
    shares = {bid: b.share for bid, b in stats.backends.items()}
    assert shares == pytest.approx({"b0": 0.5, "b1": 0.25, "b2": 0.25}, abs=0.03)
    assert sum(b.acquires for b in stats.backends.values()) == stats.acquires.immediate == 400
    assert stats.opened == 4 and stats.lost == 0 and stats.reconnects == 0
    again = PoolStats.model_validate(json.loads(stats.model_dump_json()))
    assert again == stats
    assert "acquires" in PoolStats.model_json_schema()["properties"]
    with pytest.raises(Exception, match="frozen"):
        stats.size = 0  # type: ignore[misc]


async def test_stats_count_lost_connections_reconnects_and_ejections(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """A backend dropping every connection: lost links, one ejection, breaker
    transitions and reconnects are counted on that backend only."""
    pool = await make_pool(
        servers[:2],
        min_connections=4,
        circuit_breaker={"failure_threshold": 2, "recovery_timeout": 0.2},
    )
    opened = asyncio.Event()
    pool.on("breaker-open", lambda backend_id: opened.set())
    await servers[1].drop_all()
    await asyncio.wait_for(opened.wait(), 5)
    # Demand brings it back: a pick of the half-open backend opens a trial connection.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while pool.stats().backends["b1"].reconnects < 1:
        assert loop.time() < deadline, pool.stats()
        held = [await pool.acquire() for _ in range(4)]
        for conn in held:
            pool.release(conn)
        await asyncio.sleep(0.02)
    stats = pool.stats()
    b1, b0 = stats.backends["b1"], stats.backends["b0"]
    assert b1.lost == 2 and b1.ejections == 1 and b1.breaker_transitions["open"] == 1
    assert (b0.lost, b0.ejections, b0.reconnects) == (0, 0, 0)
    assert stats.lost == 2 and stats.ejections == 1 and stats.breaker_opens == 1
    assert stats.reconnects == b1.reconnects


async def test_stats_count_refusals_no_backend_and_closed() -> None:
    """No eligible backend and a closed pool are outcomes of their own."""
    pool = WebSocketPool(**{**FAST, "backends": ["ws://127.0.0.1:9/ws"]}, min_connections=0)
    with pytest.raises(Exception, match="not started"):
        await pool.acquire()
    async with pool:
        await pool.remove_backend("ws://127.0.0.1:9/ws")
        with pytest.raises(NoHealthyBackendError):
            await pool.acquire()
    with pytest.raises(PoolClosedError):
        await pool.acquire()
    a = pool.stats().acquires
    assert (a.no_backend, a.closed) == (1, 2)  # "not started" is refused as not running
    assert pool.stats().state == "closed"


def test_percentiles_over_recent_waits() -> None:
    """The percentiles are over the last 1,024 waits, nearest rank."""
    recorder = StatsRecorder()
    for i in range(1, 101):
        recorder.waited_for(i / 1000)
    summary = recorder.wait_summary(served=200)
    assert (summary.p50_seconds, summary.p99_seconds) == (0.05, 0.099)
    assert summary.mean_seconds == pytest.approx(5.05 / 200)
    for _ in range(2000):
        recorder.waited_for(1.0)
    assert recorder.wait_summary(served=3000).p50_seconds == 1.0
