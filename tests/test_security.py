"""Security defaults: TLS verification on by default, secrets never shown."""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterator

import pytest
import trustme
from aiohttp import web

from wsclient import Backend, ConnectError, WebSocketPool, connect

from .conftest import FAST

TOKEN = "tok-SECRET-9f8e7d"
HEADER_SECRET = "hdr-SECRET-1a2b3c"
API_KEY = "key-SECRET-4d5e6f"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def tls_url(ca: trustme.CA) -> AsyncIterator[str]:
    """A wss:// echo backend whose certificate is signed by a private test CA."""

    async def echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            await ws.send_str(msg.data)
        return ws

    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(server_ctx)
    app = web.Application()
    app.router.add_get("/ws", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
    await site.start()
    port = runner.addresses[0][1]
    yield f"wss://localhost:{port}/ws"
    await runner.cleanup()


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


async def test_wss_rejects_unknown_certificate_by_default(tls_url: str) -> None:
    """A certificate from an unknown CA is refused: verification is on by default."""
    with pytest.raises(ConnectError, match="certificate"):
        await connect(tls_url, connect_timeout=5)


async def test_wss_accepts_certificate_with_the_users_ca(tls_url: str, ca: trustme.CA) -> None:
    """Trusting the CA through ssl= makes the same server acceptable."""
    conn = await connect(tls_url, ssl=client_context(ca))
    await conn.send("over tls")
    assert (await conn.receive(timeout=5)).data == "over tls"
    await conn.close()


async def test_pool_backend_can_carry_its_own_tls_context(tls_url: str, ca: trustme.CA) -> None:
    """A Backend's ssl= override is used for that backend's pooled connections."""
    async with (
        WebSocketPool(
            **{**FAST, "backends": [Backend(id="tls", url=tls_url, ssl=client_context(ca))]},
            min_connections=1,
        ) as pool,
        pool.acquire() as conn,
    ):
        await conn.send("pooled tls")
        assert (await conn.receive(timeout=5)).data == "pooled tls"


async def test_secrets_never_appear_in_repr_errors_or_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Tokens, API keys and auth headers stay out of repr, status, errors and logs."""
    backend = Backend(
        id="locked",
        url="ws://127.0.0.1:9/ws",  # nothing listens on the discard port: refused
        headers={"Authorization": f"Bearer {HEADER_SECRET}", "X-Api-Key": API_KEY},
    )
    pool = WebSocketPool(
        **{**FAST, "backends": [backend], "auth": TOKEN, "min_connections": 1},
        circuit_breaker={"failure_threshold": 1},
    )
    texts = [repr(pool.config), str(pool.config), repr(backend), repr(pool)]
    with caplog.at_level(logging.DEBUG, logger="wsclient"):
        async with pool:
            with pytest.raises(Exception) as info:
                await pool.acquire(timeout=1)
            texts.append(repr(info.value) + str(info.value))
            texts.append(str(info.value.__cause__))
            texts.append(repr({k: v.model_dump() for k, v in pool.health_status().items()}))
        with pytest.raises(ConnectError) as direct:
            await connect("ws://127.0.0.1:9/ws", auth=TOKEN, headers={"X-Api-Key": API_KEY})
        texts.append(str(direct.value) + repr(direct.value))
    texts.append(caplog.text)
    blob = "\n".join(texts)
    assert "refused" in blob.lower()  # the errors did say what went wrong...
    for secret in (TOKEN, HEADER_SECRET, API_KEY):
        assert secret not in blob  # ...without saying the secret


def test_url_with_credentials_is_rejected_not_logged() -> None:
    """A ws:// URL with user:password is refused and the password is not echoed."""
    with pytest.raises(ValueError) as info:
        Backend(url="ws://admin:hunter2@127.0.0.1/ws")
    assert "hunter2" not in str(info.value)
    assert "credentials" in str(info.value)
