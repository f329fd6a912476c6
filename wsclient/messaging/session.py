"""``Session``: a long-lived stream over the pool that survives failover.

A session leases one pooled connection. When that connection dies it does not
raise: it gives the dead lease back, acquires another through the pool (so the
balancer, breakers and backoff decide where, possibly another backend), awaits
``on_connect(conn)`` again (re-authenticate, re-subscribe), and its iterator
yields a :class:`Reconnected` marker where the error would have been.

Sending goes through a queue bounded in bytes (``max_buffered``): ``send()``
returns once the message is queued and waits, up to its timeout, while the
queue is full (a backend reading slowly, or the gap while reconnecting); then
``TimeoutError``. A writer task drains the queue in order onto the current
connection; a message whose write failed because the connection died stays at
the head and goes out on the next connection, after ``on_connect``.

One reconnection runs at a time, whoever notices the loss first (the reader,
the writer) starts it; everyone else waits for it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NamedTuple, Protocol

from wsclient.backoff import Backoff
from wsclient.codes import CloseCode
from wsclient.connection import Connection, Message
from wsclient.errors import (
    ConnectionClosedError,
    ConnectionReleasedError,
    MessageTooBigError,
    WSClientError,
)
from wsclient.messaging._pool import Leaser
from wsclient.messaging.send_queue import SendQueue, message_size

logger = logging.getLogger("wsclient.session")

OnConnect = Callable[[Connection], Awaitable[Any]]

DEFAULT_SEND_TIMEOUT = 30.0
DEFAULT_MAX_BUFFERED = 1024 * 1024

_LOST = (ConnectionClosedError, ConnectionReleasedError)


class Reconnected(NamedTuple):
    """Yielded by a session in place of an error: its connection was replaced.

    ``backend_id`` is where the new connection goes, ``previous_backend_id``
    where the old one went, ``error`` why the old one ended, ``attempts`` how
    many acquire / ``on_connect`` attempts it took.
    """

    backend_id: str
    previous_backend_id: str | None
    error: BaseException | None
    attempts: int


class _Serves(Protocol):
    async def serve(self, source: Any) -> None: ...


class Session:
    """A stream that keeps one pooled connection and replaces it when it dies.

    Made by ``pool.session(key=None, on_connect=None, ...)``; use
    ``async with pool.session(...) as s:``. Items of ``async for item in s``
    are :class:`~wsclient.Message` or :class:`Reconnected`.
    """

    def __init__(
        self,
        pool: Leaser,
        key: str | None = None,
        on_connect: OnConnect | None = None,
        *,
        send_timeout: float = DEFAULT_SEND_TIMEOUT,
        max_buffered: int = DEFAULT_MAX_BUFFERED,
        connect_timeout: float | None = None,
    ) -> None:
        if not send_timeout > 0:
            raise ValueError(f"send_timeout must be > 0 seconds, got {send_timeout!r}")
        self._pool = pool
        self._key = key
        self._on_connect = on_connect
        self._send_timeout = send_timeout
        config = pool.config
        self._connect_timeout = (
            config.connect_timeout if connect_timeout is None else connect_timeout
        )
        self._max_message_size = config.max_message_size
        r = config.reconnect
        self._backoff = Backoff(
            initial_delay=r.initial_delay,
            multiplier=r.multiplier,
            jitter=r.jitter,
            max_delay=r.max_delay,
        )
        if not isinstance(max_buffered, int) or max_buffered < 1:
            raise ValueError(
                f"max_buffered must be an int of at least 1 byte, got {max_buffered!r}"
            )
        self._queue = SendQueue(max_buffered)
        self._conn: Connection | None = None
        self._ready = asyncio.Event()
        self._reconnecting: asyncio.Task[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._markers: deque[Reconnected] = deque(maxlen=64)
        self._started = False
        self._closed = False
        self.reconnects = 0
        """How many times the connection was replaced."""

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("open" if self._ready.is_set() else "reconnecting")
        backend = self._conn.backend_id if self._conn is not None else None
        return f"<Session {state} backend={backend!r} reconnects={self.reconnects}>"

    # -- lifecycle -------------------------------------------------------------------

    async def open(self) -> Session:
        """Acquire the first connection and run ``on_connect``; errors propagate."""
        if self._started:
            raise RuntimeError("this session is already open")
        self._started = True
        try:
            conn = await self._pool.acquire(key=self._key)
        except BaseException:
            self._closed = True  # a session is opened once; make a new one to retry
            raise
        try:
            if self._on_connect is not None:
                async with asyncio.timeout(self._connect_timeout):
                    await self._on_connect(conn)
        except BaseException:
            conn.drop()
            self._pool.release(conn)
            self._closed = True
            raise
        self._install(conn)
        self._pool._attach_client(self)
        self._writer = asyncio.get_running_loop().create_task(
            self._write_loop(), name="wsclient-session-writer"
        )
        return self

    async def __aenter__(self) -> Session:
        return await self.open()

    async def __aexit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None and not self._closed:
            try:
                await self.flush(self._send_timeout)
            except (TimeoutError, WSClientError) as exc:
                logger.warning(
                    "session closing with %d message(s) unsent: %s", len(self._queue), exc
                )
        await self.aclose()

    async def aclose(self) -> None:
        """Stop reconnecting, drop what is still queued, give the connection back."""
        if self._closed:
            return
        self._closed = True
        self._pool._detach_client(self)
        tasks = [t for t in (self._reconnecting, self._writer) if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        self._queue.clear()
        conn, self._conn = self._conn, None
        self._ready.set()  # wakes anyone waiting for a connection: they see it closed
        if conn is not None and not conn.released:
            self._pool.release(conn)

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Close the session and its connection with ``code`` (not given back for reuse)."""
        conn = self._conn
        if conn is not None and conn.connected and not self._closed:
            self._conn = None
            await self.aclose()
            try:
                await conn.close(code, reason)
            finally:
                self._pool.release(conn)
            return
        await self.aclose()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def connected(self) -> bool:
        """True while the session holds an open connection (False during a reconnection)."""
        return self._conn is not None and self._conn.connected

    @property
    def connection(self) -> Connection | None:
        """The current connection, None while reconnecting."""
        return self._conn

    @property
    def backend_id(self) -> str | None:
        return self._conn.backend_id if self._conn is not None else None

    @property
    def buffered_amount(self) -> int:
        """Bytes queued in the session plus bytes the connection has not yet put on the wire."""
        conn = self._conn
        wire = conn.buffered_amount if conn is not None and conn.connected else 0
        return self._queue.nbytes + wire

    # -- sending ---------------------------------------------------------------------

    async def send(self, data: str | bytes, timeout: float | None = None) -> None:
        """Queue ``data`` (str: text frame, bytes: binary frame) for the current connection.

        Returns once queued; waits while the queue is full, at most ``timeout``
        seconds (default ``send_timeout``), then raises ``TimeoutError``.
        """
        self._check_open()
        if not isinstance(data, str | bytes):
            raise TypeError(f"send() takes str or bytes, not {type(data).__name__}")
        limit = self._send_timeout if timeout is None else timeout
        if limit != limit:
            raise ValueError("send() timeout must be a number of seconds or None, not NaN")
        if self._max_message_size and message_size(data) > self._max_message_size:
            raise MessageTooBigError(message_size(data), self._max_message_size)
        await self._queue.put(data, max(0.0, limit))

    async def send_text(self, data: str, timeout: float | None = None) -> None:
        if not isinstance(data, str):
            raise TypeError(f"send_text() takes str, not {type(data).__name__}")
        await self.send(data, timeout)

    async def send_bytes(self, data: bytes, timeout: float | None = None) -> None:
        if not isinstance(data, bytes):
            raise TypeError(f"send_bytes() takes bytes, not {type(data).__name__}")
        await self.send(data, timeout)

    async def send_json(self, data: Any, timeout: float | None = None) -> None:
        await self.send(json.dumps(data), timeout)

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until every queued message is written (bounded by ``timeout``)."""
        async with asyncio.timeout(timeout):
            await self._queue.wait_empty()

    def _check_open(self) -> None:
        if self._closed:
            raise ConnectionClosedError(CloseCode.NORMAL, "the session is closed")
        if not self._started:
            raise RuntimeError("the session is not open: use 'async with pool.session()'")

    async def _write_loop(self) -> None:
        queue = self._queue
        while True:
            data = await queue.peek()
            try:
                conn = await self._current()
            except ConnectionClosedError:
                return  # the session closed

            try:
                await conn.send(data)
            except _LOST as exc:
                self._lost(conn, exc)
                continue  # the message stays at the head for the next connection
            except (
                WSClientError,
                OSError,
                ValueError,
            ) as exc:  # pragma: no cover - checked in send()
                logger.warning("session dropped a message it could not send: %s", exc)
            queue.pop()

    # -- receiving -------------------------------------------------------------------

    async def receive(self, timeout: float | None = None) -> Message | Reconnected:
        """The next message, or a :class:`Reconnected` marker after a failover.

        ``timeout`` bounds the whole wait (a reconnection included): ``TimeoutError``.
        A closed session raises ``ConnectionClosedError``.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._markers:
                return self._markers.popleft()
            self._check_open()
            async with asyncio.timeout_at(None if deadline is None else _loop_deadline(deadline)):
                conn = await self._current()
            if self._markers:
                continue
            try:
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                return await conn.receive(remaining)
            except _LOST as exc:
                if self._closed:
                    raise ConnectionClosedError(CloseCode.NORMAL, "the session is closed") from None
                self._lost(conn, exc)

    def __aiter__(self) -> AsyncIterator[Message | Reconnected]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Message | Reconnected]:
        while not self._closed:
            try:
                item = await self.receive()
            except ConnectionClosedError:
                if self._closed:
                    return
                raise
            yield item

    async def serve(self, router: _Serves) -> None:
        """Run ``router`` on every message until the session closes (failovers included)."""
        await router.serve(self)

    # -- reconnecting ----------------------------------------------------------------

    async def _current(self) -> Connection:
        while True:
            conn = self._conn
            if conn is not None and conn.connected:
                return conn
            if self._closed:
                raise ConnectionClosedError(CloseCode.NORMAL, "the session is closed")
            if conn is not None:  # died while nobody was reading or writing
                self._lost(conn, ConnectionClosedError(conn.close_code, conn.close_reason))
            await self._ready.wait()

    def _install(self, conn: Connection) -> None:
        self._conn = conn
        self._ready.set()

    def _lost(self, conn: Connection, error: BaseException) -> None:
        """``conn`` died: start the (single) reconnection, unless one is already running."""
        if self._closed or conn is not self._conn or self._reconnecting is not None:
            return
        self._conn = None
        self._ready.clear()
        previous = conn.backend_id if not conn.released else None
        if not conn.released:
            self._pool.release(conn)  # closed: the pool replaces it after its backoff
        logger.info("session lost its connection to %s: %s", previous, error)
        self._reconnecting = asyncio.get_running_loop().create_task(
            self._reconnect(previous, error), name="wsclient-session-reconnect"
        )

    async def _reconnect(self, previous: str | None, error: BaseException) -> None:
        attempts = 0
        try:
            while not self._closed:
                attempts += 1
                conn = await self._attempt()
                if conn is None:
                    await asyncio.sleep(self._backoff.next_delay())
                    continue
                self._backoff.reset()
                self.reconnects += 1
                self._markers.append(Reconnected(conn.backend_id, previous, error, attempts))
                self._install(conn)
                logger.info(
                    "session reconnected to %s after %d attempt(s)", conn.backend_id, attempts
                )
                return
        finally:
            self._reconnecting = None

    async def _attempt(self) -> Connection | None:
        try:
            conn = await self._pool.acquire(key=self._key, timeout=self._connect_timeout)
        except (WSClientError, OSError, TimeoutError) as exc:
            logger.debug("session reconnect: acquire failed: %s", exc)
            return None
        try:
            if self._on_connect is not None:
                async with asyncio.timeout(self._connect_timeout):
                    await self._on_connect(conn)
        except asyncio.CancelledError:
            conn.drop()
            self._pool.release(conn)
            raise
        except Exception as exc:
            logger.warning(
                "session on_connect failed on %s: %s", conn.backend_id, type(exc).__name__
            )
            conn.drop()  # its state is unknown: never handed to anyone else
            self._pool.release(conn)
            return None
        if not conn.connected:
            self._pool.release(conn)
            return None
        return conn


def _loop_deadline(deadline: float) -> float:
    # time.monotonic() and the loop's clock are the same clock on CPython/Linux,
    # but asyncio.timeout_at wants the loop's.
    loop = asyncio.get_running_loop()
    return loop.time() + (deadline - time.monotonic())
