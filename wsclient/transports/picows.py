"""The picows transport (``transport="picows"``, extra ``wsclient[fast]``).

picows parses frames in Cython and hands each one to a listener callback; this
module's ``PicowsTransport`` is that listener. Nothing runs per message but
the callback: a data message goes to the waiting ``receive()`` (a future), to
a short queue while a lessee is not reading (reading pauses past
``READ_QUEUE_HIGH`` bytes), or to the link's ``idle_message`` while idle. An
idle link therefore needs no reader task at all.

Pings are answered by ``PongCoalescer`` (picows' own auto-pong is off: it
writes a pong per ping whatever the write buffer holds), the heartbeat is
``base.Heartbeat``, and flow control comes from the socket transport's
``pause_writing``/``resume_writing``: a send past the high-water mark returns a
future that resolves when the buffer drains, or fails when the link ends.

What picows does not do is refused when the options are validated
(``config.check_transport``): permessage-deflate.

uvloop speeds picows up further, but a library must not pick the event loop:
run your program under ``uvloop.run(main())`` (or ``asyncio.run`` with uvloop's
loop factory) if you want it; wsclient uses whatever loop is running.
"""

from __future__ import annotations

import asyncio
import logging
import ssl as ssl_module
import sys
from collections import deque
from typing import Any

import picows

from wsclient.codes import CloseCode
from wsclient.config import ConnectionOptions
from wsclient.errors import MessageTooBigError
from wsclient.transports.base import (
    BINARY,
    TEXT,
    WRITE_BUFFER_HIGH,
    ConnectFailure,
    Heartbeat,
    LeaseHandle,
    LinkEvents,
    Message,
    PongCoalescer,
    TransportClosedError,
    describe_os_error,
    describe_redirect,
    fail_waiter,
    reset_on_close,
    unoffered_protocol,
    with_host_header,
)

logger = logging.getLogger("wsclient.transports.picows")
# picows logs through this one. Below DEBUG (its level 9) it writes the whole upgrade
# request, bearer token and URL query included: those records are never made.
_library_logger = logging.getLogger("wsclient.transports.picows.lib")
_library_logger.setLevel(logging.DEBUG)

_TEXT = picows.WSMsgType.TEXT
_BINARY = picows.WSMsgType.BINARY
_CONTINUATION = picows.WSMsgType.CONTINUATION
_PING = picows.WSMsgType.PING
_PONG = picows.WSMsgType.PONG
_CLOSE = picows.WSMsgType.CLOSE

# Builds a Message without the NamedTuple's Python-level __new__ (once per message).
_message = tuple.__new__

#: Bytes of unread messages queued for a lessee before the socket stops being read.
READ_QUEUE_HIGH = 256 * 1024


class PicowsTransport(picows.WSListener):
    """One picows WebSocket; picows calls its ``on_ws_*`` methods."""

    name = "picows"

    __slots__ = (
        "_closing",
        "_drain",
        "_ended",
        "_error",
        "_frag_size",
        "_frag_type",
        "_fragments",
        "_heartbeat",
        "_link",
        "_loop",
        "_max",
        "_options",
        "_pongs",
        "_queue",
        "_queued",
        "_read_paused",
        "_reply",
        "_waiter",
        "_write_paused",
        "_wt",
        "close_timeout",
        "closed",
    )

    def __init__(self, options: ConnectionOptions) -> None:
        super().__init__()
        # Made by picows.ws_connect() inside the loop that will run it. Kept: on
        # CPython 3.11 get_running_loop() makes a getpid() system call, and
        # receive() would call it for every message it waits for.
        self._loop = asyncio.get_running_loop()
        self._options = options
        self._max = options.max_message_size or sys.maxsize
        self.close_timeout = options.close_timeout
        self._wt: Any = None
        self._link: LinkEvents | None = None
        self._queue: deque[Message] = deque()
        self._queued = 0
        self._read_paused = False
        self._waiter: asyncio.Future[Message | None] | None = None
        self._write_paused = False
        self._drain: asyncio.Future[None] | None = None
        self._fragments: list[bytes] | None = None
        self._frag_type = _TEXT
        self._frag_size = 0
        self._closing = False  # close() or abort() started: nothing more is sent
        self._ended = False  # the end was reported to the link
        self.closed = False  # _closing or _ended: an attribute, read on every send
        self._error: MessageTooBigError | None = None
        self._reply: asyncio.Future[None] | None = None  # the peer's close frame, or the end
        self._heartbeat: Heartbeat | None = None
        self._pongs: PongCoalescer | None = None

    def bind(self, link: LinkEvents) -> None:
        self._link = link

    # -- picows callbacks ------------------------------------------------------

    def on_ws_connected(self, transport: Any) -> None:
        self._wt = transport
        transport.underlying_transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)
        self._pongs = PongCoalescer(self._write_pong, self._buffered)
        hb = self._options.heartbeat
        if hb.interval is not None:
            self._heartbeat = Heartbeat(
                hb.interval, hb.timeout, ping=self.ping, dead=self._dead, peek=self._reads_paused
            )

    def on_ws_frame(self, transport: Any, frame: Any) -> None:
        kind = frame.msg_type
        if frame.rsv1 or frame.rsv2 or frame.rsv3:
            # RFC 6455 §5.2: no extension was negotiated, so a set RSV bit fails the
            # connection (picows leaves that to its user).
            self._fail(CloseCode.PROTOCOL_ERROR, "reserved bits set, no extension negotiated")
            return
        if self._fragments is None and frame.fin:
            if frame.payload_size > self._max:
                # picows refused it (max_frame_size) and sent 1009, but still hands it on.
                self._oversize(frame.payload_size)
                return
            if kind == _TEXT:
                try:
                    message = _message(Message, (TEXT, frame.get_payload_as_utf8_text()))
                except UnicodeDecodeError:
                    self._fail(CloseCode.INVALID_PAYLOAD, "invalid UTF-8 in a text message")
                    return
            elif kind == _BINARY:
                message = _message(Message, (BINARY, frame.get_payload_as_bytes()))
            else:
                message = None
            if message is not None:
                waiter = self._waiter
                if waiter is not None and not waiter.done():  # the hot path: a receive() waits
                    self._waiter = None
                    waiter.set_result(message)
                else:
                    self._deliver(message)
                return
        if kind == _PING:
            assert self._pongs is not None
            self._pongs.ping_received(frame.get_payload_as_bytes())
        elif kind == _PONG:
            if self._heartbeat is not None:
                self._heartbeat.pong_seen()
            if self._link is not None:
                self._link.pong_received(frame.get_payload_as_bytes())
        elif kind == _CLOSE:
            self._peer_closed(frame)
        else:
            self._fragment(frame)

    def on_ws_disconnected(self, transport: Any) -> None:
        code: int | None = CloseCode.ABNORMAL_CLOSURE
        reason = "connection lost"
        if transport.is_close_frame_sent and not self._closing:
            # picows itself failed the connection (a protocol error): its close frame
            # says why, and the future it keeps the error in must be read.
            sent = transport.close_handshake.sent
            code, reason = int(sent.code), sent.reason or "protocol error"
            _spawn(transport.wait_disconnected())
        self._end(code, reason)
        fail_waiter(self._drain, ConnectionResetError(reason))
        self._drain = None
        if self._reply is not None and not self._reply.done():
            self._reply.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)

    # -- data ------------------------------------------------------------------

    def _deliver(self, message: Message) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(message)
                return
        link = self._link
        if link is not None and link.idle:
            link.idle_message(message)
            return
        self._queue.append(message)
        self._queued += len(message.data)
        if self._queued > READ_QUEUE_HIGH and not self._read_paused:
            self._read_paused = True
            if self._heartbeat is not None:
                self._heartbeat.excuse()  # graced until the look after reading resumes
            self._wt.underlying_transport.pause_reading()

    def _oversize(self, size: int) -> None:
        limit = self._options.max_message_size
        self._error = MessageTooBigError(size, limit)
        self._fail(
            CloseCode.MESSAGE_TOO_BIG, f"message of {size} bytes exceeds max_message_size={limit}"
        )
        if self._wt.is_close_frame_sent:
            _spawn(self._wt.wait_disconnected())  # picows keeps its parser error there

    def _fragment(self, frame: Any) -> None:
        kind = frame.msg_type
        if kind == _CONTINUATION:
            if self._fragments is None:
                self._fail(CloseCode.PROTOCOL_ERROR, "continuation frame without a message")
                return
        elif self._fragments is not None:
            self._fail(CloseCode.PROTOCOL_ERROR, "new message inside a fragmented one")
            return
        else:
            self._fragments, self._frag_type, self._frag_size = [], kind, 0
        self._frag_size += frame.payload_size
        if self._frag_size > self._max:
            self._oversize(self._frag_size)
            return
        self._fragments.append(frame.get_payload_as_bytes())
        if not frame.fin:
            return
        payload = b"".join(self._fragments)
        self._fragments = None
        if self._frag_type == _TEXT:
            try:
                self._deliver(Message(TEXT, payload.decode()))
            except UnicodeDecodeError:
                self._fail(CloseCode.INVALID_PAYLOAD, "invalid UTF-8 in a text message")
        else:
            self._deliver(Message(BINARY, payload))

    async def receive(self, handle: LeaseHandle, timeout: float | None) -> Message:
        link = self._link
        if handle._link is not link:
            handle._checked()  # released since the call: ConnectionReleasedError
        assert link is not None  # bound when the link was made
        queue = self._queue
        if queue:
            link.dirty = False
            return self._pop()
        if self._ended:
            if self._error is not None:
                raise self._error
            raise link.closed_error()
        waiter: asyncio.Future[Message | None] = self._loop.create_future()
        self._waiter = waiter
        message: Message | None
        link.reading = True
        try:
            if timeout is None:
                message = await waiter
            else:
                async with asyncio.timeout(timeout):
                    message = await waiter
        except (TimeoutError, asyncio.CancelledError) as exc:
            link.dirty = True  # a reply may still be on its way
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                message = waiter.result()
                if message is not None:  # delivered as we gave up: keep it for the next read
                    queue.appendleft(message)
                    self._queued += len(message.data)
            if isinstance(exc, TimeoutError):
                raise TimeoutError(f"no message within {timeout} s") from None
            raise
        finally:
            link.reading = False
            if self._waiter is waiter:
                self._waiter = None
        if message is None:
            if self._error is not None:
                raise self._error
            raise link.closed_error()
        link.dirty = False
        return message

    def _reads_paused(self) -> bool:
        # A lessee that stopped reading made us stop reading the socket: the pong
        # may be right behind the unread messages, and the peer is not to blame
        # (nor at the next look: Heartbeat keeps that grace).
        return self._read_paused

    def _pop(self) -> Message:
        message = self._queue.popleft()
        self._queued -= len(message.data)
        if self._read_paused and self._queued <= READ_QUEUE_HIGH // 2:
            self._read_paused = False
            self._wt.underlying_transport.resume_reading()
        return message

    def watch(self) -> None:
        # Frames arrive by callback anyway; what a lease left unread is the
        # idle link's now, not the next lessee's.
        link = self._link
        while self._queue and link is not None and link.idle:
            link.idle_message(self._pop())

    # -- sending -----------------------------------------------------------------

    def send_text(self, data: str) -> asyncio.Future[None] | None:
        if self.closed:  # closing or ended
            raise TransportClosedError("the connection is closing")
        self._wt.send(_TEXT, data)
        return self._drained() if self._write_paused else None

    def send_bytes(self, data: bytes) -> asyncio.Future[None] | None:
        if self.closed:  # closing or ended
            raise TransportClosedError("the connection is closing")
        self._wt.send(_BINARY, data)
        return self._drained() if self._write_paused else None

    def _drained(self) -> asyncio.Future[None]:
        drain = self._drain
        if drain is None:
            drain = self._drain = self._loop.create_future()
        return drain

    def ping(self, payload: bytes) -> None:
        if not self._closing and self._wt is not None:
            self._wt.send_ping(payload)

    def _write_pong(self, payload: bytes) -> None:
        if not self._closing:
            self._wt.send_pong(payload)

    def _buffered(self) -> int:
        wt = self._wt
        return 0 if wt is None else int(wt.underlying_transport.get_write_buffer_size())

    # -- what the link asks --------------------------------------------------

    @property
    def protocol(self) -> str | None:
        value = self._wt.response.headers.get("Sec-WebSocket-Protocol")
        return str(value).strip() if value else None

    @property
    def compressed(self) -> bool:
        return False

    @property
    def buffered_amount(self) -> int:
        return self._buffered()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._wt.underlying_transport.get_extra_info(name, default)

    # -- how the connection ends ---------------------------------------------

    def _end(self, code: int | None, reason: str) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()
        if self._ended:
            return
        self._ended = self.closed = True
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            if self._error is not None:
                waiter.set_exception(self._error)
            else:
                waiter.set_result(None)
        if self._link is not None:
            self._link.transport_closed(code, reason)

    def _peer_closed(self, frame: Any) -> None:
        code = int(frame.get_close_code())
        if code == 0:  # an empty close frame
            code = CloseCode.NO_STATUS_RECEIVED
        reason = frame.get_close_reason()
        if not self._closing:  # the peer started it: answer, then let the socket go
            self._closing = self.closed = True
            self._wt.send_close(code if code != CloseCode.NO_STATUS_RECEIVED else 1000)
        self._end(code, reason)
        if self._reply is not None and not self._reply.done():
            self._reply.set_result(None)
        self._let_go()

    def _fail(self, code: int, reason: str) -> None:
        """Fail the connection ourselves: a close frame with ``code``, then the socket goes."""
        self._closing = self.closed = True
        if not self._wt.is_close_frame_sent:
            self._wt.send_close(code, reason.encode()[:123])
        self._end(code, reason)
        self._let_go()

    def _dead(self, reason: str) -> None:
        logger.debug("%s", reason)
        self._end(CloseCode.ABNORMAL_CLOSURE, reason)
        self.abort(reason)

    def _let_go(self) -> None:
        # Graceful when everything was written; a RST when the peer left data
        # unread (a graceful close would keep the socket until it is read).
        if self._buffered():
            self.abort("connection closed")
        else:
            self._wt.disconnect(graceful=True)

    async def close(self, code: int, reason: str) -> None:
        """Close handshake bounded by ``close_timeout`` overall, then let the socket go."""
        if self._heartbeat is not None:
            self._heartbeat.stop()
        if self._closing or self._ended:
            if not self._wt.is_disconnected and self._ended:
                self._let_go()
            return
        self._closing = self.closed = True
        self._reply = asyncio.get_running_loop().create_future()
        completed = False
        try:
            self._wt.send_close(code, reason.encode())
            async with asyncio.timeout(self.close_timeout):
                await self._reply
            completed = True
        except TimeoutError:
            logger.debug("close handshake not finished within %s s: aborting", self.close_timeout)
        finally:
            if not completed:
                self.abort("connection closed")

    def abort(self, reason: str = "connection aborted") -> None:
        self._closing = self.closed = True
        if self._heartbeat is not None:
            self._heartbeat.stop()
        fail_waiter(self._drain, ConnectionResetError(reason))
        self._drain = None
        wt = self._wt
        if wt is not None and not wt.is_disconnected:
            reset_on_close(wt.underlying_transport)
            wt.disconnect(graceful=False)


_background: set[asyncio.Future[Any]] = set()


def _spawn(awaitable: Any) -> None:
    """Await ``awaitable`` in the background and swallow its outcome (held until done)."""
    task = asyncio.ensure_future(awaitable)
    _background.add(task)
    task.add_done_callback(_settled)


def _settled(task: asyncio.Future[Any]) -> None:
    _background.discard(task)
    if not task.cancelled():
        task.exception()


def _ssl_context(value: Any, url: str) -> ssl_module.SSLContext | None:
    if not url.startswith("wss:"):
        return None
    if isinstance(value, ssl_module.SSLContext):
        return value
    context = ssl_module.create_default_context()
    if value is False:
        context.check_hostname = False
        context.verify_mode = ssl_module.CERT_NONE
    return context


async def open_picows(
    url: str, headers: dict[str, str], options: ConnectionOptions
) -> PicowsTransport | ConnectFailure:
    """Open a picows WebSocket; a failure comes back as ``ConnectFailure`` (never raises
    but for cancellation)."""
    extra = with_host_header(url, dict(headers), options.server_hostname)
    # TLS checks the certificate against the resolved name, not the address dialled
    # (create_connection accepts server_hostname only with TLS).
    tls_name: dict[str, Any] = (
        {"server_hostname": options.server_hostname}
        if options.server_hostname is not None and url.startswith("wss:")
        else {}
    )
    if options.protocols:
        extra["Sec-WebSocket-Protocol"] = ", ".join(options.protocols)
    limit = options.max_message_size
    try:
        async with asyncio.timeout(options.connect_timeout):
            wt, transport = await picows.ws_connect(
                lambda: PicowsTransport(options),
                url,
                ssl_context=_ssl_context(options.ssl, url),
                websocket_handshake_timeout=options.connect_timeout,
                enable_auto_pong=False,
                max_frame_size=limit if limit else sys.maxsize,
                extra_headers=extra,
                max_redirects=0,  # credentials go only where they were configured
                use_aiofastnet=False,  # a plain asyncio transport: abort(), linger, limits
                logger_name=_library_logger,
                **tls_name,
            )
    except TimeoutError:
        return ConnectFailure(f"timed out after {options.connect_timeout} s")
    except picows.WSHandshakeError as exc:
        response = exc.response
        if response is None:
            return ConnectFailure("invalid handshake response")
        status = int(response.status)
        if 300 <= status < 400:
            return ConnectFailure(
                describe_redirect(status, response.headers.get("Location")), status
            )
        if status == 101:
            return ConnectFailure("invalid handshake response", status)
        return ConnectFailure(f"handshake rejected with HTTP {status}", status)
    except OSError as exc:
        return ConnectFailure(describe_os_error(exc))
    except picows.WSError as exc:
        return ConnectFailure(f"WebSocket error: {type(exc).__name__}")
    if not isinstance(transport, PicowsTransport):  # the peer hung up mid-handshake
        wt.disconnect(graceful=False)
        return ConnectFailure("connection closed during the handshake")
    answers = wt.response.headers.getall("Sec-WebSocket-Protocol", [])
    problem = unoffered_protocol(answers, options.protocols)
    if problem is not None:
        transport.abort("unoffered subprotocol")  # RFC 6455 §4.1: fail the connection
        return ConnectFailure(problem)
    return transport
