"""A single connection against peers that misbehave on purpose (wsclient.testing.peers).

Each test runs a real peer on 127.0.0.1; none mocks a socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import ssl
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest
import trustme
from aiohttp import web
from pydantic import SecretStr

from wsclient import (
    ApiKeyAuth,
    Backend,
    BearerAuth,
    CloseCode,
    ConnectError,
    Connection,
    ConnectionClosedError,
    ConnectionState,
    MessageTooBigError,
    PoolConfig,
    WebSocketPool,
    connect,
)
from wsclient.config import TransportName
from wsclient.health import HealthChecker, ProbeResult
from wsclient.testing import BackendServer
from wsclient.testing.peers import (
    CloseIgnoringPeer,
    DribblingPeer,
    HandshakePeer,
    NeverReadingPeer,
    PingFloodingPeer,
    RedirectingPeer,
    SendingPeer,
)
from wsclient.transports.aiohttp import new_session

from .conftest import FAST

TOKEN = "s3cret-XYZ"
QUERY_SECRET = "s3cret-QRS"
SECRETS = (TOKEN, QUERY_SECRET)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and everything reachable through ``__cause__`` / ``__context__``."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        item = todo.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        yield item
        todo.extend(e for e in (item.__cause__, item.__context__) if e is not None)


def _exception_texts(exc: BaseException) -> list[str]:
    """Every way an error reporter could render ``exc`` and its chain."""
    texts = ["".join(traceback.format_exception(exc))]
    for item in _chain(exc):
        texts += [repr(item), str(item), *map(repr, item.args), repr(vars(item))]
    return texts


def _assert_no_secret(texts: list[str]) -> None:
    blob = "\n".join(texts)
    for secret in SECRETS:
        assert secret not in blob


# -- 2. secrets in URLs and in the exception chain -------------------------------------


@pytest.mark.parametrize("status", [401, 500])
async def test_rejected_handshake_error_and_logs_carry_no_secret(
    transport: TransportName, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    """The token and the URL's query value reach the peer, but no error text or log line.

    aiohttp's WSServerHandshakeError holds request_info (with the Authorization
    header); it must not stay reachable through __cause__ or __context__.
    """
    async with HandshakePeer(status) as peer:
        url = f"{peer.url}?token={QUERY_SECRET}"
        with caplog.at_level(logging.DEBUG, logger="wsclient"), pytest.raises(ConnectError) as info:
            await connect(url, transport=transport, auth=BearerAuth(token=TOKEN), connect_timeout=5)
        # The secrets really were in play: the peer received both.
        assert peer.requests[0].header("Authorization") == f"Bearer {TOKEN}"
        assert QUERY_SECRET in peer.requests[0].target
    err = info.value
    assert err.status == status
    assert f"handshake rejected with HTTP {status}" in str(err)
    assert "token=***" in str(err)  # the URL is shown, its query value is not
    assert err.__cause__ is None
    assert err.__context__ is None
    _assert_no_secret([*_exception_texts(err), caplog.text])


async def test_open_connection_with_a_url_token_shows_it_nowhere(
    transport: TransportName,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """repr/str of the connection and the DEBUG log of connect() hide the query value."""
    async with BackendServer() as server:
        url = f"{server.url}?token={QUERY_SECRET}"
        with caplog.at_level(logging.DEBUG, logger="wsclient"):
            conn = await connect(url, transport=transport, auth=BearerAuth(token=TOKEN))
            texts = [repr(conn), str(conn)]
            await conn.send("hi")
            assert (await conn.receive(timeout=5)).data == "hi"
            assert conn.url == url  # the real URL was dialled and is still available
            await conn.close()
    assert "connected" in caplog.text
    _assert_no_secret([*texts, caplog.text])


async def test_pool_with_a_url_token_hides_it_in_status_errors_and_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Backend id, health_status() errors, acquire errors and INFO logs hide both secrets."""
    async with HandshakePeer(401) as peer:
        url = f"{peer.url}?token={QUERY_SECRET}"
        # No warm connection: the acquire itself opens one, so its error chains
        # the ConnectError (and whatever that ConnectError keeps reachable).
        pool = WebSocketPool(**{**FAST, "backends": [url], "auth": TOKEN, "min_connections": 0})
        with caplog.at_level(logging.DEBUG, logger="wsclient"):
            async with pool:
                with pytest.raises(Exception) as info:
                    await pool.acquire(timeout=2)
                status = pool.health_status()
        assert peer.requests[0].header("Authorization") == f"Bearer {TOKEN}"
        (backend_id,) = status
        health = status[backend_id].model_dump()
    assert any(isinstance(e, ConnectError) for e in _chain(info.value))
    assert backend_id == f"{peer.url}?token=***"
    assert "401" in (health["last_error"] or "")
    _assert_no_secret([repr(health), repr(pool), *_exception_texts(info.value), caplog.text])


async def test_health_status_url_field_hides_the_query_value() -> None:
    pool = WebSocketPool(
        **{**FAST, "backends": [f"ws://127.0.0.1:9/ws?token={QUERY_SECRET}"]},
        min_connections=0,
    )
    async with pool:
        (health,) = pool.health_status().values()
    assert QUERY_SECRET not in health.url


async def test_backend_repr_and_config_repr_hide_url_tokens() -> None:
    backend = Backend(id="b", url=f"ws://127.0.0.1:9/ws?token={QUERY_SECRET}", auth=TOKEN)
    _assert_no_secret([repr(backend), str(backend)])


# -- 1. handshake redirects ------------------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_handshake_redirect_is_not_followed(transport: TransportName, status: int) -> None:
    """A 30x on the upgrade is a ConnectError naming status and Location; the target
    never sees a request, so the API key, custom headers and token stay home."""
    async with HandshakePeer() as target:
        location = f"{target.url}?sig={QUERY_SECRET}"
        async with RedirectingPeer(location, status=status) as redirector:
            with pytest.raises(ConnectError) as info:
                await connect(
                    redirector.url,
                    transport=transport,
                    auth=ApiKeyAuth(key=SecretStr(TOKEN)),
                    headers={"X-Custom": "custom-value"},
                    connect_timeout=5,
                )
            assert redirector.requests[0].header("X-API-Key") == TOKEN
        assert target.requests == []
    err = info.value
    assert err.status == status
    assert f"redirected with HTTP {status}" in str(err)
    assert f"{target.url}?sig=***" in str(err)  # the Location, its query value masked
    assert "not followed" in str(err)
    _assert_no_secret(_exception_texts(err))


async def test_wss_redirect_to_plain_http_is_refused(
    transport: TransportName, ca: trustme.CA
) -> None:
    """A wss:// backend redirecting to http:// (a TLS downgrade) is refused too."""

    async def redirect(request: web.Request) -> web.StreamResponse:
        raise web.HTTPTemporaryRedirect(target.http_url + "/ws")

    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    app = web.Application()
    app.router.add_get("/ws", redirect)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        async with HandshakePeer() as target:
            site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
            await site.start()
            port = runner.addresses[0][1]
            with pytest.raises(ConnectError, match=r"redirected with HTTP 307 to 'http://"):
                await connect(
                    f"wss://localhost:{port}/ws",
                    transport=transport,
                    ssl=client_ctx,
                    auth=BearerAuth(token=TOKEN),
                    headers={"X-Custom": "custom-value"},
                    connect_timeout=5,
                )
            assert target.requests == []
    finally:
        await runner.cleanup()


async def test_redirect_with_userinfo_in_location_is_masked(transport: TransportName) -> None:
    async with RedirectingPeer(f"ws://admin:{QUERY_SECRET}@127.0.0.1:9/ws") as redirector:
        with pytest.raises(ConnectError) as info:
            await connect(redirector.url, transport=transport, connect_timeout=5)
    assert "'ws://***@127.0.0.1:9/ws'" in str(info.value)
    _assert_no_secret(_exception_texts(info.value))


async def test_pooled_handshake_redirect_fails_the_connect_and_reaches_nobody() -> None:
    """The pool's connections use the same refusing session: the target stays untouched."""
    async with HandshakePeer() as target, RedirectingPeer(target.url) as redirector:
        pool = WebSocketPool(
            **{**FAST, "backends": [redirector.url], "auth": TOKEN, "min_connections": 0}
        )
        async with pool:
            with pytest.raises(Exception) as info:
                await pool.acquire(timeout=2)
            (health,) = pool.health_status().values()
        assert target.requests == []
    assert any(isinstance(e, ConnectError) for e in _chain(info.value))
    assert "redirected with HTTP 307" in (health.last_error or "")


# -- 5. a subprotocol the client never offered -----------------------------------------


@pytest.mark.parametrize(
    ("offered", "needle"),
    [
        ((), "server selected subprotocol 'evil' but the client offered none"),
        (("chat.v1", "chat.v2"), "server selected subprotocol 'evil', which is not one of the 2"),
    ],
)
async def test_unoffered_subprotocol_fails_the_connection(
    transport: TransportName, offered: tuple[str, ...], needle: str
) -> None:
    """RFC 6455 §4.1: the client fails the connection; the TCP connection is torn down."""
    async with HandshakePeer(101, {"Sec-WebSocket-Protocol": "evil"}) as peer:
        with pytest.raises(ConnectError, match=needle) as info:
            await connect(peer.url, transport=transport, protocols=offered, connect_timeout=5)
        assert len(peer.requests) == 1
        await peer.wait_for_open_connections(0, timeout=2)
    assert info.value.__cause__ is None and info.value.__context__ is None


async def test_offered_subprotocols_are_not_quoted_in_the_error(transport: TransportName) -> None:
    """Offered subprotocols may be credentials: the error counts them, it does not list them."""
    async with HandshakePeer(101, {"Sec-WebSocket-Protocol": "evil"}) as peer:
        with pytest.raises(ConnectError) as info:
            await connect(
                peer.url, transport=transport, protocols=(f"token.{TOKEN}",), connect_timeout=5
            )
    _assert_no_secret(_exception_texts(info.value))


async def test_selected_subprotocol_that_was_offered_is_accepted(transport: TransportName) -> None:
    async with HandshakePeer(101, {"Sec-WebSocket-Protocol": "chat.v2"}) as peer:
        conn = await connect(
            peer.url, transport=transport, protocols=("chat.v1", "chat.v2"), connect_timeout=5
        )
        assert conn.protocol == "chat.v2"
        conn.drop()
        await peer.wait_for_open_connections(0, timeout=2)


async def test_pooled_connect_to_an_unoffered_subprotocol_counts_as_a_failure() -> None:
    async with HandshakePeer(101, {"Sec-WebSocket-Protocol": "evil"}) as peer:
        pool = WebSocketPool(**{**FAST, "backends": [peer.url], "min_connections": 0})
        async with pool:
            with pytest.raises(Exception) as info:
                await pool.acquire(timeout=2)
            (health,) = pool.health_status().values()
    assert any(isinstance(e, ConnectError) for e in _chain(info.value))
    assert "client offered none" in (health.last_error or "")


# -- 4. TLS verification failures are named as such ------------------------------------


@contextlib.asynccontextmanager
async def _tls_server(ca: trustme.CA, *names: str) -> AsyncIterator[int]:
    """A wss:// echo server (and /health) whose certificate ``ca`` issued for ``names``."""

    async def echo(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            await ws.send_str(msg.data)
        return ws

    async def health(request: web.Request) -> web.StreamResponse:
        return web.Response(text="ok")

    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(server_ctx)
    app = web.Application()
    app.router.add_get("/ws", echo)
    app.router.add_get("/health", health)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
        await site.start()
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


def _trusting(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


async def _probe(url: str, path: str | None, tls: ssl.SSLContext | None) -> ProbeResult:
    """Run the health checker's probe once against ``url`` (no pool needed around it)."""
    config = PoolConfig(backends=[Backend(id="b", url=url, ssl=tls)], health_check={"path": path})
    options = config.backends[0].connection_options(config.connection_defaults())
    session = new_session()
    try:
        checker = HealthChecker(config.health_check, lambda: session, lambda _id, _r: None)
        return await checker.probe(url, options)
    finally:
        await session.close()


# (client trusts the CA?, certificate names, host dialled, expected verify message)
TLS_FAILURES = [
    pytest.param(False, ("localhost",), "localhost", "unable to get local issuer", id="unknown-ca"),
    pytest.param(True, ("other.test",), "localhost", "Hostname mismatch", id="wrong-host"),
]


@pytest.mark.parametrize(("trusted", "names", "host", "verify_message"), TLS_FAILURES)
async def test_connect_names_a_certificate_verification_failure(
    transport: TransportName,
    ca: trustme.CA,
    trusted: bool,
    names: tuple[str, ...],
    host: str,
    verify_message: str,
) -> None:
    async with _tls_server(ca, *names) as port:
        with pytest.raises(ConnectError) as info:
            await connect(
                f"wss://{host}:{port}/ws",
                transport=transport,
                ssl=_trusting(ca) if trusted else None,
                connect_timeout=5,
            )
    text = str(info.value)
    assert "TLS certificate verification failed" in text
    assert verify_message in text
    assert "Operation not permitted" not in text


@pytest.mark.parametrize("path", [None, "/health"], ids=["ws-probe", "http-probe"])
@pytest.mark.parametrize(("trusted", "names", "host", "verify_message"), TLS_FAILURES)
async def test_health_probe_names_a_certificate_verification_failure(
    ca: trustme.CA,
    path: str | None,
    trusted: bool,
    names: tuple[str, ...],
    host: str,
    verify_message: str,
) -> None:
    """The probe's error (what health_status() shows as last_error) says TLS, not errno 1."""
    async with _tls_server(ca, *names) as port:
        result = await _probe(f"wss://{host}:{port}/ws", path, _trusting(ca) if trusted else None)
    assert not result.ok
    assert result.error is not None
    assert "TLS certificate verification failed" in result.error
    assert verify_message in result.error
    assert "Operation not permitted" not in result.error


async def test_health_probe_succeeds_when_the_ca_is_trusted(ca: trustme.CA) -> None:
    """The probe helper above really probes: with the right CA the same server passes."""
    async with _tls_server(ca, "localhost") as port:
        for path in (None, "/health"):
            result = await _probe(f"wss://localhost:{port}/ws", path, _trusting(ca))
            assert result.ok, result.error


# -- 3. the size limit is inclusive with compression too -------------------------------

LIMIT = 64 * 1024


@pytest.mark.parametrize(
    ("transport", "compression"),
    [("aiohttp", False), ("aiohttp", True), ("picows", False)],
    ids=["aiohttp-plain", "aiohttp-deflate", "picows-plain"],  # picows refuses compression
)
@pytest.mark.parametrize(
    ("fits", "too_big"),
    [
        pytest.param(b"x" * LIMIT, b"y" * (LIMIT + 1), id="binary"),
        pytest.param("x" * LIMIT, "y" * (LIMIT + 1), id="text"),
        # Two UTF-8 bytes per character: the limit counts bytes, not characters.
        pytest.param("é" * (LIMIT // 2), "é" * (LIMIT // 2) + "!", id="text-utf8"),
    ],
)
async def test_message_of_exactly_the_limit_is_delivered_one_more_byte_is_refused(
    transport: TransportName, compression: bool, fits: str | bytes, too_big: str | bytes
) -> None:
    """max_message_size is inclusive in both modes; the oversize message closes with 1009.

    (With compression aiohttp let limit + 1 bytes through: it checks the inflated
    size with '>' where it checks a frame with '>='.)
    """
    async with SendingPeer([fits, too_big], compress=compression) as peer:
        conn = await connect(
            peer.url, transport=transport, compression=compression, max_message_size=LIMIT
        )
        try:
            assert (await conn.receive(timeout=5)).data == fits
            with pytest.raises(MessageTooBigError):
                await conn.receive(timeout=5)
            assert conn.close_code == CloseCode.MESSAGE_TOO_BIG
            assert not conn.connected
        finally:
            await conn.close()
        await peer.wait_for_closes(1)
    assert peer.compressed_clients == (1 if compression else 0)
    assert peer.close_codes == [CloseCode.MESSAGE_TOO_BIG]


async def test_incompressible_message_of_exactly_the_limit_is_delivered() -> None:
    """Random bytes grow a little when deflated; the limit is on the message, not the frame."""
    payload = os.urandom(LIMIT)
    async with SendingPeer([payload, os.urandom(LIMIT + 1)], compress=True) as peer:
        conn = await connect(peer.url, compression=True, max_message_size=LIMIT)
        try:
            assert (await conn.receive(timeout=5)).data == payload
            with pytest.raises(MessageTooBigError):
                await conn.receive(timeout=5)
        finally:
            await conn.close()
    assert peer.compressed_clients == 1


async def test_oversize_compressed_message_on_an_idle_pooled_link_closes_it_with_1009() -> None:
    """An idle pooled link measures inflated messages too; the pool then replaces it."""
    async with SendingPeer([b"z" * (LIMIT + 1)], compress=True) as peer:
        pool = WebSocketPool(
            **{**FAST, "backends": [peer.url], "min_connections": 1},
            compression=True,
            max_message_size=LIMIT,
        )
        async with pool:
            await peer.wait_for_closes(1)
        assert peer.close_codes[0] == CloseCode.MESSAGE_TOO_BIG


# -- 7. close() is bounded overall, drop() aborts the socket ---------------------------

CLOSE_TIMEOUT = 1.0
# Scheduling slack on a loaded 2-core machine; well below the per-read
# timeout aiohttp used to restart on every message.
MARGIN = 0.75


async def _timed_close(conn: Connection) -> float:
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        # Bounded here too, so the old behaviour (never returning) fails the test
        # instead of hanging it.
        async with asyncio.timeout(CLOSE_TIMEOUT + 3):
            await conn.close()
    finally:
        conn.drop()  # a no-op after a close that finished
    return loop.time() - started


async def test_close_is_bounded_against_a_dribbling_peer_that_ignores_the_close_frame(
    transport: TransportName,
) -> None:
    """A small message every 0.3 s restarted aiohttp's per-read close timeout forever."""
    async with CloseIgnoringPeer(interval=0.3) as peer:
        conn = await connect(peer.url, transport=transport, close_timeout=CLOSE_TIMEOUT)
        assert (await conn.receive(timeout=5)).data == "tick"
        elapsed = await _timed_close(conn)
        assert CLOSE_TIMEOUT - 0.05 <= elapsed <= CLOSE_TIMEOUT + MARGIN
        assert peer.close_frames == 1  # the close frame was sent, just never answered
        assert conn.state is ConnectionState.CLOSED
        # The socket was torn down when the time was up: the peer sees it go.
        await peer.wait_for_open_connections(0, timeout=1)
        assert peer.messages_sent >= 3  # it kept dribbling while close() waited


async def test_close_is_bounded_against_a_peer_that_stopped_reading(
    transport: TransportName,
) -> None:
    """With the send buffer full, even writing the close frame blocks: still bounded."""
    async with NeverReadingPeer() as peer:
        conn = await connect(
            peer.url, transport=transport, close_timeout=CLOSE_TIMEOUT, heartbeat={"interval": None}
        )
        await peer.wait_for_connections(1)
        sender = asyncio.create_task(conn.send(b"x" * (4 * 1024 * 1024)))
        try:
            done, _ = await asyncio.wait({sender}, timeout=0.5)
            assert not done  # stuck behind the peer's full buffers, as intended
            elapsed = await _timed_close(conn)
            assert elapsed <= CLOSE_TIMEOUT + MARGIN
            with pytest.raises(ConnectionClosedError):
                await asyncio.wait_for(sender, 1)
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
        assert await peer.wait_disconnect(timeout=1) == "reset"


async def test_drop_aborts_the_socket_of_a_peer_that_stopped_reading(
    transport: TransportName,
) -> None:
    """drop() resets the TCP connection at once; it does not linger to flush megabytes.

    A graceful transport.close() keeps the socket ESTABLISHED until the buffered
    data is delivered: to a peer that never reads, never. The peer here reads
    only after the drop, and must see a reset long before it could have read
    everything the client had queued.
    """
    payload = b"x" * (4 * 1024 * 1024)
    async with NeverReadingPeer() as peer:
        conn = await connect(peer.url, transport=transport, heartbeat={"interval": None})
        await peer.wait_for_connections(1)
        sender = asyncio.create_task(conn.send(payload))
        try:
            done, _ = await asyncio.wait({sender}, timeout=0.5)
            assert not done  # megabytes queued on the client's side
            conn.drop()
            assert conn.state is ConnectionState.CLOSED
            assert conn.close_code == CloseCode.ABNORMAL_CLOSURE
            with pytest.raises(ConnectionClosedError):
                await asyncio.wait_for(sender, 1)
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
        assert await peer.wait_disconnect(timeout=1) == "reset"
        assert peer.drained < len(payload)  # the client's backlog was discarded


async def test_close_against_a_well_behaved_peer_returns_on_its_close_frame(
    transport: TransportName,
) -> None:
    """The overall bound changes nothing for a peer that answers: close() ends with 1000."""
    async with BackendServer() as server:
        conn = await connect(server.url, transport=transport, close_timeout=CLOSE_TIMEOUT)
        await server.wait_for_connections(1)
        elapsed = await _timed_close(conn)
        assert elapsed < CLOSE_TIMEOUT
        assert conn.close_code == CloseCode.NORMAL
        await server.wait_for_connections(0)


# -- send(timeout=) --------------------------------------------------------------------

# Each over aiohttp's flow-control chunk (256 KiB), so each send waits for the buffer.
BIG = 300_000


async def test_send_timeout_against_a_peer_that_stopped_reading(transport: TransportName) -> None:
    """Every send flavour raises TimeoutError at its timeout; the connection stays open."""
    async with NeverReadingPeer() as peer:
        conn = await connect(peer.url, transport=transport, heartbeat={"interval": None})
        await peer.wait_for_connections(1)
        loop = asyncio.get_running_loop()
        sends: list[Callable[[], Awaitable[None]]] = [
            lambda: conn.send(b"x" * (4 * 1024 * 1024), timeout=0.3),
            lambda: conn.send("x" * BIG, timeout=0.3),
            lambda: conn.send_text("x" * BIG, timeout=0.3),
            lambda: conn.send_bytes(b"x" * BIG, timeout=0.3),
            lambda: conn.send_json({"pad": "x" * BIG}, 0.3),
        ]
        try:
            for send in sends:
                started = loop.time()
                with pytest.raises(TimeoutError, match=r"within 0\.3 s: the peer is not reading"):
                    await send()
                assert 0.25 <= loop.time() - started <= 0.3 + MARGIN
                assert conn.connected
                assert conn.state is ConnectionState.OPEN
        finally:
            conn.drop()
        assert await peer.wait_disconnect(timeout=1) == "reset"


async def test_a_timed_out_send_does_not_break_a_concurrent_or_later_send(
    transport: TransportName,
) -> None:
    """Senders share aiohttp's drain future: the timeout must not cancel it for the others.

    Cancelling that future would make the concurrent send, and every later one,
    raise CancelledError as if its own task had been cancelled.
    """
    async with NeverReadingPeer() as peer:
        conn = await connect(peer.url, transport=transport, heartbeat={"interval": None})
        await peer.wait_for_connections(1)
        try:
            with pytest.raises(TimeoutError):
                await conn.send(b"x" * (4 * 1024 * 1024), timeout=0.2)
            other = asyncio.create_task(conn.send(b"y" * BIG, timeout=1.0))
            with pytest.raises(TimeoutError):
                await conn.send(b"z" * BIG, timeout=0.2)
            with pytest.raises(TimeoutError):  # its own timeout, not a CancelledError
                await asyncio.wait_for(other, 2)
            with pytest.raises(TimeoutError):
                await conn.send(b"w" * BIG, timeout=0.2)
            assert conn.connected
        finally:
            conn.drop()
        assert await peer.wait_disconnect(timeout=1) == "reset"


async def test_send_with_a_timeout_to_a_reading_peer_just_sends(transport: TransportName) -> None:
    async with BackendServer() as server:
        conn = await connect(server.url, transport=transport)
        try:
            await conn.send("hello", timeout=1)
            assert (await conn.receive(timeout=5)).data == "hello"
            await conn.send_json({"a": 1}, timeout=1)
            assert (await conn.receive_json(timeout=5)) == {"a": 1}
            await conn.send_bytes(b"\x00\x01", timeout=0)  # 0: only if it can go now
            assert (await conn.receive(timeout=5)).data == b"\x00\x01"
            with pytest.raises(ValueError, match="NaN"):
                await conn.send("x", timeout=math.nan)
            assert conn.connected
        finally:
            await conn.close()


# -- the peers themselves ------------------------------------------------------------


async def test_dribbling_peer_keeps_sending_and_ignores_close(transport: TransportName) -> None:
    async with DribblingPeer(interval=0.05) as peer:
        conn = await connect(peer.url, transport=transport, close_timeout=0.3)
        for _ in range(3):
            assert (await conn.receive(timeout=5)).data == "tick"
        await conn.close()
        assert peer.close_frames == 1
        await peer.wait_for_open_connections(0, timeout=2)


async def test_peers_refuse_connections_beyond_their_bound_and_leak_nothing(
    transport: TransportName,
) -> None:
    """max_connections caps what a peer holds; stop() closes every socket it had."""
    async with NeverReadingPeer(max_connections=2) as peer:
        conns = [
            await connect(peer.url, transport=transport, heartbeat={"interval": None})
            for _ in range(2)
        ]
        await peer.wait_for_connections(2)
        with pytest.raises(ConnectError):
            await connect(peer.url, transport=transport, connect_timeout=2)
        assert peer.open_connections == 2
        for conn in conns:
            conn.drop()
    assert peer.open_connections == 0


@pytest.mark.parametrize(
    "build",
    [
        lambda: RedirectingPeer("ws://h/", status=200),
        lambda: HandshakePeer(status=42),
        lambda: HandshakePeer(headers={"X": "a\r\nb"}),
        lambda: CloseIgnoringPeer(interval=0),
        lambda: PingFloodingPeer(count=-1),
        lambda: NeverReadingPeer(max_connections=0),
    ],
)
def test_peers_reject_bad_arguments(build: Callable[[], object]) -> None:
    with pytest.raises(ValueError):
        build()


async def test_health_probe_does_not_follow_a_handshake_redirect() -> None:
    """The WebSocket probe shares the pool's session: a redirect fails it, unfollowed."""
    async with HandshakePeer() as target, RedirectingPeer(target.url) as redirector:
        result = await _probe(redirector.url, None, None)
        assert target.requests == []
    assert not result.ok
    assert "redirected with HTTP 307" in (result.error or "")
