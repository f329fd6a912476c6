"""Misbehaving WebSocket backends and a fault-injecting TCP proxy for tests.

This module is a self-contained test kit: it only depends on :mod:`aiohttp` and the
standard library (it never imports the rest of :mod:`wsclient`), so you can use it to
test any WebSocket client, not only :mod:`wsclient`.

Three building blocks are provided:

:class:`BackendServer`
    A real aiohttp WebSocket echo server running in the current event loop, with
    run-time fault controls (refuse connections, stall handshakes, stop answering pings,
    close or drop every connection, send malformed frames, fail health checks, ...) and
    server-side counters that tests can assert on or wait for.

:class:`BackendProcess`
    The same server in a child process, so that tests can ``SIGKILL``, ``SIGSTOP`` and
    ``SIGCONT`` it like a real crashing or frozen backend.

:class:`FaultProxy`
    A TCP proxy placed between the client and a backend that can black-hole, reset,
    delay, throttle or refuse the traffic.

Everything binds ``127.0.0.1`` and an OS-assigned port by default, and ``stop()`` (or the
``async with`` block) releases every socket, task and child process it created.  The
connection-level controls rely on :meth:`asyncio.AbstractEventLoop.add_reader`, so the
kit needs a selector-based event loop (the default on Linux and macOS, and uvloop).

Example::

    async with BackendServer() as backend, aiohttp.ClientSession() as session:
        async with session.ws_connect(backend.url, heartbeat=0.5) as ws:
            await backend.wait_for_connections(1)
            backend.stall_after_handshake()  # stop answering pings
            msg = await ws.receive()  # the client's heartbeat gives up
            assert msg.type is aiohttp.WSMsgType.ERROR
"""

from __future__ import annotations

from wsclient.testing._common import (
    EXPECTED_CLOSE_CODES,
    MALFORMED_KINDS,
    BackendStats,
    MalformedKind,
    MessageHandler,
    malformed_frame,
)
from wsclient.testing.process import BackendProcess
from wsclient.testing.proxy import FaultProxy
from wsclient.testing.server import BackendServer

__all__ = [
    "EXPECTED_CLOSE_CODES",
    "MALFORMED_KINDS",
    "BackendProcess",
    "BackendServer",
    "BackendStats",
    "FaultProxy",
    "MalformedKind",
    "MessageHandler",
    "malformed_frame",
]
