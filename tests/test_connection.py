"""Connection and connect(): messages, timeouts, close codes, limits, heartbeat, auth."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from wsclient import (
    CloseCode,
    ConnectError,
    Connection,
    ConnectionClosedError,
    ConnectionState,
    MessageTooBigError,
    MessageType,
    connect,
    describe_close_code,
)
from wsclient.config import TransportName
from wsclient.testing import BackendServer


@pytest.fixture
async def server() -> AsyncIterator[BackendServer]:
    async with BackendServer() as backend:
        yield backend


@pytest.fixture
async def conn(server: BackendServer, transport: TransportName) -> AsyncIterator[Connection]:
    """An open connection on each transport."""
    connection = await connect(server.url, transport=transport)
    yield connection
    await connection.close()


class HeaderRecorder:
    """A bare aiohttp WebSocket app that records handshake headers and subprotocols."""

    def __init__(self) -> None:
        self.headers: list[dict[str, str]] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        self.headers.append(dict(request.headers))
        ws = web.WebSocketResponse(protocols=("chat.v2",))
        await ws.prepare(request)
        async for _ in ws:
            pass
        return ws

    async def __aenter__(self) -> HeaderRecorder:
        app = web.Application()
        app.router.add_get("/ws", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        self.url = f"ws://127.0.0.1:{port}/ws"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


async def test_text_and_binary_round_trip(conn: Connection) -> None:
    """str goes as text, bytes as binary, and both come back typed."""
    await conn.send("héllo")
    msg = await conn.receive(timeout=5)
    assert msg.type is MessageType.TEXT and msg.data == "héllo"
    await conn.send(b"\x00\x01")
    msg = await conn.receive(timeout=5)
    assert msg.type is MessageType.BINARY and msg.data == b"\x00\x01"


async def test_json_helpers(conn: Connection) -> None:
    """send_json / receive_json round-trip a document."""
    await conn.send_json({"type": "ping", "data": [1, 2]})
    assert await conn.receive_json(timeout=5) == {"type": "ping", "data": [1, 2]}


async def test_receive_json_on_non_json_is_clear_and_keeps_connection(conn: Connection) -> None:
    """Non-JSON raises ValueError saying so; the connection stays open."""
    await conn.send_text("not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        await conn.receive_json(timeout=5)
    assert conn.connected
    await conn.send_text("ok")
    assert await conn.receive_text(timeout=5) == "ok"


async def test_receive_text_on_binary_is_type_error(conn: Connection) -> None:
    """receive_text on a binary message raises TypeError naming the kind."""
    await conn.send_bytes(b"x")
    with pytest.raises(TypeError, match="binary"):
        await conn.receive_text(timeout=5)


async def test_receive_timeout_leaves_connection_usable(
    server: BackendServer, conn: Connection
) -> None:
    """A receive timeout raises TimeoutError and the late reply is still delivered."""
    server.set_reply_delay(0.2)
    await conn.send("late")
    with pytest.raises(TimeoutError):
        await conn.receive(timeout=0.05)
    assert conn.state is ConnectionState.OPEN
    assert (await conn.receive(timeout=5)).data == "late"


async def test_async_iteration_ends_on_normal_close(
    transport: TransportName, server: BackendServer
) -> None:
    """`async for` yields messages and stops when the server closes normally."""
    connection = await connect(server.url, transport=transport)
    await connection.send("a")
    await connection.send("b")
    await server.wait_for_messages(2)
    received = []
    async for message in connection:
        received.append(message.data)
        if len(received) == 2:
            await server.close_all(1000, "done")
    assert received == ["a", "b"]
    assert connection.close_code == 1000
    assert connection.state is ConnectionState.CLOSED
    await connection.close()


async def test_server_close_code_and_reason_are_visible(
    server: BackendServer, conn: Connection
) -> None:
    """A server close with 4001 'bye' surfaces as ConnectionClosedError(4001, 'bye')."""
    await server.close_all(4001, "bye")
    with pytest.raises(ConnectionClosedError) as info:
        await conn.receive(timeout=5)
    assert info.value.code == 4001 and info.value.reason == "bye"
    assert conn.close_code == 4001 and conn.close_reason == "bye"
    assert "application-defined" in str(info.value)
    with pytest.raises(ConnectionClosedError):
        await conn.send("after close")


@pytest.mark.parametrize("code", [999, 1004, 1005, 1006, 1015, 1016, 2999, 5000])
async def test_close_refuses_codes_a_client_may_not_send(conn: Connection, code: int) -> None:
    """Invalid close codes raise ValueError and leave the connection open."""
    with pytest.raises(ValueError, match=str(code)):
        await conn.close(code)
    assert conn.connected


async def test_close_with_application_code(transport: TransportName, server: BackendServer) -> None:
    """close(4000, reason) completes the handshake and records the code."""
    connection = await connect(server.url, transport=transport)
    await server.wait_for_connections(1)
    await connection.close(4000, "app done")
    assert connection.state is ConnectionState.CLOSED
    assert connection.close_code == 4000
    await server.wait_for_connections(0)


async def test_drop_closes_without_handshake(
    transport: TransportName, server: BackendServer
) -> None:
    """drop() closes the socket at once; the server sees the connection go."""
    connection = await connect(server.url, transport=transport)
    await server.wait_for_connections(1)
    connection.drop()
    assert connection.state is ConnectionState.CLOSED
    assert connection.close_code == CloseCode.ABNORMAL_CLOSURE
    await server.wait_for_connections(0)
    await connection.close()  # idempotent after drop


async def test_oversize_send_raises_without_closing(
    transport: TransportName, server: BackendServer
) -> None:
    """Sending more than max_message_size raises MessageTooBigError; nothing is sent."""
    connection = await connect(server.url, transport=transport, max_message_size=100)
    with pytest.raises(MessageTooBigError, match="max_message_size=100"):
        await connection.send(b"x" * 101)
    with pytest.raises(MessageTooBigError):
        await connection.send("é" * 60)  # 120 bytes of UTF-8
    assert connection.connected
    await connection.send("y" * 100)
    assert (await connection.receive(timeout=5)).data == "y" * 100
    await connection.close()


async def test_oversize_receive_closes_with_1009(
    transport: TransportName, server: BackendServer
) -> None:
    """A message over the limit raises MessageTooBigError and closes with 1009."""
    connection = await connect(server.url, transport=transport, max_message_size=64)
    await server.wait_for_connections(1)
    await server.push(b"z" * 1000)
    with pytest.raises(MessageTooBigError):
        await connection.receive(timeout=5)
    assert connection.close_code == CloseCode.MESSAGE_TOO_BIG
    assert connection.state is ConnectionState.CLOSED
    await connection.close()


async def test_missed_pong_closes_with_1006_heartbeat_reason(
    transport: TransportName, server: BackendServer
) -> None:
    """A peer that stops answering pings is closed with 1006 and a heartbeat reason."""
    server.stall_after_handshake()
    connection = await connect(
        server.url, transport=transport, heartbeat={"interval": 0.1, "timeout": 0.1}
    )
    with pytest.raises(ConnectionClosedError) as info:
        await connection.receive(timeout=5)
    assert info.value.code == CloseCode.ABNORMAL_CLOSURE
    assert "heartbeat" in info.value.reason.lower() or "pong" in info.value.reason.lower()
    await connection.close()


async def test_connect_refused_is_connect_error(
    transport: TransportName, server: BackendServer
) -> None:
    """A refused connection raises ConnectError, which is an OSError."""
    await server.refuse()
    with pytest.raises(ConnectError) as info:
        await connect(server.url, transport=transport, connect_timeout=2)
    assert isinstance(info.value, OSError)
    assert server.url in str(info.value)


async def test_connect_timeout_on_stalled_handshake(
    transport: TransportName, server: BackendServer
) -> None:
    """A server that never answers the upgrade times out as ConnectError."""
    server.stall_handshake()
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(ConnectError, match="timed out"):
        await connect(server.url, transport=transport, connect_timeout=0.2)
    assert loop.time() - started < 2


async def test_bad_url_is_value_error(transport: TransportName) -> None:
    """connect() with an http:// URL raises ValueError naming the scheme."""
    with pytest.raises(ValueError, match="scheme"):
        await connect("http://127.0.0.1:1/ws", transport=transport)


async def test_headers_auth_and_subprotocols_reach_the_server(transport: TransportName) -> None:
    """Headers, bearer auth and subprotocols are sent in the handshake."""
    async with HeaderRecorder() as recorder:
        connection = await connect(
            recorder.url,
            transport=transport,
            headers={"X-Trace": "t1"},
            auth="tok-1",
            protocols=("chat.v2",),
        )
        assert connection.protocol == "chat.v2"
        assert connection.remote_address is not None
        await connection.close()
    seen = recorder.headers[0]
    assert seen["X-Trace"] == "t1"
    assert seen["Authorization"] == "Bearer tok-1"


async def test_async_auth_provider_is_called_on_every_connect(transport: TransportName) -> None:
    """An async auth callable is called again for each new connection."""
    calls = 0

    async def provider() -> dict[str, str]:
        nonlocal calls
        calls += 1
        return {"Authorization": f"Bearer t{calls}"}

    async with HeaderRecorder() as recorder:
        for _ in range(2):
            connection = await connect(recorder.url, transport=transport, auth=provider)
            await connection.close()
    assert [h["Authorization"] for h in recorder.headers] == ["Bearer t1", "Bearer t2"]


async def test_ping_and_pong_keep_connection_open(conn: Connection) -> None:
    """ping() sends a frame; the pong is consumed and data still flows."""
    await conn.ping(b"abc")
    await conn.send("after ping")
    assert (await conn.receive(timeout=5)).data == "after ping"
    with pytest.raises(ValueError, match="125"):
        await conn.ping(b"x" * 126)


def test_close_code_descriptions() -> None:
    """Every CloseCode has a description; ranges are described too."""
    assert all(code.description for code in CloseCode)
    assert describe_close_code(1001).startswith("going away")
    assert describe_close_code(4123) == "application-defined"
    assert describe_close_code(3001).startswith("registered")


async def test_send_wrong_type_is_type_error(conn: Connection) -> None:
    """send() with something that is not str/bytes raises TypeError."""
    with pytest.raises(TypeError, match="int"):
        await conn.send(42)  # type: ignore[arg-type]
    assert conn.connected


async def test_compression_is_negotiated_and_round_trips(server: BackendServer) -> None:
    """compression=True negotiates permessage-deflate; messages still round-trip."""
    connection = await connect(server.url, compression=True)
    assert connection._checked().transport.compressed
    payload = "compress me " * 200
    await connection.send(payload)
    assert (await connection.receive(timeout=5)).data == payload
    await connection.close()
    plain = await connect(server.url)
    assert not plain._checked().transport.compressed
    await plain.close()
