"""Regressions of the pool-core rework: each test failed on wsclient 0.1."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from tests.conftest import FAST, PoolFactory, assert_echo, until
from tests.test_failover import EventLog
from wsclient import Backend, PoolMisuseError, WebSocketPool
from wsclient.config import TransportName
from wsclient.testing import BackendServer, FaultProxy


@pytest.fixture
def transport() -> TransportName:
    """Pool bookkeeping regressions: one transport is enough (the connection, pool,
    failover and chaos tests cover both)."""
    return "aiohttp"


async def test_acquire_works_with_create_task(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """``asyncio.create_task(pool.acquire())`` is a task like any coroutine's."""
    pool = await make_pool(servers[:1], min_connections=1)
    task = asyncio.create_task(pool.acquire())
    conn = await asyncio.wait_for(task, 5)
    await assert_echo(conn, "via a task")
    pool.release(conn)


async def test_one_acquire_awaited_twice_raises_like_a_coroutine_and_leases_once(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """A second ``await`` of the same ``pool.acquire()`` raises as a coroutine would,
    on the hot path (an idle link) and on the waiting path, and leases nothing more."""
    pool = await make_pool(servers[:1], min_connections=1, max_connections=2)
    pending = pool.acquire()
    conn = await pending  # the hot path: the warm link
    with pytest.raises(RuntimeError, match="already awaited"):
        await pending
    assert pool.active_count == 1
    waited = pool.acquire()
    task = asyncio.create_task(waited)  # driven by send(): the coroutine path
    second = await asyncio.wait_for(task, 5)
    with pytest.raises(RuntimeError, match="already awaited"):
        await waited
    assert pool.active_count == 2
    pool.release(conn)
    pool.release(second)
    assert pool.active_count == 0


async def test_a_raising_auth_provider_is_a_failed_probe_not_the_end_of_probing(
    servers: list[BackendServer],
) -> None:
    """A RuntimeError from the token service marks the backend unhealthy; it comes back."""
    failing = True

    async def token_service() -> dict[str, str]:
        if failing:
            raise RuntimeError("token service down")
        return {"Authorization": "Bearer fresh"}

    probe = {"interval": 0.05, "timeout": 1.0, "unhealthy_threshold": 1, "healthy_threshold": 1}
    pool = WebSocketPool(
        **{**FAST, "health_check": probe},
        backends=[Backend(id="b0", url=servers[0].url)],
        min_connections=0,
        auth=token_service,
    )
    log = EventLog(pool, "backend-unhealthy", "backend-healthy")
    async with pool:
        await log.wait_for("backend-unhealthy", "b0")
        assert "RuntimeError" in (pool.health_status()["b0"].last_error or "")
        failing = False
        await log.wait_for("backend-healthy", "b0")
        async with pool.acquire(timeout=2) as conn:
            await assert_echo(conn, "healthy again")


async def test_a_cancelled_start_leaves_nothing_running(servers: list[BackendServer]) -> None:
    """start() cut off by a timeout closes the pool: no health, open or maintenance task."""
    proxy = FaultProxy(servers[0].host, servers[0].port)
    await proxy.start()
    try:
        proxy.blackhole()  # the warm open never completes
        pool = WebSocketPool(
            **{**FAST, "health_check": {"interval": 0.05}, "connect_timeout": 30.0},
            backends=[proxy.url],
            min_connections=2,
        )
        before = asyncio.all_tasks()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await pool.start()
        assert pool.closed
        assert pool.size == 0 and pool.connecting_count == 0
        left = [t for t in asyncio.all_tasks() - before if t.get_name().startswith("wsclient")]
        assert left == []
        with pytest.raises(Exception, match="closed"):
            await pool.acquire()
    finally:
        await proxy.stop()


async def test_a_listener_changing_weights_sees_consistent_counts(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """A connection-open listener runs after the step: set_weight there never opens past max."""
    pool = await make_pool(servers[:2], min_connections=0, max_connections=1)
    most = 0

    def on_open(backend_id: str, connection_id: str) -> None:
        nonlocal most
        pool.set_weight(backend_id, 3)  # 0.1: re-ran dispatch with the new link uncounted
        most = max(most, len(pool._links))

    async def user() -> None:
        nonlocal most
        async with pool.acquire() as conn:
            most = max(most, len(pool._links))
            await assert_echo(conn, "x")

    pool.on("connection-open", on_open)
    for _ in range(4):
        await asyncio.gather(*(user() for _ in range(3)))
        await pool.drain(per_second=1000)
    assert most == 1
    pool._check_invariants()


async def test_remove_backend_draining_returns_when_the_pool_is_terminated(
    servers: list[BackendServer],
) -> None:
    """remove_backend(drain=True) stops waiting once terminate() closes the pool."""
    pool = WebSocketPool(
        **{**FAST, "shutdown_timeout": 30.0}, backends=[servers[0].url], min_connections=0
    )
    await pool.start()
    held = await pool.acquire()
    removal = asyncio.ensure_future(pool.remove_backend(servers[0].url, drain=True))
    await until(lambda: pool.health_status() == {})
    started = time.monotonic()
    await pool.terminate()
    await asyncio.wait_for(removal, 2)
    assert time.monotonic() - started < 2
    assert held.released or not held.connected


async def test_queueing_2000_acquires_does_not_stall_the_loop(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """2,000 waiters enqueue in well under a second (0.1 rescanned every waiter: 1.8 s)."""
    pool = await make_pool(servers[:1], min_connections=1, max_connections=1, acquire_timeout=60)
    held = await pool.acquire()

    async def one() -> None:
        conn = await pool.acquire()
        pool.release(conn)

    loop = asyncio.get_running_loop()
    started = loop.time()
    tasks = [asyncio.create_task(one()) for _ in range(2000)]
    await asyncio.sleep(0)  # every task takes its first step in this one iteration
    stall = loop.time() - started
    assert pool.waiting_count == 2000
    assert stall < 0.5, stall
    pool.release(held)
    await asyncio.wait_for(asyncio.gather(*tasks), 30)
    assert pool.waiting_count == 0
    pool._check_invariants()


async def test_release_from_another_thread_is_refused_without_damage(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """release() from a thread raises PoolMisuseError; the lease stays valid, idle reads go on."""
    pool = await make_pool(servers[:1], min_connections=1, max_connections=1)
    conn = await pool.acquire()
    first = conn.id
    with pytest.raises(PoolMisuseError, match="another thread"):
        await asyncio.to_thread(pool.release, conn)
    assert pool.active_count == 1
    await assert_echo(conn, "still mine")
    pool.release(conn)
    await servers[0].close_all(1001, "restart")  # seen only if the idle link is still read
    await until(lambda: pool.idle_count == 0 or pool._core.stats["closed"] > 0)
    async with pool.acquire(timeout=3) as again:
        assert again.id != first  # the closed link was noticed, never handed out
        await assert_echo(again, "fresh")


async def test_ejection_has_events_and_a_successful_probe_ends_it(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """A refused connect ejects (event with seconds and error); a passing probe unejects early."""
    await servers[1].refuse()
    pool = await make_pool(
        servers[:2],
        min_connections=0,
        load_balancing="round-robin",
        circuit_breaker={"failure_threshold": 100},
        reconnect={"initial_delay": 30.0, "max_delay": 30.0, "jitter": 0.0},
        health_check={"interval": 0.05, "timeout": 1.0, "path": "/health"},
    )
    log = EventLog(pool, "backend-ejected", "backend-unejected")
    for _ in range(4):
        async with pool.acquire() as conn:
            assert conn.backend_id == "b0"
    await log.wait_for("backend-ejected", "b1")
    (_, args), *_ = [item for item in log.items if item[0] == "backend-ejected"]
    assert args[0] == "b1" and 25 <= args[1] <= 30 and "refused" in str(args[2]).lower()
    await servers[1].restore()
    await log.wait_for("backend-unejected", "b1", timeout=3)  # far sooner than 30 s
    assert not pool.health_status()["b1"].ejected
    seen = set()
    for _ in range(6):
        async with pool.acquire(timeout=3) as conn:
            seen.add(conn.backend_id)
    assert seen == {"b0", "b1"}
    assert log.count("backend-ejected", "b1") == 1


async def test_a_change_among_10000_backends_is_cheap() -> None:
    """set_weight + add_backend among 10,000 backends takes milliseconds (0.1: 3.8 s)."""
    backends: list[Any] = [
        Backend(id=f"b{i}", url=f"ws://127.0.0.1:9/ws{i}") for i in range(10_000)
    ]
    for strategy in ("weighted-round-robin", "least-connections", "ip-hash", "random"):
        pool = WebSocketPool(
            **{**FAST, "health_check": {"enabled": False}},
            backends=backends,
            min_connections=0,
            load_balancing=strategy,
        )
        async with pool:
            started = time.perf_counter()
            pool.set_weight("b17", 5)
            pool.add_backend(Backend(id="extra", url="ws://127.0.0.1:9/extra", weight=3))
            elapsed = time.perf_counter() - started
        assert elapsed < 0.1, (strategy, elapsed)


def _new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def _one_link_pool(home: asyncio.AbstractEventLoop) -> tuple[BackendServer, WebSocketPool]:
    """A backend and a started one-connection pool on ``home`` (not running after)."""
    server = BackendServer(name="s0")
    home.run_until_complete(server.start())
    pool = WebSocketPool(
        **{**FAST, "health_check": {"enabled": False}},
        backends=[server.url],
        min_connections=1,
        max_connections=1,
    )
    home.run_until_complete(pool.start())
    return server, pool


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
@pytest.mark.timeout(30)
def test_acquire_from_another_loop_is_refused_without_damage(loop_kind: str) -> None:
    """An acquire on a loop other than the pool's, in the pool's thread, raises
    PoolMisuseError and leases nothing: with the pool's loop stopped, and with the
    pool's loop running in another thread (so "the pool's thread, and its loop is
    running" would wrongly pass). On asyncio's loops and on uvloop, whose loop test on
    the hot path is a different one (it has no ``_thread_id``)."""
    home, other = _new_loop(loop_kind), _new_loop(loop_kind)
    server, pool = _one_link_pool(home)
    try:
        assert pool.idle_count == 1

        async def acquire_here() -> None:
            async with pool.acquire(timeout=1):
                pass

        # The pool's thread, its loop stopped: another loop runs here now.
        with pytest.raises(PoolMisuseError, match="another event loop"):
            other.run_until_complete(acquire_here())
        assert (pool.idle_count, pool.active_count) == (1, 0)

        # The pool's loop running, in another thread; this thread runs another loop.
        running = threading.Event()
        home.call_soon(running.set)  # the first callback of the run: it is running
        runner = threading.Thread(target=home.run_forever)
        runner.start()
        try:
            assert running.wait(10)
            with pytest.raises(PoolMisuseError, match="another event loop"):
                other.run_until_complete(acquire_here())
            assert (pool.idle_count, pool.active_count) == (1, 0)
        finally:
            home.call_soon_threadsafe(home.stop)
            runner.join(10)
        assert not runner.is_alive()

        async def still_works() -> str:
            async with pool.acquire(timeout=3) as conn:
                await conn.send("home")
                return str((await conn.receive(timeout=3)).data)

        assert home.run_until_complete(still_works()) == "home"
        pool._check_invariants()
    finally:
        home.run_until_complete(pool.close(timeout=5))
        home.run_until_complete(server.stop())
        home.close()
        other.close()


@pytest.mark.timeout(30)
def test_release_while_the_pools_loop_is_stopped_keeps_idle_reads_scheduled() -> None:
    """release() in the pool's thread while its loop is stopped (no loop running) parks
    the connection and schedules the idle-read pass on the pool's loop: it used to ask
    get_running_loop() for it and raise RuntimeError with the pass marked scheduled,
    after which no idle connection was read again (closes went unnoticed)."""
    home = asyncio.new_event_loop()
    server, pool = _one_link_pool(home)
    try:
        conn = home.run_until_complete(pool.acquire(timeout=3))
        first = conn.id
        pool.release(conn)  # no loop running in this thread now
        assert pool.idle_count == 1

        async def closed_idle_link_is_noticed() -> str:
            await server.close_all(1001, "restart")  # seen only if the idle link is read
            await until(lambda: pool._core.stats["closed"] > 0)
            async with pool.acquire(timeout=3) as again:
                assert again.id != first
                await assert_echo(again, "fresh")
                return again.backend_id

        assert home.run_until_complete(closed_idle_link_is_noticed()) == pool.backends[0].id
    finally:
        home.run_until_complete(pool.close(timeout=5))
        home.run_until_complete(server.stop())
        home.close()
