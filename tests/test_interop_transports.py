"""Connection behaviour against servers wsclient did not write, on both transports.

For each of the ``websockets`` server, uvicorn/starlette and aiohttp's server (child
processes, ``wsclient.testing.InteropServer``) and for each transport: closes with
each code, the server's own keep-alive pings on idle and leased pooled connections,
compression on and off, subprotocol chosen / none / unoffered, a message of exactly
``max_message_size`` and one byte over, and TLS with a ``trustme`` CA.

One server per kind serves every check (its keep-alive runs throughout, which the
other checks must survive too); the transports take turns on it, to keep the
suite's wall time down.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from pathlib import Path

import pytest
import trustme

from wsclient import (
    CloseCode,
    ConnectError,
    ConnectionClosedError,
    MessageTooBigError,
    WebSocketPool,
    connect,
)
from wsclient.config import TransportName
from wsclient.testing.interop import INTEROP_KINDS, InteropKind, InteropServer

from .conftest import FAST, TRANSPORTS

LIMIT = 4096
# The server pings this often and gives up after the timeout; aiohttp's server waits
# half its interval for a pong, so it gets a longer one (a loaded machine's margin).
PING = {"websockets": 0.1, "uvicorn": 0.1, "aiohttp": 0.3}
PING_TIMEOUT = 0.3
HOLD = 1.0  # seconds of traffic and idleness under the server's pings
# Codes an application or a server may send in a close frame (1005/1006/1015 never are).
CODES = (1000, 1001, 1003, 1008, 1011, 1012, 3000, 4999)


def _blob(size: int) -> str:
    return json.dumps({"op": "blob", "size": size})


@pytest.mark.parametrize("kind", INTEROP_KINDS)
async def test_connection_behaviour_against_each_server(kind: InteropKind) -> None:
    async with InteropServer(
        kind, ping_interval=PING[kind], ping_timeout=PING_TIMEOUT, subprotocols=("chat.v2",)
    ) as server:
        for transport in TRANSPORTS:
            await _closes_with_each_code(server, transport)
            await _message_at_the_limit_and_one_over(server, transport, compression=False)
            await _subprotocols(server, transport)
            await _server_pings_idle_and_leased(server, transport)
        for compression in (False, True):  # picows has no permessage-deflate
            await _compression(server, compression)
        await _message_at_the_limit_and_one_over(server, "aiohttp", compression=True)


async def _closes_with_each_code(server: InteropServer, transport: TransportName) -> None:
    """The server's close code and reason reach the client as they were sent."""
    for code in CODES:
        conn = await connect(server.url, transport=transport)
        try:
            await conn.send(json.dumps({"op": "close", "code": code, "reason": f"bye {code}"}))
            with pytest.raises(ConnectionClosedError) as caught:
                await conn.receive(timeout=5)
            assert caught.value.code == code, (transport, code)
            assert conn.close_code == code
            assert conn.close_reason == f"bye {code}"
            assert not conn.connected
        finally:
            await conn.close()


async def _message_at_the_limit_and_one_over(
    server: InteropServer, transport: TransportName, *, compression: bool
) -> None:
    """max_message_size is inclusive: LIMIT bytes arrive, LIMIT + 1 close with 1009."""
    conn = await connect(
        server.url, transport=transport, compression=compression, max_message_size=LIMIT
    )
    try:
        await conn.send(_blob(LIMIT))
        message = await conn.receive(timeout=5)
        assert len(message.data) == LIMIT
        await conn.send(_blob(LIMIT + 1))
        with pytest.raises(MessageTooBigError):
            await conn.receive(timeout=5)
        assert conn.close_code == CloseCode.MESSAGE_TOO_BIG
    finally:
        await conn.close()


async def _subprotocols(server: InteropServer, transport: TransportName) -> None:
    """Chosen from the offer, none when none is offered, refused when not offered."""
    conn = await connect(server.url, transport=transport, protocols=("chat.v1", "chat.v2"))
    try:
        assert conn.protocol == "chat.v2"
        await conn.send("hi")
        assert (await conn.receive(timeout=5)).data == "hi"
    finally:
        await conn.close()
    conn = await connect(server.url, transport=transport)
    try:
        assert conn.protocol is None
    finally:
        await conn.close()
    if server.kind == "aiohttp":
        return  # aiohttp's server only ever selects an offered subprotocol
    with pytest.raises(ConnectError, match="not one of the 1 the client offered"):
        await connect(server.url + "?select=evil", transport=transport, protocols=("chat.v2",))


async def _server_pings_idle_and_leased(server: InteropServer, transport: TransportName) -> None:
    """The server's keep-alive gets its pongs from idle and from leased (reading) links.

    A link that missed them would be closed by the server (websockets 1011, uvicorn
    1011, aiohttp 1006) and replaced: the server would count new handshakes.
    """
    accepted = (await server.stats()).accepted
    async with WebSocketPool(
        **{**FAST, "min_connections": 2, "max_connections": 2},
        backends=[server.url],
        transport=transport,
    ) as pool:
        await server.wait_for_open(2)
        conn = await pool.acquire()  # one leased, one idle
        try:
            loop = asyncio.get_running_loop()
            until = loop.time() + HOLD
            n = 0
            while loop.time() < until:
                await conn.send(f"m{n}")
                assert (await conn.receive(timeout=5)).data == f"m{n}"
                n += 1
                await asyncio.sleep(0.05)  # pacing, not synchronisation
            assert conn.connected
        finally:
            pool.release(conn)
        assert pool.size == 2
        stats = await server.stats()
        assert stats.open == 2
        assert stats.accepted == accepted + 2, "a link missed the server's pings and was replaced"


async def _compression(server: InteropServer, compression: bool) -> None:
    conn = await connect(server.url, transport="aiohttp", compression=compression)
    try:
        assert conn._checked().transport.compressed is compression
        text = "compressible " * 2000
        await conn.send(text)
        assert (await conn.receive(timeout=5)).data == text
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.mark.parametrize("kind", INTEROP_KINDS)
async def test_tls_with_a_trusted_ca_and_without(
    kind: InteropKind, ca: trustme.CA, tmp_path: Path
) -> None:
    """wss:// works with the CA trusted, and fails naming the verification otherwise."""
    cert = ca.issue_cert("127.0.0.1")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    trusted = ssl.create_default_context()
    ca.configure_trust(trusted)
    async with InteropServer(kind, tls=(str(certfile), str(keyfile)), client_ssl=trusted) as server:
        assert server.url.startswith("wss://")
        for transport in TRANSPORTS:
            conn = await connect(server.url, transport=transport, ssl=trusted)
            try:
                await conn.send("secure")
                assert (await conn.receive(timeout=5)).data == "secure"
            finally:
                await conn.close()
            with pytest.raises(ConnectError, match="TLS certificate verification failed"):
                await connect(server.url, transport=transport, connect_timeout=5)
