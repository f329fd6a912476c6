"""Health and failover against real faults: SIGKILL, stalls, 503s, refusals, all-down."""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest

from wsclient import (
    Backend,
    ConnectionClosedError,
    NoHealthyBackendError,
    WebSocketPool,
    WSClientError,
)
from wsclient.core import Slot, SlotState
from wsclient.event_names import EventName
from wsclient.testing import BackendProcess, BackendServer

from .conftest import FAST, PoolFactory, assert_echo, until

# Short, explicit timings for failure detection.
PROBE = {"interval": 0.1, "timeout": 0.5, "unhealthy_threshold": 2, "healthy_threshold": 2}
BREAKER = {"failure_threshold": 2, "recovery_timeout": 0.3}


class EventLog:
    """Records pool events with their arguments, and lets tests await one."""

    def __init__(self, pool: WebSocketPool, *names: EventName) -> None:
        self.items: list[tuple[str, tuple[Any, ...]]] = []
        self._changed = asyncio.Event()
        for name in names:
            pool.on(name, self._recorder(name))

    def _recorder(self, name: str) -> Any:
        def record(*args: Any) -> None:
            self.items.append((name, args))
            self._changed.set()

        return record

    def count(self, name: str, first_arg: str | None = None) -> int:
        return sum(
            1 for n, args in self.items if n == name and (first_arg is None or args[0] == first_arg)
        )

    def names_for(self, backend_id: str) -> list[str]:
        return [n for n, args in self.items if args and args[0] == backend_id]

    async def wait_for(self, name: str, first_arg: str, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not self.count(name, first_arg):
                self._changed.clear()
                await self._changed.wait()


@pytest.fixture
async def processes() -> AsyncIterator[list[BackendProcess]]:
    """Three backends, each in its own process so one can be SIGKILLed."""
    procs = [BackendProcess(name=f"p{i}") for i in range(3)]
    await asyncio.gather(*(p.start() for p in procs))
    yield procs
    await asyncio.gather(*(p.stop() for p in procs))


async def test_sigkill_one_backend_under_traffic_then_recover(
    processes: list[BackendProcess],
) -> None:
    """SIGKILL under load: no picks after detection, events once, breaker cycles on return."""
    pool = WebSocketPool(
        **{
            **FAST,
            "backends": [Backend(id=f"b{i}", url=p.url) for i, p in enumerate(processes)],
            "min_connections": 3,
            "health_check": {**PROBE, "path": "/health"},
            "circuit_breaker": BREAKER,
        }
    )
    log = EventLog(
        pool,
        "backend-unhealthy",
        "backend-healthy",
        "breaker-open",
        "breaker-half-open",
        "breaker-closed",
    )
    served: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    stop = asyncio.Event()
    killed_detected = asyncio.Event()
    picks_after_detection: list[str] = []

    async def worker() -> None:
        while not stop.is_set():
            try:
                async with pool.acquire(timeout=2) as conn:
                    if killed_detected.is_set() and conn.backend_id == "b1":
                        picks_after_detection.append(conn.id)
                    await conn.send("x")
                    await conn.receive(timeout=2)
                    served[conn.backend_id] += 1
            except (WSClientError, TimeoutError) as exc:
                errors[type(exc).__name__] += 1
            await asyncio.sleep(0.002)

    async with pool:
        workers = [asyncio.create_task(worker()) for _ in range(6)]
        await until(lambda: served["b1"] > 5)
        await processes[1].kill()
        await log.wait_for("breaker-open", "b1")
        killed_detected.set()
        await log.wait_for("backend-unhealthy", "b1")
        before = sum(served.values())
        await until(lambda: sum(served.values()) > before + 30)
        assert picks_after_detection == []
        assert not pool.health_status()["b1"].eligible

        await processes[1].start()  # same port
        await log.wait_for("backend-healthy", "b1", timeout=10)
        await log.wait_for("breaker-closed", "b1", timeout=10)
        served_b1 = served["b1"]
        await until(lambda: served["b1"] > served_b1 + 5, timeout=10)
        stop.set()
        await asyncio.gather(*workers)

    assert log.count("backend-unhealthy", "b1") == 1
    assert log.count("backend-healthy", "b1") == 1
    transitions = [n for n in log.names_for("b1") if n.startswith("breaker")]
    assert transitions[:1] == ["breaker-open"]
    assert transitions[-2:] == ["breaker-half-open", "breaker-closed"]
    assert log.count("backend-unhealthy", "b0") == log.count("backend-unhealthy", "b2") == 0


async def test_stalled_peer_idle_connections_die_within_heartbeat(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """A backend that stops answering has its idle connections closed within interval+timeout."""
    pool = await make_pool(
        servers[:2],
        min_connections=4,
        heartbeat={"interval": 0.2, "timeout": 0.2},
        circuit_breaker={"failure_threshold": 10, "recovery_timeout": 5},
    )
    closed: list[tuple[str, int | None, float]] = []
    loop = asyncio.get_running_loop()
    pool.on("connection-closed", lambda b, c, code, r: closed.append((b, code, loop.time())))
    servers[0].ignore_pings()
    started = loop.time()
    await until(lambda: sum(1 for b, _, _ in closed if b == "b0") >= 2, timeout=3)
    first_two = [(code, t - started) for b, code, t in closed if b == "b0"][:2]
    for code, elapsed in first_two:
        assert code == 1006
        assert elapsed <= 0.2 + 0.2 + 0.25  # interval + timeout, with slack for a busy box
    assert pool.health_status()["b0"].consecutive_failures >= 2
    assert all(b == "b0" for b, _, _ in closed)


async def test_health_503_takes_backend_out_though_sockets_work(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """/health 503 marks the backend unhealthy at once; no acquires go there until it recovers."""
    pool = await make_pool(servers, min_connections=3, health_check={**PROBE, "path": "/health"})
    log = EventLog(pool, "backend-unhealthy", "backend-healthy")
    servers[2].set_health_status(503)
    await log.wait_for("backend-unhealthy", "b2")
    assert "503" in str(log.items[0][1][1])
    counts: Counter[str] = Counter()
    for _ in range(60):
        async with pool.acquire() as conn:
            counts[conn.backend_id] += 1
    assert counts["b2"] == 0 and counts["b0"] > 0 and counts["b1"] > 0
    await servers[2].wait_for_connections(0)  # its idle connections were closed
    servers[2].set_health_status(200)
    await log.wait_for("backend-healthy", "b2")
    seen = set()
    for _ in range(30):
        async with pool.acquire() as conn:
            seen.add(conn.backend_id)
    assert "b2" in seen
    assert log.count("backend-unhealthy", "b2") == 1


async def test_refused_connections_open_the_breaker_after_threshold(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """Connection refusals count against the breaker; it opens after failure_threshold."""
    await servers[1].refuse()
    pool = await make_pool(
        servers[:2],
        min_connections=0,
        circuit_breaker={"failure_threshold": 3, "recovery_timeout": 30},
        load_balancing="round-robin",
    )
    log = EventLog(pool, "breaker-open")
    served: list[str] = []

    async def traffic() -> None:
        while True:
            async with pool.acquire() as conn:
                served.append(conn.backend_id)
            await asyncio.sleep(0.005)  # pacing: lets the backoff delays pass between tries

    driver = asyncio.create_task(traffic())
    await log.wait_for("breaker-open", "b1")
    driver.cancel()
    await asyncio.gather(driver, return_exceptions=True)
    assert served and set(served) == {"b0"}  # refused opens fail over within the acquire
    status = pool.health_status()["b1"]
    assert status.breaker == "open"
    assert status.consecutive_failures == 3
    assert log.count("breaker-open", "b1") == 1
    assert status.last_error is not None and "refused" in status.last_error.lower()


async def test_all_down_fails_fast_and_recovers_without_restart(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """With every backend out, acquire fails in milliseconds; recovery needs no restart."""
    pool = await make_pool(
        servers[:2], min_connections=2, health_check={**PROBE, "path": "/health"}
    )
    log = EventLog(pool, "backend-unhealthy", "backend-healthy")
    for server in servers[:2]:
        server.set_health_status(503)
    await log.wait_for("backend-unhealthy", "b0")
    await log.wait_for("backend-unhealthy", "b1")
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(NoHealthyBackendError) as info:
        await pool.acquire(timeout=10)
    assert loop.time() - started < 0.05
    assert set(info.value.backends) == {"b0", "b1"}
    assert "unhealthy" in str(info.value)
    for server in servers[:2]:
        server.set_health_status(200)
    await log.wait_for("backend-healthy", "b0")
    async with pool.acquire(timeout=2) as conn:
        await assert_echo(conn, "back")


async def test_waiters_fail_fast_when_every_backend_goes_down(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """Acquires already queued get NoHealthyBackendError when the last backend goes."""
    pool = await make_pool(
        servers[:1],
        min_connections=1,
        max_connections=1,
        health_check={**PROBE, "path": "/health", "unhealthy_threshold": 1},
    )
    held = await pool.acquire()
    waiter = asyncio.ensure_future(pool.acquire(timeout=30))
    await until(lambda: pool.waiting_count == 1)
    servers[0].set_health_status(503)
    with pytest.raises(NoHealthyBackendError):
        await asyncio.wait_for(waiter, 5)
    pool.release(held)


async def test_going_away_close_is_not_blamed_but_abnormal_is(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """1001/1012 closes don't count against the breaker; a dropped TCP connection does."""
    pool = await make_pool(servers[:1], min_connections=2)
    await servers[0].close_all(1012, "restart")
    await servers[0].wait_for_accepted(4, timeout=3)
    assert pool.health_status()["b0"].consecutive_failures == 0
    await servers[0].drop_all()
    await servers[0].wait_for_accepted(6, timeout=3)
    assert pool.health_status()["b0"].last_error is not None


async def test_try_again_later_backs_off_longer(servers: list[BackendServer]) -> None:
    """A 1013 close schedules the reconnect further out than a 1001 close."""
    pool = WebSocketPool(backends=[servers[0].url])
    core = pool._core
    core.running = True
    backend = core.backends[servers[0].url]
    slot: Slot[Any] = Slot(backend, None, 0, 100.0)
    slot.state = SlotState.LEASED
    assert core.link_lost(slot, 1001, "going away", 100.0) is False
    normal = backend.retry_at - 100.0
    backend.retry_at = 0.0  # reconnected; the next close starts a new window
    backend.backoff.reset()
    assert core.link_lost(slot, 1013, "try again later", 100.0) is False
    assert backend.retry_at - 100.0 > normal
    assert pool._store.record(backend.id).breaker.failure_count == 0


def test_many_clients_losing_a_backend_spread_their_reconnects() -> None:
    """200 pools losing the same backend draw different reconnect delays (no lockstep)."""
    delays = []
    for _ in range(200):
        pool = WebSocketPool(backends=["ws://127.0.0.1:9/ws"], reconnect={"initial_delay": 1.0})
        backend = next(iter(pool._core.backends.values()))
        delays.append(backend.backoff.next_delay())
    assert min(delays) >= 0.8 and max(delays) <= 1.2
    # Uniform over [0.8, 1.2] puts ~5 in each 10 ms bucket; lockstep would put 200 in one.
    buckets = Counter(int(d * 100) for d in delays)
    assert max(buckets.values()) <= 16
    assert statistics.pstdev(delays) > 0.09  # uniform: 0.115
    assert max(delays) - min(delays) > 0.3


async def test_events_fire_sync_and_async_and_a_raising_listener_is_isolated(
    servers: list[BackendServer], make_pool: PoolFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Sync and async listeners both run; one that raises is logged and harms nothing."""
    pool = await make_pool(servers[:1], min_connections=0)
    got: list[str] = []
    done = asyncio.Event()

    def bad(*args: Any) -> None:
        raise RuntimeError("listener bug")

    async def good_async(bid: str, cid: str) -> None:
        got.append(f"async:{bid}")
        done.set()

    pool.on("connection-open", bad)
    pool.on("connection-open", lambda bid, cid: got.append(f"sync:{bid}"))
    pool.on("connection-open", good_async)
    with caplog.at_level(logging.ERROR, logger="wsclient.events"):
        async with pool.acquire() as conn:
            await assert_echo(conn, "x")
        await asyncio.wait_for(done.wait(), 2)
    assert got == ["sync:b0", "async:b0"]
    assert "listener bug" in caplog.text
    pool.off("connection-open", bad)
    with pytest.raises(ValueError, match="unknown event"):
        pool.on("no-such-event", bad)  # type: ignore[call-overload]  # the run-time check


async def test_membership_changes_under_traffic(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """add_backend, set_weight and remove_backend(drain=True) while workers run."""
    pool = await make_pool(servers[:2], min_connections=2)
    served: Counter[str] = Counter()
    stop = asyncio.Event()
    failures: list[BaseException] = []

    async def worker() -> None:
        while not stop.is_set():
            try:
                async with pool.acquire() as conn:
                    await conn.send("m")
                    await conn.receive(timeout=5)
                    served[conn.backend_id] += 1
            except (WSClientError, TimeoutError) as exc:
                failures.append(exc)
            await asyncio.sleep(0)

    workers = [asyncio.create_task(worker()) for _ in range(4)]
    pool.add_backend(Backend(id="b2", url=servers[2].url, weight=3))
    await until(lambda: served["b2"] > 20)
    with pytest.raises(ValueError, match="duplicate"):
        pool.add_backend(Backend(id="b2", url=servers[2].url))
    pool.set_weight("b0", 5)
    await pool.remove_backend("b1", drain=True)
    b1_total = served["b1"]
    await until(lambda: served["b0"] > 50)
    stop.set()
    await asyncio.gather(*workers)
    assert served["b1"] == b1_total  # nothing after removal
    assert failures == []
    assert "b1" not in pool.health_status()
    await servers[1].wait_for_connections(0)
    with pytest.raises(KeyError):
        pool.set_weight("b1", 2)
    with pytest.raises(ValueError, match="weight"):
        pool.set_weight("b0", 0)


async def test_remove_backend_without_drain_closes_leased_connections(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """remove_backend(drain=False) closes leased connections at once."""
    pool = await make_pool(servers[:2], min_connections=0, load_balancing="round-robin")
    held = [await pool.acquire() for _ in range(2)]
    victim = next(c for c in held if c.backend_id == "b1")
    await pool.remove_backend("b1", drain=False)
    with pytest.raises(ConnectionClosedError):
        await victim.send("x")
    for conn in held:
        pool.release(conn)
    await servers[1].wait_for_connections(0)
    pool._check_invariants()


async def test_drain_closes_in_rate_limited_batches(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """drain(per_second=4) closes 8 connections in two batches about a second apart."""
    pool = await make_pool(servers[:1], min_connections=0)
    held = [await pool.acquire() for _ in range(8)]
    for conn in held:
        pool.release(conn)
    loop = asyncio.get_running_loop()
    times: list[float] = []
    pool.on("connection-closed", lambda *args: times.append(loop.time()))
    started = loop.time()
    closed = await pool.drain(per_second=4, code=1001, reason="rebalance")
    assert closed == 8
    offsets = sorted(t - started for t in times)
    assert len(offsets) == 8
    assert offsets[3] < 0.5 and offsets[4] >= 0.9  # 4 now, 4 after a second
    await servers[0].wait_for_connections(0)


async def test_broadcast_reaches_every_eligible_backend_once(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """broadcast() sends once per backend; a filter narrows it; failures are per backend."""
    pool = await make_pool(servers, min_connections=3)
    results = await pool.broadcast("hello all")
    assert results == {"b0": None, "b1": None, "b2": None}
    await until(lambda: all(s.messages_received == 1 for s in servers))
    results = await pool.broadcast(b"only b2", filter=lambda backend: backend.id == "b2")
    assert list(results) == ["b2"]
    await servers[2].wait_for_messages(2)
    assert servers[0].messages_received == 1


async def test_panic_threshold_routes_to_all_when_too_few_are_healthy(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """Below panic_threshold the pool routes to every backend instead of failing."""
    pool = await make_pool(
        servers,
        min_connections=0,
        panic_threshold=0.5,
        health_check={**PROBE, "path": "/health", "unhealthy_threshold": 1},
    )
    log = EventLog(pool, "backend-unhealthy")
    servers[0].set_health_status(503)
    servers[1].set_health_status(503)
    await log.wait_for("backend-unhealthy", "b0")
    await log.wait_for("backend-unhealthy", "b1")
    seen = set()
    for _ in range(30):
        async with pool.acquire() as conn:
            seen.add(conn.backend_id)
    assert seen == {"b0", "b1", "b2"}


async def test_slow_start_ramps_a_recovered_backend(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """After recovery, a backend's effective weight starts low and climbs to its weight."""
    pool = await make_pool(
        servers[:2],
        min_connections=0,
        slow_start=0.5,
        health_check={**PROBE, "path": "/health", "unhealthy_threshold": 1},
    )
    log = EventLog(pool, "backend-unhealthy", "backend-healthy")
    servers[1].set_health_status(503)
    await log.wait_for("backend-unhealthy", "b1")
    servers[1].set_health_status(200)
    await log.wait_for("backend-healthy", "b1")
    early = pool.health_status()["b1"].effective_weight
    assert early < 1.0
    await until(lambda: pool.health_status()["b1"].effective_weight == 1.0, timeout=3)


async def test_no_healthy_backend_lists_each_state(servers: list[BackendServer]) -> None:
    """NoHealthyBackendError names every backend with why it is out."""
    pool = WebSocketPool(backends=[Backend(id="only", url=servers[0].url)], **FAST)
    async with pool:
        for _ in range(5):
            pool._core.backend_failed("only", "refused", time.monotonic())
        pool._run()
        with pytest.raises(NoHealthyBackendError, match="only: breaker open") as info:
            await pool.acquire()
        assert "refused" in info.value.backends["only"]


async def test_a_failing_backend_is_ejected_at_once_but_never_the_last(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """One refused connect ejects a backend for its backoff delay; a sole backend stays in."""
    await servers[1].refuse()
    pool = await make_pool(
        servers[:2],
        min_connections=0,
        load_balancing="round-robin",
        circuit_breaker={"failure_threshold": 100},
        reconnect={"initial_delay": 1.0, "max_delay": 1.0, "jitter": 0.0},
    )
    served = []
    for _ in range(20):
        async with pool.acquire() as conn:
            served.append(conn.backend_id)
    assert set(served) == {"b0"}
    assert pool.stats().open_failures == 1  # dialled once, then left alone
    status = pool.health_status()["b1"]
    assert status.ejected and status.breaker == "closed"
    await servers[1].restore()
    await until(lambda: not pool.health_status()["b1"].ejected, timeout=3)
    await until(lambda: all(b.in_rotation for b in pool._core.backends.values()))
    seen = set()
    for _ in range(6):
        async with pool.acquire() as conn:
            seen.add(conn.backend_id)
    assert seen == {"b0", "b1"}


async def test_ejection_never_empties_the_rotation(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """With one backend, a failure doesn't lock acquires out for the backoff delay."""
    pool = await make_pool(
        servers[:1],
        min_connections=0,
        circuit_breaker={"failure_threshold": 100},
        reconnect={"initial_delay": 30.0, "max_delay": 30.0},
    )
    await servers[0].refuse()
    with pytest.raises(NoHealthyBackendError):
        await pool.acquire()
    await servers[0].restore()
    async with pool.acquire(timeout=2) as conn:  # within the 30 s ejection: still dialled
        await assert_echo(conn, "back")


async def test_websocket_probe_records_latency_and_marks_a_silent_backend(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """Without a path the probe is handshake + ping/pong; no pong means a failed probe."""
    import time

    pool = await make_pool(
        servers[:2],
        min_connections=0,
        health_check={"interval": 0.05, "timeout": 0.3, "unhealthy_threshold": 2},
    )
    log = EventLog(pool, "backend-unhealthy")
    await until(lambda: all(h.latency is not None for h in pool.health_status().values()))
    status = pool.health_status()["b0"]
    assert status.latency is not None and 0 < status.latency < 1000
    assert status.last_check is not None and abs(status.last_check - time.time()) < 5
    servers[1].ignore_pings()  # handshakes still succeed; pongs never come
    await log.wait_for("backend-unhealthy", "b1")
    assert "timed out" in str(log.items[0][1][1])
    assert pool.health_status()["b0"].healthy
    assert servers[0].health_requests == 0  # the WebSocket probe never used /health
