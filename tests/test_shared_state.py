"""RedisSharedState against a real redis-server: sharing, start-up view, outages, keys."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.conftest import FAST, until
from tests.fleet.servers import RedisServer, run_example
from wsclient import Backend, BackendHealth, WebSocketPool
from wsclient.fleet.redis_state import RedisSharedState
from wsclient.testing import BackendServer

_clusters = itertools.count()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def two() -> AsyncIterator[list[BackendServer]]:
    started = [BackendServer(name=f"s{i}") for i in range(2)]
    await asyncio.gather(*(s.start() for s in started))
    yield started
    await asyncio.gather(*(s.stop() for s in started))


def shared(redis_server: RedisServer, cluster: str, **options: Any) -> RedisSharedState:
    return RedisSharedState(
        redis_server.url,
        cluster=cluster,
        **{"timeout": 0.1, "heartbeat": 0.2, "reconnect_delay": 0.1, **options},
    )


def fleet_pool(
    servers: list[BackendServer], state: RedisSharedState, **options: Any
) -> WebSocketPool:
    backends = [Backend(id=f"b{i}", url=s.url) for i, s in enumerate(servers)]
    return WebSocketPool(
        **{
            **FAST,
            "backends": backends,
            "shared_state": state,
            "circuit_breaker": {"failure_threshold": 1, "recovery_timeout": 30.0},
            "reconnect": {"initial_delay": 0.3, "max_delay": 0.6, "jitter": 0.1},
            **options,
        }
    )


def health(pool: WebSocketPool, backend_id: str) -> BackendHealth:
    return pool.health_status()[backend_id]


async def test_a_breaker_opened_by_one_instance_reaches_another_within_a_second(
    redis_server: RedisServer, two: list[BackendServer]
) -> None:
    """B, which never talks to s0, sees the breaker A opened (and A's ejection) within 1 s."""
    cluster = f"t{next(_clusters)}"
    a = fleet_pool(two, shared(redis_server, cluster), min_connections=2)
    b = fleet_pool(two, shared(redis_server, cluster), min_connections=0)
    opened_at: list[float] = []
    b_seen = asyncio.Event()
    a.on("breaker-open", lambda backend_id: opened_at.append(time.monotonic()))
    b.on("breaker-open", lambda backend_id: b_seen.set())
    async with a, b:
        assert health(b, "b0").breaker == "closed"
        await two[0].stop()  # A's connections to s0 close; A's reconnect is refused
        async with asyncio.timeout(5):
            await b_seen.wait()
        arrived = time.monotonic()
        assert opened_at, "A never opened its breaker"
        assert arrived - opened_at[0] < 1.0
        assert health(b, "b0").breaker == "open"
        assert not health(b, "b0").eligible
        assert two[0].accepted_total <= 1  # A's warm link only: B learnt it through Redis
        async with b.acquire() as conn:
            assert conn.backend_id == "b1"


async def test_a_new_instance_starts_with_the_fleets_view(
    redis_server: RedisServer, two: list[BackendServer]
) -> None:
    """An instance started after the breaker opened never dials the backend."""
    cluster = f"t{next(_clusters)}"
    a = fleet_pool(two, shared(redis_server, cluster), min_connections=2)
    async with a:
        await two[0].stop()
        await until(lambda: health(a, "b0").breaker == "open")
        await asyncio.sleep(0.05)  # the write is queued, then one round trip
        c = fleet_pool(two, shared(redis_server, cluster), min_connections=4)
        async with c:
            view = health(c, "b0")
            assert view.breaker == "open" and not view.eligible
            assert all(
                h.id == "b1" or h.active + h.idle + h.connecting == 0
                for h in c.health_status().values()
            )


async def test_an_early_end_of_an_ejection_is_shared(
    redis_server: RedisServer, two: list[BackendServer]
) -> None:
    """A probe that answers ends the ejection on every instance, not only the prober's."""
    cluster = f"t{next(_clusters)}"
    checks = {"interval": 0.1, "timeout": 0.5, "path": "/health"}
    slow = {"initial_delay": 5.0, "max_delay": 5.0}
    a = fleet_pool(
        two,
        shared(redis_server, cluster),
        health_check=checks,
        circuit_breaker={"enabled": False},
        reconnect=slow,
    )
    b = fleet_pool(
        two,
        shared(redis_server, cluster),
        min_connections=0,
        health_check=checks,
        circuit_breaker={"enabled": False},
        reconnect=slow,
    )
    async with a, b:
        await two[0].drop_all()  # A's links die abnormally: A ejects b0 for ~5 s
        await until(lambda: health(b, "b0").ejected, timeout=2)
        # The backend is fine: the next probe (whoever holds the lease) ends it everywhere.
        await until(lambda: not health(a, "b0").ejected and not health(b, "b0").ejected, 1.5)


async def test_probes_are_shared_by_lease(
    redis_server: RedisServer, two: list[BackendServer]
) -> None:
    """Three instances probe a backend about as often as one does; closing the holder hands over."""
    cluster = f"t{next(_clusters)}"
    checks = {"interval": 0.1, "timeout": 0.1, "path": "/health", "jitter": 0.1}
    pools = [
        fleet_pool(two[:1], shared(redis_server, cluster), min_connections=0, health_check=checks)
        for _ in range(3)
    ]
    async with pools[0], pools[1], pools[2]:
        await asyncio.sleep(0.3)
        before = two[0].health_requests
        await asyncio.sleep(1.0)
        shared_probes = two[0].health_requests - before
        # One instance alone: about 1 s / 0.1 s = 10 probes; three without sharing: 30.
        assert 5 <= shared_probes <= 15, shared_probes
        holder = next(p for p in pools if p.fleet_status()["shared_state"]["probe_leases"] > 3)
        await holder.close()
        before = two[0].health_requests
        # Another instance takes the lease over and probes on. Awaited, not slept on:
        # a fixed 0.3 s saw only one probe once, on a loaded machine.
        await until(lambda: two[0].health_requests - before >= 2, timeout=2.0)


async def test_redis_killed_then_restarted(
    redis_server: RedisServer, two: list[BackendServer], caplog: pytest.LogCaptureFixture
) -> None:
    """Redis down: acquires go on, the error shows, one warning; back: shared again."""
    cluster = f"t{next(_clusters)}"
    a = fleet_pool(two, shared(redis_server, cluster), min_connections=2)
    b = fleet_pool(two, shared(redis_server, cluster), min_connections=0)
    async with a, b:
        assert a.stats().fleet.shared_state_connected is True
        redis_server.kill()
        await until(lambda: a.stats().fleet.shared_state_connected is False, timeout=2)
        for _ in range(50):
            async with a.acquire(timeout=0.5):
                pass
        status = a.fleet_status()["shared_state"]
        assert status["connected"] is False and status["last_error"]
        await asyncio.sleep(0.5)  # several failed reconnects: still one warning
        warnings = [r for r in caplog.records if "using local state" in r.getMessage()]
        assert len([r for r in warnings if cluster in r.getMessage()]) == 2  # one per instance
        redis_server.start()
        started = time.monotonic()
        await until(
            lambda: (
                a.stats().fleet.shared_state_connected
                is b.stats().fleet.shared_state_connected
                is True
            ),
            timeout=5,
        )
        assert time.monotonic() - started < 5
        # Shared again: a breaker A opens now (after its reconnect delay) reaches B.
        await two[0].stop()
        await until(lambda: health(a, "b0").breaker == "open", timeout=5)
        await until(lambda: health(b, "b0").breaker == "open", timeout=1)


async def test_redis_paused_never_blocks_acquire(
    redis_server: RedisServer, two: list[BackendServer]
) -> None:
    """SIGSTOP: Redis keeps the socket and never answers; the pool falls back within bounds."""
    cluster = f"t{next(_clusters)}"
    a = fleet_pool(two, shared(redis_server, cluster), min_connections=2)
    async with a:
        redis_server.pause()
        try:
            await until(lambda: a.stats().fleet.shared_state_connected is False, timeout=1.5)
            await two[0].stop()  # a transition while Redis is away: applied locally
            await until(lambda: health(a, "b0").breaker == "open", timeout=5)
            started = time.perf_counter()
            for _ in range(20):
                async with a.acquire(timeout=0.5) as conn:
                    assert conn.backend_id == "b1"
            assert time.perf_counter() - started < 1.0
        finally:
            redis_server.resume()
        await until(lambda: a.stats().fleet.shared_state_connected is True, timeout=3)
        # The resync pushed what changed meanwhile: a new instance sees it.
        c = fleet_pool(two, shared(redis_server, cluster), min_connections=0)
        async with c:
            assert health(c, "b0").breaker == "open"


async def test_keys_are_namespaced_expire_and_hold_no_secrets(
    redis_server: RedisServer, two: list[BackendServer]
) -> None:
    """Every key is under wsclient:{cluster}:, records expire, no URL or token is stored."""
    cluster = f"t{next(_clusters)}"
    token = "s3cr3t-token-value"
    backends = [
        Backend(id=f"b{i}", url=f"{s.url}?token={token}", auth=token) for i, s in enumerate(two)
    ]
    a = fleet_pool(
        two,
        shared(redis_server, cluster, key_ttl=60),
        health_check={"interval": 0.05, "timeout": 0.5},
        backends=backends,
    )
    async with a:
        await asyncio.sleep(0.3)  # probes ran and were written
        client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
        try:
            keys = [str(k) for k in await client.keys("*")]
            assert keys and all(k.startswith(f"wsclient:{{{cluster}}}:") for k in keys), keys
            records = [k for k in keys if ":b:" in k]
            assert records
            for key in records:
                assert 0 < await client.pttl(key) <= 60_000
                dump = str(await client.hgetall(key))
                assert token not in dump and "ws://" not in dump and "127.0.0.1" not in dump
        finally:
            await client.aclose()
    assert token not in repr(a)


def test_bad_arguments_are_named() -> None:
    """Bad url, cluster or timeout: a ValueError naming it; the password is never shown."""
    with pytest.raises(ValueError, match="url"):
        RedisSharedState("http://x", cluster="c")
    with pytest.raises(ValueError, match="cluster"):
        RedisSharedState("redis://x", cluster="a b")
    with pytest.raises(ValueError, match="timeout"):
        RedisSharedState("redis://x", cluster="c", timeout=float("nan"))
    state = RedisSharedState("redis://:hunter2@127.0.0.1:6390/0", cluster="c")
    assert "hunter2" not in repr(state) and "hunter2" not in str(state.status())


def test_the_fleet_example_runs(redis_server: RedisServer) -> None:
    """examples/fleet.py runs against a real Redis: B takes 'one' out through Redis."""
    done = run_example("fleet.py", {"REDIS_URL": redis_server.url})
    assert done.returncode == 0, done.stderr
    assert "B saw 'one' open" in done.stdout and "'one': ('open', False)" in done.stdout
