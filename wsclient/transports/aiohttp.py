"""The aiohttp transport (the default): a ``Transport`` over ``ClientWebSocketResponse``.

aiohttp is pull-based: a frame is seen only when somebody calls ``receive()``.
A lessee's ``receive()`` is that call, with nothing added to it beyond the
control-frame handling. While the link is idle, ``watch()`` starts one reader
task for the whole idle period (not one per message): it answers pings,
counts pongs, reports closes and stray data by callback, and hands the
message it is waiting for to the next lessee's ``receive()`` instead of being
cancelled, so no message is lost and aiohttp's reader is never entered twice.

aiohttp's own heartbeat is not used: it counts any incoming byte as liveness
(a ping flood from a peer that never reads keeps it quiet for good) and, when
it fires, closes the socket gracefully, which against a full send buffer
neither frees the socket nor wakes a blocked ``send()``. ``Heartbeat`` and
``PongCoalescer`` (``base.py``) replace it and aiohttp's autoping; pings and
pongs are written straight to the socket as masked control frames, which
never waits.

The hot path is aiohttp's own, minus its coroutine layers: an uncompressed
send hands the frame to aiohttp's frame writer synchronously (aiohttp's
``send_bytes`` -> ``send_frame`` would be two coroutines per message, and
waits only when the socket's buffer is over its limit: then ours returns
that wait), and ``receive()`` awaits aiohttp's message queue directly with
``ClientWebSocketResponse.receive()``'s bookkeeping inlined (the concurrent-read
flag, waking a waiting close(), what a CLOSE or CLOSING message does); control
frames and closes then go on through ``_receive()``, and a failure through
aiohttp's own ``receive()``, as before. Both lean on aiohttp internals, probed
once per connection (``_direct_parts``): with an aiohttp that lacks them, or
with compression on, the public coroutines are used.

Why one file of about 800 lines: everything here leans on the same aiohttp
internals (probed in one place), and the idle watcher, the hot path and the
bounded close share the reader's state; split, each part would reach into the
others' private attributes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
from collections.abc import Awaitable
from operator import attrgetter
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import WSMsgType

from wsclient.codes import CloseCode
from wsclient.config import ConnectionOptions, redact_text, redact_url
from wsclient.errors import MessageTooBigError
from wsclient.transports.base import (
    BINARY,
    TEXT,
    ConnectFailure,
    Heartbeat,
    LeaseHandle,
    LinkEvents,
    Message,
    PongCoalescer,
    TransportClosedError,
    describe_link_error,
    describe_os_error,
    describe_redirect,
    fail_waiter,
    oversize_reason,
    reset_on_close,
    too_big,
    unoffered_protocol,
    with_host_header,
)

logger = logging.getLogger("wsclient.transports.aiohttp")

_DATA_TYPES = (WSMsgType.TEXT, WSMsgType.BINARY)
_TEXT_MSG, _BINARY_MSG = WSMsgType.TEXT, WSMsgType.BINARY
# Builds a Message without the NamedTuple's Python-level __new__ (once per message).
_message = tuple.__new__
_CLOSED = aiohttp.WSMessage(WSMsgType.CLOSED, None, None)


class AiohttpTransport:
    """One aiohttp client WebSocket; see the module docstring."""

    name = "aiohttp"

    __slots__ = (
        "_carried",
        "_ending",
        "_handoff",
        "_heartbeat",
        "_limit",
        "_link",
        "_pongs",
        "_protocol",
        "_reader",
        "_session",
        "_watcher",
        "_writer",
        "close_timeout",
        "inflating",
        "ws",
    )

    def __init__(
        self,
        ws: aiohttp.ClientWebSocketResponse,
        options: ConnectionOptions,
        *,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.ws = ws
        # aiohttp's writer, its socket protocol and its message queue, for the hot
        # path; None (the public coroutines are used) when compressing, or when this
        # aiohttp's internals are not the ones the hot path knows.
        self._writer, self._protocol, self._reader = _direct_parts(ws)
        self._session = session  # closed with the transport (connect() made it)
        self._limit = options.max_message_size
        self.close_timeout = options.close_timeout
        # permessage-deflate negotiated and a size limit set: every data message is
        # measured after inflating (aiohttp's inflated-size check is off by one).
        self.inflating = bool(self._limit and ws.compress)
        self._link: LinkEvents | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._handoff: asyncio.Future[aiohttp.WSMessage] | None = None
        self._carried: aiohttp.WSMessage | None = None
        self._ending = False
        self._pongs = PongCoalescer(self._write_pong, self._buffered)
        hb = options.heartbeat
        self._heartbeat = (
            None
            if hb.interval is None
            else Heartbeat(
                hb.interval, hb.timeout, ping=self.ping, dead=self._dead, peek=self._peek_pong
            )
        )

    def bind(self, link: LinkEvents) -> None:
        self._link = link

    # -- what the link asks --------------------------------------------------

    if TYPE_CHECKING:

        @property
        def closed(self) -> bool: ...

    else:
        # aiohttp's own flag, read by a C getter: a property function would be a
        # Python frame on every release, aiohttp's ``closed`` property a second one
        # (tests/test_transports.py checks the two agree).
        closed = property(attrgetter("ws._closed"))

    @property
    def protocol(self) -> str | None:
        return self.ws.protocol

    @property
    def compressed(self) -> bool:
        return bool(self.ws.compress)

    @property
    def buffered_amount(self) -> int:
        return self._buffered()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.ws.get_extra_info(name, default)

    def _buffered(self) -> int:
        transport = _socket_transport(self.ws)
        return 0 if transport is None else transport.get_write_buffer_size()

    # -- sending -------------------------------------------------------------------

    def send_bytes(self, data: bytes) -> Awaitable[None] | None:
        if self.ws._closed:  # aiohttp's send_frame() does not look at it
            raise TransportClosedError("the connection is closed")
        if self._writer is None:
            return self.ws.send_bytes(data)
        return self._send_frame(data, 0x2)

    def send_text(self, data: str) -> Awaitable[None] | None:
        if self.ws._closed:
            raise TransportClosedError("the connection is closed")
        if self._writer is None:
            return self.ws.send_str(data)
        return self._send_frame(data.encode(), 0x1)

    def _send_frame(self, payload: bytes, opcode: int) -> Awaitable[None] | None:
        """aiohttp's ``send_frame()`` for an uncompressed frame, without its coroutine."""
        writer = self._writer
        if writer._closing:  # our close frame is out: what send_frame() says then
            raise aiohttp.ClientConnectionResetError("Cannot write to closing transport")
        writer._write_websocket_frame(payload, opcode, 0)
        # send_frame()'s flow control: wait for the buffer to drain only past the limit.
        if writer._output_size > writer._limit:
            writer._output_size = 0
            protocol = self._protocol
            if protocol._paused:
                drain: Awaitable[None] = protocol._drain_helper()
                return drain
        return None

    # -- control frames, written straight to the socket --------------------------

    def ping(self, payload: bytes) -> None:
        self._write_control(0x9, payload)

    def _write_pong(self, payload: bytes) -> None:
        self._write_control(0xA, payload)

    def _write_control(self, opcode: int, payload: bytes) -> None:
        if self.ws.closed or self._ending:
            return
        transport = _socket_transport(self.ws)
        if transport is None or transport.is_closing():
            return
        # A whole frame per write() call: it can never land inside another frame.
        transport.write(_masked_frame(opcode, payload))

    def _peek_pong(self) -> bool:
        # A lessee that holds the link without reading leaves the pong in
        # aiohttp's queue: it is there, so the peer is alive. Past aiohttp's
        # queue limit the socket is not read at all (the pong may be behind the
        # unread messages): the peer is not to blame for that either (nor at the
        # heartbeat's next look: Heartbeat keeps that grace).
        reader = getattr(self.ws, "_reader", None)
        if getattr(getattr(reader, "_protocol", None), "_reading_paused", False):
            return True
        buffer = getattr(reader, "_buffer", None)
        return buffer is not None and any(item[0].type is WSMsgType.PONG for item in tuple(buffer))

    def _dead(self, reason: str) -> None:
        logger.debug("%s", reason)
        self._end(CloseCode.ABNORMAL_CLOSURE, reason)
        self.abort(reason)

    # -- receiving -------------------------------------------------------------

    async def receive(self, handle: LeaseHandle, timeout: float | None) -> Message:
        link = self._link
        if handle._link is not link:
            handle._checked()  # released since the call: ConnectionReleasedError
        assert link is not None  # bound when the link was made
        link.reading = True
        try:
            ws = self.ws
            if (
                timeout is None
                and self._carried is None
                and self._watcher is None
                and not self._ending
                and not self.inflating
            ):
                reader = self._reader
                if reader is not None and not (ws._waiting or ws._closed or ws._closing):
                    # The hot path: aiohttp's receive() for a data message, inlined
                    # (its flag against concurrent reads, and waking a close() that
                    # waits for this read to end).
                    failed = False
                    ws._waiting = True
                    try:
                        msg = await reader.read()
                    except asyncio.CancelledError:
                        raise  # nothing is lost: the message stays queued
                    except Exception:
                        # The queue ended with an error (EOF, a protocol error, the
                        # socket lost). It raises the same again: aiohttp's receive()
                        # reads it in _receive() and closes the way it always does.
                        failed = True
                    finally:
                        ws._waiting = False
                        close_wait = ws._close_wait
                        if close_wait is not None and not close_wait.done():
                            close_wait.set_result(None)
                    if failed:
                        message = await self._receive(None, None)
                    else:
                        kind = msg.type
                        if kind is _BINARY_MSG:
                            link.dirty = False
                            return _message(Message, (BINARY, msg.data))
                        if kind is _TEXT_MSG:
                            link.dirty = False
                            return _message(Message, (TEXT, msg.data))
                        if kind is WSMsgType.CLOSE:  # what aiohttp's receive() does with it
                            ws._set_closing()
                            ws._close_code = msg.data
                            if not ws._closed and ws._autoclose:
                                await ws.close()
                        elif kind is WSMsgType.CLOSING:
                            ws._set_closing()
                        message = await self._receive(None, msg)
                else:
                    try:
                        msg = await ws.receive()
                    except asyncio.CancelledError:
                        _undo_abnormal_mark(ws)
                        raise
                    message = await self._receive(None, msg)
            else:
                message = await self._receive(timeout, None)
            if message is None:
                raise link.closed_error()
            link.dirty = False
            return message
        except (TimeoutError, asyncio.CancelledError):
            link.dirty = True  # a reply may still be on its way
            raise
        finally:
            link.reading = False

    async def _receive(
        self, timeout: float | None, msg: aiohttp.WSMessage | None
    ) -> Message | None:
        """Everything but the hot path: a timeout, a message to take over, control
        frames, the size check after inflating, the end of the connection."""
        ws = self.ws
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        while True:
            if msg is not None:
                pass  # read by the hot path already
            elif self._carried is not None:
                msg, self._carried = self._carried, None
            elif self._watcher is not None:
                msg = await self._take_over(deadline, timeout)
            elif self._ending or ws.closed:
                self._end_from(_CLOSED)
                return None
            elif deadline is None:
                try:
                    msg = await ws.receive()
                except asyncio.CancelledError:
                    _undo_abnormal_mark(ws)
                    raise
            else:
                try:
                    async with asyncio.timeout(deadline - asyncio.get_running_loop().time()):
                        msg = await ws.receive()
                except TimeoutError:
                    _undo_abnormal_mark(ws)
                    raise TimeoutError(f"no message within {timeout} s") from None
                except asyncio.CancelledError:
                    _undo_abnormal_mark(ws)
                    raise
            kind = msg.type
            if kind is _TEXT_MSG or kind is _BINARY_MSG:
                if self.inflating and too_big(msg.data, self._limit):
                    raise await self._refuse_oversize(msg.data)
                return _message(Message, (TEXT if kind is _TEXT_MSG else BINARY, msg.data))
            if not self._control(msg):
                error = self._end_from(msg)
                if error is not None:
                    raise error
                return None
            msg = None

    def _control(self, msg: aiohttp.WSMessage) -> bool:
        """Handle a ping or pong; False for anything that ends the connection."""
        if msg.type is WSMsgType.PING:
            self._pongs.ping_received(msg.data)
            return True
        if msg.type is WSMsgType.PONG:
            if self._heartbeat is not None:
                self._heartbeat.pong_seen()
            if self._link is not None:
                self._link.pong_received(msg.data)
            return True
        return False

    async def _take_over(self, deadline: float | None, timeout: float | None) -> aiohttp.WSMessage:
        """Wait for the message the idle reader is waiting for; it hands it over and stops."""
        loop = asyncio.get_running_loop()
        handoff = self._handoff = loop.create_future()
        try:
            if deadline is None:
                msg: aiohttp.WSMessage = await handoff
                return msg
            async with asyncio.timeout(deadline - loop.time()):
                msg = await handoff
                return msg
        except TimeoutError:
            raise TimeoutError(f"no message within {timeout} s") from None
        except asyncio.CancelledError:
            if handoff.done() and not handoff.cancelled():
                self._carried = handoff.result()  # handed over as we were cancelled
            raise
        finally:
            if self._handoff is handoff:
                self._handoff = None

    def watch(self) -> None:
        if self._watcher is None and not self._ending and not self.ws.closed:
            self._watcher = asyncio.get_running_loop().create_task(
                self._watch(), name="wsclient-idle-read"
            )

    async def _watch(self) -> None:
        ws = self.ws
        link = self._link
        assert link is not None
        try:
            if self._carried is not None:  # left over from a lease that did not read it
                msg, self._carried = self._carried, None
            else:
                msg = await ws.receive()
            while True:
                if self._ending:
                    return  # close() or abort() is under way and finishes the link
                handoff = self._handoff
                if handoff is not None and not handoff.done():
                    handoff.set_result(msg)  # a lessee's receive() takes it from here
                    return
                if not link.idle:
                    self._carried = msg  # leased: its first receive() starts with this one
                    return
                kind = msg.type
                if kind in _DATA_TYPES:
                    if self.inflating and too_big(msg.data, self._limit):
                        self._refuse_oversize_now(msg.data)
                        return
                    link.idle_message(Message(TEXT if kind is WSMsgType.TEXT else BINARY, msg.data))
                elif not self._control(msg):
                    self._end_from(msg)
                    return
                msg = await ws.receive()
        except asyncio.CancelledError:
            _undo_abnormal_mark(ws)
            raise
        except Exception as exc:  # aiohttp raising from receive(): the link is unusable
            self._end(CloseCode.ABNORMAL_CLOSURE, f"read failed: {exc!r}")
            self.abort()
        finally:
            self._watcher = None
            if self._handoff is not None and not self._handoff.done():
                self._handoff.set_result(_CLOSED)

    # -- how the connection ends ---------------------------------------------

    def _end(self, code: int | None, reason: str) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()
        if self._link is not None:
            self._link.transport_closed(code, reason)

    def _end_from(self, msg: aiohttp.WSMessage) -> Exception | None:
        """Turn a non-data message into the connection's end; an error to raise, if any."""
        ws = self.ws
        if msg.type is WSMsgType.CLOSE:
            self._end(int(msg.data), msg.extra or "")
        elif msg.type is WSMsgType.ERROR:
            exc = msg.data
            if isinstance(exc, aiohttp.WebSocketError) and exc.code == CloseCode.MESSAGE_TOO_BIG:
                self._end(CloseCode.MESSAGE_TOO_BIG, str(exc))
                return MessageTooBigError(None, self._limit)
            if isinstance(exc, aiohttp.WebSocketError):
                self._end(exc.code, str(exc))
            else:
                self._end(CloseCode.ABNORMAL_CLOSURE, describe_aiohttp_error(exc))
        else:  # CLOSED / CLOSING: aiohttp already finished the connection
            exc = ws.exception()
            reason = describe_aiohttp_error(exc) if exc is not None else "connection lost"
            code = ws.close_code if ws.close_code is not None else CloseCode.ABNORMAL_CLOSURE
            self._end(code, reason)
        # Whatever ended it, aiohttp must let go of the socket now (it closes
        # gracefully, which behind a full send buffer would keep it open).
        if not self._ending and (not ws.closed or msg.type is not WSMsgType.CLOSE):
            self.abort()
        return None

    async def _refuse_oversize(self, data: str | bytes) -> MessageTooBigError:
        """Close with 1009, as aiohttp does for an oversize frame; the error to raise."""
        size, reason = oversize_reason(data, self._limit)
        self._end(CloseCode.MESSAGE_TOO_BIG, reason)
        await self.close(CloseCode.MESSAGE_TOO_BIG, "message too big")
        return MessageTooBigError(size, self._limit)

    def _refuse_oversize_now(self, data: str | bytes) -> None:
        # Idle: nobody awaits the link. The 1009 close frame is written and the
        # socket closed at once; the kernel still delivers the frame and a FIN.
        _size, reason = oversize_reason(data, self._limit)
        self._end(CloseCode.MESSAGE_TOO_BIG, reason)
        self._write_control(0x8, struct.pack("!H", CloseCode.MESSAGE_TOO_BIG) + b"message too big")
        self._ending = True
        transport = _socket_transport(self.ws)
        if transport is not None:
            transport.abort()  # discards asyncio's buffer, the kernel's queue is sent
        self._release()

    async def close(self, code: int, reason: str) -> None:
        """Close handshake bounded by ``close_timeout`` overall, then abort whatever is left.

        aiohttp's own close() applies its timeout to each read while it waits for
        the peer's close frame, and throws away data frames meanwhile: a peer that
        ignores the close frame and sends a small message every so often keeps it
        waiting forever. Sending the close frame can block too, behind a peer that
        stopped reading.
        """
        if self._heartbeat is not None:
            self._heartbeat.stop()
        if self._ending:
            await self._close_session()
            return
        self._ending = True
        completed = False
        try:
            async with asyncio.timeout(self.close_timeout):
                await self.ws.close(code=code, message=reason.encode())
            completed = True
        except TimeoutError:
            logger.debug("close handshake not finished within %s s: aborting", self.close_timeout)
        except Exception as exc:  # the peer vanished mid-close: nothing more to do
            logger.debug("close handshake failed: %r", exc)
        finally:
            # After a completed handshake the TCP close stays graceful (a RST then
            # would be rude and could cut the peer's last bytes); otherwise, and on
            # cancellation, nothing may linger.
            if not completed:
                self.abort()
            else:
                self._release()
            await self._close_session()

    def abort(self, reason: str = "connection aborted") -> None:
        """Tear the TCP connection down at once: no close frame, nothing left queued.

        aiohttp has no public abort for a client WebSocket; closing its response
        calls ``transport.close()``, which waits to flush the write buffer first.
        ``transport.abort()`` discards that buffer, and linger 0 makes the kernel
        discard its own send queue too and answer with a RST. A send waiting for
        the buffer to drain is woken with ``ConnectionResetError(reason)``.
        """
        self._ending = True
        if self._heartbeat is not None:
            self._heartbeat.stop()
        ws = self.ws
        transport = _socket_transport(ws)
        protocol = getattr(getattr(ws, "_writer", None), "protocol", None)
        # aiohttp would wake a waiting sender with success (the socket was closed
        # "cleanly"), as if its message had gone out: it gets the reason instead.
        fail_waiter(getattr(protocol, "_drain_waiter", None), ConnectionResetError(reason))
        if transport is not None:
            reset_on_close(transport)
            transport.abort()
        self._release()
        if self._session is not None:
            session, self._session = self._session, None
            _spawn(session.close())

    def _release(self) -> None:
        ws = self.ws
        if self._watcher is not None and not self._watcher.done():
            self._watcher.cancel()
        if hasattr(ws, "_closed") and not ws.closed:
            ws._closed = True  # nothing may be written or read any more
            if ws.close_code is None:
                ws._close_code = CloseCode.ABNORMAL_CLOSURE
        response = getattr(ws, "_response", None)
        if response is not None:
            response.close()  # hands the (now closed) connection back to the connector

    async def _close_session(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()


def _direct_parts(ws: aiohttp.ClientWebSocketResponse) -> tuple[Any, Any, Any]:
    """aiohttp's frame writer, socket protocol and message queue, if the hot path
    may use them: no compression (the writer's compressing path needs its lock and
    shield), and the private attributes it touches all present."""
    writer = getattr(ws, "_writer", None)
    protocol = getattr(writer, "protocol", None)
    reader = getattr(ws, "_reader", None)
    if (
        ws.compress
        or not all(hasattr(writer, a) for a in _WRITER_PARTS)
        or not all(hasattr(protocol, a) for a in ("_paused", "_drain_helper"))
        or not all(hasattr(ws, a) for a in _WS_PARTS)
        or not callable(getattr(reader, "read", None))
    ):
        return None, None, None
    return writer, protocol, reader


_WRITER_PARTS = ("_write_websocket_frame", "_closing", "_output_size", "_limit")
_WS_PARTS = (
    "_autoclose",
    "_close_code",
    "_close_wait",
    "_closed",
    "_closing",
    "_set_closing",
    "_waiting",
)


def _socket_transport(ws: aiohttp.ClientWebSocketResponse) -> asyncio.Transport | None:
    writer = getattr(ws, "_writer", None)
    transport: asyncio.Transport | None = getattr(writer, "transport", None)
    return transport


def _masked_frame(opcode: int, payload: bytes) -> bytes:
    """A client control frame (FIN set, masked, at most 125 bytes of payload)."""
    mask = os.urandom(4)
    n = len(payload)
    if n:
        key = (mask * (n // 4 + 1))[:n]
        masked = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")
    else:
        masked = b""
    return bytes((0x80 | opcode, 0x80 | n)) + mask + masked


def _undo_abnormal_mark(ws: aiohttp.ClientWebSocketResponse) -> None:
    # aiohttp records 1006 when a receive() is interrupted, although the
    # connection is fine (no data is lost: it stays queued). Left in place, the
    # mark makes a later close() skip waiting for the peer's close frame.
    if not ws.closed and getattr(ws, "_close_code", None) == CloseCode.ABNORMAL_CLOSURE:
        ws._close_code = None


_background: set[asyncio.Task[Any]] = set()


def _spawn(coro: Any) -> None:
    """Run a fire-and-forget cleanup, holding a reference until it is done."""
    task = asyncio.get_running_loop().create_task(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)


# -- opening --------------------------------------------------------------------------


async def open_aiohttp(
    session: aiohttp.ClientSession | None,
    url: str,
    headers: dict[str, str],
    options: ConnectionOptions,
) -> AiohttpTransport | ConnectFailure:
    """Open a WebSocket (on ``session``, or on a session of its own); never raises but
    for cancellation: a failure comes back as ``ConnectFailure``."""
    owned = session is None
    if session is None:
        session = new_session()
    try:
        ws = await _handshake(session, url, headers, options)
    except TimeoutError:
        failure = ConnectFailure(f"timed out after {options.connect_timeout} s")
    except (aiohttp.ClientError, OSError) as exc:
        failure = ConnectFailure(describe_connect_error(exc), getattr(exc, "status", None))
    except BaseException:
        if owned:
            await session.close()
        raise
    else:
        return AiohttpTransport(ws, options, session=session if owned else None)
    if owned:
        await session.close()
    return failure


async def _handshake(
    session: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    options: ConnectionOptions,
) -> aiohttp.ClientWebSocketResponse:
    ws: aiohttp.ClientWebSocketResponse | None = None
    try:
        async with asyncio.timeout(options.connect_timeout):
            ws = await session.ws_connect(
                url,
                protocols=options.protocols,
                headers=with_host_header(url, headers, options.server_hostname),
                server_hostname=options.server_hostname,
                heartbeat=None,  # ours (base.Heartbeat): see the module docstring
                max_msg_size=_aiohttp_size_limit(options.max_message_size, options.compression),
                compress=15 if options.compression else 0,
                ssl=ssl_argument(options.ssl),
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=options.close_timeout),
                autoclose=True,
                autoping=False,
            )
    except BaseException:
        # The timeout (or a cancellation) can land just after the handshake
        # finished: the socket is ours then, and nobody else will close it.
        if ws is not None:
            _abort_ws(ws)
        raise
    response = getattr(ws, "_response", None)
    answers = [] if response is None else response.headers.getall("Sec-WebSocket-Protocol", [])
    problem = unoffered_protocol(answers, options.protocols)
    if problem is not None:
        _abort_ws(ws)  # RFC 6455 §4.1: the client MUST _Fail the WebSocket Connection_
        raise UnofferedProtocolError(problem)
    return ws


def _abort_ws(ws: aiohttp.ClientWebSocketResponse) -> None:
    transport = _socket_transport(ws)
    if transport is not None:
        reset_on_close(transport)
        transport.abort()
    response = getattr(ws, "_response", None)
    if response is not None:
        response.close()


def ssl_argument(value: Any) -> Any:
    # aiohttp: True verifies with the default context; None would be the same.
    return True if value is None else value


def _aiohttp_size_limit(limit: int, compression: bool) -> int:
    """aiohttp's ``max_msg_size`` for our inclusive ``max_message_size``."""
    if not limit:
        return 0
    if not compression:
        return limit + 1  # aiohttp refuses a frame of exactly max_msg_size
    # Compressed: aiohttp's bound applies to the frame on the wire and to the
    # inflated message; an incompressible message of exactly `limit` bytes is
    # a little longer on the wire (stored deflate blocks; zlib's compressBound
    # plus a margin). The exact limit is checked by too_big() after inflating.
    return limit + (limit >> 12) + (limit >> 14) + 64


class UnofferedProtocolError(aiohttp.ClientError):
    """The server selected a subprotocol the client did not offer."""


def describe_aiohttp_error(exc: BaseException) -> str:
    """Why an open connection ended, in wsclient's words: aiohttp's exception
    names and messages ("Cannot write to closing transport" when a killed
    peer's socket is gone) stay out of close reasons and logs."""
    if isinstance(exc, aiohttp.ServerTimeoutError):
        return f"heartbeat: {exc}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "connection lost: the peer went away without a close frame"
    if isinstance(exc, aiohttp.ClientConnectionResetError | ConnectionResetError):
        return "connection lost: the peer went away without a close frame"
    if isinstance(exc, aiohttp.ClientConnectionError):
        return "connection lost: the socket closed without a close frame"
    return describe_link_error(exc)


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
        return describe_redirect(self.status, self.location)


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
