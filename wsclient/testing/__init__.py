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

import asyncio
import base64
import contextlib
import dataclasses
import errno
import itertools
import logging
import os
import signal
import site
import socket
import struct
import sys
from collections.abc import Awaitable, Callable, Coroutine, Generator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, Self, get_args

import aiohttp
from aiohttp import web

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

logger = logging.getLogger("wsclient.testing")

DEFAULT_MAX_MSG_SIZE: Final = 4 * 1024 * 1024
"""aiohttp's default ``max_msg_size`` (both client and server side)."""

_OVERSIZE_DEFAULT: Final = DEFAULT_MAX_MSG_SIZE + 1
_CHUNK: Final = 64 * 1024
_BIND_ATTEMPTS: Final = 40
_BIND_RETRY_DELAY: Final = 0.05
_LINGER_RST: Final = struct.pack("ii", 1, 0)

MessageHandler = Callable[[str | bytes], Awaitable[str | bytes | None]]
"""Custom responder for :class:`BackendServer`: gets each text/binary message, returns
the reply (``str`` is sent as text, ``bytes`` as binary) or ``None`` for no reply."""

# --------------------------------------------------------------------------------------
# Malformed frames
# --------------------------------------------------------------------------------------

MalformedKind = Literal[
    "bad-opcode",
    "reserved-bits",
    "unmasked-reserved-bits",
    "invalid-utf8",
    "oversize",
    "fragmented-control",
    "oversize-control",
    "orphan-continuation",
    "interleaved-data",
    "bad-close-code",
    "short-close",
    "close-invalid-utf8",
    "masked-frame",
]
"""The kinds of protocol violation :meth:`BackendServer.send_malformed` can produce."""

MALFORMED_KINDS: Final[tuple[MalformedKind, ...]] = get_args(MalformedKind)
"""Every :data:`MalformedKind`, handy for ``pytest.mark.parametrize``."""

EXPECTED_CLOSE_CODES: Final[Mapping[MalformedKind, int]] = {
    "bad-opcode": 1002,
    "reserved-bits": 1002,
    "unmasked-reserved-bits": 1002,
    "invalid-utf8": 1007,
    "oversize": 1009,
    "fragmented-control": 1002,
    "oversize-control": 1002,
    "orphan-continuation": 1002,
    "interleaved-data": 1002,
    "bad-close-code": 1002,
    "short-close": 1002,
    "close-invalid-utf8": 1007,
    "masked-frame": 1002,
}
"""The close code an RFC 6455 compliant client should fail the connection with, per
:data:`MalformedKind` (1002 protocol error, 1007 invalid payload data, 1009 message too
big; ``oversize`` only when the client's size limit is below the frame's size)."""

_FIN: Final = 0x80
_RSV2: Final = 0x20
_RSV3: Final = 0x10
_OP_CONT: Final = 0x0
_OP_TEXT: Final = 0x1
_OP_BINARY: Final = 0x2
_OP_CLOSE: Final = 0x8
_OP_PING: Final = 0x9


def _frame(first_byte: int, payload: bytes, *, mask: bytes | None = None) -> bytes:
    """Encode one raw frame; server frames are unmasked unless ``mask`` is given."""
    length = len(payload)
    mask_bit = 0x80 if mask is not None else 0
    if length < 126:
        header = struct.pack("!BB", first_byte, mask_bit | length)
    elif length < 1 << 16:
        header = struct.pack("!BBH", first_byte, mask_bit | 126, length)
    else:
        header = struct.pack("!BBQ", first_byte, mask_bit | 127, length)
    if mask is None:
        return header + payload
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header + mask + masked


def malformed_frame(kind: MalformedKind, *, size: int | None = None) -> bytes:
    """Return the raw bytes :meth:`BackendServer.send_malformed` writes for ``kind``.

    ``size`` is only used by ``"oversize"`` (payload length, default 4 MiB + 1, just over
    aiohttp's default ``max_msg_size``).  See :data:`EXPECTED_CLOSE_CODES` for the close
    code each kind should provoke.
    """
    if kind == "bad-opcode":
        # Opcode 0x3 is reserved for future non-control frames.
        return _frame(_FIN | 0x3, b"")
    if kind in ("reserved-bits", "unmasked-reserved-bits"):
        # RSV2/RSV3 set although no extension defines them.
        return _frame(_FIN | _RSV2 | _RSV3 | _OP_TEXT, b"hello")
    if kind == "invalid-utf8":
        return _frame(_FIN | _OP_TEXT, b"bad \xc3\x28 utf8 \xff")
    if kind == "oversize":
        length = _OVERSIZE_DEFAULT if size is None else size
        if length < 0:
            raise ValueError("size must be >= 0")
        return _frame(_FIN | _OP_BINARY, bytes(length))
    if kind == "fragmented-control":
        # A ping without FIN: control frames must not be fragmented.
        return _frame(_OP_PING, b"x")
    if kind == "oversize-control":
        # Control frames are limited to 125 bytes of payload.
        return _frame(_FIN | _OP_PING, b"p" * 126)
    if kind == "orphan-continuation":
        return _frame(_FIN | _OP_CONT, b"orphan")
    if kind == "interleaved-data":
        # A new data message starts before the fragmented one is finished.
        return _frame(_OP_TEXT, b"part") + _frame(_FIN | _OP_BINARY, b"other")
    if kind == "bad-close-code":
        return _frame(_FIN | _OP_CLOSE, struct.pack("!H", 999))
    if kind == "short-close":
        return _frame(_FIN | _OP_CLOSE, b"\x03")
    if kind == "close-invalid-utf8":
        return _frame(_FIN | _OP_CLOSE, struct.pack("!H", 1000) + b"\xff\xfe")
    if kind == "masked-frame":
        # Servers must never mask; a compliant client fails the connection.
        return _frame(_FIN | _OP_TEXT, b"masked", mask=b"\x12\x34\x56\x78")
    raise ValueError(f"unknown malformed frame kind {kind!r}; expected one of {MALFORMED_KINDS}")


# --------------------------------------------------------------------------------------
# Internal helpers
# --------------------------------------------------------------------------------------


class _Done:
    """Awaitable returned by synchronous controls so that ``await`` on them also works."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, Any, None]:
        yield from ()


class _Waiters:
    """Wakes coroutines waiting for a predicate on some state whenever it changes."""

    def __init__(self) -> None:
        self._futures: set[asyncio.Future[None]] = set()

    def notify(self) -> None:
        futures, self._futures = self._futures, set()
        for fut in futures:
            if not fut.done():
                fut.set_result(None)

    async def wait_until(self, predicate: Callable[[], bool], timeout: float | None) -> None:
        """Return once ``predicate()`` is true; raise :class:`TimeoutError` after ``timeout``."""
        if predicate():
            return
        if timeout is not None and timeout == float("inf"):
            timeout = None
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            while not predicate():
                fut: asyncio.Future[None] = loop.create_future()
                self._futures.add(fut)
                try:
                    await fut
                finally:
                    self._futures.discard(fut)

    async def sleep(self, seconds: float, interrupt: Callable[[], bool]) -> bool:
        """Sleep ``seconds``; return ``False`` early if ``interrupt()`` becomes true."""
        try:
            await self.wait_until(interrupt, seconds)
        except TimeoutError:
            return True
        return False


def _reply_close_code(received: int) -> int:
    """The code a server echoes in its close reply (1000 if the client's can't be sent)."""
    if received in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011) or (
        3000 <= received <= 4999
    ):
        return received
    return 1000


def _format_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _abort_transport(transport: asyncio.BaseTransport | None, *, rst: bool) -> None:
    """Close a transport at once; with ``rst`` the peer gets a TCP RST instead of a FIN."""
    if transport is None or transport.is_closing():
        return
    if rst:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    abort = getattr(transport, "abort", None)
    if callable(abort):
        abort()
    else:
        transport.close()


class _Listener:
    """A listening TCP socket that can refuse connections and listen again on its port.

    Accepted sockets are handed to ``on_accept``.  While refused, the port stays bound by a
    socket that does not listen, so connection attempts are actively refused (RST) and no
    other program can take the port in the meantime.
    """

    def __init__(self, host: str, port: int, on_accept: Callable[[socket.socket], None]) -> None:
        self._host = host
        self._port = port
        self._on_accept = on_accept
        self._sock: socket.socket | None = None
        self._placeholder: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def refused(self) -> bool:
        return self._sock is None and self._loop is not None

    def _bind(self, port: int) -> socket.socket:
        family, type_, proto, _, address = socket.getaddrinfo(
            self._host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, type_, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setblocking(False)
            sock.bind(address)
        except BaseException:
            sock.close()
            raise
        return sock

    def _listen(self, sock: socket.socket) -> None:
        assert self._loop is not None
        sock.listen(128)
        self._port = sock.getsockname()[1]
        self._loop.add_reader(sock, self._accept_ready)
        self._sock = sock

    async def open(self) -> None:
        """Bind and listen, retrying for a while if the port is still held by the OS."""
        self._loop = asyncio.get_running_loop()
        for attempt in range(_BIND_ATTEMPTS):
            try:
                sock = self._bind(self._port)
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE or self._port == 0:
                    raise
                if attempt == _BIND_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(_BIND_RETRY_DELAY)
                continue
            try:
                self._listen(sock)
            except BaseException:
                sock.close()
                raise
            return

    def _accept_ready(self) -> None:
        sock = self._sock
        if sock is None:
            return
        for _ in range(64):
            try:
                conn, _addr = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                logger.warning("accept() failed on port %s: %s", self._port, exc)
                return
            conn.setblocking(False)
            with contextlib.suppress(OSError):
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._on_accept(conn)

    def _close_listening(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            assert self._loop is not None
            self._loop.remove_reader(sock)
            sock.close()

    def refuse(self) -> None:
        """Stop listening; keep the port reserved by a bound, non-listening socket."""
        if self._sock is None:
            return
        self._close_listening()
        try:
            self._placeholder = self._bind(self._port)
        except OSError as exc:  # pragma: no cover - only if another program grabbed it
            logger.warning("could not reserve port %s while refusing: %s", self._port, exc)

    def reopen(self) -> None:
        """Listen again on the same port after :meth:`refuse`."""
        if self._sock is not None:
            return
        if self._placeholder is not None:
            self._placeholder.close()
            self._placeholder = None
        sock = self._bind(self._port)
        try:
            self._listen(sock)
        except BaseException:
            sock.close()
            raise

    def close(self) -> None:
        self._close_listening()
        if self._placeholder is not None:
            self._placeholder.close()
            self._placeholder = None
        self._loop = None


class _TaskSet:
    """Tracks background tasks so they can be awaited or cancelled on shutdown."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def wait_all(self, timeout: float) -> None:
        """Let the tasks finish on their own; cancel whatever is left after ``timeout``."""
        tasks = list(self._tasks)
        if not tasks:
            return
        _done, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    async def cancel_all(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


@dataclasses.dataclass(frozen=True, slots=True)
class BackendStats:
    """A snapshot of a backend's server-side counters."""

    open_connections: int
    """WebSockets currently open on the server."""
    accepted_total: int
    """WebSocket handshakes completed since start (or :meth:`~BackendServer.reset_counters`)."""
    messages_received: int
    """Text and binary messages received."""
    health_requests: int
    """``GET /health`` requests received."""
    pending_handshakes: int
    """Upgrade requests received but not answered yet (see ``stall_handshake``)."""

    def as_dict(self) -> dict[str, int]:
        """Return the counters as a plain ``dict``."""
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------
# BackendServer
# --------------------------------------------------------------------------------------

_name_counter = itertools.count(1)
_STAT_FIELDS: Final = frozenset(f.name for f in dataclasses.fields(BackendStats))


@dataclasses.dataclass(eq=False)
class _ServerConn:
    ws: web.WebSocketResponse
    request: web.BaseRequest
    close_sent: bool = False
    close_timer: asyncio.TimerHandle | None = None


class _Service:
    """``async with`` for everything here that has start() and stop()."""

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


class _Endpoint(_Service):
    """Address properties shared by BackendServer and BackendProcess."""

    _host: str
    _port: int
    _path: str
    _name: str

    @property
    def host(self) -> str:
        """The bound address."""
        return self._host

    @property
    def port(self) -> int:
        """The bound port (``0`` until first started when constructed with ``port=0``)."""
        return self._port

    @property
    def path(self) -> str:
        """Path of the WebSocket endpoint."""
        return self._path

    @property
    def name(self) -> str:
        """Name reported by ``/health``."""
        return self._name

    @property
    def url(self) -> str:
        """WebSocket URL, e.g. ``ws://127.0.0.1:PORT/ws``."""
        return f"ws://{self._authority()}{self._path}"

    @property
    def http_url(self) -> str:
        """Base HTTP URL, e.g. ``http://127.0.0.1:PORT``."""
        return f"http://{self._authority()}"

    def _authority(self) -> str:
        if self._port == 0:
            raise RuntimeError(f"{self!r} has no port yet; start() it first")
        return f"{_format_host(self._host)}:{self._port}"


class BackendServer(_Endpoint):
    """A real aiohttp WebSocket backend on ``127.0.0.1`` you can make misbehave at run time.

    (Not to be confused with the backend *configuration* model of the client.)

    By default it echoes every text message as text and every binary message as binary
    on ``path`` (``/ws``), answers WebSocket pings, and serves ``GET /health`` with
    ``200 {"status": "ok", "name": ...}``.  The counters (:attr:`open_connections`,
    :attr:`accepted_total`, :attr:`messages_received`, :attr:`health_requests`) are the
    server-side truth; use :meth:`wait_for_connections` / :meth:`wait_until` to wait for
    them instead of sleeping.

    Fault controls take effect immediately and stay until :meth:`restore`.  ``stop()``
    closes every connection with ``1001 Going Away`` and releases all resources; the
    server can be started again (on the same port).

    :param host: address to bind, ``127.0.0.1`` by default.
    :param port: port to bind, ``0`` for an OS-assigned one (see :attr:`port`).
    :param path: path of the WebSocket endpoint.
    :param name: name reported by ``/health``; ``backend-N`` by default.
    :param close_timeout: how long a server-initiated close waits for the client's close
        frame before dropping the TCP connection.
    :param max_msg_size: largest message the server accepts from clients.
    :param on_message: custom responder instead of echo (see :data:`MessageHandler`).
    :param compress: accept ``permessage-deflate`` when the client offers it.
    :param control: also serve ``GET /_stats``, ``GET /_wait`` and ``POST /_fault``, the
        remote-control API that :class:`BackendProcess` uses.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        path: str = "/ws",
        name: str | None = None,
        close_timeout: float = 1.0,
        max_msg_size: int = DEFAULT_MAX_MSG_SIZE,
        on_message: MessageHandler | None = None,
        compress: bool = True,
        control: bool = False,
    ) -> None:
        if not path.startswith("/"):
            raise ValueError("path must start with '/'")
        self._compress = compress
        self._host = host
        self._port = port
        self._path = path
        self._name = name if name is not None else f"backend-{next(_name_counter)}"
        self._close_timeout = close_timeout
        self._max_msg_size = max_msg_size
        self._on_message = on_message
        self._control = control

        self._runner: web.AppRunner | None = None
        self._listener: _Listener | None = None
        self._accept_tasks = _TaskSet()
        self._conns: set[_ServerConn] = set()
        self._waiters = _Waiters()
        self._stopping = False

        self._open = 0
        self._accepted = 0
        self._messages = 0
        self._health = 0
        self._pending = 0

        self._stall_handshake = False
        self._stall_after = False
        self._reply_delay = 0.0
        self._health_status = 200
        self._health_delay = 0.0
        self._ignore_pings = False
        self._close_next: tuple[int, str, int | None] | None = None

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<BackendServer {self._name} {self._host}:{self._port} {state}>"

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Start listening.  After a :meth:`stop`, the server comes back on the same port."""
        if self._runner is not None:
            raise RuntimeError(f"{self!r} is already started")
        self._stopping = False
        app = web.Application()
        app.router.add_get(self._path, self._handle_ws)
        app.router.add_get("/health", self._handle_health)
        if self._control:
            app.router.add_get("/_stats", self._handle_stats)
            app.router.add_get("/_wait", self._handle_wait)
            app.router.add_post("/_fault", self._handle_fault)
        runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0
        )
        await runner.setup()
        listener = _Listener(self._host, self._port, self._on_accept)
        try:
            await listener.open()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._listener = listener
        self._port = listener.port

    async def stop(self) -> None:
        """Close every connection (``1001 Going Away``) and stop listening.  Idempotent."""
        runner, listener = self._runner, self._listener
        if runner is None or listener is None:
            return
        self._runner = None
        self._listener = None
        listener.close()
        await self._accept_tasks.wait_all(1.0)
        conns = list(self._conns)
        await self._close_conns(conns, 1001, "server shutdown")
        await self._wait_gone(conns)
        self._stopping = True
        self._waiters.notify()
        await runner.cleanup()
        for conn in list(self._conns):  # pragma: no cover - defensive
            _abort_transport(conn.request.transport, rst=False)

    async def restart(self) -> None:
        """Stop, clear all faults and start again on the same port (counters are kept)."""
        await self.stop()
        self._clear_faults()
        await self.start()

    # -- addresses ---------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether the server is started (it may still be refusing connections)."""
        return self._runner is not None

    @property
    def refused(self) -> bool:
        """Whether :meth:`refuse` is in effect."""
        return self._listener is not None and self._listener.refused

    # -- counters ----------------------------------------------------------------------

    @property
    def open_connections(self) -> int:
        """Server-side WebSockets currently open."""
        return self._open

    @property
    def accepted_total(self) -> int:
        """WebSocket handshakes completed so far."""
        return self._accepted

    @property
    def messages_received(self) -> int:
        """Text and binary messages received so far."""
        return self._messages

    @property
    def health_requests(self) -> int:
        """``GET /health`` requests received so far."""
        return self._health

    @property
    def pending_handshakes(self) -> int:
        """Upgrade requests received but not answered yet (e.g. while stalled)."""
        return self._pending

    def stats(self) -> BackendStats:
        """Return a snapshot of all counters."""
        return BackendStats(
            open_connections=self._open,
            accepted_total=self._accepted,
            messages_received=self._messages,
            health_requests=self._health,
            pending_handshakes=self._pending,
        )

    def reset_counters(self) -> None:
        """Zero the cumulative counters (``open_connections`` reflects live state and stays)."""
        self._accepted = 0
        self._messages = 0
        self._health = 0
        self._waiters.notify()

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait until ``predicate()`` is true; it is re-checked on every state change.

        :raises TimeoutError: if it is still false after ``timeout`` seconds.
        """
        try:
            await self._waiters.wait_until(predicate, timeout)
        except TimeoutError:
            raise TimeoutError(
                f"{self._name}: condition not met within {timeout}s; {self.stats()}"
            ) from None

    async def wait_for_connections(self, n: int, timeout: float = 5.0) -> None:
        """Wait until exactly ``n`` server-side WebSockets are open."""
        try:
            await self._waiters.wait_until(lambda: self._open == n, timeout)
        except TimeoutError:
            raise TimeoutError(
                f"{self._name}: open_connections is {self._open}, expected {n} (waited {timeout}s)"
            ) from None

    async def wait_for_accepted(self, n: int, timeout: float = 5.0) -> None:
        """Wait until at least ``n`` handshakes have been completed in total."""
        await self.wait_until(lambda: self._accepted >= n, timeout)

    async def wait_for_messages(self, n: int, timeout: float = 5.0) -> None:
        """Wait until at least ``n`` messages have been received in total."""
        await self.wait_until(lambda: self._messages >= n, timeout)

    async def wait_for_pending_handshakes(self, n: int, timeout: float = 5.0) -> None:
        """Wait until exactly ``n`` upgrade requests are waiting for an answer."""
        await self.wait_until(lambda: self._pending == n, timeout)

    # -- fault controls ----------------------------------------------------------------

    def refuse(self) -> Awaitable[None]:
        """Stop listening so new connections are refused; the port stays reserved.

        Open connections are not touched (combine with :meth:`drop_all` for that).  Takes
        effect immediately; the result may be awaited but does not need to be.
        """
        if self._listener is None:
            raise RuntimeError(f"{self!r} is not started")
        self._listener.refuse()
        return _Done()

    async def restore(self) -> None:
        """Clear every fault and listen again (on the same port) if refused."""
        self._clear_faults()
        if self._listener is not None:
            self._listener.reopen()

    async def heal(self) -> None:
        """Alias of :meth:`restore`."""
        await self.restore()

    def _clear_faults(self) -> None:
        self._stall_handshake = False
        self._stall_after = False
        self._reply_delay = 0.0
        self._health_status = 200
        self._health_delay = 0.0
        self._ignore_pings = False
        self._close_next = None
        self._waiters.notify()

    def stall_handshake(self, flag: bool = True) -> None:
        """Accept TCP connections and read upgrade requests but never answer them."""
        self._stall_handshake = flag
        self._waiters.notify()

    def stall_after_handshake(self, flag: bool = True) -> None:
        """Freeze every WebSocket (open and new): nothing received is processed (no pongs,
        no echoes) and the TCP connection stays open."""
        self._stall_after = flag
        self._waiters.notify()

    def set_reply_delay(self, seconds: float) -> None:
        """Delay every reply by ``seconds`` (messages of a connection are handled in order)."""
        if seconds < 0:
            raise ValueError("seconds must be >= 0")
        self._reply_delay = seconds

    def set_health_status(self, status: int) -> None:
        """Make ``GET /health`` answer with HTTP ``status`` (e.g. 503)."""
        if not 100 <= status <= 599:
            raise ValueError("status must be an HTTP status code")
        self._health_status = status

    def set_health_delay(self, seconds: float) -> None:
        """Delay ``GET /health`` answers by ``seconds`` (``float('inf')`` never answers)."""
        if seconds < 0:
            raise ValueError("seconds must be >= 0")
        self._health_delay = seconds

    def ignore_pings(self, flag: bool = True) -> None:
        """Stop answering WebSocket pings (messages are still echoed)."""
        self._ignore_pings = flag

    def close_next_connections_with(
        self, code: int = 1000, reason: str = "", count: int | None = None
    ) -> None:
        """Close new connections with ``code``/``reason`` right after the handshake.

        Applies to the next ``count`` connections, or to all of them until :meth:`restore`
        when ``count`` is ``None``.
        """
        self._close_next = (code, reason, count)

    def _take_close_next(self) -> tuple[int, str] | None:
        if self._close_next is None:
            return None
        code, reason, count = self._close_next
        if count is not None:
            count -= 1
            self._close_next = (code, reason, count) if count > 0 else None
        return code, reason

    async def close_all(self, code: int = 1000, reason: str = "", *, wait: bool = False) -> int:
        """Start a close handshake with ``code``/``reason`` on every open WebSocket.

        The server sends its close frame at once and closes the TCP connection when the
        client answers, or after ``close_timeout``.  Any code is sent as given, even one
        a server must not use.  With ``wait``, return only once the server has released
        those connections.  Returns how many connections were open.
        """
        if len(reason.encode()) > 123:
            raise ValueError("a close reason is limited to 123 bytes of UTF-8")
        conns = list(self._conns)
        await self._close_conns(conns, code, reason)
        if wait:
            await self._wait_gone(conns)
        return len(conns)

    async def drop_all(self, *, rst: bool = True) -> int:
        """Abort the TCP connection of every open WebSocket, without a close frame.

        With ``rst`` (default) the peer gets a TCP reset, otherwise a plain FIN.
        Returns how many connections were dropped, once the server has released them.
        """
        conns = list(self._conns)
        for conn in conns:
            _abort_transport(conn.request.transport, rst=rst)
        await self._wait_gone(conns)
        return len(conns)

    async def send_malformed(self, kind: MalformedKind, *, size: int | None = None) -> int:
        """Write a protocol-violating frame (see :func:`malformed_frame`) to every open WebSocket.

        The bytes bypass aiohttp's frame writer and go straight to the transport.  Returns
        the number of connections written to.
        """
        data = malformed_frame(kind, size=size)
        sent = 0
        for conn in list(self._conns):
            transport = conn.request.transport
            if transport is not None and not transport.is_closing() and not conn.close_sent:
                transport.write(data)
                sent += 1
        return sent

    async def push(self, data: str | bytes) -> int:
        """Send an unsolicited text (``str``) or binary (``bytes``) message to every open
        WebSocket; return how many connections it was sent to."""
        sent = 0
        for conn in list(self._conns):
            if conn.ws.closed or conn.close_sent:
                continue
            try:
                if isinstance(data, str):
                    await conn.ws.send_str(data)
                else:
                    await conn.ws.send_bytes(data)
            except ConnectionError:
                continue
            sent += 1
        return sent

    # -- internals ---------------------------------------------------------------------

    def _on_accept(self, sock: socket.socket) -> None:
        runner = self._runner
        server = runner.server if runner is not None else None
        if server is None:
            sock.close()
            return
        task = self._accept_tasks.spawn(self._attach(server, sock))
        task.add_done_callback(lambda t: sock.close() if t.cancelled() else None)

    async def _attach(self, server: web.Server, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.connect_accepted_socket(server, sock=sock)
        except BaseException as exc:
            sock.close()
            if not isinstance(exc, Exception):
                raise
            logger.debug("could not attach accepted connection: %s", exc)

    async def _close_conns(self, conns: list[_ServerConn], code: int, reason: str) -> None:
        payload = struct.pack("!H", code) + reason.encode()
        loop = asyncio.get_running_loop()
        for conn in conns:
            if conn.close_sent or conn.ws.closed:
                continue
            conn.close_sent = True
            conn.close_timer = loop.call_later(self._close_timeout, self._close_expired, conn)
            try:
                # Sent as a raw control frame so that the handler task, which owns the
                # receive loop, sees the client's answer and completes the handshake.
                await conn.ws.send_frame(payload, aiohttp.WSMsgType.CLOSE)
            except ConnectionError:
                _abort_transport(conn.request.transport, rst=False)
        self._waiters.notify()  # a stalled connection must still read the answer

    def _close_expired(self, conn: _ServerConn) -> None:
        conn.close_timer = None
        if conn in self._conns:
            _abort_transport(conn.request.transport, rst=False)

    async def _wait_gone(self, conns: list[_ServerConn]) -> None:
        with contextlib.suppress(TimeoutError):
            await self._waiters.wait_until(
                lambda: self._conns.isdisjoint(conns), self._close_timeout + 1.0
            )

    def _may_proceed(self, conn: _ServerConn) -> bool:
        return not self._stall_after or self._stopping or conn.close_sent

    async def _handle_ws(self, request: web.Request) -> web.StreamResponse:
        self._pending += 1
        self._waiters.notify()
        try:
            await self._waiters.wait_until(
                lambda: not self._stall_handshake or self._stopping, None
            )
        finally:
            self._pending -= 1
            self._waiters.notify()
        if self._stopping:
            return web.Response(status=503, text="server shutting down")

        ws = web.WebSocketResponse(
            autoping=False,
            autoclose=False,
            timeout=self._close_timeout,
            max_msg_size=self._max_msg_size,
            compress=self._compress,
        )
        await ws.prepare(request)
        conn = _ServerConn(ws, request)
        self._conns.add(conn)
        self._open += 1
        self._accepted += 1
        self._waiters.notify()
        try:
            close_next = self._take_close_next()
            if close_next is not None:
                conn.close_sent = True
                await ws.close(code=close_next[0], message=close_next[1].encode())
            else:
                await self._serve(conn)
        except ConnectionError:
            pass
        finally:
            if conn.close_timer is not None:
                conn.close_timer.cancel()
            self._conns.discard(conn)
            self._open -= 1
            self._waiters.notify()
        return ws

    async def _serve(self, conn: _ServerConn) -> None:
        ws = conn.ws
        while True:
            await self._waiters.wait_until(lambda: self._may_proceed(conn), None)
            msg = await ws.receive()
            if msg.type is aiohttp.WSMsgType.CLOSE:
                if conn.close_sent:
                    # Our close frame is answered: the handshake is complete.
                    transport = conn.request.transport
                    if transport is not None:
                        transport.close()
                else:
                    conn.close_sent = True
                    await ws.close(code=_reply_close_code(msg.data), drain=False)
                return
            if msg.type in (
                aiohttp.WSMsgType.CLOSING,
                aiohttp.WSMsgType.CLOSED,
                aiohttp.WSMsgType.ERROR,
            ):
                return
            # A message read just before a stall is held until the stall ends.
            await self._waiters.wait_until(lambda: self._may_proceed(conn), None)
            if conn.close_sent:
                continue  # nothing but the peer's close frame matters any more
            if msg.type is aiohttp.WSMsgType.PING:
                if not self._ignore_pings:
                    await ws.pong(msg.data)
                continue
            if msg.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                continue
            self._messages += 1
            self._waiters.notify()
            if self._reply_delay > 0:
                await self._waiters.sleep(self._reply_delay, lambda: conn.close_sent)
            reply = await self._respond(msg.data)
            if reply is None or conn.close_sent or ws.closed:
                continue
            if isinstance(reply, str):
                await ws.send_str(reply)
            else:
                await ws.send_bytes(reply)

    async def _respond(self, data: str | bytes) -> str | bytes | None:
        if self._on_message is not None:
            return await self._on_message(data)
        return data

    async def _handle_health(self, request: web.Request) -> web.StreamResponse:
        self._health += 1
        self._waiters.notify()
        if self._health_delay > 0 and not await self._waiters.sleep(
            self._health_delay, lambda: self._stopping
        ):
            return web.Response(status=503, text="server shutting down")
        status = self._health_status
        if status < 200 or status in (204, 304):
            return web.Response(status=status)
        body = {
            "status": "ok" if status < 400 else "unhealthy",
            "name": self._name,
            "open_connections": self._open,
        }
        return web.json_response(body, status=status)

    # -- remote control (used by BackendProcess) ---------------------------------------

    def _stats_payload(self) -> dict[str, Any]:
        return {**self.stats().as_dict(), "name": self._name, "port": self._port}

    async def _handle_stats(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self._stats_payload())

    async def _handle_wait(self, request: web.Request) -> web.StreamResponse:
        try:
            field = request.query.get("field", "open_connections")
            if field not in _STAT_FIELDS:
                raise ValueError(f"unknown field {field!r}")
            value = int(request.query["value"])
            op = request.query.get("op", "eq")
            if op not in ("eq", "ge"):
                raise ValueError(f"unknown op {op!r}")
            timeout = float(request.query.get("timeout", "5"))
        except (KeyError, ValueError) as exc:
            return web.json_response({"error": str(exc)}, status=400)

        def check() -> bool:
            current: int = getattr(self.stats(), field)
            return current == value if op == "eq" else current >= value

        try:
            await self._waiters.wait_until(check, timeout)
        except TimeoutError:
            return web.json_response(self._stats_payload(), status=504)
        return web.json_response(self._stats_payload())

    async def _handle_fault(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ValueError("body must be a JSON object")
            result = await self._apply_fault(body)
        except (KeyError, ValueError, TypeError) as exc:
            return web.json_response({"ok": False, "error": str(exc)}, status=400)
        return web.json_response({"ok": True, "result": result})

    async def _apply_fault(self, body: dict[str, Any]) -> int | None:
        kind = body["kind"]
        flag = bool(body.get("flag", True))
        if kind == "restore":
            await self.restore()
        elif kind == "reset_counters":
            self.reset_counters()
        elif kind == "health_status":
            self.set_health_status(int(body["status"]))
        elif kind == "health_delay":
            self.set_health_delay(float(body["seconds"]))
        elif kind == "reply_delay":
            self.set_reply_delay(float(body["seconds"]))
        elif kind == "stall_handshake":
            self.stall_handshake(flag)
        elif kind == "stall_after_handshake":
            self.stall_after_handshake(flag)
        elif kind == "ignore_pings":
            self.ignore_pings(flag)
        elif kind == "close_next":
            count = body.get("count")
            self.close_next_connections_with(
                int(body.get("code", 1000)),
                str(body.get("reason", "")),
                None if count is None else int(count),
            )
        elif kind == "close_all":
            return await self.close_all(int(body.get("code", 1000)), str(body.get("reason", "")))
        elif kind == "drop_all":
            return await self.drop_all(rst=bool(body.get("rst", True)))
        elif kind == "push":
            data: str | bytes
            data = str(body["text"]) if "text" in body else base64.b64decode(body["data_b64"])
            return await self.push(data)
        elif kind == "malformed":
            malformed = body["malformed"]
            if malformed not in MALFORMED_KINDS:
                raise ValueError(f"unknown malformed kind {malformed!r}")
            size = body.get("size")
            return await self.send_malformed(malformed, size=None if size is None else int(size))
        else:
            raise ValueError(f"unknown fault kind {kind!r}")
        return None


# --------------------------------------------------------------------------------------
# BackendProcess
# --------------------------------------------------------------------------------------


def _child_env() -> dict[str, str]:
    """Environment for the child, making sure it can import this package."""
    env = dict(os.environ)
    package_parent = str(Path(__file__).resolve().parent.parent)
    site_dirs = {str(Path(p).resolve()) for p in site.getsitepackages()}
    with contextlib.suppress(Exception):
        site_dirs.add(str(Path(site.getusersitepackages()).resolve()))
    if package_parent not in site_dirs:
        existing = env.get("PYTHONPATH")
        env["PYTHONPATH"] = (
            package_parent if not existing else os.pathsep.join([package_parent, existing])
        )
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


class BackendProcess(_Endpoint):
    """The :class:`BackendServer` running in a child process, to ``SIGKILL``/``SIGSTOP`` it.

    The child is ``python -m wsclient.testing._backend_main``; it reports ``READY <port>`` on its
    standard output once listening, and :meth:`start` waits for that line.  Counters and
    faults go through a small HTTP API on the same port (``GET /_stats``, ``GET /_wait``,
    ``POST /_fault``), so those methods are coroutines and fail while the process is
    paused or dead.  The child also exits by itself if the parent dies.

    :meth:`refuse` is a ``SIGKILL`` (the port is not reserved meanwhile) and
    :meth:`restore` starts it again on the same port.  POSIX only.

    :param startup_timeout: how long :meth:`start` waits for the ``READY`` line.
    :param stop_timeout: how long :meth:`terminate` waits after ``SIGTERM`` before ``SIGKILL``.
    :param control_timeout: timeout of each remote-control HTTP request.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        path: str = "/ws",
        name: str | None = None,
        startup_timeout: float = 15.0,
        stop_timeout: float = 3.0,
        control_timeout: float = 5.0,
    ) -> None:
        if not path.startswith("/"):
            raise ValueError("path must start with '/'")
        self._host = host
        self._port = port
        self._path = path
        self._name = name if name is not None else f"backend-{next(_name_counter)}"
        self._startup_timeout = startup_timeout
        self._stop_timeout = stop_timeout
        self._control_timeout = control_timeout
        self._proc: asyncio.subprocess.Process | None = None
        self._paused = False

    def __repr__(self) -> str:
        return f"<BackendProcess {self._name} {self._host}:{self._port} pid={self.pid}>"

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Spawn the child and wait until it listens.  Reuses the previous port if any."""
        if self.running:
            raise RuntimeError(f"{self!r} is already running")
        await self._reap()
        cmd = [
            sys.executable,
            "-m",
            "wsclient.testing._backend_main",
            "--host",
            self._host,
            "--port",
            str(self._port),
            "--path",
            self._path,
            "--name",
            self._name,
            "--exit-on-stdin-eof",
        ]
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=_child_env(),
        )
        self._proc = proc
        self._paused = False
        try:
            async with asyncio.timeout(self._startup_timeout):
                self._port = await self._read_ready(proc)
        except BaseException:
            await self._signal_and_reap(signal.SIGKILL)
            raise

    @staticmethod
    async def _read_ready(proc: asyncio.subprocess.Process) -> int:
        assert proc.stdout is not None
        while True:
            line = await proc.stdout.readline()
            if not line:
                code = await proc.wait()
                raise RuntimeError(f"backend process exited with {code} before it was ready")
            parts = line.decode(errors="replace").split()
            if len(parts) == 2 and parts[0] == "READY":
                return int(parts[1])

    async def stop(self) -> None:
        """Terminate the child gracefully (see :meth:`terminate`).  Idempotent."""
        await self.terminate()

    async def terminate(self) -> None:
        """``SIGTERM`` (the child closes its WebSockets with 1001) and reap; ``SIGKILL``
        after ``stop_timeout``.  A paused child is resumed first."""
        if not self.running:
            await self._reap()
            return
        if self._paused:
            self.resume()
        self._send(signal.SIGTERM)
        proc = self._proc
        assert proc is not None
        try:
            async with asyncio.timeout(self._stop_timeout):
                await proc.wait()
        except TimeoutError:
            logger.warning("%r ignored SIGTERM; killing it", self)
        await self._signal_and_reap(signal.SIGKILL)

    async def kill(self) -> None:
        """``SIGKILL`` the child (a crash: no close frames) and reap it."""
        await self._signal_and_reap(signal.SIGKILL)

    def pause(self) -> None:
        """``SIGSTOP`` the child: TCP stays up but nothing is read, answered or ponged."""
        self._send(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """``SIGCONT`` a paused child."""
        self._send(signal.SIGCONT)
        self._paused = False

    async def restart(self, *, graceful: bool = True) -> None:
        """Stop the child (``SIGTERM``, or ``SIGKILL`` if not ``graceful``) and start a new
        one on the same port."""
        if graceful:
            await self.terminate()
        else:
            await self.kill()
        await self.start()

    async def refuse(self) -> None:
        """Make the backend refuse connections by killing it (the port is not reserved)."""
        await self.kill()

    async def restore(self) -> None:
        """Start the child again if it is not running (or resume it if paused), then clear
        every fault."""
        if not self.running:
            await self.start()
            return
        if self._paused:
            self.resume()
        await self.fault("restore")

    async def heal(self) -> None:
        """Alias of :meth:`restore`."""
        await self.restore()

    def _send(self, sig: signal.Signals) -> None:
        if not self.running:
            raise RuntimeError(f"{self!r} is not running")
        assert self._proc is not None
        with contextlib.suppress(ProcessLookupError):
            self._proc.send_signal(sig)

    async def _signal_and_reap(self, sig: signal.Signals) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
        await self._reap()

    async def _reap(self) -> None:
        proc = self._proc
        if proc is None:
            return
        await proc.wait()
        if proc.stdin is not None:
            proc.stdin.close()
        self._paused = False

    # -- properties ----------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """PID of the current child, if one was started."""
        return self._proc.pid if self._proc is not None else None

    @property
    def returncode(self) -> int | None:
        """Exit status of the last child (negative signal number if killed by a signal)."""
        return self._proc.returncode if self._proc is not None else None

    @property
    def running(self) -> bool:
        """Whether a child is alive (possibly paused)."""
        return self._proc is not None and self._proc.returncode is None

    @property
    def paused(self) -> bool:
        """Whether the child is stopped by :meth:`pause`."""
        return self._paused

    # -- remote control ----------------------------------------------------------------

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> tuple[int, Any]:
        if not self.running:
            raise RuntimeError(f"{self!r} is not running")
        client_timeout = aiohttp.ClientTimeout(total=timeout or self._control_timeout)
        async with (
            aiohttp.ClientSession(timeout=client_timeout) as session,
            session.request(method, self.http_url + path, json=json, params=params) as resp,
        ):
            return resp.status, await resp.json()

    async def fault(self, kind: str, **params: Any) -> int | None:
        """Apply a fault in the child by name (see the ``/_fault`` API); return its result.

        Kinds: ``restore``, ``reset_counters``, ``health_status`` (``status``),
        ``health_delay`` / ``reply_delay`` (``seconds``), ``stall_handshake`` /
        ``stall_after_handshake`` / ``ignore_pings`` (``flag``), ``close_next`` (``code``,
        ``reason``, ``count``), ``close_all`` (``code``, ``reason``), ``drop_all`` (``rst``),
        ``push`` (``text`` or ``data_b64``), ``malformed`` (``malformed``, ``size``).
        """
        status, body = await self._request("POST", "/_fault", json={"kind": kind, **params})
        if status != 200:
            raise ValueError(f"fault {kind!r} rejected: {body.get('error', body)}")
        result = body.get("result")
        return None if result is None else int(result)

    async def stats(self) -> BackendStats:
        """Fetch the child's counters."""
        _, body = await self._request("GET", "/_stats")
        return BackendStats(**{k: int(body[k]) for k in _STAT_FIELDS})

    async def wait_for_connections(self, n: int, timeout: float = 5.0) -> None:
        """Wait until exactly ``n`` WebSockets are open in the child (long-polls the child)."""
        await self._wait("open_connections", n, "eq", timeout)

    async def wait_for_accepted(self, n: int, timeout: float = 5.0) -> None:
        """Wait until the child has completed at least ``n`` handshakes in total."""
        await self._wait("accepted_total", n, "ge", timeout)

    async def _wait(self, field: str, value: int, op: str, timeout: float) -> None:
        params = {"field": field, "value": str(value), "op": op, "timeout": str(timeout)}
        status, body = await self._request(
            "GET", "/_wait", params=params, timeout=timeout + self._control_timeout
        )
        if status == 504:
            raise TimeoutError(f"{self._name}: {field} did not reach {value} in {timeout}s: {body}")
        if status != 200:
            raise ValueError(f"wait rejected: {body}")

    async def set_health_status(self, status: int) -> None:
        """Make ``GET /health`` answer with HTTP ``status``."""
        await self.fault("health_status", status=status)

    async def set_health_delay(self, seconds: float) -> None:
        """Delay ``GET /health`` answers by ``seconds``."""
        await self.fault("health_delay", seconds=seconds)

    async def set_reply_delay(self, seconds: float) -> None:
        """Delay every echo by ``seconds``."""
        await self.fault("reply_delay", seconds=seconds)

    async def stall_handshake(self, flag: bool = True) -> None:
        """Never answer upgrade requests."""
        await self.fault("stall_handshake", flag=flag)

    async def stall_after_handshake(self, flag: bool = True) -> None:
        """Freeze every WebSocket: no reads, no pongs, no echoes."""
        await self.fault("stall_after_handshake", flag=flag)

    async def ignore_pings(self, flag: bool = True) -> None:
        """Stop answering WebSocket pings."""
        await self.fault("ignore_pings", flag=flag)

    async def close_next_connections_with(
        self, code: int = 1000, reason: str = "", count: int | None = None
    ) -> None:
        """Close new connections with ``code``/``reason`` right after the handshake."""
        await self.fault("close_next", code=code, reason=reason, count=count)

    async def close_all(self, code: int = 1000, reason: str = "") -> int:
        """Close every open WebSocket with ``code``/``reason``; return how many."""
        return await self.fault("close_all", code=code, reason=reason) or 0

    async def drop_all(self, *, rst: bool = True) -> int:
        """Abort every open WebSocket's TCP connection without a close frame."""
        return await self.fault("drop_all", rst=rst) or 0

    async def push(self, data: str | bytes) -> int:
        """Send an unsolicited message to every open WebSocket; return how many."""
        if isinstance(data, str):
            return await self.fault("push", text=data) or 0
        return await self.fault("push", data_b64=base64.b64encode(data).decode()) or 0

    async def send_malformed(self, kind: MalformedKind, *, size: int | None = None) -> int:
        """Write a malformed frame to every open WebSocket (see :func:`malformed_frame`)."""
        return await self.fault("malformed", malformed=kind, size=size) or 0

    async def reset_counters(self) -> None:
        """Zero the child's cumulative counters."""
        await self.fault("reset_counters")


# --------------------------------------------------------------------------------------
# FaultProxy
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class _ProxyConn:
    task: asyncio.Task[None] | None = None
    client: asyncio.StreamWriter | None = None
    upstream: asyncio.StreamWriter | None = None

    def abort(self, *, rst: bool) -> None:
        for writer in (self.client, self.upstream):
            if writer is not None:
                _abort_transport(writer.transport, rst=rst)


class FaultProxy(_Service):
    """A TCP proxy ``host:port -> target`` to cut, reset, slow down or throttle a path.

    Point the client at :meth:`url_for` instead of the backend.  Every control takes
    effect immediately, for open and new connections, until :meth:`restore`:

    * :meth:`blackhole` - forward nothing in either direction while keeping every socket
      open (a dead peer or a network partition).  Data is held, not dropped: after
      :meth:`restore` it is delivered, like after a partition heals.
    * :meth:`reset` - abort every current connection with a TCP RST.
    * :meth:`refuse_new` - stop listening (connection refused); the port stays reserved.
    * :meth:`set_latency` / :meth:`throttle` - delay or rate-limit the traffic.

    A reset or close on one side is propagated to the other side.

    :param connect_timeout: how long to try connecting to the target before resetting the
        client's connection.
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        connect_timeout: float = 5.0,
    ) -> None:
        self._target_host = target_host
        self._target_port = target_port
        self._host = host
        self._port = port
        self._connect_timeout = connect_timeout
        self._listener: _Listener | None = None
        self._tasks = _TaskSet()
        self._conns: set[_ProxyConn] = set()
        self._waiters = _Waiters()
        self._closing = False
        self._blackholed = False
        self._latency = 0.0
        self._throttle: int | None = None
        self._accepted = 0
        self._bytes_up = 0
        self._bytes_down = 0

    def __repr__(self) -> str:
        return f"<FaultProxy {self._host}:{self._port} -> {self._target_host}:{self._target_port}>"

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Start listening.  After a :meth:`stop`, the proxy comes back on the same port."""
        if self._listener is not None:
            raise RuntimeError(f"{self!r} is already started")
        self._closing = False
        listener = _Listener(self._host, self._port, self._on_accept)
        await listener.open()
        self._listener = listener
        self._port = listener.port

    async def stop(self) -> None:
        """Stop listening and abort every proxied connection.  Idempotent."""
        listener = self._listener
        if listener is None:
            return
        self._listener = None
        listener.close()
        self._closing = True
        self._waiters.notify()
        for conn in list(self._conns):
            conn.abort(rst=False)
        await self._tasks.cancel_all()

    # -- addresses ---------------------------------------------------------------------

    @property
    def host(self) -> str:
        """The bound address."""
        return self._host

    @property
    def port(self) -> int:
        """The bound port."""
        return self._port

    @property
    def target(self) -> tuple[str, int]:
        """``(host, port)`` the proxy forwards to."""
        return self._target_host, self._target_port

    def url_for(self, path: str = "/ws", scheme: str = "ws") -> str:
        """URL reaching the target through the proxy, e.g. ``ws://127.0.0.1:PORT/ws``."""
        if self._port == 0:
            raise RuntimeError(f"{self!r} has no port yet; start() it first")
        return f"{scheme}://{_format_host(self._host)}:{self._port}{path}"

    @property
    def url(self) -> str:
        """Same as ``url_for()``: the ``/ws`` WebSocket URL through the proxy."""
        return self.url_for()

    @property
    def http_url(self) -> str:
        """Base HTTP URL through the proxy, e.g. ``http://127.0.0.1:PORT``."""
        return self.url_for("", "http")

    # -- counters ----------------------------------------------------------------------

    @property
    def active_connections(self) -> int:
        """Client connections currently open through the proxy."""
        return len(self._conns)

    @property
    def accepted_total(self) -> int:
        """Client connections accepted so far."""
        return self._accepted

    @property
    def bytes_upstream(self) -> int:
        """Bytes forwarded from clients to the target."""
        return self._bytes_up

    @property
    def bytes_downstream(self) -> int:
        """Bytes forwarded from the target to clients."""
        return self._bytes_down

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait until ``predicate()`` is true; it is re-checked on every state change."""
        await self._waiters.wait_until(predicate, timeout)

    async def wait_for_connections(self, n: int, timeout: float = 5.0) -> None:
        """Wait until exactly ``n`` client connections are open through the proxy."""
        try:
            await self._waiters.wait_until(lambda: len(self._conns) == n, timeout)
        except TimeoutError:
            raise TimeoutError(
                f"proxy has {len(self._conns)} connections, expected {n} (waited {timeout}s)"
            ) from None

    # -- fault controls ----------------------------------------------------------------

    @property
    def blackholed(self) -> bool:
        """Whether :meth:`blackhole` is in effect."""
        return self._blackholed

    def blackhole(self, flag: bool = True) -> None:
        """Forward nothing in either direction; keep every socket open (new ones too)."""
        self._blackholed = flag
        self._waiters.notify()

    async def reset(self) -> int:
        """Abort every current proxied connection with a TCP RST (both sides); new
        connections are still accepted.  Returns how many were reset."""
        conns = list(self._conns)
        for conn in conns:
            conn.abort(rst=True)
        tasks = [c.task for c in conns if c.task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        return len(conns)

    def refuse_new(self, flag: bool = True) -> None:
        """Refuse new connections (stop listening, port kept); open ones keep working."""
        if self._listener is None:
            raise RuntimeError(f"{self!r} is not started")
        if flag:
            self._listener.refuse()
        else:
            self._listener.reopen()

    def set_latency(self, seconds: float) -> None:
        """Delay every chunk by ``seconds`` in each direction (a round trip gets 2x)."""
        if seconds < 0:
            raise ValueError("seconds must be >= 0")
        self._latency = seconds

    def throttle(self, bytes_per_second: int | None) -> None:
        """Limit each connection to ``bytes_per_second`` per direction (``None``: no limit)."""
        if bytes_per_second is not None and bytes_per_second <= 0:
            raise ValueError("bytes_per_second must be > 0 or None")
        self._throttle = bytes_per_second
        self._waiters.notify()

    def restore(self) -> None:
        """Back to plain forwarding: no blackhole, latency or throttle; listening again."""
        self._blackholed = False
        self._latency = 0.0
        self._throttle = None
        if self._listener is not None:
            self._listener.reopen()
        self._waiters.notify()

    # -- internals ---------------------------------------------------------------------

    def _on_accept(self, sock: socket.socket) -> None:
        if self._closing:
            sock.close()
            return
        conn = _ProxyConn()
        self._conns.add(conn)
        self._accepted += 1
        self._waiters.notify()
        conn.task = self._tasks.spawn(self._serve(conn, sock))
        conn.task.add_done_callback(lambda _t: self._conn_done(conn, sock))

    def _conn_done(self, conn: _ProxyConn, sock: socket.socket) -> None:
        # Runs even if the task was cancelled before it started.
        conn.abort(rst=False)
        sock.close()
        self._conns.discard(conn)
        self._waiters.notify()

    async def _serve(self, conn: _ProxyConn, sock: socket.socket) -> None:
        try:
            client_reader, conn.client = await asyncio.open_connection(sock=sock)
            await self._waiters.wait_until(lambda: not self._blackholed or self._closing, None)
            if self._closing:
                return
            try:
                async with asyncio.timeout(self._connect_timeout):
                    upstream_reader, conn.upstream = await asyncio.open_connection(
                        self._target_host, self._target_port
                    )
            except (OSError, TimeoutError) as exc:
                logger.debug("proxy could not reach %s: %s", self.target, exc)
                conn.abort(rst=True)
                return
            await asyncio.gather(
                self._pipe(conn, client_reader, conn.upstream, upstream=True),
                self._pipe(conn, upstream_reader, conn.client, upstream=False),
            )
        except (ConnectionError, OSError) as exc:
            logger.debug("proxy connection ended: %s", exc)
        finally:
            conn.abort(rst=False)
            for writer in (conn.client, conn.upstream):
                if writer is not None:
                    with contextlib.suppress(Exception):
                        await writer.wait_closed()

    def _flowing(self) -> bool:
        return not self._blackholed or self._closing

    async def _pipe(
        self,
        conn: _ProxyConn,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        upstream: bool,
    ) -> None:
        """Copy one direction, honouring blackhole, latency and throttle."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes] | BaseException | None] = asyncio.Queue(16)

        async def produce() -> None:
            item: BaseException | None = None
            try:
                while True:
                    await self._waiters.wait_until(self._flowing, None)
                    data = await reader.read(_CHUNK)
                    if not data:
                        break
                    await queue.put((loop.time(), data))
            except (ConnectionError, OSError) as exc:
                item = exc
            await queue.put(item)

        producer = asyncio.create_task(produce())
        try:
            while True:
                item = await queue.get()
                if item is None:
                    if writer.can_write_eof() and not writer.transport.is_closing():
                        with contextlib.suppress(OSError):
                            writer.write_eof()
                    return
                if isinstance(item, BaseException):
                    conn.abort(rst=True)  # propagate the reset to the other side
                    return
                received, data = item
                delay = received + self._latency - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                await self._waiters.wait_until(self._flowing, None)
                try:
                    await self._send(writer, data)
                except (ConnectionError, OSError):
                    conn.abort(rst=True)
                    return
                if upstream:
                    self._bytes_up += len(data)
                else:
                    self._bytes_down += len(data)
        finally:
            producer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await producer

    async def _send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        view = memoryview(data)
        while view:
            rate = self._throttle
            if rate is None:
                writer.write(bytes(view))
                await writer.drain()
                return
            piece = view[: max(1, rate // 20)]
            view = view[len(piece) :]
            writer.write(bytes(piece))
            await writer.drain()
            await asyncio.sleep(len(piece) / rate)
