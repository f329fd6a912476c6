"""The pool's ``init=`` hook against real backends: once per physical connection, and a
raising hook is a failed connect that fails over to another backend."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from wsclient import Connection, NoHealthyBackendError, PoolClosedError
from wsclient.testing import BackendServer

from .conftest import PoolFactory, until


async def test_init_runs_once_per_physical_connection_before_first_lease(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """Every connection the servers accepted ran init exactly once, before any lease saw it."""
    calls: Counter[str] = Counter()

    async def init(conn: Connection) -> None:
        await conn.send_json({"auth": "token"})  # the echo is init's own answer
        assert (await conn.receive_json(timeout=2)) == {"auth": "token"}
        calls[conn.id] += 1

    pool = await make_pool(servers, min_connections=3, max_connections=6, init=init)
    leased: list[str] = []

    async def user() -> None:
        for _ in range(20):
            async with pool.acquire() as conn:
                assert calls[conn.id] == 1, "leased before init finished"
                leased.append(conn.id)
                await conn.send("x")
                assert (await conn.receive(timeout=2)).data == "x"

    await asyncio.gather(*(user() for _ in range(6)))
    accepted = sum(s.accepted_total for s in servers)
    assert set(calls.values()) == {1}
    assert len(calls) == accepted  # one init per physical connection, none skipped
    assert set(leased) <= set(calls)


async def test_failing_init_fails_over_and_counts_against_the_backend(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """A backend whose init raises never serves a lease; its breaker counts the failures."""

    async def init(conn: Connection) -> None:
        if conn.backend_id == "b0":
            raise PermissionError("auth rejected: secret-token-123")

    pool = await make_pool(
        servers[:2],
        min_connections=2,
        max_connections=4,
        init=init,
        circuit_breaker={"failure_threshold": 3, "recovery_timeout": 30},
        load_balancing="round-robin",
    )
    served: Counter[str] = Counter()
    for _ in range(20):
        async with pool.acquire(timeout=2) as conn:
            served[conn.backend_id] += 1
    assert served["b0"] == 0 and served["b1"] == 20
    await until(lambda: pool.health_status()["b0"].breaker == "open")
    health = pool.health_status()["b0"]
    assert health.last_error is not None and "PermissionError" in health.last_error
    assert "secret-token-123" not in health.last_error  # the hook's message is not repeated
    assert servers[0].accepted_total >= 1  # it did connect: init is what failed


async def test_init_overrunning_connect_timeout_is_a_failed_connect(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """An init that hangs is bounded by connect_timeout; the connection is closed."""
    started = asyncio.Event()

    async def init(conn: Connection) -> None:
        started.set()
        await asyncio.sleep(3600)

    pool = await make_pool(servers[:1], min_connections=0, init=init, connect_timeout=0.2)
    with pytest.raises(NoHealthyBackendError):
        await pool.acquire(timeout=1.0)
    assert started.is_set()
    assert "init did not finish" in str(pool.health_status()["b0"].last_error)
    await servers[0].wait_until(lambda: servers[0].open_connections == 0)


async def test_pool_closing_during_init_leaks_nothing(servers: list[BackendServer]) -> None:
    """close() while init runs cancels it and closes the half-made connection."""
    from wsclient import WebSocketPool

    from .conftest import FAST

    started = asyncio.Event()

    async def init(conn: Connection) -> None:
        started.set()
        await asyncio.sleep(3600)

    pool = WebSocketPool(**{**FAST, "backends": [servers[0].url], "min_connections": 0}, init=init)
    await pool.start()
    acquiring = asyncio.create_task(pool.acquire(timeout=5))
    await started.wait()
    await pool.close(timeout=0.5)
    with pytest.raises(PoolClosedError):
        await acquiring
    assert pool.size == 0
    await servers[0].wait_until(lambda: servers[0].open_connections == 0)


def test_init_option_is_validated_and_named_in_dumps() -> None:
    """A non-callable init is refused naming the field; a dump names the hook."""
    import pydantic

    from wsclient import PoolConfig

    async def login(conn: Connection) -> None: ...

    with pytest.raises(pydantic.ValidationError, match="init"):
        PoolConfig(init="not callable")
    assert PoolConfig(init=login).model_dump(mode="json")["init"].endswith("login")
