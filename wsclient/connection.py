"""One WebSocket connection: ``Connection``, its link, ``connect()``.

Two layers:

* ``_Link`` owns what outlives a lease: the transport (``wsclient.transports``:
  aiohttp or picows), state, close code, timestamps, pong waiters. The pool
  keeps links. It is the ``LinkEvents`` the transport reports to.
* ``Connection`` is the handle the application holds. ``connect()`` returns one
  bound to its link for good; the pool makes a fresh handle per lease and
  detaches it on release, so a stale reference fails loudly
  (``ConnectionReleasedError``) instead of talking on someone else's lease.

Reading while idle is the transport's business (``Transport.watch()``): the
pool calls ``start_idle_read()`` on the loop iteration after a release (a link
re-acquired straight away, the hot path, never starts it), and the transport
answers pings, counts pongs and reports closes and stray data by callback
without a task per message.

Why one file of about 640 lines: the link and its handle are one object seen
from two sides (the handle is a few slots pointing at the link), and
``connect()`` is the link's constructor for direct use.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, Protocol, Unpack

import aiohttp

from wsclient.codes import CloseCode, ConnectionState, check_close_code
from wsclient.config import (
    ConnectionOptions,
    _validate_ws_url,
    redact_headers,
    redact_url,
)
from wsclient.errors import (
    ConnectError,
    ConnectionClosedError,
    ConnectionReleasedError,
    MessageTooBigError,
)
from wsclient.options import ConnectionOptionsDict
from wsclient.transports.aiohttp import describe_aiohttp_error
from wsclient.transports.base import (
    ConnectFailure,
    Message,
    MessageType,
    Transport,
    TransportClosedError,
    auth_headers,
)

__all__ = ["Connection", "Message", "MessageType", "connect", "open_link"]

logger = logging.getLogger("wsclient.connection")

_OPEN = ConnectionState.OPEN  # bound once: the hot path would look it up per message
_BYTES_LIKE = (bytes, bytearray, memoryview)

_ids = itertools.count(1)


class _Link:
    """The open WebSocket behind one or more successive leases."""

    __slots__ = (
        "_idle",
        "backend_id",
        "client_initiated",
        "close_code",
        "close_reason",
        "created_at",
        "dirty",
        "expires_at",
        "generation",
        "id",
        "last_used",
        "max_message_size",
        "on_closed",
        "on_idle_message",
        "owner",
        "pong_waiters",
        "pool_backend",
        "read_queued",
        "reading",
        "state",
        "transport",
        "url",
    )

    def __init__(
        self,
        transport: Transport,
        *,
        url: str,
        backend_id: str,
        max_message_size: int,
    ) -> None:
        self.transport = transport
        self.url = url
        self.backend_id = backend_id
        self.id = f"conn-{next(_ids)}"
        self.max_message_size = max_message_size
        self.state = ConnectionState.OPEN
        self.close_code: int | None = None
        self.close_reason = ""
        self.created_at = self.last_used = time.monotonic()
        self.expires_at: float | None = None
        self.generation = 0
        self.owner: object | None = None
        self.pong_waiters: dict[bytes, asyncio.Future[None]] = {}
        self.on_closed: Callable[[_Link], None] | None = None
        self.on_idle_message: Callable[[_Link, Message], None] | None = None
        self._idle = False
        self.client_initiated = False
        self.pool_backend: Any = None
        self.read_queued = False
        # A lessee's receive() is in progress (releasing now would hand the
        # socket over while it is still being read).
        self.reading = False
        # The last receive() timed out or was cancelled: a reply may still come
        # and must not reach another lessee.
        self.dirty = False
        transport.bind(self)

    # -- state ---------------------------------------------------------------

    def set_state(self, state: ConnectionState) -> None:
        if state <= self.state:
            return
        logger.debug(
            "connection %s: %s -> %s",
            self.id,
            self.state.name,
            state.name,
            extra={"backend_id": self.backend_id, "connection_id": self.id},
        )
        self.state = state
        if state is ConnectionState.CLOSED:
            for waiter in self.pong_waiters.values():  # no pong will come now
                if not waiter.done():
                    waiter.set_result(None)
            callback, self.on_closed = self.on_closed, None
            if callback is not None:
                callback(self)

    @property
    def is_open(self) -> bool:
        return self.state is ConnectionState.OPEN and not self.transport.closed

    def mark_closed(self, code: int | None, reason: str) -> None:
        """Record how the connection ended (first cause wins) and move to CLOSED."""
        if self.close_code is None:
            self.close_code = code
            self.close_reason = reason
        self.set_state(ConnectionState.CLOSED)

    def closed_error(self) -> ConnectionClosedError:
        return ConnectionClosedError(self.close_code, self.close_reason)

    def note_transport_closed(self) -> None:
        """The transport ended while nobody was reading: record it (first cause wins)."""
        if self.state is not ConnectionState.CLOSED:
            self.mark_closed(CloseCode.ABNORMAL_CLOSURE, "connection lost")

    # -- LinkEvents: what the transport reports ---------------------------------

    @property
    def idle(self) -> bool:
        return self._idle

    def transport_closed(self, code: int | None, reason: str) -> None:
        self.mark_closed(code, reason)

    def idle_message(self, message: Message) -> None:
        if self.on_idle_message is not None:
            self.on_idle_message(self, message)

    def pong_received(self, payload: bytes) -> None:
        waiter = self.pong_waiters.pop(bytes(payload), None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- idle reading --------------------------------------------------------

    def mark_idle(self) -> None:
        """The pool holds this link unleased; it calls start_idle_read() a little later."""
        self._idle = True
        self.last_used = time.monotonic()

    def mark_leased(self) -> None:
        self._idle = False

    def start_idle_read(self) -> None:
        """Watch the link while idle, so closes, pings and stray messages are seen."""
        if self._idle and self.state is ConnectionState.OPEN:
            self.transport.watch()

    async def roundtrip(self, timeout: float) -> bool:
        """Ping and wait for the pong (the idle watch sees it). False if none came."""
        if self.state is not ConnectionState.OPEN or self.transport.closed:
            return False
        payload = f"wsclient-{time.monotonic_ns()}".encode()
        waiter = asyncio.get_running_loop().create_future()
        self.pong_waiters[payload] = waiter
        self._idle = True
        self.start_idle_read()
        try:
            async with asyncio.timeout(timeout):
                self.transport.ping(payload)
                await waiter
        except (TimeoutError, ConnectionError, aiohttp.ClientError):
            return False
        finally:
            self.pong_waiters.pop(payload, None)
        return self.state is ConnectionState.OPEN

    # -- closing -------------------------------------------------------------

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Close with a handshake, bounded by close_timeout overall, then release resources.

        Past the timeout (a peer that ignores the close frame, or keeps sending,
        or stopped reading so the close frame cannot even be written) the socket
        is aborted.
        """
        if self.state >= ConnectionState.ENDING:
            await self.transport.close(code, reason)  # releases what is left, at once
            return
        self.client_initiated = True
        self.set_state(ConnectionState.ENDING)
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
        try:
            await self.transport.close(code, reason)
        finally:
            self.set_state(ConnectionState.CLOSED)

    def drop(self) -> None:
        """Close the TCP connection at once, without a close frame."""
        if self.state is ConnectionState.CLOSED:
            self.transport.abort()  # a no-op once the socket is released
            return
        self.client_initiated = True
        if self.close_code is None:
            self.close_code, self.close_reason = CloseCode.ABNORMAL_CLOSURE, "dropped by client"
        # An abort, not a graceful close: that one would keep the socket open
        # until its buffer is flushed, i.e. for good if the peer stopped reading.
        self.transport.abort("dropped by client")
        self.set_state(ConnectionState.CLOSED)


class _Serves(Protocol):
    """What ``Connection.serve()`` runs: a ``wsclient.Router``, or anything alike."""

    async def serve(self, source: Connection) -> None: ...


class Connection:
    """A WebSocket connection: send, receive, ping, close.

    Returned by ``await connect(url)`` or ``await pool.acquire()``. A pooled
    connection goes back with ``pool.release(conn)`` (or the ``async with``
    block ending); after that, every method raises ``ConnectionReleasedError``.
    """

    __slots__ = ("_link",)

    # Not constructed directly: ``connection_for(link)`` makes one. No __init__,
    # because the pool's acquire builds one per lease (inlined there) and
    # ``Connection()`` plus a store costs less than an __init__ frame.
    _link: _Link | None

    def _checked(self) -> _Link:
        link = self._link
        if link is None:
            raise ConnectionReleasedError(
                "this connection was released to its pool and may not be used any more; "
                "acquire a new one"
            )
        return link

    def _detach(self) -> _Link | None:
        link, self._link = self._link, None
        return link

    # -- identity & state ----------------------------------------------------

    @property
    def id(self) -> str:
        return self._checked().id

    @property
    def backend_id(self) -> str:
        return self._checked().backend_id

    @property
    def url(self) -> str:
        return self._checked().url

    @property
    def state(self) -> ConnectionState:
        link = self._checked()
        if link.state is ConnectionState.OPEN and link.transport.closed:
            return ConnectionState.CLOSED
        return link.state

    @property
    def connected(self) -> bool:
        return self._link is not None and self._link.is_open

    @property
    def protocol(self) -> str | None:
        return self._checked().transport.protocol

    @property
    def remote_address(self) -> tuple[str, int] | None:
        peer = self._checked().transport.get_extra_info("peername")
        return (str(peer[0]), int(peer[1])) if peer else None

    @property
    def transport(self) -> str:
        """Which implementation carries the frames: ``"aiohttp"`` or ``"picows"``."""
        return self._checked().transport.name

    @property
    def buffered_amount(self) -> int:
        """Bytes written by ``send()`` but not yet handed to the kernel."""
        return self._checked().transport.buffered_amount

    @property
    def close_code(self) -> int | None:
        return self._checked().close_code

    @property
    def close_reason(self) -> str:
        return self._checked().close_reason

    @property
    def released(self) -> bool:
        return self._link is None

    def __repr__(self) -> str:
        link = self._link
        if link is None:
            return "<Connection released>"
        return f"<Connection {link.id} {link.state.name} backend={link.backend_id!r}>"

    # -- sending -------------------------------------------------------------

    def _writable(self) -> _Link:
        link = self._checked()
        if link.state is not ConnectionState.OPEN or link.transport.closed:
            link.note_transport_closed()
            raise link.closed_error()
        return link

    async def send(
        self, data: str | bytes | bytearray | memoryview, timeout: float | None = None
    ) -> None:
        """Send ``str`` as a text frame, bytes-like as a binary frame.

        A send waits while the peer is not reading (flow control). With
        ``timeout``, ``TimeoutError`` is raised once that many seconds have
        passed; the message is then queued whole (never half a frame) and goes
        out if the peer resumes reading, and the connection stays open: ``drop()``
        it if the peer is stuck for good.
        """
        # Kept flat (no send -> send_text -> write chain): it is on the hot path.
        # A transport that has ended while the link is still OPEN is found by the
        # transport's send (TransportClosedError), not by a property read per send.
        link = self._link
        if link is None or link.state is not _OPEN:
            link = self._writable()  # raises the precise error
        if timeout is not None and timeout != timeout:
            raise ValueError("send() timeout must be a number of seconds or None, not NaN")
        limit = link.max_message_size
        try:
            if isinstance(data, str):
                # A str's UTF-8 size is between len and 4*len: encode only when it matters.
                if limit and len(data) * 4 > limit and len(data.encode()) > limit:
                    raise MessageTooBigError(len(data.encode()), limit)
                if timeout is None:
                    waiter = link.transport.send_text(data)
                    if waiter is not None:
                        await waiter
                else:
                    await _bounded_send(link.transport.send_text(data), timeout)
            elif isinstance(data, _BYTES_LIKE):  # a tuple: `a | b` would build a union per call
                if limit and len(data) > limit:
                    raise MessageTooBigError(len(data), limit)
                payload = bytes(data)  # no copy when data is already bytes
                if timeout is None:
                    waiter = link.transport.send_bytes(payload)
                    if waiter is not None:
                        await waiter
                else:
                    await _bounded_send(link.transport.send_bytes(payload), timeout)
            else:
                raise TypeError(f"send() takes str or bytes, not {type(data).__name__}")
        except TransportClosedError:
            link.note_transport_closed()
            raise link.closed_error() from None
        except (ConnectionError, aiohttp.ClientConnectionError) as exc:
            raise self._write_failed(link, exc) from exc

    async def send_text(self, data: str, timeout: float | None = None) -> None:
        if not isinstance(data, str):
            raise TypeError(f"send_text() takes str, not {type(data).__name__}")
        await self.send(data, timeout)

    async def send_bytes(
        self, data: bytes | bytearray | memoryview, timeout: float | None = None
    ) -> None:
        if not isinstance(data, _BYTES_LIKE):
            raise TypeError(f"send_bytes() takes bytes, not {type(data).__name__}")
        await self.send(data, timeout)

    async def send_json(
        self,
        data: Any,
        timeout: float | None = None,
        *,
        dumps: Callable[[Any], str] = json.dumps,
    ) -> None:
        await self.send(dumps(data), timeout)

    @staticmethod
    def _write_failed(link: _Link, exc: BaseException) -> ConnectionClosedError:
        link.mark_closed(CloseCode.ABNORMAL_CLOSURE, f"write failed: {describe_aiohttp_error(exc)}")
        return link.closed_error()

    async def ping(self, data: bytes = b"") -> None:
        """Send a ping frame (the pong is consumed by the connection)."""
        link = self._writable()
        if len(data) > 125:
            raise ValueError(f"ping payload is {len(data)} bytes; at most 125 allowed")
        link.transport.ping(data)

    # -- receiving -----------------------------------------------------------

    def receive(self, timeout: float | None = None) -> Coroutine[Any, Any, Message]:
        """The next data message: ``await conn.receive()``. A timeout raises
        ``TimeoutError``; the connection stays usable.

        The coroutine is the transport's own read (one coroutine per message, not
        a wrapper around another): a released connection raises here, at the call,
        and a read made before a release raises when it first runs.
        """
        link = self._link
        if link is None:
            link = self._checked()  # raises
        # The transport's coroutine checks again at its first step: a released
        # handle must not read (create_task(conn.receive()), then release).
        return link.transport.receive(self, timeout)

    async def receive_text(self, timeout: float | None = None) -> str:
        message = await self.receive(timeout)
        if message.type is not MessageType.TEXT:
            raise TypeError("expected a text message, received a binary one")
        assert isinstance(message.data, str)
        return message.data

    async def receive_bytes(self, timeout: float | None = None) -> bytes:
        message = await self.receive(timeout)
        if message.type is not MessageType.BINARY:
            raise TypeError("expected a binary message, received a text one")
        assert isinstance(message.data, bytes)
        return message.data

    async def receive_json(
        self, timeout: float | None = None, *, loads: Callable[[str | bytes], Any] = json.loads
    ) -> Any:
        return (await self.receive(timeout)).json(loads=loads)

    def __aiter__(self) -> AsyncIterator[Message]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Message]:
        while True:
            try:
                yield await self.receive()
            except ConnectionClosedError as exc:
                if exc.code in (CloseCode.NORMAL, CloseCode.GOING_AWAY):
                    return
                raise

    # -- closing -------------------------------------------------------------

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Close with the handshake. Invalid codes raise ``ValueError`` before anything is sent."""
        check_close_code(code)
        if len(reason.encode()) > 123:
            raise ValueError("close reason must be at most 123 bytes of UTF-8")
        await self._checked().close(code, reason)

    def drop(self) -> None:
        """Close the TCP connection at once, without a close handshake."""
        self._checked().drop()

    async def serve(self, router: _Serves) -> None:
        """Hand every incoming message to ``router`` (a ``wsclient.Router``) until closed."""
        await router.serve(self)

    async def __aenter__(self) -> Connection:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._link is not None:
            await self.close()


async def _bounded_send(send: Awaitable[None] | None, timeout: float) -> None:
    # aiohttp writes the whole frame to the transport before it waits for the
    # buffer to drain (picows writes it at once), so stopping the wait never
    # leaves half a frame on the stream. The wait itself must not be
    # cancelled, though: every sender waits on one shared drain future, and
    # cancelling it would make the other senders (and every later send) raise
    # CancelledError. So the send runs behind a shield and, past the timeout,
    # finishes (or fails with the connection) on its own.
    if send is None:
        return  # written at once: nothing to wait for
    task = asyncio.ensure_future(send)
    try:
        async with asyncio.timeout(timeout):
            await asyncio.shield(task)
    except TimeoutError:
        if task.done():
            # It finished as the time ran out (with timeout=0 the task gets
            # exactly one step: "send only if it can go now"): its outcome stands.
            task.result()
            return
        _keep_until_done(task)
        raise TimeoutError(
            f"send not finished within {timeout} s: the peer is not reading "
            "(the message stays queued)"
        ) from None
    except asyncio.CancelledError:
        _keep_until_done(task)
        raise


# Strong references to sends left running past their timeout (the loop keeps only weak ones).
_background: set[asyncio.Future[Any]] = set()


def _keep_until_done(task: asyncio.Future[Any]) -> None:
    if not task.done():
        _background.add(task)
        task.add_done_callback(_background.discard)
    task.add_done_callback(_ignore_result)


def _ignore_result(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # a failed send shows up as a closed connection later


async def open_link(
    session: aiohttp.ClientSession | None,
    url: str,
    options: ConnectionOptions,
    *,
    backend_id: str,
) -> _Link:
    """Open a WebSocket over ``options.transport``; every failure becomes ``ConnectError``.

    ``session`` is the pool's aiohttp session (None: the aiohttp transport
    makes one of its own, closed with the connection; picows needs none).

    The ``ConnectError`` is raised with no cause and no context: aiohttp's
    exceptions carry ``request_info`` with the request headers (the bearer
    token, the API key), and whatever reports the error (a logger printing the
    chain, an error tracker) would show them. The message says what went wrong,
    with any URL in it redacted.
    """
    headers: dict[str, str] = {}
    failure: ConnectError | None = None
    try:
        headers = {**options.headers, **await auth_headers(options.auth)}
    except Exception as exc:
        # The provider's own message may quote credentials: name the type only.
        failure = ConnectError(url, f"auth provider raised {type(exc).__name__}")
    if failure is None:
        if options.transport == "picows":
            from wsclient.transports.picows import open_picows

            opened: Transport | ConnectFailure = await open_picows(url, headers, options)
        else:
            from wsclient.transports.aiohttp import open_aiohttp

            opened = await open_aiohttp(session, url, headers, options)
        if not isinstance(opened, ConnectFailure):
            return _Link(
                opened, url=url, backend_id=backend_id, max_message_size=options.max_message_size
            )
        failure = ConnectError(url, opened.reason, status=opened.status)
    # Raised here, outside any except block, so that __context__ stays None too
    # (``raise ... from None`` only hides the context; it still holds it). The
    # traceback keeps this frame alive: drop the headers (credentials) from it.
    headers = {}
    raise failure


async def connect(url: str, **options: Unpack[ConnectionOptionsDict]) -> Connection:
    """Open one unpooled WebSocket connection.

    Keywords are the ``ConnectionOptions`` fields (``transport``,
    ``max_message_size``, ``compression``, ``protocols``, ``headers``,
    ``auth``, ``connect_timeout``, ``close_timeout``, ``ssl``, ``heartbeat``).
    Closing the connection closes everything it opened.
    """
    config = ConnectionOptions.model_validate(options)
    try:
        _validate_ws_url(url)
    except ValueError as exc:
        raise ValueError(f"url: {exc}") from None
    # backend_id is shown (repr, logs): like a Backend's default id, it is
    # the URL with its query values masked.
    link = await open_link(None, url, config, backend_id=redact_url(url))
    logger.debug(
        "connected %s to %s over %s (headers %s)",
        link.id,
        redact_url(url),
        config.transport,
        redact_headers(config.headers),
    )
    return connection_for(link)


def connection_for(link: _Link) -> Connection:
    """A new lease handle (a ``Connection``) on ``link``."""
    conn = Connection()
    conn._link = link
    return conn
