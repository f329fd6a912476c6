"""Shared pieces of the test kit: malformed frames, listeners, task sets, stats, the
service base classes."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import itertools
import logging
import socket
import struct
from collections.abc import Awaitable, Callable, Coroutine, Generator, Mapping
from types import TracebackType
from typing import Any, Final, Literal, Self, get_args

from aiohttp import web

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
