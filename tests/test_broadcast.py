"""``Broadcaster`` against real connections: channels with exclude/filter, a stalled
member that cannot delay the others past the timeout, closed members leaving, namespaces
with per-id sends, close_all, a drain paced at its rate, on_empty, sessions as members."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from wsclient import Broadcaster, Connection, ConnectionClosedError, connect
from wsclient.testing import BackendServer

from .conftest import PoolFactory, until


@pytest.fixture
async def conns(servers: list[BackendServer]) -> AsyncIterator[list[Connection]]:
    opened = [await connect(servers[i % 3].url, heartbeat={"interval": None}) for i in range(6)]
    yield opened
    for conn in opened:
        if conn.connected:
            await conn.close()


async def test_channel_broadcast_with_exclude_and_filter(conns: list[Connection]) -> None:
    """Only live, non-excluded, filtered-in subscribers get the message, once."""
    b = Broadcaster()
    b.create_channel("chat")
    for conn in conns:
        b.subscribe(conn, "chat")
    results = await b.broadcast(
        "chat", {"text": "hi"}, exclude=conns[0], filter=lambda c: c is not conns[1]
    )
    assert set(results) == set(conns[2:]) and all(r is None for r in results.values())
    for conn in conns[2:]:
        assert (await conn.receive_json(timeout=2)) == {"text": "hi"}  # echoed back by the server
    with pytest.raises(TimeoutError):
        await conns[0].receive(timeout=0.05)
    b.unsubscribe(conns[2], "chat")
    assert conns[2] not in b.subscribers("chat")
    with pytest.raises(KeyError, match="create_channel"):
        b.subscribe(conns[0], "nope")


async def test_stalled_member_does_not_delay_the_others_beyond_the_timeout(
    conns: list[Connection],
) -> None:
    """One member whose peer stopped reading: the broadcast ends within its timeout, that
    member's result is a TimeoutError, every other member got the message."""
    async with BackendServer() as stalled_server:
        stalled = await connect(stalled_server.url, heartbeat={"interval": None})
        try:
            stalled_server.stall_after_handshake()
            with pytest.raises(TimeoutError):  # fill the socket buffers until sends block
                for _ in range(4000):
                    await stalled.send(b"z" * 65536, timeout=0.1)
            b = Broadcaster(timeout=0.3)
            b.create_channel("feed")
            for conn in [*conns, stalled]:
                b.subscribe(conn, "feed")
            start = time.monotonic()
            # Big enough that a send must wait for the socket to drain (a tiny one would
            # only be appended to the stalled transport's buffer).
            big = "t" * 300_000
            results = await b.broadcast("feed", big)
            elapsed = time.monotonic() - start
            assert elapsed < 0.3 + 0.25, elapsed
            assert isinstance(results[stalled], TimeoutError)
            assert [results[c] for c in conns] == [None] * len(conns)
            for conn in conns:
                assert (await conn.receive(timeout=2)).data == big
        finally:
            stalled.drop()


async def test_closed_connections_leave_their_channels(conns: list[Connection]) -> None:
    """A connection closed by either side is no longer a subscriber or a namespace member."""
    b = Broadcaster()
    b.create_channel("c")
    for conn in conns:
        b.subscribe(conn, "c")
    b.add(conns[0], "users", "u0")
    await conns[0].close()
    conns[1].drop()
    assert conns[0] not in b.subscribers("c") and conns[1] not in b.subscribers("c")
    assert b.members("users") == {}
    results = await b.broadcast("c", "x")
    assert set(results) == set(conns[2:])
    with pytest.raises(ConnectionClosedError):
        b.subscribe(conns[0], "c")


async def test_namespaces_send_close_all_and_on_empty(conns: list[Connection]) -> None:
    """Per-id sends reach exactly that connection; close_all closes them; on_empty fires once."""
    emptied: list[str] = []
    b = Broadcaster(on_empty=emptied.append)
    for i, conn in enumerate(conns[:3]):
        b.add(conn, "room-1", f"u{i}")
    with pytest.raises(ValueError, match="already taken"):
        b.add(conns[3], "room-1", "u0")
    await b.send("room-1", "u1", {"to": "u1"})
    assert (await conns[1].receive_json(timeout=2)) == {"to": "u1"}
    with pytest.raises(KeyError):
        await b.send("room-1", "u9", "x")
    assert await b.close_all("room-1", 4000, "room closed") == 3
    assert all(not c.connected for c in conns[:3])
    assert [c.close_code for c in conns[:3]] == [4000] * 3
    assert emptied == ["room-1"] and b.members("room-1") == {}


class _Timed:
    """A real connection that notes when each close starts (to measure the drain's pace)."""

    def __init__(self, conn: Connection, stamps: list[float]) -> None:
        self.conn = conn
        self._stamps = stamps

    @property
    def connected(self) -> bool:
        return self.conn.connected

    async def send(self, data: str | bytes, timeout: float | None = None) -> None:
        await self.conn.send(data, timeout=timeout)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self._stamps.append(time.monotonic())
        await self.conn.close(code, reason)


async def test_namespace_drain_closes_at_the_configured_rate(servers: list[BackendServer]) -> None:
    """drain(per_second=20) over 12 connections: the closes are paced at 20/s (±20 %)."""
    stamps: list[float] = []
    emptied: list[str] = []
    b = Broadcaster(on_empty=emptied.append)
    members = []
    for i in range(12):
        conn = await connect(servers[0].url, heartbeat={"interval": None})
        members.append(_Timed(conn, stamps))
        b.add(members[-1], "ns", f"c{i}")
    await servers[0].wait_for_connections(12)
    assert await b.drain("ns", per_second=20, code=1001, reason="bye") == 12
    rate = (len(stamps) - 1) / (stamps[-1] - stamps[0])
    assert 16 <= rate <= 24, rate
    assert all(not m.connected for m in members) and emptied == ["ns"]
    await servers[0].wait_until(lambda: servers[0].open_connections == 0)


async def test_sessions_are_members_too(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """A session subscribes like a connection and stays a member while it reconnects."""
    pool = await make_pool(servers[:1], min_connections=0)
    b = Broadcaster()
    b.create_channel("news")
    async with pool.session() as s1, pool.session() as s2:
        b.subscribe(s1, "news")
        b.subscribe(s2, "news")
        results: dict[Any, Any] = await b.broadcast("news", "headline")
        assert list(results.values()) == [None, None]
        for s in (s1, s2):
            assert (await s.receive(timeout=2)).data == "headline"  # type: ignore[union-attr]
    assert b.subscribers("news") == []  # closed sessions left
    await until(lambda: pool.active_count == 0)
    await asyncio.sleep(0)
