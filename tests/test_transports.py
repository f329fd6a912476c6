"""What each transport must do beneath Connection, on aiohttp and on picows alike.

Against raw misbehaving peers (``wsclient.testing.peers``): a ping flood from a peer
that never reads keeps tasks and memory bounded and does not keep the link alive, the
heartbeat ends a blocked ``send()`` with its reason, pongs are coalesced; and the
options a transport cannot carry are refused before any socket opens.
"""

from __future__ import annotations

import asyncio

import pytest
from pydantic import ValidationError

from wsclient import (
    Backend,
    CloseCode,
    ConnectionClosedError,
    ConnectionOptions,
    ConnectionReleasedError,
    PoolConfig,
    WebSocketPool,
    connect,
)
from wsclient.config import TransportName
from wsclient.options import HeartbeatOptions
from wsclient.testing import BackendServer
from wsclient.testing.peers import NeverReadingPeer, PingFloodingPeer
from wsclient.transports.aiohttp import AiohttpTransport
from wsclient.transports.base import PONG_BUFFER_LIMIT
from wsclient.transports.picows import PicowsTransport

from .conftest import FAST, until

HEARTBEAT: HeartbeatOptions = {"interval": 0.2, "timeout": 0.2}
# Generous for a loaded 2-core machine; the heartbeat itself needs 0.4 s.
MARGIN = 1.5


async def test_ping_flood_from_a_non_reading_peer_stays_bounded_and_the_heartbeat_fires(
    transport: TransportName,
) -> None:
    """10,000 pings/s at an idle pooled link from a peer that never reads.

    Version 0.1 started a task per pong, let pongs pile up in the send buffer
    and counted the pings as liveness, so the link never died. Now: no task per
    ping, the write buffer stays under the pong bound, and the unanswered
    heartbeat ends the link within interval + timeout.
    """
    async with PingFloodingPeer(count=6_000, rate=10_000, read=False, payload=b"p" * 125) as peer:
        pool = WebSocketPool(
            **{
                **FAST,
                "min_connections": 1,
                "max_connections": 1,
                "reconnect": {"initial_delay": 5.0, "max_delay": 5.0},
            },
            backends=[Backend(id="flood", url=peer.url)],
            transport=transport,
            heartbeat=HEARTBEAT,
        )
        closed: list[tuple[str, int | None]] = []
        pool.on("connection-closed", lambda *args: closed.append(args))
        await pool.start()
        try:
            (link,) = pool._links
            tasks_before = len(asyncio.all_tasks())
            await peer.wait_for_pings_sent(1_000)
            most_tasks = most_buffered = 0
            loop = asyncio.get_running_loop()
            started = loop.time()
            while link.state.name == "OPEN" and loop.time() - started < 0.2 + 0.2 + MARGIN:
                most_tasks = max(most_tasks, len(asyncio.all_tasks()))
                most_buffered = max(most_buffered, link.transport.buffered_amount)
                await asyncio.sleep(0.01)
            assert link.state.name == "CLOSED", "the heartbeat never declared the peer dead"
            assert "heartbeat" in link.close_reason
            assert link.close_code == CloseCode.ABNORMAL_CLOSURE
            assert peer.pings_sent >= 1_000
            assert most_tasks <= tasks_before + 1  # aiohttp's one idle reader at most
            assert most_buffered <= PONG_BUFFER_LIMIT + 256
            await peer.wait_for_open_connections(0, timeout=2)  # the socket was let go
        finally:
            await pool.close(timeout=1)


async def test_heartbeat_ends_a_send_blocked_by_a_peer_that_stopped_reading(
    transport: TransportName,
) -> None:
    """The send wakes with ConnectionClosedError naming the heartbeat, not never."""
    async with NeverReadingPeer() as peer:
        conn = await connect(peer.url, transport=transport, heartbeat=HEARTBEAT)
        await peer.wait_for_connections(1)
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            with pytest.raises(ConnectionClosedError, match=r"heartbeat: no pong within 0\.2 s"):
                async with asyncio.timeout(0.4 + MARGIN):
                    await conn.send(b"x" * (4 * 1024 * 1024))
            assert loop.time() - started >= 0.35
            assert conn.close_code == CloseCode.ABNORMAL_CLOSURE
            assert not conn.connected
        finally:
            conn.drop()
        assert await peer.wait_disconnect(timeout=1) == "reset"


async def test_heartbeat_keeps_a_link_whose_peer_answers_pings(transport: TransportName) -> None:
    """A peer that pongs keeps the link open across several heartbeat periods."""
    async with BackendServer() as server:
        conn = await connect(
            server.url, transport=transport, heartbeat={"interval": 0.05, "timeout": 0.2}
        )
        try:
            await asyncio.sleep(0.5)  # ten heartbeats
            assert conn.connected
            await conn.send("still here")
            assert (await conn.receive(timeout=5)).data == "still here"
        finally:
            await conn.close()


async def test_pongs_to_a_ping_flood_are_coalesced_without_a_task_per_ping(
    transport: TransportName,
) -> None:
    """A reading peer's flood gets pongs (the latest payload), never more than its pings."""
    async with PingFloodingPeer(count=3_000) as peer:
        conn = await connect(peer.url, transport=transport, heartbeat={"interval": None})
        before = len(asyncio.all_tasks())
        reader = asyncio.create_task(conn.receive())  # answers pings while it waits for data
        try:
            await peer.wait_for_pings_sent(3_000, timeout=10)
            await peer.wait_for_pongs(1, timeout=5)
            assert len(asyncio.all_tasks()) <= before + 1  # the reader itself
            assert 1 <= peer.pongs <= peer.pings_sent
            assert not reader.done()
            assert conn.connected
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            conn.drop()


async def test_an_idle_pooled_link_is_watched_without_a_task_per_message(
    transport: TransportName,
) -> None:
    """Stray messages on an idle link are seen (event) without a task each."""
    async with BackendServer() as server:
        pool = WebSocketPool(
            **{**FAST, "min_connections": 1}, backends=[server.url], transport=transport
        )
        seen: list[object] = []
        pool.on("idle-message", lambda *args: seen.append(args))
        await pool.start()
        try:
            await server.wait_for_connections(1)
            await until(lambda: all(link.idle for link in pool._links))
            await asyncio.sleep(0.05)  # the idle watch starts on a later loop iteration
            before = len(asyncio.all_tasks())
            await server.push("unsolicited")
            await until(lambda: len(seen) >= 1)
            for _ in range(20):
                await server.push("again")
            await until(lambda: len(seen) >= 21)
            assert len(asyncio.all_tasks()) <= before
        finally:
            await pool.close(timeout=1)


async def test_aiohttp_transport_closed_is_aiohttp_s_own_flag() -> None:
    """The transport reads aiohttp's private flag (one call less per release):
    it must say what aiohttp's public ``closed`` says, open and closed."""
    async with BackendServer() as server:
        conn = await connect(server.url, transport="aiohttp")
        transport = conn._checked().transport
        assert isinstance(transport, AiohttpTransport)
        assert transport.closed is transport.ws.closed is False
        await conn.close()
        assert transport.closed is transport.ws.closed is True


async def test_aiohttp_hot_path_runs_on_the_installed_aiohttp() -> None:
    """The aiohttp transport sends and receives through aiohttp's writer and message
    queue without its coroutines (``_direct_parts``). Should an aiohttp release rename
    the internals it uses, the transport quietly falls back to the public coroutines:
    this test is what notices, so that the fallback is a decision, not an accident."""
    async with BackendServer() as server:
        conn = await connect(server.url, transport="aiohttp")
        transport = conn._checked().transport
        assert isinstance(transport, AiohttpTransport)
        assert transport._writer is not None and transport._reader is not None
        assert transport.send_bytes(b"direct") is None  # written at once, nothing to await
        assert (await conn.receive(timeout=5)).data == b"direct"
        await conn.send("text")
        assert (await conn.receive(timeout=5)).data == "text"
        await conn.close()
        compressed = await connect(server.url, transport="aiohttp", compression=True)
        inner = compressed._checked().transport
        assert isinstance(inner, AiohttpTransport)
        assert inner._writer is None  # compressing: aiohttp's own send_frame, with its lock
        await compressed.send(b"z" * 1000)
        assert (await compressed.receive(timeout=5)).data == b"z" * 1000
        await compressed.close()


async def test_a_send_after_the_transport_ended_says_how_the_connection_ended(
    transport: TransportName,
) -> None:
    """The transport ended under a link still marked open: the send finds it (the
    hot path no longer asks the transport first) and raises ConnectionClosedError,
    not a write error; a close already seen keeps its code."""
    async with BackendServer() as server:
        conn = await connect(server.url, transport=transport)
        link = conn._checked()
        link.transport.abort()
        with pytest.raises(ConnectionClosedError):
            await conn.send(b"after the end")
        assert link.close_code is not None


async def test_a_read_made_before_a_release_fails_when_it_runs(transport: TransportName) -> None:
    """``receive()`` hands out the transport's coroutine. One created on a lease and
    first run after the release must raise ConnectionReleasedError, not read the
    pooled link (it would take the idle link's messages and mark it as being read);
    the next lessee gets the link clean."""
    async with (
        BackendServer() as server,
        WebSocketPool(
            **{**FAST, "min_connections": 1, "max_connections": 1},
            backends=[server.url],
            transport=transport,
        ) as pool,
    ):
        async with pool.acquire() as conn:
            early = asyncio.create_task(conn.receive())
            link = conn._checked()
        with pytest.raises(ConnectionReleasedError):
            await early
        assert not link.reading and not link.dirty
        async with pool.acquire() as again:
            assert again._checked() is link  # the same link, reused
            await again.send("after")
            assert (await again.receive(timeout=5)).data == "after"
        assert pool.stats().closed == 0


async def test_a_compressed_send_after_aiohttp_closed_raises_connection_closed() -> None:
    """With compression aiohttp's own send_frame() writes, and it does not look at
    the closed flag aiohttp sets first when it closes (then it waits to drain): the
    transport must refuse the send itself, or a data frame follows the close frame."""
    async with BackendServer() as server:
        conn = await connect(server.url, transport="aiohttp", compression=True)
        transport = conn._checked().transport
        assert isinstance(transport, AiohttpTransport)
        transport.ws._set_closed()  # what ClientWebSocketResponse.close() does first
        with pytest.raises(ConnectionClosedError):
            await conn.send(b"after the close")
        conn.drop()


async def test_connection_reports_its_transport(transport: TransportName) -> None:
    async with BackendServer() as server:
        conn = await connect(server.url, transport=transport)
        try:
            assert conn.transport == transport
            assert conn.buffered_amount == 0
        finally:
            await conn.close()


@pytest.mark.parametrize(
    "build",
    [
        lambda: ConnectionOptions(transport="picows", compression=True),
        lambda: PoolConfig(backends=["ws://127.0.0.1:1/ws"], transport="picows", compression=True),
        lambda: PoolConfig(
            backends=[Backend(url="ws://127.0.0.1:1/ws", compression=True)], transport="picows"
        ),
        lambda: PoolConfig(
            backends=[Backend(url="ws://127.0.0.1:1/ws", transport="picows")], compression=True
        ),
    ],
    ids=["connect", "pool", "backend-compression", "backend-transport"],
)
def test_picows_refuses_compression_at_configuration_time(build: object) -> None:
    """permessage-deflate is not in picows: the combination is refused, naming both."""
    with pytest.raises(
        ValidationError, match=r"compression=True is not supported with transport='picows'"
    ):
        build()  # type: ignore[operator]


async def test_connect_refuses_an_unknown_transport_before_opening_anything() -> None:
    with pytest.raises(ValidationError, match="transport"):
        await connect("ws://127.0.0.1:1/ws", transport="websockets")  # type: ignore[arg-type]


async def test_no_log_record_at_any_level_carries_a_credential(
    transport: TransportName, caplog: pytest.LogCaptureFixture
) -> None:
    """picows writes the upgrade request at its level 9: that record must never exist."""
    caplog.set_level(1)
    caplog.set_level(1, logger="wsclient")
    async with BackendServer() as server:
        conn = await connect(server.url + "?token=q-s3cret", transport=transport, auth="b-s3cret")
        try:
            await conn.send("hi")
            assert (await conn.receive(timeout=5)).data == "hi"
        finally:
            await conn.close()
    assert caplog.records  # something was logged, at some level
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert "s3cret" not in text


def test_both_transports_work_under_uvloop_when_the_application_runs_it() -> None:
    """wsclient never installs uvloop; an application that runs its loop on it gets
    echo, a blocked send ended by the heartbeat, and an abort (RST) on both transports."""
    import uvloop

    async def scenario() -> list[str]:
        assert "uvloop" in type(asyncio.get_running_loop()).__module__
        seen: list[str] = []
        async with BackendServer() as server, NeverReadingPeer() as stuck:
            for transport in ("aiohttp", "picows"):
                conn = await connect(server.url, transport=transport)
                await conn.send("on uvloop")
                assert (await conn.receive(timeout=5)).data == "on uvloop"
                await conn.close()
                conn = await connect(stuck.url, transport=transport, heartbeat=HEARTBEAT)
                await stuck.wait_for_connections(len(seen) + 1)
                with pytest.raises(ConnectionClosedError, match="heartbeat"):
                    async with asyncio.timeout(0.4 + MARGIN):
                        await conn.send(b"x" * (4 * 1024 * 1024))
                seen.append(await stuck.wait_disconnect(timeout=1))
        return seen

    assert uvloop.run(scenario()) == ["reset", "reset"]


async def test_a_lessee_that_does_not_read_does_not_make_the_heartbeat_kill_the_link(
    transport: TransportName,
) -> None:
    """Replies pile up unread (reading even pauses): the pongs behind them still count,
    also for one heartbeat period after reading resumes (the backlog comes first)."""
    async with BackendServer() as server:
        conn = await connect(
            server.url, transport=transport, heartbeat={"interval": 0.05, "timeout": 0.25}
        )
        try:
            for _ in range(40):  # 40 x 16 KiB echoed back and never read, past every limit
                await conn.send(b"x" * 16384)
            await server.wait_for_messages(40)
            # Several heartbeat periods with nobody reading. Then the reads below
            # resume the socket with the pong still behind its backlog: on picows
            # the heartbeat used to call that dead (here in 2 runs of 3).
            await asyncio.sleep(0.9)
            assert conn.connected, conn.close_reason
            for _ in range(40):
                assert len((await conn.receive(timeout=5)).data) == 16384
            # The grace ends with the first pong through, so a later missed pong is
            # not forgiven for a pause long past.
            inner = conn._checked().transport
            assert isinstance(inner, AiohttpTransport | PicowsTransport)
            heartbeat = inner._heartbeat
            assert heartbeat is not None
            heartbeat.excuse()  # as a pause that has ended leaves it
            await conn.ping(b"grace")
            if transport == "aiohttp":
                # aiohttp sees the pong only when somebody reads: a read with
                # nothing else to come takes it in, then times out.
                with pytest.raises(TimeoutError):
                    await conn.receive(timeout=0.5)
            await until(lambda: not heartbeat._excused, timeout=3)
        finally:
            await conn.close()
