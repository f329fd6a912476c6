"""``BackendServer``: an in-process aiohttp WebSocket echo backend with run-time faults.

Why one file of about 650 lines: the server is one class whose fault switches
(refuse, stall, close with a code, malformed frames, 5xx health) share its
connection registry; what is common with the subprocess backends is in
``_common.py``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web

from wsclient.testing._common import (
    _STAT_FIELDS,
    DEFAULT_MAX_MSG_SIZE,
    MALFORMED_KINDS,
    BackendStats,
    MalformedKind,
    MessageHandler,
    _abort_transport,
    _Done,
    _Endpoint,
    _Listener,
    _name_counter,
    _reply_close_code,
    _ServerConn,
    _TaskSet,
    _Waiters,
    logger,
    malformed_frame,
)


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
