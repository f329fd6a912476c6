"""WebSocketPool against real local backends: warm set, caps, waiters, balancing, misuse."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from functools import partial

import pytest

from wsclient import (
    AcquireTimeoutError,
    Backend,
    Connection,
    ConnectionClosedError,
    ConnectionReleasedError,
    Message,
    PoolClosedError,
    PoolMisuseError,
    WebSocketPool,
    connect,
)
from wsclient.pytest_plugin import FaultProxyFactory
from wsclient.testing import BackendServer

from .conftest import FAST, PoolFactory, assert_echo, until, worst_loop_stall


def _waiting_is(pool: WebSocketPool, n: int) -> bool:
    return pool.waiting_count == n


async def test_start_opens_min_connections_spread_by_weight(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """min_connections=8 over weights 2:1:1 opens 4/2/2, visible on the servers."""
    pool = await make_pool(servers, [2, 1, 1], min_connections=8)
    assert pool.size == 8 and pool.idle_count == 8
    assert [s.open_connections for s in servers] == [4, 2, 2]
    status = pool.health_status()
    assert [status[f"b{i}"].idle for i in range(3)] == [4, 2, 2]


async def test_weighted_distribution_over_12000_cycles(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """12,000 acquire/release cycles over weights 2:1:1 land 50/25/25 % within 3 %."""
    pool = await make_pool(servers, [2, 1, 1], min_connections=4)
    counts: Counter[str] = Counter()
    for _ in range(12_000):
        conn = await pool.acquire()
        counts[conn.backend_id] += 1
        pool.release(conn)
    shares = [counts[f"b{i}"] / 12_000 for i in range(3)]
    assert shares == pytest.approx([0.5, 0.25, 0.25], abs=0.03)
    pool._check_invariants()


async def test_round_robin_with_traffic_echoes(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """Round-robin spreads real request/response traffic evenly."""
    pool = await make_pool(servers, load_balancing="round-robin", min_connections=3)
    for i in range(30):
        async with pool.acquire() as conn:
            await assert_echo(conn, f"m{i}")
    assert [s.messages_received for s in servers] == [10, 10, 10]


async def test_never_more_than_max_open_counting_server_sockets(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """50 workers on max_connections=5: never more than 5 sockets, pool- or server-side."""
    pool = await make_pool(servers, min_connections=1, max_connections=5)
    peak = 0

    async def worker(n: int) -> None:
        nonlocal peak
        for i in range(20):
            async with pool.acquire() as conn:
                peak = max(peak, sum(s.open_connections for s in servers))
                pool._check_invariants()
                await assert_echo(conn, f"{n}-{i}")

    await asyncio.gather(*(worker(n) for n in range(50)))
    assert 1 <= peak <= 5
    assert pool.size <= 5
    assert sum(s.accepted_total for s in servers) <= 5 + 0  # no churn: nothing was replaced


async def test_waiters_are_served_first_come_first_served(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """With max_connections=1, queued acquires get the connection in arrival order."""
    pool = await make_pool(servers[:1], min_connections=1, max_connections=1)
    held = await pool.acquire()
    order: list[int] = []

    async def take(n: int) -> None:
        async with pool.acquire() as conn:
            order.append(n)
            await conn.send("x")
            await conn.receive(timeout=5)

    tasks = []
    for n in range(5):
        tasks.append(asyncio.create_task(take(n)))
        await until(partial(_waiting_is, pool, n + 1))
    pool.release(held)
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4]


async def test_acquire_timeout_is_honoured_within_ten_percent(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """A full pool raises AcquireTimeoutError after the timeout, not much later."""
    pool = await make_pool(servers[:1], min_connections=1, max_connections=1)
    held = await pool.acquire()
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(AcquireTimeoutError) as info:
        await pool.acquire(timeout=0.3)
    elapsed = loop.time() - started
    assert 0.3 <= elapsed <= 0.33
    assert isinstance(info.value, TimeoutError)
    assert pool.waiting_count == 0
    pool.release(held)


async def test_cancelled_acquire_leaks_nothing(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """Cancelling a waiting acquire removes it; the pool serves the next one normally."""
    pool = await make_pool(servers[:1], min_connections=1, max_connections=1)
    held = await pool.acquire()
    task = asyncio.ensure_future(pool.acquire())
    await until(lambda: pool.waiting_count == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert pool.waiting_count == 0
    pool.release(held)
    conn = await pool.acquire(timeout=1)
    assert pool.size == 1 and pool.active_count == 1
    pool.release(conn)
    pool._check_invariants()


async def test_acquire_cancelled_just_as_it_is_served_returns_the_connection(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """A waiter cancelled after the pool handed it a connection gives it back."""
    pool = await make_pool(servers[:1], min_connections=1, max_connections=1)
    held = await pool.acquire()
    task = asyncio.ensure_future(pool.acquire())
    await until(lambda: pool.waiting_count == 1)
    pool.release(held)  # hands the link to the waiter synchronously...
    task.cancel()  # ...which is cancelled before it ever runs again
    with pytest.raises(asyncio.CancelledError):
        await task
    assert pool.active_count == 0 and pool.idle_count == 1
    pool._check_invariants()


async def test_ip_hash_is_sticky_and_removal_moves_only_that_backends_keys(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """One key always lands on one backend; removing a backend moves only its keys."""
    pool = await make_pool(servers, load_balancing="ip-hash", min_connections=3)
    keys = [f"10.0.0.{i}" for i in range(120)]

    async def mapping() -> dict[str, str]:
        result = {}
        for key in keys:
            async with pool.acquire(key=key) as conn:
                result[key] = conn.backend_id
        return result

    first = await mapping()
    assert first == await mapping()
    assert set(first.values()) == {"b0", "b1", "b2"}
    await pool.remove_backend("b1")
    after = await mapping()
    for key in keys:
        if first[key] != "b1":
            assert after[key] == first[key]
        else:
            assert after[key] in {"b0", "b2"}
    with pytest.raises(ValueError, match=r"acquire\(key=\.\.\.\)"):
        await pool.acquire()


async def test_least_connections_keeps_active_counts_level(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """Holding 30 connections under least-connections gives 10 per backend."""
    pool = await make_pool(servers, load_balancing="least-connections", min_connections=0)
    held = [await pool.acquire() for _ in range(30)]
    assert Counter(c.backend_id for c in held) == {"b0": 10, "b1": 10, "b2": 10}
    for conn in held:
        pool.release(conn)


async def test_idle_connections_above_min_are_evicted(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """Idle connections beyond min_connections close after idle_timeout."""
    pool = await make_pool(servers[:1], min_connections=1, idle_timeout=0.2)
    held = [await pool.acquire() for _ in range(4)]
    for conn in held:
        pool.release(conn)
    assert pool.size == 4
    await servers[0].wait_for_connections(1, timeout=3)
    assert pool.size == 1 and pool.idle_count == 1


async def test_an_idle_connection_ages_from_its_own_release(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """release() reads the clock once per loop step: a release in a later step
    gets a reading of its own, so it is not trimmed at an earlier one's deadline."""
    pool = await make_pool(servers[:1], min_connections=0, idle_timeout=0.4)
    first, second = await pool.acquire(), await pool.acquire()
    pool.release(first)
    await asyncio.sleep(0.25)  # the time to measure: later loop steps pass
    released = time.monotonic()
    pool.release(second)
    await servers[0].wait_for_connections(1, timeout=3)
    assert pool.size == 1  # the first went at its deadline; the second is younger
    await servers[0].wait_for_connections(0, timeout=3)
    assert time.monotonic() - released >= 0.4


async def test_connection_closed_by_server_is_never_handed_out_again(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """After the server closes every idle connection, acquires get fresh working ones."""
    pool = await make_pool(servers[:1], min_connections=2)
    held = [await pool.acquire(), await pool.acquire()]
    old_ids = {c.id for c in held}
    for c in held:
        pool.release(c)
    await servers[0].close_all(1000, "bye")
    await servers[0].wait_for_accepted(4, timeout=3)  # both replaced (after backoff)
    for _ in range(4):
        async with pool.acquire() as conn:
            assert conn.id not in old_ids
            await assert_echo(conn, "fresh")


async def test_released_closed_connection_is_discarded_and_refilled(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """Releasing a connection the server closed discards it and refills to min."""
    pool = await make_pool(servers[:1], min_connections=1)
    conn = await pool.acquire()
    await servers[0].close_all(4000, "kick")
    with pytest.raises(ConnectionClosedError):
        await conn.receive(timeout=5)
    pool.release(conn)
    await servers[0].wait_for_accepted(2, timeout=3)
    await until(lambda: pool.size == 1)
    pool._check_invariants()


async def test_validate_on_checkout_replaces_a_silent_connection(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """With validate_on_checkout, an idle connection that no longer pongs is replaced."""
    pool = await make_pool(
        servers[:1], min_connections=1, validate_on_checkout=True, heartbeat={"timeout": 0.2}
    )
    async with pool.acquire() as conn:
        first = conn.id
    servers[0].ignore_pings()
    async with pool.acquire() as conn:
        assert conn.id != first
    servers[0].ignore_pings(False)
    async with pool.acquire() as conn:
        second = conn.id
    async with pool.acquire() as conn:
        assert conn.id == second  # a healthy connection passes validation and is reused


async def test_max_lifetime_recycles_connections(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """A connection older than max_lifetime is replaced instead of reused."""
    pool = await make_pool(servers[:1], min_connections=1, max_lifetime=0.2)
    async with pool.acquire() as conn:
        first = conn.id
    await servers[0].wait_for_accepted(2, timeout=3)
    async with pool.acquire() as conn:
        assert conn.id != first


async def test_idle_reader_notices_server_close_and_replaces(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """An idle connection closed by the server is replaced without anyone acquiring."""
    pool = await make_pool(servers[:1], min_connections=1)
    closed: list[tuple[str, int]] = []
    pool.on("connection-closed", lambda bid, cid, code, reason: closed.append((bid, code)))
    await servers[0].close_all(1001, "restarting")
    await servers[0].wait_for_accepted(2, timeout=3)
    assert closed == [("b0", 1001)]
    assert pool.health_status()["b0"].breaker == "closed"  # 1001 is not the backend's fault


async def test_idle_messages_are_discarded_and_reported(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """A message pushed to an idle connection fires idle-message; the next lessee never sees it."""
    pool = await make_pool(servers[:1], min_connections=1)
    seen: asyncio.Future[object] = asyncio.get_running_loop().create_future()

    def on_idle(bid: str, cid: str, msg: Message) -> None:
        if not seen.done():
            seen.set_result(msg.data)

    pool.on("idle-message", on_idle)
    await servers[0].push("unsolicited")
    assert await asyncio.wait_for(seen, 3) == "unsolicited"
    async with pool.acquire() as conn:
        await assert_echo(conn, "mine")


async def test_misuse_raises_clear_errors_and_keeps_pool_consistent(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """Double release, foreign release, use after release: clear errors, no corruption."""
    pool = await make_pool(servers[:1], min_connections=1)
    other = await make_pool(servers[:1], min_connections=1)
    conn = await pool.acquire()
    pool.release(conn)
    with pytest.raises(PoolMisuseError, match="already released"):
        pool.release(conn)
    with pytest.raises(ConnectionReleasedError, match="released"):
        await conn.send("x")
    with pytest.raises(ConnectionReleasedError):
        _ = conn.backend_id
    foreign = await other.acquire()
    with pytest.raises(PoolMisuseError, match="does not belong to this pool"):
        pool.release(foreign)
    other.release(foreign)
    unpooled = await connect(servers[0].url)
    with pytest.raises(PoolMisuseError, match="connect"):
        pool.release(unpooled)
    await unpooled.close()
    with pytest.raises(TypeError):
        pool.release("conn")  # type: ignore[arg-type]
    assert pool.size == 1 and pool.active_count == 0
    pool._check_invariants()


async def test_acquire_before_start_and_after_close(servers: list[BackendServer]) -> None:
    """acquire() on a pool not started is misuse; on a closed pool PoolClosedError."""
    pool = WebSocketPool(backends=[servers[0].url], min_connections=0)
    with pytest.raises(PoolMisuseError, match="not started"):
        await pool.acquire()
    async with pool:
        pass
    with pytest.raises(PoolClosedError):
        await pool.acquire()
    with pytest.raises(PoolClosedError):
        await pool.start()


async def test_close_waits_for_leased_connections(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """close() waits until leased connections come back, then closes everything."""
    pool = await make_pool(servers[:1], min_connections=2)
    conn = await pool.acquire()
    closer = asyncio.create_task(pool.close(timeout=5))
    await until(lambda: pool.idle_count == 0)
    assert not closer.done()
    with pytest.raises(PoolClosedError):
        await pool.acquire()
    await assert_echo(conn, "still usable while closing")
    pool.release(conn)
    await asyncio.wait_for(closer, 5)
    await servers[0].wait_for_connections(0)


async def test_terminate_closes_leased_connections_at_once(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """terminate() closes leased connections too; later release is a harmless no-op."""
    pool = await make_pool(servers[:1], min_connections=2)
    conn = await pool.acquire()
    await pool.terminate()
    await servers[0].wait_for_connections(0)
    with pytest.raises(ConnectionClosedError):
        await conn.send("x")
    pool.release(conn)
    assert pool.closed and pool.size == 0


async def test_close_leaves_no_tasks_behind(servers: list[BackendServer]) -> None:
    """After close() no task the pool started is still running."""
    before = asyncio.all_tasks()
    async with WebSocketPool(
        backends=[s.url for s in servers],
        min_connections=3,
        health_check={"interval": 0.05, "timeout": 1},
    ) as pool:
        async with pool.acquire() as conn:
            await conn.send("x")
            await conn.receive(timeout=5)
        await until(lambda: all(h.last_check for h in pool.health_status().values()))
    assert asyncio.all_tasks() - before == set()


async def test_async_with_acquire_releases_on_error(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """An exception inside `async with pool.acquire()` still releases the connection."""
    pool = await make_pool(servers[:1], min_connections=1)
    with pytest.raises(RuntimeError, match="boom"):
        async with pool.acquire() as conn:
            assert isinstance(conn, Connection)
            raise RuntimeError("boom")
    assert pool.active_count == 0 and pool.idle_count == 1


async def test_repr_shows_requests_and_connections(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """repr(pool) reports active/queued requests and open/idle connections."""
    pool = await make_pool(servers[:1], min_connections=2)
    conn = await pool.acquire()
    text = repr(pool)
    assert "Requests: 1 active, 0 queued" in text
    assert "Connections: 2 open, 1 idle" in text
    pool.release(conn)


async def test_health_status_is_json_ready(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """health_status() has the SPEC fields and model_dump() is plain JSON."""
    import json

    pool = await make_pool(servers, [2, 1, 1], min_connections=4)
    conn = await pool.acquire()
    status = pool.health_status()
    assert set(status) == {"b0", "b1", "b2"}
    dumped = {k: v.model_dump() for k, v in status.items()}
    json.dumps(dumped)
    for entry in dumped.values():
        for field in ("healthy", "latency", "last_check", "breaker", "active", "idle"):
            assert field in entry
        assert entry["breaker"] == "closed"
    assert sum(v.active for v in status.values()) == 1
    pool.release(conn)


async def test_receive_blocked_during_terminate_sees_connection_closed(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """A lessee blocked in receive() when the pool terminates gets ConnectionClosedError."""
    pool = await make_pool(servers[:1], min_connections=1)
    conn = await pool.acquire()
    link = conn._link
    assert link is not None
    pool.release(conn)
    # aiohttp: the idle reader task started (the lessee takes it over); picows needs none
    await until(lambda: getattr(link.transport, "_watcher", link) is not None)
    conn = await pool.acquire()
    reader = asyncio.ensure_future(conn.receive())
    await until(lambda: link.reading)
    await pool.terminate()
    with pytest.raises(ConnectionClosedError):
        await asyncio.wait_for(reader, 5)
    pool.release(conn)


async def test_unclosed_pool_warns(servers: list[BackendServer]) -> None:
    """A started pool that is never closed warns with ResourceWarning when collected."""
    pool = WebSocketPool(backends=[servers[0].url], min_connections=0)
    await pool.start()
    with pytest.warns(ResourceWarning, match="unclosed"):
        pool.__del__()
    await pool.close()


# --- regressions: each was a confirmed defect found in review -------------------------


async def test_buffered_late_reply_never_reaches_a_waiting_lessee(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """A reply already buffered when its lessee releases never reaches the queued next one."""
    pool = await make_pool(servers[:1], min_connections=1, max_connections=1)
    conn = await pool.acquire()
    servers[0].set_reply_delay(0.05)
    await conn.send("A's request")
    with pytest.raises(TimeoutError):
        await conn.receive(timeout=0.01)
    await servers[0].wait_for_messages(1)
    waiting = asyncio.ensure_future(pool.acquire(timeout=5))
    await until(lambda: pool.waiting_count == 1)
    # Nothing public signals that A's reply has reached the client (aiohttp parks
    # unread frames in its parser), so wait well past loopback delivery instead.
    await asyncio.sleep(0.1)
    servers[0].set_reply_delay(0)
    pool.release(conn)
    other = await waiting  # a fresh connection, not A's
    await assert_echo(other, "B's request")
    pool.release(other)


async def test_release_while_a_receive_is_still_running_is_safe(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """Releasing with a receive() in flight closes that connection; the next lessee is unharmed."""
    pool = await make_pool(servers[:1], min_connections=1, max_connections=1)
    conn = await pool.acquire()
    stray = asyncio.ensure_future(conn.receive())
    await until(lambda: conn._link is not None and conn._link.reading)
    pool.release(conn)
    async with pool.acquire(timeout=5) as other:
        await assert_echo(other, "mine")
    with pytest.raises(ConnectionClosedError):
        await asyncio.wait_for(stray, 5)
    assert pool.health_status()["b0"].consecutive_failures == 0
    pool._check_invariants()


async def test_borrowing_an_idle_link_at_capacity_counts_it_on_its_own_backend(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """At max_connections an acquire may borrow another backend's idle link; counts stay right."""
    pool = await make_pool(
        servers[:2], min_connections=2, max_connections=2, load_balancing="round-robin"
    )
    for _ in range(10):
        held = [await pool.acquire(), await pool.acquire()]
        pool.release(held[0])
        extra = await pool.acquire()  # the pick may have no idle link: borrows one
        pool.release(extra)
        pool.release(held[1])
        pool._check_invariants()
        assert all(h.active == 0 for h in pool.health_status().values())


async def test_auth_provider_failure_fails_over_instead_of_hanging(
    servers: list[BackendServer],
) -> None:
    """An auth provider that raises becomes a ConnectError for that backend; others serve."""

    async def provider() -> dict[str, str]:
        raise RuntimeError("token service down")

    async with WebSocketPool(
        **{
            **FAST,
            "backends": [Backend(id="a", url=servers[0].url, auth=provider), servers[1].url],
            "min_connections": 0,
            "acquire_timeout": 2,
            "load_balancing": "round-robin",
        }
    ) as pool:
        for _ in range(4):
            async with pool.acquire() as conn:
                assert conn.backend_id != "a"
        assert "auth provider raised RuntimeError" in (pool.health_status()["a"].last_error or "")


async def test_removing_a_backend_while_an_acquire_opens_there(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """An acquire whose open lands on a just-removed backend is served elsewhere."""
    pool = await make_pool(servers[:1], min_connections=0, connect_timeout=2)
    pool.add_backend(Backend(id="slow", url=servers[1].url, weight=1000))
    servers[1].stall_handshake()
    acquiring = asyncio.ensure_future(pool.acquire(timeout=3))
    await until(lambda: pool.connecting_count == 1)
    await pool.remove_backend("slow", drain=False)
    conn = await asyncio.wait_for(acquiring, 3)
    assert conn.backend_id == "b0"
    pool.release(conn)


async def test_cancel_during_validation_leaks_nothing(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """An acquire cancelled mid-validation leaves no uncounted socket behind."""
    pool = await make_pool(
        servers[:1], min_connections=1, max_connections=1, validate_on_checkout=True
    )
    servers[0].ignore_pings()  # validation will wait for a pong that never comes
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(pool.acquire(), 0.05)
    servers[0].ignore_pings(False)
    async with pool.acquire(timeout=3) as conn:
        await assert_echo(conn, "ok")
    await until(lambda: servers[0].open_connections == 1)
    pool._check_invariants()


async def test_close_while_validating_is_prompt_and_refuses_the_acquire(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """close() during a validation is prompt; the waiting acquire gets PoolClosedError."""
    pool = await make_pool(servers[:1], min_connections=1, validate_on_checkout=True)
    servers[0].ignore_pings()
    acquiring = asyncio.ensure_future(pool.acquire())
    await until(lambda: bool(pool._validating))  # the validation ping is out
    loop = asyncio.get_running_loop()
    started = loop.time()
    await pool.close(timeout=5)
    assert loop.time() - started < 1.5
    with pytest.raises(PoolClosedError):
        await acquiring


async def test_cancelled_close_still_closes_and_terminate_works_after(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """A close() cancelled while waiting for leases still closes everything."""
    pool = await make_pool(servers[:1], min_connections=2)
    conn = await pool.acquire()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(pool.close(timeout=10), 0.1)
    assert pool.closed
    await asyncio.wait_for(pool.terminate(), 1)
    await servers[0].wait_for_connections(0)
    pool.release(conn)


async def test_terminate_cuts_a_graceful_close_short(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """terminate() during a close() that waits for leases finishes both at once."""
    pool = await make_pool(servers[:1], min_connections=1)
    conn = await pool.acquire()
    closing = asyncio.ensure_future(pool.close(timeout=30))
    await until(lambda: pool.idle_count == 0)
    await asyncio.wait_for(pool.terminate(), 2)
    await asyncio.wait_for(closing, 2)
    pool.release(conn)


async def test_readding_a_draining_backend_id_keeps_both_accounts_straight(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """A backend id removed while leased and re-added at once never mixes counts."""
    pool = await make_pool(servers[:1], min_connections=0)
    old = await pool.acquire()
    removal = asyncio.ensure_future(pool.remove_backend("b0", drain=True))
    await until(lambda: pool.health_status() == {})
    pool.add_backend(Backend(id="b0", url=servers[1].url))
    async with pool.acquire() as fresh:
        assert fresh.url == servers[1].url
    pool.release(old)
    await asyncio.wait_for(removal, 2)
    assert pool.health_status()["b0"].active == 0
    pool._check_invariants()


async def test_connections_the_client_drops_or_closes_are_not_blamed(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """conn.drop() / conn.close(1011) by the application never open the backend's breaker."""
    pool = await make_pool(servers[:1], min_connections=0, circuit_breaker={"failure_threshold": 2})
    for i in range(5):
        conn = await pool.acquire()
        if i % 2:
            conn.drop()
        else:
            await conn.close(1011, "app gave up")
        pool.release(conn)
    status = pool.health_status()["b0"]
    assert status.breaker == "closed" and status.consecutive_failures == 0
    async with pool.acquire() as conn:
        await assert_echo(conn, "fine")


async def test_fifo_holds_while_the_first_waiter_waits_on_a_slow_open(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """A later acquire never overtakes an earlier one that waits on a slow handshake."""
    pool = await make_pool(servers[:1], min_connections=1, connect_timeout=2)
    pool.add_backend(Backend(id="slow", url=servers[1].url, weight=1000))
    servers[1].stall_handshake()
    order: list[str] = []

    async def take(name: str) -> None:
        conn = await pool.acquire(timeout=3)
        order.append(name)
        pool.release(conn)

    first = asyncio.ensure_future(take("first"))
    await until(lambda: pool.connecting_count == 1)
    second = asyncio.ensure_future(take("second"))
    await asyncio.gather(first, second)
    assert order == ["first", "second"]


async def test_one_pinned_waiter_evicts_one_idle_link(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """ip-hash at capacity closes exactly one idle link elsewhere to make room."""
    pool = await make_pool(
        servers[:2], min_connections=0, max_connections=3, load_balancing="ip-hash"
    )
    keys: dict[str, str] = {}
    for i in range(200):
        async with pool.acquire(key=f"k{i}") as conn:
            keys.setdefault(conn.backend_id, f"k{i}")
        if len(keys) == 2:
            break
    for conn in [await pool.acquire(key=keys["b0"]) for _ in range(3)]:
        pool.release(conn)
    closed: list[str] = []
    pool.on("connection-closed", lambda bid, cid, code, reason: closed.append(bid))
    held = await pool.acquire(key=keys["b0"])
    async with pool.acquire(key=keys["b1"], timeout=3) as conn:
        assert conn.backend_id == "b1"
    assert closed == ["b0"]
    pool.release(held)


async def test_slow_start_does_not_block_the_event_loop(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """While a backend's weight ramps up, the loop keeps running (no busy maintenance)."""
    pool = await make_pool(
        servers[:2],
        min_connections=0,
        slow_start=0.6,
        health_check={"interval": 0.05, "timeout": 1, "path": "/health", "unhealthy_threshold": 1},
    )
    servers[1].set_health_status(503)
    await until(lambda: not pool.health_status()["b1"].healthy)
    servers[1].set_health_status(200)
    await until(lambda: pool.health_status()["b1"].healthy)
    worst = await worst_loop_stall(0.3)  # inside the 0.6 s ramp
    assert worst < 0.2, f"the event loop stalled for {worst:.3f} s"
    assert pool.health_status()["b1"].effective_weight < 1.0


async def test_a_lease_that_dies_unread_is_blamed_on_release(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """A held connection whose heartbeat fails while nobody reads counts as a failure."""
    pool = await make_pool(
        servers[:1], min_connections=0, heartbeat={"interval": 0.1, "timeout": 0.1}
    )
    conn = await pool.acquire()
    servers[0].ignore_pings()
    await until(lambda: conn._link is not None and conn._link.transport.closed)
    pool.release(conn)
    status = pool.health_status()["b0"]
    assert status.consecutive_failures == 1
    assert "heartbeat" in (status.last_error or "")


async def test_tight_acquire_release_loop_keeps_bookkeeping_bounded(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """10,000 acquire/release pairs without yielding queue at most one idle read per link."""
    pool = await make_pool(servers[:1], min_connections=2)
    for _ in range(10_000):
        conn = await pool.acquire()
        pool.release(conn)
    assert len(pool._to_read) <= pool.size


# --- regressions from the second review --------------------------------------------


async def test_an_open_that_succeeds_during_ejection_readmits_the_backend(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """A successful connect ends an ejection and puts the backend back into rotation."""
    pool = await make_pool(servers[:2], min_connections=0, reconnect={"initial_delay": 30.0})
    pool._core.backend_failed("b1", "simulated", time.monotonic())
    pool._run()
    assert not pool.health_status()["b1"].eligible
    pool._core._start_open(pool._core.backends["b1"], None)  # an open already in flight
    pool._run()
    await until(lambda: pool.health_status()["b1"].eligible, timeout=2)


async def test_idle_links_of_an_ejected_backend_make_room_at_capacity(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """At max_connections, an ejected backend's idle link is closed so acquires can proceed."""
    pool = await make_pool(
        servers[:2],
        min_connections=0,
        max_connections=2,
        load_balancing="round-robin",
        reconnect={"initial_delay": 30.0},
    )
    held = [await pool.acquire(), await pool.acquire()]
    on_b0 = next(c for c in held if c.backend_id == "b0")
    pool.release(next(c for c in held if c.backend_id == "b1"))  # b1: one idle link
    pool._core.backend_failed("b1", "simulated", time.monotonic())
    pool._run()
    async with pool.acquire(timeout=2) as conn:
        assert conn.backend_id == "b0"
    pool.release(on_b0)


async def test_a_mass_close_is_one_backoff_step(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """Six connections reset at once count six breaker failures but one backoff step."""
    pool = await make_pool(
        servers[:2], [5, 1], min_connections=6, circuit_breaker={"failure_threshold": 50}
    )
    backend = pool._core.backends["b0"]
    breaker = pool._store.record("b0").breaker
    linked = backend.open_links
    await servers[0].drop_all()
    await until(lambda: breaker.failure_count >= linked)
    assert backend.backoff.attempts == 1


async def test_ip_hash_acquire_without_key_fails_cleanly_while_others_wait(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """A keyless ip-hash acquire raises ValueError at once and strands nothing."""
    pool = await make_pool(
        servers[:1], min_connections=0, max_connections=1, load_balancing="ip-hash"
    )
    held = await pool.acquire(key="k")
    waiting = asyncio.ensure_future(pool.acquire(key="k", timeout=5))
    await until(lambda: pool.waiting_count == 1)
    with pytest.raises(ValueError, match="key"):
        await pool.acquire()
    assert pool.waiting_count == 1
    pool.release(held)
    pool.release(await waiting)
    assert pool.active_count == 0
    pool._check_invariants()


async def test_remove_backend_returns_once_its_inflight_open_fails(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """remove_backend(drain=True) doesn't wait out shutdown_timeout for a failed open."""
    pool = await make_pool(servers[:1], min_connections=0, connect_timeout=0.3, shutdown_timeout=5)
    pool.add_backend(Backend(id="slow", url=servers[1].url, weight=1000))
    servers[1].stall_handshake()
    acquiring = asyncio.ensure_future(pool.acquire(timeout=3))
    await until(lambda: pool.connecting_count == 1)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await pool.remove_backend("slow", drain=True)
    assert loop.time() - started < 2
    pool.release(await acquiring)


async def test_an_expired_idle_connection_is_closed_on_time(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """An idle connection past max_lifetime is closed soon, not at the next 60 s sweep."""
    pool = await make_pool(servers[:1], min_connections=0, max_lifetime=0.3, idle_timeout=None)
    async with pool.acquire() as conn:
        await assert_echo(conn, "x")
    await servers[0].wait_for_connections(0, timeout=3)
    assert pool.size == 0


async def test_validation_budget_running_out_keeps_a_healthy_connection(
    servers: list[BackendServer],
    make_pool: PoolFactory,
    wsclient_fault_proxy: FaultProxyFactory,
) -> None:
    """An acquire whose time runs out mid-validation leaves the (slow but fine) link alone."""
    proxy = await wsclient_fault_proxy(servers[0])
    pool = await make_pool(servers[:1], min_connections=0, validate_on_checkout=True)
    pool.add_backend(Backend(id="far", url=proxy.url_for("/ws")))
    await pool.remove_backend("b0")
    async with pool.acquire() as conn:
        first = conn.id
    proxy.set_latency(0.2)
    with pytest.raises(AcquireTimeoutError):
        await pool.acquire(timeout=0.1)
    proxy.set_latency(0)
    async with pool.acquire(timeout=5) as conn:
        assert conn.id == first  # not retired for our impatience
    assert servers[0].accepted_total == 1


async def test_broadcast_includes_an_ejected_backend(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """broadcast() reaches a healthy backend even while it is ejected."""
    pool = await make_pool(servers[:2], min_connections=2, reconnect={"initial_delay": 30.0})
    pool._core.backend_failed("b1", "simulated", time.monotonic())
    pool._run()
    results = await pool.broadcast("to all")
    assert results == {"b0": None, "b1": None}
