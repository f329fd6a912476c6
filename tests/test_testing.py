"""Tests of the test kit itself: wsclient.testing and the wsclient pytest plugin."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import WSMsgType

from wsclient.pytest_plugin import (
    BackendsFactory,
    FaultProxyFactory,
    backends_factory,
    fault_proxy_factory,
)
from wsclient.testing import (
    EXPECTED_CLOSE_CODES,
    MALFORMED_KINDS,
    BackendProcess,
    BackendServer,
    FaultProxy,
    MalformedKind,
    malformed_frame,
)

# Kinds aiohttp's client detects; "masked-frame" is tolerated by aiohttp (tested apart)
# and "oversize" needs a small client limit (tested apart).
DETECTED_KINDS = [k for k in MALFORMED_KINDS if k not in ("masked-frame", "oversize")]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session that never reuses HTTP connections (so refusals are real)."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
        yield s


@pytest.fixture
async def server() -> AsyncIterator[BackendServer]:
    """A running in-process backend."""
    async with BackendServer() as backend:
        yield backend


@pytest.fixture
async def proxy(server: BackendServer) -> AsyncIterator[FaultProxy]:
    """A running fault proxy in front of ``server``."""
    async with FaultProxy(server.host, server.port) as fault_proxy:
        yield fault_proxy


async def echo(ws: aiohttp.ClientWebSocketResponse, text: str) -> str:
    """Send ``text`` and return the reply's text."""
    await ws.send_str(text)
    msg = await ws.receive(timeout=5)
    assert msg.type is WSMsgType.TEXT, msg
    return str(msg.data)


# --------------------------------------------------------------------------- BackendServer


async def test_echo_text_and_binary(server: BackendServer, http: aiohttp.ClientSession) -> None:
    """Text comes back as text and binary as binary, byte for byte."""
    assert server.url == f"ws://127.0.0.1:{server.port}/ws"
    async with http.ws_connect(server.url) as ws:
        assert await echo(ws, "héllo") == "héllo"
        await ws.send_bytes(b"\x00\xffbin")
        msg = await ws.receive(timeout=5)
        assert msg.type is WSMsgType.BINARY and msg.data == b"\x00\xffbin"
    assert server.messages_received == 2


async def test_health_ok_then_503(server: BackendServer, http: aiohttp.ClientSession) -> None:
    """/health answers 200 with the name, then 503 once told to, and counts requests."""
    async with http.get(server.http_url + "/health") as resp:
        assert resp.status == 200
        assert await resp.json() == {"status": "ok", "name": server.name, "open_connections": 0}
    server.set_health_status(503)
    async with http.get(server.http_url + "/health") as resp:
        assert resp.status == 503
        assert (await resp.json())["status"] == "unhealthy"
    assert server.health_requests == 2


async def test_health_delay_times_out_a_probe(
    server: BackendServer, http: aiohttp.ClientSession
) -> None:
    """A health delay longer than the probe timeout makes the probe time out."""
    server.set_health_delay(float("inf"))
    with pytest.raises(asyncio.TimeoutError):
        await http.get(server.http_url + "/health", timeout=aiohttp.ClientTimeout(total=0.2))
    assert server.health_requests == 1


async def test_counters_go_up_and_down(server: BackendServer, http: aiohttp.ClientSession) -> None:
    """open_connections follows the clients; accepted_total only grows until reset."""
    async with http.ws_connect(server.url) as first, http.ws_connect(server.url) as second:
        await server.wait_for_connections(2)
        assert await echo(first, "a") == "a" and await echo(second, "b") == "b"
        stats = server.stats()
        assert (stats.open_connections, stats.accepted_total, stats.messages_received) == (2, 2, 2)
        await first.close()
        await server.wait_for_connections(1)
    await server.wait_for_connections(0)
    assert server.accepted_total == 2
    server.reset_counters()
    assert server.stats().as_dict() == {
        "open_connections": 0,
        "accepted_total": 0,
        "messages_received": 0,
        "health_requests": 0,
        "pending_handshakes": 0,
    }


async def test_wait_for_connections_times_out_with_a_message(server: BackendServer) -> None:
    """Waiting for a state that never comes raises TimeoutError naming the counter."""
    with pytest.raises(TimeoutError, match="open_connections is 0, expected 1"):
        await server.wait_for_connections(1, timeout=0.1)


async def test_refuse_then_restore_on_the_same_port(
    server: BackendServer, http: aiohttp.ClientSession
) -> None:
    """refuse() refuses new connections, keeps open ones; restore() listens on the same port."""
    port = server.port
    async with http.ws_connect(server.url) as survivor:
        await server.refuse()  # awaiting is optional
        assert server.refused
        with pytest.raises(aiohttp.ClientConnectorError):
            await http.ws_connect(server.url)
        assert await echo(survivor, "still here") == "still here"
        await server.restore()
        assert not server.refused and server.port == port
        async with http.ws_connect(server.url) as ws:
            assert await echo(ws, "back") == "back"


async def test_stall_handshake_makes_connect_time_out(
    server: BackendServer, http: aiohttp.ClientSession
) -> None:
    """A stalled upgrade is never answered: the client's 0.3 s connect timeout fires."""
    server.stall_handshake()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await http.ws_connect(server.url)
    assert server.accepted_total == 0
    await server.wait_for_pending_handshakes(0)  # the abandoned request is released
    await server.restore()
    async with http.ws_connect(server.url) as ws:
        assert await echo(ws, "ok") == "ok"


async def test_stall_after_handshake_fails_client_heartbeat(
    server: BackendServer, http: aiohttp.ClientSession
) -> None:
    """After the handshake nothing is answered, so a 0.2 s client heartbeat gives up."""
    server.stall_after_handshake()
    async with http.ws_connect(server.url, heartbeat=0.2) as ws:
        await server.wait_for_connections(1)
        msg = await ws.receive(timeout=5)
        assert msg.type is WSMsgType.ERROR
        assert isinstance(msg.data, aiohttp.ServerTimeoutError)
        assert ws.close_code == 1006
    await server.wait_for_connections(0)  # the server notices the client went away


async def test_ignore_pings_keeps_echoing(
    server: BackendServer, http: aiohttp.ClientSession
) -> None:
    """With pings ignored messages are still echoed, but the heartbeat fails."""
    server.ignore_pings()
    async with http.ws_connect(server.url, heartbeat=0.2) as ws:
        assert await echo(ws, "data flows") == "data flows"
        msg = await ws.receive(timeout=5)
        assert msg.type is WSMsgType.ERROR
        assert isinstance(msg.data, aiohttp.ServerTimeoutError)


async def test_close_all_sends_code_and_reason(
    server: BackendServer, http: aiohttp.ClientSession
) -> None:
    """close_all(4001, 'bye') reaches the client as a clean close with that code."""
    async with http.ws_connect(server.url) as ws:
        await server.wait_for_connections(1)
        assert await server.close_all(4001, "bye") == 1
        msg = await ws.receive(timeout=5)
        assert (msg.type, msg.data, msg.extra) == (WSMsgType.CLOSE, 4001, "bye")
        assert ws.close_code == 4001
    await server.wait_for_connections(0)


async def test_close_all_wait_returns_after_release(
    server: BackendServer, http: aiohttp.ClientSession
) -> None:
    """close_all(wait=True) returns once the server has released the connection."""
    async with http.ws_connect(server.url) as ws:
        await server.wait_for_connections(1)
        reader = asyncio.create_task(ws.receive(timeout=5))
        assert await server.close_all(1001, "going", wait=True) == 1
        assert server.open_connections == 0
        msg = await reader
        assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1001)


async def test_close_next_connections_with(
    server: BackendServer, http: aiohttp.ClientSession
) -> None:
    """Only the next `count` connections are closed right after their handshake."""
    server.close_next_connections_with(4002, "not now", count=1)
    async with http.ws_connect(server.url) as rejected:
        msg = await rejected.receive(timeout=5)
        assert (msg.type, msg.data, msg.extra) == (WSMsgType.CLOSE, 4002, "not now")
    async with http.ws_connect(server.url) as ws:
        assert await echo(ws, "welcome") == "welcome"
    assert server.accepted_total == 2


@pytest.mark.parametrize("rst", [True, False])
async def test_drop_all_is_an_abnormal_closure(
    server: BackendServer, http: aiohttp.ClientSession, rst: bool
) -> None:
    """drop_all() cuts TCP without a close frame: the client sees 1006."""
    async with http.ws_connect(server.url) as ws:
        await server.wait_for_connections(1)
        assert await server.drop_all(rst=rst) == 1
        assert server.open_connections == 0
        msg = await ws.receive(timeout=5)
        assert msg.type is WSMsgType.CLOSED
        assert ws.close_code == 1006


@pytest.mark.parametrize("kind", DETECTED_KINDS)
async def test_malformed_frame_fails_the_client_with_rfc_code(
    server: BackendServer, http: aiohttp.ClientSession, kind: MalformedKind
) -> None:
    """Each malformed frame makes aiohttp's client fail the connection with the RFC code."""
    async with http.ws_connect(server.url) as ws:
        await server.wait_for_connections(1)
        assert await server.send_malformed(kind) == 1
        msg = await ws.receive(timeout=5)
        assert msg.type is WSMsgType.ERROR, msg
        assert isinstance(msg.data, aiohttp.WebSocketError)
        assert msg.data.code == EXPECTED_CLOSE_CODES[kind]
        assert ws.close_code == EXPECTED_CLOSE_CODES[kind]
    await server.wait_for_connections(0)


async def test_oversize_frame_exceeds_a_small_client_limit(
    server: BackendServer, http: aiohttp.ClientSession
) -> None:
    """An oversize frame is rejected with 1009 by a client with a small max_msg_size."""
    async with http.ws_connect(server.url, max_msg_size=1024) as ws:
        await server.wait_for_connections(1)
        await server.send_malformed("oversize", size=1025)
        msg = await ws.receive(timeout=5)
        assert msg.type is WSMsgType.ERROR
        assert isinstance(msg.data, aiohttp.WebSocketError) and msg.data.code == 1009
        assert ws.close_code == 1009


def test_malformed_frame_bytes() -> None:
    """The raw frames are what their names say, and every kind has an expected code."""
    assert set(EXPECTED_CLOSE_CODES) == set(MALFORMED_KINDS)
    assert malformed_frame("bad-opcode") == b"\x83\x00"
    assert malformed_frame("reserved-bits")[0] & 0x30 == 0x30
    header = malformed_frame("oversize", size=70_000)[:10]
    assert header[:2] == b"\x82\x7f" and struct.unpack("!Q", header[2:])[0] == 70_000
    masked = malformed_frame("masked-frame")
    assert masked[1] & 0x80 and len(masked) == 2 + 4 + len("masked")
    key, payload = masked[2:6], masked[6:]
    assert bytes(b ^ key[i % 4] for i, b in enumerate(payload)) == b"masked"
    with pytest.raises(ValueError, match="unknown malformed frame kind"):
        malformed_frame("nonsense")  # type: ignore[arg-type]


async def test_push_reaches_every_connection(
    server: BackendServer, http: aiohttp.ClientSession
) -> None:
    """push() sends an unsolicited text or binary message to each open WebSocket."""
    async with http.ws_connect(server.url) as one, http.ws_connect(server.url) as two:
        await server.wait_for_connections(2)
        assert await server.push("news") == 2
        assert await server.push(b"\x01\x02") == 2
        for ws in (one, two):
            assert (await ws.receive(timeout=5)).data == "news"
            assert (await ws.receive(timeout=5)).data == b"\x01\x02"


async def test_reply_delay(server: BackendServer, http: aiohttp.ClientSession) -> None:
    """A reply delay holds every echo back by at least that long."""
    loop = asyncio.get_running_loop()
    server.set_reply_delay(0.2)
    async with http.ws_connect(server.url) as ws:
        started = loop.time()
        assert await echo(ws, "slow") == "slow"
        assert loop.time() - started >= 0.2


async def test_custom_responder(http: aiohttp.ClientSession) -> None:
    """on_message replaces the echo; returning None sends nothing back."""

    async def shout(data: str | bytes) -> str | bytes | None:
        return None if data == "quiet" else str(data).upper()

    async with BackendServer(on_message=shout) as backend, http.ws_connect(backend.url) as ws:
        await ws.send_str("quiet")
        assert await echo(ws, "hey") == "HEY"  # the first message got no reply
        assert backend.messages_received == 2


async def test_restart_on_the_same_port(server: BackendServer, http: aiohttp.ClientSession) -> None:
    """restart() says 1001 to open clients, comes back on the same port with faults cleared."""
    port = server.port
    server.set_health_status(503)
    async with http.ws_connect(server.url) as ws:
        await server.wait_for_connections(1)
        reader = asyncio.create_task(ws.receive(timeout=5))
        await server.restart()
        msg = await reader
        assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1001)
    assert server.port == port and server.running
    async with http.ws_connect(server.url) as ws:
        assert await echo(ws, "again") == "again"
    async with http.get(server.http_url + "/health") as resp:
        assert resp.status == 200


async def test_stop_is_idempotent_and_start_reuses_the_port(http: aiohttp.ClientSession) -> None:
    """stop() twice is fine; start() after stop() binds the same port again."""
    backend = BackendServer(name="again")
    await backend.start()
    port = backend.port
    await backend.stop()
    await backend.stop()
    assert not backend.running
    with pytest.raises(aiohttp.ClientConnectorError):
        await http.ws_connect(backend.url)
    async with backend:
        assert backend.port == port
        async with http.ws_connect(backend.url) as ws:
            assert await echo(ws, "x") == "x"


# -------------------------------------------------------------------------- BackendProcess


async def test_process_echo_stats_and_faults(http: aiohttp.ClientSession) -> None:
    """The child echoes, reports stats over HTTP and applies faults remotely."""
    async with BackendProcess(name="child") as proc:
        assert proc.running and proc.port > 0
        async with http.ws_connect(proc.url) as ws:
            assert await echo(ws, "hi") == "hi"
            await proc.wait_for_connections(1)
            stats = await proc.stats()
            assert (stats.open_connections, stats.accepted_total) == (1, 1)
            assert stats.messages_received == 1
            await proc.set_health_status(503)
            async with http.get(proc.http_url + "/health") as resp:
                assert resp.status == 503 and (await resp.json())["name"] == "child"
            assert await proc.close_all(4003, "remote") == 1
            msg = await ws.receive(timeout=5)
            assert (msg.type, msg.data, msg.extra) == (WSMsgType.CLOSE, 4003, "remote")
        await proc.wait_for_connections(0)
        await proc.restore()
        async with http.get(proc.http_url + "/health") as resp:
            assert resp.status == 200
        with pytest.raises(ValueError, match="unknown fault kind"):
            await proc.fault("nonsense")
    assert not proc.running and proc.returncode == 0


async def test_process_kill_then_restart_on_the_same_port(http: aiohttp.ClientSession) -> None:
    """SIGKILL drops the client's connection; restart() serves again on the same port."""
    async with BackendProcess() as proc:
        port = proc.port
        async with http.ws_connect(proc.url) as ws:
            await proc.wait_for_connections(1)
            await proc.kill()
            assert proc.returncode == -9
            msg = await ws.receive(timeout=5)
            assert msg.type is WSMsgType.CLOSED
            assert ws.close_code == 1006
        with pytest.raises(aiohttp.ClientConnectorError):
            await http.ws_connect(proc.url)
        await proc.restart()
        assert proc.port == port
        async with http.ws_connect(proc.url) as ws:
            assert await echo(ws, "reborn") == "reborn"


async def test_process_pause_and_resume(http: aiohttp.ClientSession) -> None:
    """SIGSTOP freezes the child (heartbeats fail); SIGCONT brings it back."""
    async with BackendProcess() as proc:
        async with http.ws_connect(proc.url, heartbeat=0.2) as ws:
            await proc.wait_for_connections(1)
            proc.pause()
            assert proc.paused
            msg = await ws.receive(timeout=5)
            assert msg.type is WSMsgType.ERROR
            assert isinstance(msg.data, aiohttp.ServerTimeoutError)
            proc.resume()
        await proc.wait_for_connections(0)
        async with http.ws_connect(proc.url) as ws:
            assert await echo(ws, "awake") == "awake"


async def test_process_terminate_closes_with_1001(http: aiohttp.ClientSession) -> None:
    """terminate() (SIGTERM) makes the child close its WebSockets with 1001 and exit 0."""
    proc = BackendProcess()
    await proc.start()
    try:
        async with http.ws_connect(proc.url) as ws:
            await proc.wait_for_connections(1)
            reader = asyncio.create_task(ws.receive(timeout=5))
            await proc.terminate()
            msg = await reader
            assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1001)
        assert proc.returncode == 0
    finally:
        await proc.stop()


# ------------------------------------------------------------------------------ FaultProxy


async def test_proxy_passes_traffic_through(
    server: BackendServer, proxy: FaultProxy, http: aiohttp.ClientSession
) -> None:
    """Through the proxy the backend echoes as usual and both sides are counted."""
    assert proxy.url_for() == f"ws://127.0.0.1:{proxy.port}/ws"
    assert proxy.url_for("/health", "http") == proxy.http_url + "/health"
    async with http.ws_connect(proxy.url) as ws:
        assert await echo(ws, "through") == "through"
        await proxy.wait_for_connections(1)
        assert server.open_connections == 1 and proxy.accepted_total == 1
        assert proxy.bytes_upstream > 0 and proxy.bytes_downstream > 0
    await proxy.wait_for_connections(0)
    await server.wait_for_connections(0)


async def test_proxy_blackhole_is_detected_by_heartbeat(
    server: BackendServer, proxy: FaultProxy, http: aiohttp.ClientSession
) -> None:
    """A black-holed path keeps TCP open but answers nothing, so the heartbeat fails."""
    async with http.ws_connect(proxy.url, heartbeat=0.2) as ws:
        assert await echo(ws, "before") == "before"
        proxy.blackhole()
        msg = await ws.receive(timeout=5)
        assert msg.type is WSMsgType.ERROR
        assert isinstance(msg.data, aiohttp.ServerTimeoutError)
    assert server.open_connections == 1  # the backend never noticed anything


async def test_proxy_blackhole_holds_data_until_restore(
    proxy: FaultProxy, http: aiohttp.ClientSession
) -> None:
    """Data sent into the black hole is held, then delivered after restore()."""
    async with http.ws_connect(proxy.url) as ws:
        proxy.blackhole()
        await ws.send_str("held")
        with pytest.raises(asyncio.TimeoutError):
            await ws.receive(timeout=0.2)
        proxy.restore()
        msg = await ws.receive(timeout=5)
        assert msg.data == "held"


async def test_proxy_reset_aborts_connections(
    server: BackendServer, proxy: FaultProxy, http: aiohttp.ClientSession
) -> None:
    """reset() aborts both sides with RST; new connections still work."""
    async with http.ws_connect(proxy.url) as ws:
        await server.wait_for_connections(1)
        assert await proxy.reset() == 1
        msg = await ws.receive(timeout=5)
        assert msg.type is WSMsgType.CLOSED
        assert ws.close_code == 1006
    await server.wait_for_connections(0)
    assert proxy.active_connections == 0
    async with http.ws_connect(proxy.url) as ws:
        assert await echo(ws, "fresh") == "fresh"


async def test_proxy_latency_delays_each_direction(
    proxy: FaultProxy, http: aiohttp.ClientSession
) -> None:
    """With latency L, an echo round trip takes at least 2 L."""
    loop = asyncio.get_running_loop()
    async with http.ws_connect(proxy.url) as ws:
        proxy.set_latency(0.15)
        started = loop.time()
        assert await echo(ws, "ping") == "ping"
        assert loop.time() - started >= 0.3


async def test_proxy_throttle_limits_bandwidth(
    proxy: FaultProxy, http: aiohttp.ClientSession
) -> None:
    """At 100 kB/s per direction, echoing 20 kB takes at least 0.4 s."""
    loop = asyncio.get_running_loop()
    payload = bytes(range(256)) * 80  # 20 480 bytes
    async with http.ws_connect(proxy.url) as ws:
        proxy.throttle(100_000)
        started = loop.time()
        await ws.send_bytes(payload)
        msg = await ws.receive(timeout=5)
        assert msg.data == payload
        assert loop.time() - started >= 0.4


async def test_proxy_refuse_new_then_restore(
    proxy: FaultProxy, http: aiohttp.ClientSession
) -> None:
    """refuse_new() refuses connections but keeps open ones; restore() accepts again."""
    port = proxy.port
    async with http.ws_connect(proxy.url) as survivor:
        proxy.refuse_new()
        with pytest.raises(aiohttp.ClientConnectorError):
            await http.ws_connect(proxy.url)
        assert await echo(survivor, "alive") == "alive"
        proxy.restore()
        assert proxy.port == port
        async with http.ws_connect(proxy.url) as ws:
            assert await echo(ws, "again") == "again"


async def test_proxy_resets_client_when_target_is_down(
    server: BackendServer, proxy: FaultProxy, http: aiohttp.ClientSession
) -> None:
    """If the target refuses, the proxy resets the client's connection."""
    server.refuse()
    with pytest.raises(aiohttp.ClientError):
        await http.ws_connect(proxy.url)
    await proxy.wait_for_connections(0)


# -------------------------------------------------------------------------------- fixtures


async def test_wsclient_backend_fixture(
    wsclient_backend: BackendServer, http: aiohttp.ClientSession
) -> None:
    """The wsclient_backend fixture is a started, echoing BackendServer."""
    assert wsclient_backend.running
    async with http.ws_connect(wsclient_backend.url) as ws:
        assert await echo(ws, "fixture") == "fixture"


async def test_wsclient_backends_and_fault_proxy_fixtures(
    wsclient_backends: BackendsFactory,
    wsclient_fault_proxy: FaultProxyFactory,
    http: aiohttp.ClientSession,
) -> None:
    """wsclient_backends(n) starts n backends; wsclient_fault_proxy fronts one of them."""
    servers = await wsclient_backends(3)
    assert len({s.port for s in servers}) == 3 and all(s.running for s in servers)
    proxy = await wsclient_fault_proxy(servers[1])
    async with http.ws_connect(proxy.url) as ws:
        assert await echo(ws, "middle") == "middle"
    assert [s.accepted_total for s in servers] == [0, 1, 0]


async def test_wsclient_backends_fixture_with_processes(
    wsclient_backends: BackendsFactory, http: aiohttp.ClientSession
) -> None:
    """wsclient_backends(n, process=True) returns running BackendProcess instances."""
    [proc] = await wsclient_backends(1, process=True)
    assert isinstance(proc, BackendProcess) and proc.running
    async with http.ws_connect(proc.url) as ws:
        assert await echo(ws, "child") == "child"


async def test_factories_stop_everything_on_exit(http: aiohttp.ClientSession) -> None:
    """Leaving the factory context managers stops every backend and proxy."""
    async with backends_factory() as make, fault_proxy_factory() as make_proxy:
        servers = await make(2)
        proxy = await make_proxy((servers[0].host, servers[0].port))
        async with http.ws_connect(proxy.url) as ws:
            assert await echo(ws, "x") == "x"
    assert not any(s.running for s in servers)
    with pytest.raises(aiohttp.ClientConnectorError):
        await http.ws_connect(proxy.url)
    with pytest.raises(aiohttp.ClientConnectorError):
        await http.ws_connect(servers[1].url)
