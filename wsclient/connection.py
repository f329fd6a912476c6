"""One WebSocket connection: ``Connection``, its state, close codes, ``connect()``.

Two layers:

* ``_Link`` owns the aiohttp WebSocket and everything that outlives a lease:
  state, close code, the idle reader, timestamps. The pool keeps links.
* ``Connection`` is the handle the application holds. ``connect()`` returns one
  bound to its link for good; the pool makes a fresh handle per lease and
  detaches it on release, so a stale reference fails loudly
  (``ConnectionReleasedError``) instead of talking on someone else's lease.

Reading while idle: aiohttp only answers server pings, and only notices a
peer's close frame, when somebody calls ``receive()``. A link that goes idle
therefore starts a single background ``receive()`` on the next loop
iteration (not at once: a connection re-acquired straight away, the hot path,
never pays for a task). A lessee's first ``receive()`` takes that pending read
over instead of cancelling it, so no message is lost and aiohttp's reader is
never entered twice. Heartbeat pongs are counted by aiohttp at the protocol
level, so they need no reader.

Why this file is long: the link (aiohttp socket, idle reads, bounded close,
abort), the handshake (redirect refusal, subprotocol check, error wording)
and the ``Connection`` handle still share aiohttp's private state here. The
transport issue puts a ``Transport`` protocol under ``Connection`` (aiohttp and
picows behind it), which splits this module along those lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import json
import logging
import os
import socket
import ssl
import struct
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, NamedTuple, Protocol, Unpack

import aiohttp
from aiohttp import WSMsgType
from yarl import URL

from wsclient.codes import CloseCode, ConnectionState, check_close_code
from wsclient.config import (
    ApiKeyAuth,
    AuthSpec,
    BearerAuth,
    ConnectionOptions,
    _validate_ws_url,
    redact_headers,
    redact_text,
    redact_url,
)
from wsclient.errors import (
    ConnectError,
    ConnectionClosedError,
    ConnectionReleasedError,
    MessageTooBigError,
)
from wsclient.options import ConnectionOptionsDict

logger = logging.getLogger("wsclient.connection")


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


#: What aiohttp's receive() returns once it has closed a connection by itself.
WS_CLOSED = aiohttp.WSMessage(WSMsgType.CLOSED, None, None)

_ids = itertools.count(1)
# Strong references to fire-and-forget cleanup tasks (the loop keeps only weak ones).
_background: set[asyncio.Task[Any]] = set()
_DATA_TYPES = (WSMsgType.TEXT, WSMsgType.BINARY)


class _Link:
    """The open WebSocket behind one or more successive leases."""

    __slots__ = (
        "_idle",
        "backend_id",
        "client_initiated",
        "close_code",
        "close_reason",
        "close_timeout",
        "created_at",
        "dirty",
        "expires_at",
        "generation",
        "id",
        "inflating",
        "last_used",
        "max_message_size",
        "on_closed",
        "on_idle_message",
        "owned_session",
        "owner",
        "pending",
        "pong_waiters",
        "pool_backend",
        "read_queued",
        "reading",
        "state",
        "url",
        "ws",
    )

    def __init__(
        self,
        ws: aiohttp.ClientWebSocketResponse,
        *,
        url: str,
        backend_id: str,
        max_message_size: int,
        close_timeout: float = 5.0,
    ) -> None:
        self.ws = ws
        self.url = url
        self.backend_id = backend_id
        self.id = f"conn-{next(_ids)}"
        self.max_message_size = max_message_size
        self.close_timeout = close_timeout
        # permessage-deflate negotiated and a size limit set: every data message is
        # measured after inflating (see too_big()).
        self.inflating = bool(max_message_size and getattr(ws, "compress", 0))
        self.state = ConnectionState.OPEN
        self.close_code: int | None = None
        self.close_reason = ""
        self.pending: asyncio.Task[aiohttp.WSMessage] | None = None
        self.created_at = self.last_used = time.monotonic()
        self.expires_at: float | None = None
        self.generation = 0
        self.owned_session: aiohttp.ClientSession | None = None
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
        return self.state is ConnectionState.OPEN and not self.ws.closed

    def mark_closed(self, code: int | None, reason: str) -> None:
        """Record how the connection ended (first cause wins) and move to CLOSED."""
        if self.close_code is None:
            self.close_code = code
            self.close_reason = reason
        self.set_state(ConnectionState.CLOSED)

    def closed_error(self) -> ConnectionClosedError:
        return ConnectionClosedError(self.close_code, self.close_reason)

    # -- idle reading --------------------------------------------------------

    def mark_idle(self) -> None:
        """The pool holds this link unleased; it calls start_idle_read() a little later."""
        self._idle = True
        self.last_used = time.monotonic()

    def mark_leased(self) -> None:
        self._idle = False

    @property
    def idle(self) -> bool:
        return self._idle

    def start_idle_read(self) -> None:
        """Read while idle, so closes, pings and stray messages are seen (no-op if leased)."""
        if not self._idle or self.state is not ConnectionState.OPEN:
            return
        if self.pending is None:
            self.pending = asyncio.get_running_loop().create_task(
                self.ws.receive(), name=f"wsclient-idle-read-{self.id}"
            )
            self.pending.add_done_callback(self._idle_read_done)
        elif self.pending.done():
            self._idle_read_done(self.pending)

    def _idle_read_done(self, task: asyncio.Task[aiohttp.WSMessage]) -> None:
        if task is not self.pending or not self._idle:
            return  # leased meanwhile: the lessee's receive() takes the result
        self.pending = None
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            if isinstance(exc, RuntimeError):  # aiohttp: a concurrent read, i.e. misuse
                self.client_initiated = True
            self.mark_closed(CloseCode.ABNORMAL_CLOSURE, f"read failed: {exc!r}")
            return
        msg = task.result()
        if msg.type in _DATA_TYPES:
            if self.inflating and self.too_big(msg.data):
                self._refuse_oversize_in_background(msg.data)
                return
            if self.on_idle_message is not None:
                self.on_idle_message(self, _to_message(msg))
        elif msg.type is WSMsgType.PING:
            self._answer_ping(msg.data)
        elif msg.type is WSMsgType.PONG:
            self.got_pong(msg.data)
        else:
            self.absorb_close(msg)
            return
        self.start_idle_read()

    # -- size limit after inflating --------------------------------------------
    # aiohttp checks a frame's wire size with ">=" but an inflated message's
    # size with ">", so with compression a message of limit + 1 bytes got
    # through. It is handed a looser limit on compressed links (a message of
    # exactly the limit can take a few more bytes on the wire when it does not
    # compress) and the exact, inclusive limit is applied here.

    def too_big(self, data: str | bytes) -> bool:
        limit = self.max_message_size
        if isinstance(data, bytes):
            return len(data) > limit
        # A str's UTF-8 size is between len and 4*len: encode only when it matters.
        return len(data) > limit or (len(data) * 4 > limit and len(data.encode()) > limit)

    def _oversize_reason(self, data: str | bytes) -> tuple[int, str]:
        size = len(data) if isinstance(data, bytes) else len(data.encode())
        return size, f"message of {size} bytes exceeds max_message_size={self.max_message_size}"

    async def refuse_oversize(self, data: str | bytes) -> MessageTooBigError:
        """Close with 1009 as aiohttp does for an oversize frame; return the error to raise."""
        size, reason = self._oversize_reason(data)
        self.set_state(ConnectionState.ENDING)
        await _close_ws(self.ws, CloseCode.MESSAGE_TOO_BIG, b"message too big", self.close_timeout)
        self.mark_closed(CloseCode.MESSAGE_TOO_BIG, reason)
        return MessageTooBigError(size, self.max_message_size)

    def _refuse_oversize_in_background(self, data: str | bytes) -> None:
        # Idle: nobody awaits this link, so the close handshake runs in a task;
        # the link is closed for the pool at once (1009, the same as aiohttp's
        # own oversize path, which the pool counts against the backend).
        _size, reason = self._oversize_reason(data)
        self.mark_closed(CloseCode.MESSAGE_TOO_BIG, reason)
        _spawn(
            _close_ws(self.ws, CloseCode.MESSAGE_TOO_BIG, b"message too big", self.close_timeout)
        )

    # -- ping / pong -----------------------------------------------------------
    # autoping is off so that pongs reach us: validate_on_checkout waits for one.

    def _answer_ping(self, payload: bytes) -> None:
        if self.state is ConnectionState.OPEN and not self.ws.closed:
            task = asyncio.get_running_loop().create_task(self.ws.pong(payload))
            task.add_done_callback(_ignore_result)

    def got_pong(self, payload: bytes) -> None:
        waiter = self.pong_waiters.pop(bytes(payload), None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def roundtrip(self, timeout: float) -> bool:
        """Ping and wait for the pong (the idle reader sees it). False if none came."""
        if self.state is not ConnectionState.OPEN or self.ws.closed:
            return False
        payload = f"wsclient-{time.monotonic_ns()}".encode()
        waiter = asyncio.get_running_loop().create_future()
        self.pong_waiters[payload] = waiter
        self._idle = True
        self.start_idle_read()
        try:
            async with asyncio.timeout(timeout):
                await self.ws.ping(payload)  # may block on a stalled peer's full buffer
                await waiter
        except (TimeoutError, ConnectionError, aiohttp.ClientError):
            return False
        finally:
            self.pong_waiters.pop(payload, None)
        return self.state is ConnectionState.OPEN

    async def take_pending(self, timeout: float | None) -> aiohttp.WSMessage:
        """Wait for the read started while idle (or by a timed-out receive)."""
        task = self.pending
        assert task is not None
        if not task.done():
            done, _ = await asyncio.wait((task,), timeout=timeout)
            if not done:
                raise TimeoutError(f"no message within {timeout} s")
        self.pending = None
        if task.cancelled():  # the read was stopped by close()/drop(), not by the caller
            raise self.closed_error()
        exc = task.exception()
        if exc is not None:
            self.mark_closed(CloseCode.ABNORMAL_CLOSURE, f"read failed: {exc!r}")
            raise self.closed_error() from exc
        return task.result()

    # -- closing -------------------------------------------------------------

    def absorb_close(self, msg: aiohttp.WSMessage) -> Exception:
        """Turn a non-data message into the connection's end; return the error to raise."""
        ws = self.ws
        if msg.type is WSMsgType.CLOSE:
            self.set_state(ConnectionState.PEER_REQUESTED_CLOSE)
            self.mark_closed(int(msg.data), msg.extra or "")
        elif msg.type is WSMsgType.ERROR:
            exc = msg.data
            if isinstance(exc, aiohttp.WebSocketError) and exc.code == CloseCode.MESSAGE_TOO_BIG:
                self.mark_closed(CloseCode.MESSAGE_TOO_BIG, str(exc))
                return MessageTooBigError(None, self.max_message_size)
            if isinstance(exc, aiohttp.WebSocketError):
                self.mark_closed(exc.code, str(exc))
            else:
                self.mark_closed(CloseCode.ABNORMAL_CLOSURE, describe_link_error(exc))
        else:  # CLOSED / CLOSING: aiohttp already finished the connection
            exc = ws.exception()
            reason = describe_link_error(exc) if exc is not None else "connection lost"
            code = ws.close_code if ws.close_code is not None else CloseCode.ABNORMAL_CLOSURE
            self.mark_closed(code, reason)
        return self.closed_error()

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Close with a handshake, bounded by close_timeout overall, then release resources.

        Past the timeout (a peer that ignores the close frame, or keeps sending,
        or stopped reading so the close frame cannot even be written) the socket
        is aborted.
        """
        if self.state >= ConnectionState.ENDING:
            await self._release_session()
            return
        self.client_initiated = True
        self.set_state(ConnectionState.ENDING)
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
        try:
            await _close_ws(self.ws, code, reason.encode(), self.close_timeout)
        finally:
            self._finish()
            await self._release_session()

    def drop(self) -> None:
        """Close the TCP connection at once, without a close frame."""
        if self.state is ConnectionState.CLOSED:
            return
        self.client_initiated = True
        if self.close_code is None:
            self.close_code, self.close_reason = CloseCode.ABNORMAL_CLOSURE, "dropped by client"
        # An abort, not transport.close(): that one would keep the socket open
        # until its buffer is flushed, i.e. for good if the peer stopped reading.
        abort_ws(self.ws)
        self._finish()
        if self.owned_session is not None:
            session, self.owned_session = self.owned_session, None
            task = asyncio.get_running_loop().create_task(session.close())
            _background.add(task)
            task.add_done_callback(_background.discard)

    def _finish(self) -> None:
        if self.pending is not None and not self.pending.done():
            self.pending.cancel()
        self.pending = None
        self.set_state(ConnectionState.CLOSED)

    async def _release_session(self) -> None:
        if self.owned_session is not None:
            session, self.owned_session = self.owned_session, None
            await session.close()


_LINGER_RESET = struct.pack("ii", 1, 0)


def abort_ws(ws: aiohttp.ClientWebSocketResponse) -> None:
    """Tear the TCP connection down at once: no close frame, nothing left queued.

    aiohttp has no public abort for a client WebSocket; closing its response
    calls ``transport.close()``, which waits to flush the write buffer first, so
    against a peer that stopped reading the socket would stay open for good.
    ``transport.abort()`` discards that buffer, and linger 0 makes the kernel
    discard its own send queue too and answer with a RST, instead of queueing a
    FIN behind megabytes the peer will never read.
    """
    # Closing the response alone leaves aiohttp's heartbeat timer armed.
    cancel_heartbeat = getattr(ws, "_cancel_heartbeat", None)
    if cancel_heartbeat is not None:
        cancel_heartbeat()
    writer = getattr(ws, "_writer", None)
    transport: asyncio.BaseTransport | None = getattr(writer, "transport", None)
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        abort = getattr(transport, "abort", None)
        if callable(abort):
            abort()
        else:
            transport.close()
    if hasattr(ws, "_closed") and not ws.closed:
        ws._closed = True  # nothing may be written or read any more
        if ws.close_code is None:
            ws._close_code = CloseCode.ABNORMAL_CLOSURE
    response = getattr(ws, "_response", None)
    if response is not None:
        response.close()  # hands the (now aborted) connection back to the connector


async def _close_ws(
    ws: aiohttp.ClientWebSocketResponse, code: int, message: bytes, timeout: float
) -> None:
    """Close handshake bounded by ``timeout`` overall, then abort whatever is left.

    aiohttp's own close() applies its timeout to each read while it waits for
    the peer's close frame, and throws away data frames meanwhile: a peer that
    ignores the close frame and sends a small message every so often keeps it
    waiting forever. Sending the close frame can block too, behind a peer that
    stopped reading.
    """
    completed = False
    try:
        async with asyncio.timeout(timeout):
            await ws.close(code=code, message=message)
        completed = True
    except TimeoutError:
        logger.debug("close handshake not finished within %s s: aborting", timeout)
    except Exception as exc:  # the peer vanished mid-close: nothing more to do
        logger.debug("close handshake failed: %r", exc)
    finally:
        # After a completed handshake the TCP close stays graceful (a RST then
        # would be rude and could cut the peer's last bytes); otherwise, and on
        # cancellation, nothing may linger.
        if not completed:
            abort_ws(ws)


def _spawn(coro: Coroutine[Any, Any, None]) -> None:
    """Run a fire-and-forget cleanup, holding a reference until it is done."""
    task = asyncio.get_running_loop().create_task(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)
    task.add_done_callback(_ignore_result)


def _ignore_result(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()  # a failed pong shows up as a closed connection later


def _to_message(msg: aiohttp.WSMessage) -> Message:
    if msg.type is WSMsgType.TEXT:
        return Message(MessageType.TEXT, msg.data)
    return Message(MessageType.BINARY, msg.data)


class _Serves(Protocol):
    """What ``Connection.serve()`` runs: a ``wsclient.Router``, or anything alike."""

    async def serve(self, source: Connection) -> None: ...


class Connection:
    """A WebSocket connection: send, receive, ping, close.

    Returned by ``await connect(url)`` or ``await pool.acquire()``. A pooled
    connection goes back with ``pool.release(conn)`` (or the ``async with``
    block ending); after that, every method raises ``ConnectionReleasedError``.
    """

    __slots__ = ("_link", "_release_hint")

    def __init__(self, link: _Link, *, release_hint: str = "") -> None:
        self._link: _Link | None = link
        self._release_hint = release_hint

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
        if link.state is ConnectionState.OPEN and link.ws.closed:
            return ConnectionState.CLOSED
        return link.state

    @property
    def connected(self) -> bool:
        return self._link is not None and self._link.is_open

    @property
    def protocol(self) -> str | None:
        return self._checked().ws.protocol

    @property
    def remote_address(self) -> tuple[str, int] | None:
        peer = self._checked().ws.get_extra_info("peername")
        return (str(peer[0]), int(peer[1])) if peer else None

    @property
    def close_code(self) -> int | None:
        return self._checked().close_code

    @property
    def close_reason(self) -> str:
        return self._checked().close_reason

    @property
    def released(self) -> bool:
        return self._link is None

    @property
    def buffered_amount(self) -> int:
        """Bytes handed to the socket but not yet on the wire (0 once closed or released)."""
        link = self._link
        if link is None or link.ws.closed:
            return 0
        # aiohttp keeps the transport on its frame writer; there is no public accessor.
        transport = getattr(getattr(link.ws, "_writer", None), "transport", None)
        return int(transport.get_write_buffer_size()) if transport is not None else 0

    def __repr__(self) -> str:
        link = self._link
        if link is None:
            return "<Connection released>"
        return f"<Connection {link.id} {link.state.name} backend={link.backend_id!r}>"

    # -- sending -------------------------------------------------------------

    def _writable(self) -> _Link:
        link = self._checked()
        if link.state is not ConnectionState.OPEN or link.ws.closed:
            if link.state is not ConnectionState.CLOSED and link.ws.closed:
                link.mark_closed(link.ws.close_code, "connection lost")
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
        link = self._writable()
        if timeout is not None and timeout != timeout:
            raise ValueError("send() timeout must be a number of seconds or None, not NaN")
        limit = link.max_message_size
        try:
            if isinstance(data, str):
                # A str's UTF-8 size is between len and 4*len: encode only when it matters.
                if limit and len(data) * 4 > limit and len(data.encode()) > limit:
                    raise MessageTooBigError(len(data.encode()), limit)
                if timeout is None:
                    await link.ws.send_str(data)
                else:
                    await _bounded_send(link.ws.send_str(data), timeout)
            elif isinstance(data, bytes | bytearray | memoryview):
                if limit and len(data) > limit:
                    raise MessageTooBigError(len(data), limit)
                payload = bytes(data)  # no copy when data is already bytes
                if timeout is None:
                    await link.ws.send_bytes(payload)
                else:
                    await _bounded_send(link.ws.send_bytes(payload), timeout)
            else:
                raise TypeError(f"send() takes str or bytes, not {type(data).__name__}")
        except (ConnectionError, aiohttp.ClientConnectionError) as exc:
            raise self._write_failed(link, exc) from exc

    async def send_text(self, data: str, timeout: float | None = None) -> None:
        if not isinstance(data, str):
            raise TypeError(f"send_text() takes str, not {type(data).__name__}")
        await self.send(data, timeout)

    async def send_bytes(
        self, data: bytes | bytearray | memoryview, timeout: float | None = None
    ) -> None:
        if not isinstance(data, bytes | bytearray | memoryview):
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
        link.mark_closed(CloseCode.ABNORMAL_CLOSURE, f"write failed: {describe_link_error(exc)}")
        return link.closed_error()

    async def ping(self, data: bytes = b"") -> None:
        """Send a ping frame (the pong is consumed by the connection)."""
        link = self._writable()
        if len(data) > 125:
            raise ValueError(f"ping payload is {len(data)} bytes; at most 125 allowed")
        try:
            await link.ws.ping(data)
        except (ConnectionError, aiohttp.ClientConnectionError) as exc:
            raise self._write_failed(link, exc) from exc

    # -- receiving -----------------------------------------------------------

    async def receive(self, timeout: float | None = None) -> Message:
        """The next data message. A timeout raises ``TimeoutError``; the connection stays usable."""
        link = self._checked()
        deadline = None if timeout is None else time.monotonic() + timeout
        link.reading = True
        try:
            while True:
                if link.pending is not None:
                    msg = await link.take_pending(_remaining(deadline))
                elif link.state is not ConnectionState.OPEN:
                    raise link.closed_error()
                elif deadline is None:
                    try:
                        msg = await link.ws.receive()
                    except asyncio.CancelledError:
                        _undo_abnormal_mark(link.ws)
                        raise
                else:
                    try:
                        async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                            msg = await link.ws.receive()
                    except TimeoutError:
                        _undo_abnormal_mark(link.ws)
                        raise TimeoutError(f"no message within {timeout} s") from None
                    except asyncio.CancelledError:
                        _undo_abnormal_mark(link.ws)
                        raise
                kind = msg.type
                if link.inflating and kind in _DATA_TYPES and link.too_big(msg.data):
                    raise await link.refuse_oversize(msg.data)
                if kind is WSMsgType.TEXT:
                    link.dirty = False
                    return Message(MessageType.TEXT, msg.data)
                if kind is WSMsgType.BINARY:
                    link.dirty = False
                    return Message(MessageType.BINARY, msg.data)
                if kind is WSMsgType.PING:
                    await link.ws.pong(msg.data)
                elif kind is WSMsgType.PONG:
                    link.got_pong(msg.data)
                else:
                    raise link.absorb_close(msg)
        except (TimeoutError, asyncio.CancelledError):
            link.dirty = True  # a reply may still be on its way
            raise
        finally:
            link.reading = False

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


async def _bounded_send(send: Coroutine[Any, Any, None], timeout: float) -> None:
    # aiohttp writes the whole frame to the transport before it waits for the
    # buffer to drain, so stopping the wait never leaves half a frame on the
    # stream. The wait itself must not be cancelled, though: every sender
    # waits on one shared drain future, and cancelling it would make the other
    # senders (and every later send) raise CancelledError. So the send runs as
    # a task behind a shield and, past the timeout, finishes (or fails with
    # the connection) on its own.
    task = asyncio.get_running_loop().create_task(send)
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


def _keep_until_done(task: asyncio.Task[Any]) -> None:
    if not task.done():
        _background.add(task)
        task.add_done_callback(_background.discard)
    task.add_done_callback(_ignore_result)


def _undo_abnormal_mark(ws: aiohttp.ClientWebSocketResponse) -> None:
    # aiohttp records 1006 when a receive() is interrupted, although the
    # connection is fine (no data is lost: it stays queued). Left in place, the
    # mark makes a later close() skip waiting for the peer's close frame.
    if not ws.closed and getattr(ws, "_close_code", None) == CloseCode.ABNORMAL_CLOSURE:
        ws._close_code = None


def describe_link_error(exc: BaseException) -> str:
    """Why an open connection ended, in wsclient's words: the transport's own
    exception names and messages ("Cannot write to closing transport" when a
    killed peer's socket is gone) stay out of close reasons and logs."""
    if isinstance(exc, aiohttp.ServerTimeoutError):
        return f"heartbeat: {exc}"
    if isinstance(exc, ConnectionResetError | aiohttp.ServerDisconnectedError | EOFError):
        return "connection lost: the peer went away without a close frame"
    if isinstance(exc, aiohttp.ClientConnectionError):
        return "connection lost: the socket closed without a close frame"
    if isinstance(exc, OSError):
        return f"connection lost: {describe_os_error(exc)}"
    logger.debug("connection ended by %r", exc)
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


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _ssl_argument(value: Any) -> Any:
    # aiohttp: True verifies with the default context; None would be the same.
    return True if value is None else value


async def auth_headers(auth: AuthSpec | None) -> dict[str, str]:
    """Headers for ``auth``; an async provider is called on every (re)connect."""
    if auth is None:
        return {}
    if isinstance(auth, BearerAuth | ApiKeyAuth):
        return auth.headers()
    provided = await auth()
    return {str(k): str(v) for k, v in provided.items()}


async def open_link(
    session: aiohttp.ClientSession,
    url: str,
    options: ConnectionOptions,
    *,
    backend_id: str,
) -> _Link:
    """Open a WebSocket on ``session``; every failure becomes ``ConnectError``.

    The ``ConnectError`` is raised with no cause and no context: aiohttp's
    exceptions carry ``request_info`` with the request headers (the bearer
    token, the API key), and whatever reports the error (a logger printing the
    chain, an error tracker) would show them. The message says what went wrong,
    with any URL in it redacted.
    """
    headers: dict[str, str] = {}
    try:
        headers = {**options.headers, **await auth_headers(options.auth)}
    except Exception as exc:
        # The provider's own message may quote credentials: name the type only.
        failure = ConnectError(url, f"auth provider raised {type(exc).__name__}")
    else:
        try:
            ws = await _handshake(session, url, headers, options)
        except TimeoutError:
            failure = ConnectError(url, f"timed out after {options.connect_timeout} s")
        except (aiohttp.ClientError, OSError) as exc:
            failure = ConnectError(
                url, describe_connect_error(exc), status=getattr(exc, "status", None)
            )
        else:
            return _Link(
                ws,
                url=url,
                backend_id=backend_id,
                max_message_size=options.max_message_size,
                close_timeout=options.close_timeout,
            )
    # Raised here, outside the except blocks, so that __context__ stays None too
    # (``raise ... from None`` only hides the context; it still holds it). The
    # traceback keeps this frame alive: drop the headers (credentials) from it.
    headers = {}
    raise failure


async def _handshake(
    session: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    options: ConnectionOptions,
) -> aiohttp.ClientWebSocketResponse:
    heartbeat = options.heartbeat.interval
    ws: aiohttp.ClientWebSocketResponse | None = None
    try:
        async with asyncio.timeout(options.connect_timeout):
            ws = await session.ws_connect(
                url,
                protocols=options.protocols,
                headers=with_host_header(url, headers, options.server_hostname),
                server_hostname=options.server_hostname,
                heartbeat=heartbeat,
                max_msg_size=_aiohttp_size_limit(options.max_message_size, options.compression),
                compress=15 if options.compression else 0,
                ssl=_ssl_argument(options.ssl),
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=options.close_timeout),
                autoclose=True,
                autoping=False,
            )
    except BaseException:
        # The timeout (or a cancellation) can land just after the handshake
        # finished: the socket is ours then, and nobody else will close it.
        if ws is not None:
            abort_ws(ws)
        raise
    problem = _unoffered_protocol(ws, options.protocols)
    if problem is not None:
        abort_ws(ws)  # RFC 6455 §4.1: the client MUST _Fail the WebSocket Connection_
        raise UnofferedProtocolError(problem)
    if heartbeat is not None and hasattr(ws, "_pong_heartbeat"):
        # aiohttp waits heartbeat/2 for a pong and offers no option; our
        # heartbeat.timeout is the documented contract, so set it.
        ws._pong_heartbeat = options.heartbeat.timeout
    return ws


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


def _aiohttp_size_limit(limit: int, compression: bool) -> int:
    """aiohttp's ``max_msg_size`` for our inclusive ``max_message_size``."""
    if not limit:
        return 0
    if not compression:
        return limit + 1  # aiohttp refuses a frame of exactly max_msg_size
    # Compressed: aiohttp's bound applies to the frame on the wire and to the
    # inflated message; an incompressible message of exactly `limit` bytes is
    # a little longer on the wire (stored deflate blocks; zlib's compressBound
    # plus a margin). The exact limit is checked by _Link.too_big().
    return limit + (limit >> 12) + (limit >> 14) + 64


class UnofferedProtocolError(aiohttp.ClientError):
    """The server selected a subprotocol the client did not offer."""


def _unoffered_protocol(
    ws: aiohttp.ClientWebSocketResponse, offered: tuple[str, ...]
) -> str | None:
    """Why the server's ``Sec-WebSocket-Protocol`` answer is unacceptable, or None.

    aiohttp quietly reports ``protocol=None`` when the server picks something
    that was not offered, and the connection goes on speaking a protocol
    neither side agreed on.
    """
    response = getattr(ws, "_response", None)
    if response is None:
        return None
    answers = response.headers.getall("Sec-WebSocket-Protocol", [])
    if not answers:
        return None
    # Offered subprotocols may carry credentials (some APIs pass a token that
    # way): the message counts them, it does not list them. The server's pick is
    # quoted only if short, so an echoed token is not printed either.
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


def describe_connect_error(exc: BaseException) -> str:
    """Why a connect or handshake failed, in words, with no credential in them."""
    if isinstance(exc, HandshakeRedirectError | UnofferedProtocolError):
        return str(exc)
    if isinstance(exc, aiohttp.WSServerHandshakeError):
        if exc.status == 101:
            return f"invalid handshake response: {exc.message}"
        return f"handshake rejected with HTTP {exc.status}"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return describe_os_error(exc.certificate_error)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return describe_os_error(exc.os_error)
    if isinstance(exc, OSError) and not isinstance(exc, aiohttp.ClientError):
        return describe_os_error(exc)
    # Other aiohttp errors quote the URL (redact_text masks it); their repr
    # would add request_info with the headers, so only str() is used.
    return redact_text(f"{type(exc).__name__}: {exc}")


class HandshakeRedirectError(aiohttp.ClientError):
    """The server answered the WebSocket upgrade with a redirect; it is not followed."""

    def __init__(self, status: int, location: str | None) -> None:
        self.status = status
        self.location = location
        super().__init__(status, redact_url(location) if location is not None else None)

    def __str__(self) -> str:
        where = repr(redact_url(self.location)) if self.location is not None else "no Location"
        return (
            f"handshake redirected with HTTP {self.status} to {where} (redirects are not followed)"
        )


async def _refuse_handshake_redirect(
    session: aiohttp.ClientSession,
    context: Any,
    params: aiohttp.TraceRequestRedirectParams,
) -> None:
    # aiohttp's ws_connect() follows redirects and has no option to stop it: the
    # upgrade request would carry X-API-Key, custom headers (and, same origin,
    # the bearer token) to wherever the Location points, wss:// -> http://
    # included. The redirect signal fires before the redirect is followed, and
    # raising here makes aiohttp close the response and fail the request.
    if params.headers.get("Upgrade", "").lower() == "websocket":
        raise HandshakeRedirectError(
            params.response.status, params.response.headers.get("Location")
        )


def _no_handshake_redirects() -> aiohttp.TraceConfig:
    trace = aiohttp.TraceConfig()
    trace.on_request_redirect.append(_refuse_handshake_redirect)
    return trace


def new_session() -> aiohttp.ClientSession:
    """A session for WebSockets: no cap on open connections (aiohttp's default is 100),
    and WebSocket handshakes never follow redirects (plain HTTP requests, such as
    health checks on a path, still do)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, limit_per_host=0),
        trace_configs=[_no_handshake_redirects()],
    )


async def connect(url: str, **options: Unpack[ConnectionOptionsDict]) -> Connection:
    """Open one unpooled WebSocket connection.

    Keywords are the ``ConnectionOptions`` fields (``max_message_size``,
    ``compression``, ``protocols``, ``headers``, ``auth``, ``connect_timeout``,
    ``close_timeout``, ``ssl``, ``heartbeat``). Closing the connection closes
    everything it opened.
    """
    config = ConnectionOptions.model_validate(options)
    try:
        _validate_ws_url(url)
    except ValueError as exc:
        raise ValueError(f"url: {exc}") from None
    session = new_session()
    try:
        # backend_id is shown (repr, logs): like a Backend's default id, it is
        # the URL with its query values masked.
        link = await open_link(session, url, config, backend_id=redact_url(url))
    except BaseException:
        await session.close()
        raise
    link.owned_session = session
    logger.debug(
        "connected %s to %s (headers %s)",
        link.id,
        redact_url(url),
        redact_headers(config.headers),
    )
    return Connection(link)
