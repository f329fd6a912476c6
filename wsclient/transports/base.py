"""The seam under ``Connection``: what a WebSocket implementation must do for wsclient.

A ``Transport`` carries one open WebSocket. It sends frames (``send_text`` /
``send_bytes``, with a bounded write buffer and ``buffered_amount``), pings,
hands the next data message to ``receive()``, closes (bounded overall by
``close_timeout``), aborts, and reports what happens on the wire to the link
above it through ``LinkEvents`` callbacks: the end of the connection, pongs,
and data that arrives while nobody holds a lease.

Idle monitoring lives here, not in tasks: answering pings (``PongCoalescer``,
at most one pong per loop iteration, none while the write buffer is over its
bound) and the heartbeat (``Heartbeat``, loop timers; only a pong proves the
peer alive, incoming pings do not). When the heartbeat declares the peer dead
the transport aborts the socket, which ends a blocked ``send()`` with the
heartbeat's reason.

Two transports implement it: ``aiohttp`` (the default, ``transports/aiohttp.py``)
and ``picows`` (``transports/picows.py``, extra ``wsclient[fast]``).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import os
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple, Protocol

from yarl import URL

from wsclient.config import ApiKeyAuth, AuthSpec, BearerAuth, redact_text, redact_url


class MessageType(enum.Enum):
    TEXT = "text"
    BINARY = "binary"


class Message(NamedTuple):
    """A data message received from the peer (a NamedTuple: cheap to build per message)."""

    type: MessageType
    data: str | bytes

    def json(self, *, loads: Callable[[str | bytes], Any] = json.loads) -> Any:
        """Decode the payload as JSON; ``ValueError`` saying so if it is not."""
        try:
            return loads(self.data)
        except ValueError as exc:
            raise ValueError(f"message is not valid JSON: {exc}") from exc


TEXT = MessageType.TEXT
BINARY = MessageType.BINARY

#: Pongs are not written while this much is already waiting in the write buffer:
#: a peer that floods pings and never reads cannot make the client's memory grow.
PONG_BUFFER_LIMIT = 64 * 1024
#: A transport's write buffer high-water mark: past it, send() waits for the peer.
WRITE_BUFFER_HIGH = 64 * 1024
HEARTBEAT_PAYLOAD = b"wsclient-hb"


class ConnectFailure(NamedTuple):
    """Why an open failed, in words with no credential in them (no exception is kept)."""

    reason: str
    status: int | None = None


class LinkEvents(Protocol):
    """What a transport reports to the link it carries (synchronously, from the loop)."""

    @property
    def idle(self) -> bool:
        """True while no lease holds the link: data then goes to ``idle_message``."""
        ...

    def transport_closed(self, code: int | None, reason: str) -> None:
        """The connection ended (peer close, error, heartbeat); the first cause wins."""

    def idle_message(self, message: Message) -> None:
        """A data message arrived while the link was idle."""

    def pong_received(self, payload: bytes) -> None:
        """A pong arrived (the heartbeat has already counted it)."""

    # What receive() keeps up to date for the pool (see Transport.receive).
    reading: bool
    dirty: bool

    def closed_error(self) -> Exception:
        """The error a read raises once the connection has ended."""
        ...


class LeaseHandle(Protocol):
    """What a transport's ``receive()`` needs of the ``Connection`` it reads for."""

    @property
    def _link(self) -> object | None:
        """The link it holds; None once released."""
        ...

    def _checked(self) -> object:
        """The link; raises ``ConnectionReleasedError`` once released."""
        ...


class Transport(Protocol):
    """One open WebSocket, as ``Connection`` and the pool use it."""

    name: str

    @property
    def closed(self) -> bool:
        """Nothing can be sent or received any more."""
        ...

    @property
    def protocol(self) -> str | None: ...

    @property
    def compressed(self) -> bool: ...

    @property
    def buffered_amount(self) -> int:
        """Bytes written but not yet handed to the kernel."""
        ...

    def get_extra_info(self, name: str, default: Any = None) -> Any: ...

    def send_text(self, data: str) -> Awaitable[None] | None:
        """Write a text frame; an awaitable to wait on while the write buffer is full.
        ``TransportClosedError`` when the transport has ended (``Connection`` relies on
        it instead of reading ``closed`` before every send)."""

    def send_bytes(self, data: bytes) -> Awaitable[None] | None:
        """Write a binary frame, like ``send_text``."""

    def ping(self, payload: bytes) -> None:
        """Write a ping frame (never waits)."""

    async def receive(self, handle: LeaseHandle, timeout: float | None) -> Message:
        """The next data message: ``Connection.receive()`` itself (it hands out this
        coroutine, so a read is one coroutine deep, not two).

        Its first step checks that ``handle`` (the ``Connection`` that made the
        coroutine) still holds this link: a read created before a release and run
        after it must fail with ``ConnectionReleasedError``, not read the pooled
        link (``handle._checked()`` raises it).

        Meanwhile the link is marked ``reading``; a timeout or cancellation marks
        it ``dirty`` (a reply may still come), a message clears that. Once the
        connection has ended it raises the link's ``closed_error()``.
        ``TimeoutError`` after ``timeout`` seconds leaves the transport usable.
        Control frames are handled inside; ``MessageTooBigError`` when a message
        is over the limit (the transport has closed with 1009).
        """

    def watch(self) -> None:
        """The link went idle: read on without a caller and report by callback."""

    async def close(self, code: int, reason: str) -> None:
        """Close handshake bounded by ``close_timeout`` overall, then release the socket."""

    def bind(self, link: LinkEvents) -> None:
        """Report to ``link`` from now on."""

    def abort(self, reason: str = "connection aborted") -> None:
        """Tear the TCP connection down at once (RST), discarding anything queued.

        A ``send()`` waiting for the buffer to drain fails with
        ``ConnectionResetError(reason)``.
        """


class TransportClosedError(ConnectionResetError):
    """A send on a transport that has already ended (``Connection`` turns it into the
    ``ConnectionClosedError`` that says how the connection ended)."""


class Heartbeat:
    """Pings every ``interval`` and declares the peer dead without a pong within ``timeout``.

    Loop timers only, one pending at a time. Liveness is a pong (``pong_seen()``,
    or ``peek()`` for a transport that can look at frames nobody has read yet);
    incoming pings and data do not count: a peer flooding pings at us while it
    never reads would otherwise look alive for good.

    A transport that is not reading the socket (a lessee let replies pile up)
    says so through ``peek()`` or ``excuse()``: the pong may be behind the unread
    data, so the peer is not blamed then, nor at the next look (reading resumed,
    the backlog comes first). The first pong ends that grace.
    """

    __slots__ = (
        "_dead",
        "_excused",
        "_handle",
        "_loop",
        "_peek",
        "_ping",
        "interval",
        "seen",
        "timeout",
    )

    def __init__(
        self,
        interval: float,
        timeout: float,
        *,
        ping: Callable[[bytes], None],
        dead: Callable[[str], None],
        peek: Callable[[], bool] | None = None,
    ) -> None:
        self.interval = interval
        self.timeout = timeout
        self._ping = ping
        self._dead = dead
        self._peek = peek
        self._loop = asyncio.get_running_loop()
        self.seen = False
        self._excused = False
        self._handle: asyncio.TimerHandle | None = self._loop.call_later(interval, self._tick)

    def pong_seen(self) -> None:
        self.seen = True
        self._excused = False

    def excuse(self) -> None:
        """Reading the socket stopped: no blame until the look after the next one."""
        self._excused = True

    def _tick(self) -> None:
        self.seen = False
        self._handle = self._loop.call_later(self.timeout, self._expired)
        self._ping(HEARTBEAT_PAYLOAD)

    def _expired(self) -> None:
        excused = self._peek is not None and self._peek()
        if self.seen or excused or self._excused:
            self._excused = excused
            self._handle = self._loop.call_later(self.interval, self._tick)
            return
        self._handle = None
        self._dead(f"heartbeat: no pong within {self.timeout:g} s")

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class PongCoalescer:
    """Answers pings without a task per pong, and without letting a flood pile pongs up.

    Every ping in one loop iteration is answered by a single pong carrying the
    latest payload (RFC 6455 §5.5.3 allows answering only the most recent
    ping); it is written only while the write buffer holds less than
    ``PONG_BUFFER_LIMIT`` bytes, so a peer that never reads gets no more pongs
    once the buffer fills.
    """

    __slots__ = ("_buffered", "_loop", "_payload", "_scheduled", "_write")

    def __init__(self, write: Callable[[bytes], None], buffered: Callable[[], int]) -> None:
        self._write = write
        self._buffered = buffered
        self._payload = b""
        self._scheduled = False
        self._loop = asyncio.get_running_loop()

    def ping_received(self, payload: bytes) -> None:
        self._payload = payload
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        if self._buffered() < PONG_BUFFER_LIMIT:
            self._write(self._payload)


_LINGER_RESET = struct.pack("ii", 1, 0)


def reset_on_close(transport: asyncio.BaseTransport | None) -> None:
    """Make closing ``transport``'s socket send a RST and drop the kernel's send queue.

    Without it, a socket whose peer stopped reading keeps a FIN queued behind
    megabytes that will never be read.
    """
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)


def fail_waiter(waiter: asyncio.Future[Any] | None, error: BaseException) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_exception(error)
        waiter.exception()  # retrieved: nobody may be waiting any more


async def auth_headers(auth: AuthSpec | None) -> dict[str, str]:
    """Headers for ``auth``; an async provider is called on every (re)connect."""
    if auth is None:
        return {}
    if isinstance(auth, BearerAuth | ApiKeyAuth):
        return auth.headers()
    provided = await auth()
    return {str(k): str(v) for k, v in provided.items()}


def unoffered_protocol(answers: list[str], offered: tuple[str, ...]) -> str | None:
    """Why the server's ``Sec-WebSocket-Protocol`` answer is unacceptable, or None.

    RFC 6455 §4.1: the client must fail the connection when the server picks a
    subprotocol it did not offer. Offered subprotocols may carry credentials
    (some APIs pass a token that way): the message counts them, it does not
    list them, and the server's pick is quoted only if short.
    """
    if not answers:
        return None
    selected = ", ".join(answers)
    shown = repr(selected) if len(selected) <= 32 else f"a {len(selected)}-character value"
    if not offered:
        return f"server selected subprotocol {shown} but the client offered none"
    values = [value.strip() for value in selected.split(",")]
    if len(values) != 1 or values[0] not in offered:
        return (
            f"server selected subprotocol {shown}, which is not one of the "
            f"{len(offered)} the client offered"
        )
    return None


def too_big(data: str | bytes, limit: int) -> bool:
    """Over ``limit`` bytes (a str measured as UTF-8, encoded only when it matters)."""
    if isinstance(data, bytes):
        return len(data) > limit
    return len(data) > limit or (len(data) * 4 > limit and len(data.encode()) > limit)


def oversize_reason(data: str | bytes, limit: int) -> tuple[int, str]:
    size = len(data) if isinstance(data, bytes) else len(data.encode())
    return size, f"message of {size} bytes exceeds max_message_size={limit}"


def with_host_header(
    url: str | URL, headers: dict[str, str], server_hostname: str | None
) -> dict[str, str]:
    """``headers`` plus ``Host: server_hostname[:port]`` when the URL dials an address.

    A resolver dials each address it found but keeps the name it resolved: TLS
    checks the certificate against that name (``server_hostname=``) and the
    server sees it in ``Host``, as if the name had been dialled. A ``Host`` the
    user set wins.
    """
    if server_hostname is None or any(k.lower() == "host" for k in headers):
        return headers
    port = URL(url).explicit_port
    return {**headers, "Host": server_hostname if port is None else f"{server_hostname}:{port}"}


def describe_link_error(exc: BaseException) -> str:
    """Why an open connection ended, in wsclient's words: a transport's own
    exception names and messages stay out of close reasons and logs."""
    if isinstance(exc, ConnectionResetError | EOFError | BrokenPipeError):
        return "connection lost: the peer went away without a close frame"
    if isinstance(exc, OSError):
        return f"connection lost: {describe_os_error(exc)}"
    return f"connection lost ({type(exc).__name__})"


def describe_os_error(err: BaseException) -> str:
    """'Connection refused' rather than asyncio's 'Connect call failed (addr)'.

    TLS failures are named as such: an ``ssl.SSLError`` carries errno 1, which
    ``os.strerror`` would render as "Operation not permitted".
    """
    if isinstance(err, ssl.SSLCertVerificationError):
        detail = err.verify_message or err.reason or str(err)
        return f"TLS certificate verification failed: {detail}"
    if isinstance(err, ssl.SSLError):
        return f"TLS error: {err.reason or err}"
    if isinstance(err, OSError):
        if err.errno:
            return os.strerror(err.errno)
        if err.strerror:
            return err.strerror
    return redact_text(str(err)) or type(err).__name__


def describe_redirect(status: int, location: str | None) -> str:
    where = repr(redact_url(location)) if location is not None else "no Location"
    return f"handshake redirected with HTTP {status} to {where} (redirects are not followed)"
