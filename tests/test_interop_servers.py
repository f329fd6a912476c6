"""The interop kit: third-party WebSocket servers (websockets, uvicorn/starlette, aiohttp)
in child processes, checked with a raw aiohttp client over real sockets on 127.0.0.1.

The close codes and exit statuses asserted here are the ones the real servers produce;
:data:`SHUTDOWN_CLOSE_CODES` / :data:`SHUTDOWN_EXIT_CODES` must match them.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import WSMsgType

from wsclient.pytest_plugin import InteropServerFactory, interop_server_factory
from wsclient.testing.interop import (
    INTEROP_KINDS,
    SHUTDOWN_CLOSE_CODES,
    SHUTDOWN_EXIT_CODES,
    InteropError,
    InteropKind,
    InteropServer,
)

# Every receive from a server is bounded by this; generous for a loaded 2-core machine.
RECV = 5.0


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session that never reuses HTTP connections (so refusals are real)."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
        yield s


async def echo(ws: aiohttp.ClientWebSocketResponse, data: str | bytes) -> str | bytes:
    if isinstance(data, bytes):
        await ws.send_bytes(data)
    else:
        await ws.send_str(data)
    msg = await ws.receive(timeout=RECV)
    assert msg.type in (WSMsgType.TEXT, WSMsgType.BINARY), msg
    result: str | bytes = msg.data
    return result


async def read_stream(ws: aiohttp.ClientWebSocketResponse) -> tuple[list[int], aiohttp.WSMessage]:
    """Collect ``seq`` numbers until the first non-text message; return it too."""
    seqs: list[int] = []
    while True:
        msg = await ws.receive(timeout=RECV)
        if msg.type is not WSMsgType.TEXT:
            return seqs, msg
        seqs.append(json.loads(msg.data)["seq"])


def time_wait_on(port: int) -> bool:
    """Whether a TCP socket bound to local ``port`` on 127.0.0.1 is in TIME_WAIT (Linux)."""
    with open("/proc/net/tcp") as table:
        next(table)  # header
        for line in table:
            local, state = line.split()[1], line.split()[3]
            if local == f"0100007F:{port:04X}" and state == "06":  # 06 is TCP_TIME_WAIT
                return True
    return False


async def get_status(http: aiohttp.ClientSession, url: str) -> int:
    async with http.get(url, timeout=aiohttp.ClientTimeout(total=RECV)) as resp:
        return resp.status


# ----------------------------------------------------------------------------- per kind


async def test_echo_text_binary_json_id_and_close_op(
    wsclient_interop_server: InteropServerFactory,
    wsclient_interop_kind: InteropKind,
    http: aiohttp.ClientSession,
) -> None:
    """Text and binary come back verbatim, a JSON "id" survives, and the close op makes
    the server close with the requested code."""
    server = await wsclient_interop_server(wsclient_interop_kind)
    assert server.url == f"ws://127.0.0.1:{server.port}/ws" and server.port > 0
    async with http.ws_connect(server.url) as ws:
        assert await echo(ws, "hello") == "hello"
        assert await echo(ws, b"\x00\x01\xff") == b"\x00\x01\xff"
        request = json.dumps({"id": "req-42", "payload": [1, 2, 3]})
        reply = await echo(ws, request)
        assert isinstance(reply, str) and json.loads(reply) == json.loads(request)
        await ws.send_str(json.dumps({"op": "close", "code": 4000, "reason": "asked"}))
        msg = await ws.receive(timeout=RECV)
        assert (msg.type, msg.data) == (WSMsgType.CLOSE, 4000)


async def test_numbered_stream_arrives_complete_and_in_order(
    wsclient_interop_server: InteropServerFactory,
    wsclient_interop_kind: InteropKind,
    http: aiohttp.ClientSession,
) -> None:
    """``{"op": "count"}`` sends exactly n numbered messages, in order, then nothing more."""
    server = await wsclient_interop_server(wsclient_interop_kind)
    async with http.ws_connect(server.url) as ws:
        await ws.send_str(json.dumps({"op": "count", "n": 300, "id": 9}))
        first = json.loads((await ws.receive(timeout=RECV)).data)
        assert first == {"id": 9, "seq": 0}
        seqs = [0]
        for _ in range(299):
            seqs.append(json.loads((await ws.receive(timeout=RECV)).data)["seq"])
        assert seqs == list(range(300))
        # The next message is the echo of a marker: nothing was duplicated after the end.
        assert await echo(ws, "marker") == "marker"


async def test_sigterm_under_traffic_closes_with_the_servers_own_code(
    wsclient_interop_server: InteropServerFactory,
    wsclient_interop_kind: InteropKind,
    http: aiohttp.ClientSession,
) -> None:
    """SIGTERM mid-stream: the client gets a gapless prefix of the stream, then the
    server's own close code (websockets/aiohttp 1001, uvicorn 1012), and the port closes."""
    kind = wsclient_interop_kind
    server = await wsclient_interop_server(kind)
    async with http.ws_connect(server.url) as ws, http.ws_connect(server.url) as idle:
        await server.wait_for_open(2)
        await ws.send_str(json.dumps({"op": "count", "n": 100_000, "interval": 0.002}))
        first = await ws.receive(timeout=RECV)
        assert json.loads(first.data) == {"seq": 0}
        # Both clients must be reading so that they answer the server's close frame.
        streaming = asyncio.create_task(read_stream(ws))
        idling = asyncio.create_task(idle.receive(timeout=RECV))
        exit_code = await server.terminate()
        seqs, closing = await streaming
        idle_close = await idling
    observed = {
        "streaming": (closing.type, closing.data),
        "idle": (idle_close.type, idle_close.data),
    }
    expected = (WSMsgType.CLOSE, SHUTDOWN_CLOSE_CODES[kind])
    assert observed == {"streaming": expected, "idle": expected}, kind
    assert seqs == list(range(1, len(seqs) + 1)), "loss or duplication before the close"
    assert exit_code == SHUTDOWN_EXIT_CODES[kind] == server.returncode
    assert not server.running
    with pytest.raises(aiohttp.ClientConnectorError):
        await http.ws_connect(server.url)


async def test_sigkill_is_an_abnormal_close_and_restart_serves_on_the_same_port(
    wsclient_interop_server: InteropServerFactory,
    wsclient_interop_kind: InteropKind,
    http: aiohttp.ClientSession,
) -> None:
    """SIGKILL: no close frame (1006), then connection refused; restart() (after a crash
    and after a graceful stop, with sockets of the old child in TIME_WAIT) binds the same
    port again and serves."""
    server = await wsclient_interop_server(wsclient_interop_kind)
    port, first_pid = server.port, server.pid
    async with http.ws_connect(server.url) as ws:
        assert await echo(ws, "before") == "before"
        assert await server.kill() == -9
        msg = await ws.receive(timeout=RECV)
        assert msg.type in (WSMsgType.CLOSED, WSMsgType.ERROR), msg
        assert ws.close_code == 1006
    with pytest.raises(aiohttp.ClientConnectorError):
        await http.ws_connect(server.url)
    # The dead child's side of that connection closed first, so it waits in TIME_WAIT
    # on the server port: the restart below must bind regardless (SO_REUSEADDR).
    assert time_wait_on(port)

    await server.restart()
    assert (server.port, server.running) == (port, True) and server.pid != first_pid
    async with http.ws_connect(server.url) as ws:
        assert await echo(ws, "after crash") == "after crash"
        reader = asyncio.create_task(ws.receive(timeout=RECV))
        second_pid = server.pid
        await server.restart(graceful=True)  # terminate() under an open WebSocket
        assert (await reader).type is WSMsgType.CLOSE
    assert server.port == port and server.pid not in (first_pid, second_pid)
    async with http.ws_connect(server.url) as ws:
        assert await echo(ws, "after restart") == "after restart"
        stats = await server.wait_for_open(1)
        assert (stats.accepted, stats.pid) == (1, server.pid)  # counters are per child


async def test_sigstop_freezes_and_sigcont_brings_it_back(
    wsclient_interop_server: InteropServerFactory,
    wsclient_interop_kind: InteropKind,
    http: aiohttp.ClientSession,
) -> None:
    """While paused nothing is answered (WebSocket or HTTP); after resume() the message
    sent meanwhile is echoed and HTTP answers again; a paused child can be killed."""
    server = await wsclient_interop_server(wsclient_interop_kind, control_timeout=0.3)
    async with http.ws_connect(server.url) as ws:
        assert await echo(ws, "awake") == "awake"
        server.pause()
        assert server.paused
        await ws.send_str("sent while paused")
        # Absence is the assertion here: the bound is how long we accept silence as proof.
        with pytest.raises(asyncio.TimeoutError):
            await ws.receive(timeout=0.3)
        with pytest.raises(TimeoutError, match="paused"):
            await server.stats()
        server.resume()
        assert not server.paused
        msg = await ws.receive(timeout=RECV)
        assert (msg.type, msg.data) == (WSMsgType.TEXT, "sent while paused")
        assert (await server.stats()).open == 1
        server.pause()
        assert await server.kill() == -9  # SIGKILL needs no SIGCONT: no stopped orphan
        assert not server.paused


async def test_health_200_then_503_and_back(
    wsclient_interop_server: InteropServerFactory,
    wsclient_interop_kind: InteropKind,
    http: aiohttp.ClientSession,
) -> None:
    """/health is 200; the WebSocket op and the HTTP control both switch it at run time."""
    server = await wsclient_interop_server(wsclient_interop_kind)
    assert await get_status(http, server.health_url) == 200
    assert await server.health() == 200
    async with http.ws_connect(server.url) as ws:
        op = json.dumps({"op": "health", "status": 503})
        assert await echo(ws, op) == op  # the acknowledgement
    assert await get_status(http, server.health_url) == 503
    assert (await server.stats()).health == 503
    await server.set_health(200)
    assert await get_status(http, server.health_url) == 200


async def test_stats_count_open_and_accepted_connections(
    wsclient_interop_server: InteropServerFactory,
    wsclient_interop_kind: InteropKind,
    http: aiohttp.ClientSession,
) -> None:
    """/stats: open follows the live WebSockets, accepted only grows; HTTP requests and
    failed handshakes do not count."""
    server = await wsclient_interop_server(wsclient_interop_kind)
    stats = await server.stats()
    assert (stats.open, stats.accepted, stats.messages) == (0, 0, 0)
    assert stats.pid == server.pid
    async with http.ws_connect(server.url) as a, http.ws_connect(server.url) as b:
        stats = await server.wait_for_open(2)
        assert (stats.open, stats.accepted) == (2, 2)
        await echo(a, "1")
        await echo(b, "2")
        await b.close()
        stats = await server.wait_for_open(1)
        assert (stats.open, stats.accepted, stats.messages) == (1, 2, 2)
    stats = await server.wait_for_open(0)
    assert (stats.open, stats.accepted) == (0, 2)
    await server.wait_for_accepted(2)
    with pytest.raises(TimeoutError, match="not reached"):
        await server.wait_for_accepted(3, timeout=0.2)


# ----------------------------------------------------------------- lifecycle and plugin


async def test_terminate_resumes_a_paused_child_first(http: aiohttp.ClientSession) -> None:
    """A SIGSTOPped server still shuts down gracefully on terminate()."""
    async with InteropServer("websockets") as server:
        async with http.ws_connect(server.url) as ws:
            await server.wait_for_open(1)
            server.pause()
            reader = asyncio.create_task(ws.receive(timeout=RECV))
            assert await server.terminate() == 0
            assert ((await reader).type, ws.close_code) == (WSMsgType.CLOSE, 1001)
        assert not server.paused


async def test_context_manager_kills_and_reaps_the_child() -> None:
    """Leaving ``async with`` (also by an exception) SIGKILLs the child and reaps it: no
    process and no zombie remain (kill(pid, 0) also succeeds on a zombie)."""
    with pytest.raises(RuntimeError, match="test body failed"):
        async with InteropServer("uvicorn") as server:
            pid = server.pid
            assert pid is not None and server.running
            raise RuntimeError("test body failed")
    assert server.returncode == -9 and not server.running
    assert pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    await server.close()  # idempotent


async def test_a_child_that_cannot_start_reports_its_output() -> None:
    """A child that dies before READY raises InteropError with its traceback; none is left."""
    server = InteropServer("aiohttp", host="127.0.0.300")
    with pytest.raises(InteropError, match="before it was ready") as info:
        await server.start()
    assert "Traceback" in str(info.value) and "gaierror" in str(info.value)
    assert server.returncode not in (None, 0) and not server.running
    with pytest.raises(InteropError, match="not running"):
        server.pause()


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown kind"):
        InteropServer("nginx")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="path"):
        InteropServer(path="ws")


async def test_factory_outside_pytest_closes_everything(http: aiohttp.ClientSession) -> None:
    """interop_server_factory() kills every child it started when the block exits."""
    async with interop_server_factory() as make:
        servers = [await make("websockets"), await make("aiohttp", path="/socket")]
        assert servers[1].url.endswith("/socket")
        async with http.ws_connect(servers[1].url) as ws:
            assert await echo(ws, "x") == "x"
    assert [s.returncode for s in servers] == [-9, -9]


def test_kind_fixture_covers_every_kind(request: pytest.FixtureRequest) -> None:
    """The plugin's parametrised fixture lists its kinds literally (it must not import the
    kit at plugin load); they must stay equal to INTEROP_KINDS."""
    fixturedefs = request._fixturemanager.getfixturedefs("wsclient_interop_kind", request.node)
    assert fixturedefs is not None
    assert tuple(fixturedefs[-1].params or ()) == INTEROP_KINDS
