"""``pool.session()`` against real backends: a numbered feed survives a SIGKILL of its
backend (the ``websockets`` server) with ``on_connect`` run again and no message
duplicated or lost; sends wait (bounded) through the gap; the outgoing queue keeps
memory bounded against a backend that stopped reading."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from wsclient import (
    Backend,
    Connection,
    ConnectionClosedError,
    Message,
    MessageType,
    Reconnected,
    WebSocketPool,
)
from wsclient.testing import BackendServer
from wsclient.testing.interop import InteropServer

from .conftest import FAST, PoolFactory, until

FEED_LENGTH = 120


async def test_session_feed_survives_sigkill_without_loss_or_duplicates() -> None:
    """The websockets server numbers its messages; after SIGKILL the session resumes on the
    other backend from where it was, and the consumer sees 0..N-1 exactly once."""
    async with InteropServer("websockets") as a, InteropServer("websockets") as b:
        by_id = {"a": a, "b": b}
        pool = WebSocketPool(
            **{
                **FAST,
                "backends": [Backend(id="a", url=a.url), Backend(id="b", url=b.url)],
                "min_connections": 0,
                "load_balancing": "round-robin",
            }
        )
        seen: list[int] = []
        markers: list[Reconnected] = []
        connects: list[str] = []

        async def subscribe(conn: Connection) -> None:
            connects.append(conn.backend_id)
            start = seen[-1] + 1 if seen else 0
            await conn.send_json(
                {"op": "count", "start": start, "n": FEED_LENGTH - start, "interval": 0.004}
            )

        async with pool, pool.session(on_connect=subscribe) as session:
            first = session.backend_id
            assert first is not None
            async for item in session:
                if isinstance(item, Reconnected):
                    markers.append(item)
                    continue
                seen.append(json.loads(item.data)["seq"])
                if len(seen) == 30:
                    await by_id[first].kill()
                if seen[-1] == FEED_LENGTH - 1:
                    break
            assert pool.active_count == 1
        assert pool.size == 0

    assert seen == list(range(FEED_LENGTH))  # none lost, none twice, in order
    assert len(connects) == 2 and connects[1] != first
    assert len(markers) == 1
    assert markers[0].previous_backend_id == first and markers[0].backend_id == connects[1]
    assert isinstance(markers[0].error, ConnectionClosedError)


async def test_send_waits_through_the_gap_then_goes_out_after_on_connect(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """While no backend takes connections, sends queue up to max_buffered, then wait at most
    their timeout; once a backend is back the queue goes out after on_connect."""
    server = servers[0]
    pool = await make_pool([server], min_connections=0, circuit_breaker={"recovery_timeout": 0.2})
    order: list[str] = []

    async def hello(conn: Connection) -> None:
        await conn.send("hello")
        order.append("on_connect")

    async with pool.session(on_connect=hello, max_buffered=10, send_timeout=0.2) as session:
        got: list[Any] = []
        changed = asyncio.Event()

        async def consume() -> None:  # a consumer keeps reading, so it sees the loss at once
            async for item in session:
                got.append(item)
                changed.set()

        reader = asyncio.create_task(consume())
        await until(lambda: len(got) == 1)
        assert got[0] == Message(MessageType.TEXT, "hello")
        server.refuse()
        await server.drop_all()
        await until(lambda: not session.connected)
        await session.send("queued-1")  # 8 bytes: fits
        with pytest.raises(TimeoutError, match="send queue full"):
            await session.send("queued-2")  # would make 16 > 10 bytes
        assert session.buffered_amount == 8
        await server.restore()
        await until(lambda: len(got) == 4)
        assert isinstance(got[1], Reconnected)
        assert [m.data for m in got[2:]] == ["hello", "queued-1"]  # on_connect first
        assert order == ["on_connect", "on_connect"]
        reader.cancel()
    assert pool.active_count == 0


async def test_queue_keeps_memory_bounded_against_a_backend_that_stopped_reading(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """A stalled backend: the session's queue never holds more than max_buffered, senders
    get TimeoutError, and the connection's buffered_amount shows the unsent bytes."""
    server = servers[0]
    pool = await make_pool([server], min_connections=0, heartbeat={"interval": None})
    chunk = b"x" * 65536
    async with pool.session(max_buffered=256 * 1024, send_timeout=0.3) as session:
        server.stall_after_handshake()
        with pytest.raises(TimeoutError):
            for _ in range(1000):  # 64 MiB if nothing pushed back
                await session.send(chunk)
        assert session._queue.nbytes <= 256 * 1024
        conn = session.connection
        assert conn is not None
        await until(lambda: conn.buffered_amount > 0)
        assert session.buffered_amount <= 256 * 1024 + conn.buffered_amount
        assert conn.buffered_amount < 16 * 1024 * 1024  # the transport is paused, not growing
        server.stall_after_handshake(False)
        await session.flush(timeout=10)  # the backend reads again: everything goes out
        assert session._queue.nbytes == 0


async def test_connection_send_timeout_and_buffered_amount(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """send(timeout=) on a plain pooled connection to a stalled peer raises TimeoutError;
    buffered_amount reports the bytes still waiting."""
    server = servers[0]
    pool = await make_pool([server], min_connections=0, heartbeat={"interval": None})
    async with pool.acquire() as conn:
        assert conn.buffered_amount == 0
        server.stall_after_handshake()
        with pytest.raises(TimeoutError):
            for _ in range(2000):
                await conn.send(b"y" * 65536, timeout=0.2)
        assert conn.buffered_amount > 0
        conn.drop()


async def test_on_connect_failure_on_reconnect_is_retried(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """A raising on_connect closes that connection and the session tries again (backoff)."""
    pool = await make_pool(servers[:2], min_connections=0)
    attempts: list[str] = []

    async def flaky(conn: Connection) -> None:
        attempts.append(conn.backend_id)
        if len(attempts) == 2:
            raise RuntimeError("subscription refused")

    async with pool.session(on_connect=flaky) as session:
        first = session.connection
        assert first is not None
        for s in servers[:2]:
            await s.drop_all()
        item = await session.receive(timeout=5)
        assert isinstance(item, Reconnected) and item.attempts >= 2
        assert len(attempts) >= 3
        await session.send("after")
        assert (await session.receive(timeout=2)).data == "after"  # type: ignore[union-attr]


async def test_closed_session_refuses_use_and_pool_close_ends_sessions(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """A closed session raises ConnectionClosedError; closing the pool closes open sessions."""
    pool = await make_pool(servers[:1], min_connections=0)
    session = await pool.session().open()
    reader = asyncio.create_task(session.receive())
    await until(lambda: session.connection is not None and pool.active_count == 1)
    await pool.close(timeout=1.0)
    with pytest.raises(ConnectionClosedError):
        await reader
    assert session.closed and pool.size == 0
    with pytest.raises(ConnectionClosedError):
        await session.send("x")


async def test_bad_session_options_are_refused(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """Options are checked when the session is made, naming the option."""
    pool = await make_pool(servers[:1], min_connections=0)
    with pytest.raises(ValueError, match="max_buffered"):
        pool.session(max_buffered=0)
    with pytest.raises(ValueError, match="send_timeout"):
        pool.session(send_timeout=0)
    with pytest.raises(RuntimeError, match="not open"):
        await pool.session().send("x")
