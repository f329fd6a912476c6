"""``Multiplexer``: request/response over shared pooled connections (``pool.request()``).

Many requests are in flight on each connection at once; none holds a lease of
its own. Each request gets a correlation id (an integer from a per-multiplexer
counter, never reused, so a late reply can never match a newer request) that
the envelope writes into the message and reads back from the reply. A reader
task per connection routes each reply to its waiter.

Where requests go: to the connection with the fewest in flight; a new
connection is leased when every one has ``spread`` or more in flight and fewer
than ``max_connections`` are held. With ``key=`` (ip-hash affinity) the pool
picks the backend for the key and the request goes to a connection on that
backend.

What can happen to a request, exactly one of: its reply is returned; its
connection dies after it was written (``ConnectionClosedError``: every request
in flight on that connection, and only those); it times out (``TimeoutError``;
its id is remembered, so a late reply is dropped and counted in
``stats["late_replies"]``, not taken for an unsolicited message). A request
whose connection died before it was written moves to another connection.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import logging
from collections.abc import Callable, Hashable
from typing import Any, Protocol

from wsclient.connection import Connection, Message, MessageType
from wsclient.errors import (
    ConnectionClosedError,
    ConnectionReleasedError,
    PoolClosedError,
    WSClientError,
)
from wsclient.messaging._pool import Leaser

logger = logging.getLogger("wsclient.request")

DEFAULT_TIMEOUT = 30.0
DEFAULT_SPREAD = 32
LATE_REPLY_MEMORY = 4096  # timed-out ids remembered per connection
KEY_MEMORY = 1024  # affinity keys remembered

Unsolicited = Callable[[Any, Connection], Any]


class Envelope(Protocol):
    """How a request carries its correlation id, and how a reply gives it back."""

    def encode(self, message: Any, request_id: int) -> str | bytes:
        """The frame to send for ``message`` with ``request_id`` in it."""
        ...

    def decode(self, message: Message) -> tuple[Hashable | None, Any]:
        """``(correlation id or None, the value request() returns)`` for a received message."""
        ...


class JsonEnvelope:
    """JSON objects with the id in one field (``"id"`` by default); replies are parsed."""

    def __init__(self, field: str = "id", *, dumps: Callable[[Any], str] = json.dumps) -> None:
        self.field = field
        self._dumps = dumps

    def encode(self, message: Any, request_id: int) -> str:
        if not isinstance(message, dict):
            raise TypeError(f"request() takes a dict (a JSON object), not {type(message).__name__}")
        if self.field in message:
            raise ValueError(f"request() sets the {self.field!r} field itself; leave it out")
        return self._dumps({**message, self.field: request_id})

    def decode(self, message: Message) -> tuple[Hashable | None, Any]:
        if message.type is not MessageType.TEXT:
            return None, message
        try:
            value = json.loads(message.data)
        except ValueError:
            return None, message
        if isinstance(value, dict):
            rid = value.get(self.field)
            if type(rid) is int or type(rid) is str:  # bool, lists, floats: not ours
                return rid, value
        return None, value


class _Channel:
    """One leased connection and the requests in flight on it."""

    __slots__ = ("alias", "backend_id", "conn", "dead", "expired", "ready", "reserved", "waiting")

    def __init__(self, ready: asyncio.Future[None]) -> None:
        self.conn: Connection | None = None
        self.backend_id: str | None = None
        self.ready = ready
        self.reserved = 0  # requests waiting for it to open
        self.waiting: dict[Hashable, asyncio.Future[Any]] = {}
        self.expired: collections.OrderedDict[Hashable, None] = collections.OrderedDict()
        self.dead = False
        self.alias: _Channel | None = None  # a keyed open that found its backend already held

    @property
    def load(self) -> int:
        return len(self.waiting) + self.reserved


class Multiplexer:
    """Request/response multiplexed over at most ``max_connections`` leased connections.

    ``pool.request()`` uses one with the defaults; make your own for another
    id field or envelope: ``Multiplexer(pool, id_field="rid")``.
    """

    def __init__(
        self,
        pool: Leaser,
        *,
        max_connections: int | None = None,
        spread: int = DEFAULT_SPREAD,
        timeout: float = DEFAULT_TIMEOUT,
        id_field: str = "id",
        envelope: Envelope | None = None,
        on_unsolicited: Unsolicited | None = None,
    ) -> None:
        cap = (
            max(1, pool.config.max_connections // 2) if max_connections is None else max_connections
        )
        if cap < 1:
            raise ValueError(f"max_connections must be at least 1, got {max_connections!r}")
        if spread < 1:
            raise ValueError(f"spread must be at least 1, got {spread!r}")
        if not (timeout > 0 and timeout != float("inf")):
            raise ValueError(f"timeout must be a finite number of seconds > 0, got {timeout!r}")
        self._pool = pool
        self.max_connections = cap
        self._spread = spread
        self._timeout = timeout
        self._envelope: Envelope = envelope if envelope is not None else JsonEnvelope(id_field)
        self._on_unsolicited = on_unsolicited
        self._ids = itertools.count(1)
        self._channels: list[_Channel] = []
        self._by_key: collections.OrderedDict[str, _Channel] = collections.OrderedDict()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        self._attached = False
        self._stats = dict.fromkeys(
            (
                "requests",
                "replies",
                "failed",
                "timeouts",
                "not_sent",
                "cancelled",
                "late_replies",
                "unsolicited",
            ),
            0,
        )

    def __repr__(self) -> str:
        in_flight = sum(len(c.waiting) for c in self._channels)
        return (
            f"<Multiplexer {len(self._channels)}/{self.max_connections} connections, "
            f"{in_flight} in flight>"
        )

    @property
    def stats(self) -> dict[str, int]:
        """Counters: requests, replies, failed (connection died), timeouts, not_sent (no
        connection could be leased), cancelled, late_replies, unsolicited; and the current
        ``connections`` and ``in_flight``."""
        return {
            **self._stats,
            "connections": sum(c.conn is not None and not c.dead for c in self._channels),
            "in_flight": sum(len(c.waiting) for c in self._channels),
        }

    # -- requesting ------------------------------------------------------------------

    async def request(
        self, message: Any, timeout: float | None = None, key: str | None = None
    ) -> Any:
        """Send ``message`` with a fresh correlation id and return the matching reply."""
        if self._closed:
            raise PoolClosedError("this multiplexer is closed")
        limit = self._timeout if timeout is None else timeout
        if limit != limit:
            raise ValueError("request() timeout must be a number of seconds or None, not NaN")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        request_id = next(self._ids)
        payload = self._envelope.encode(message, request_id)
        if not self._attached:
            self._attached = True
            self._pool._attach_client(self)
        self._stats["requests"] += 1
        while True:
            try:
                channel = await self._channel(key, deadline)
            except TimeoutError:
                self._stats["timeouts"] += 1
                raise TimeoutError(
                    f"no connection for request {request_id} within {limit} s"
                ) from None
            except asyncio.CancelledError:
                self._stats["cancelled"] += 1
                raise
            except BaseException:
                self._stats["not_sent"] += 1  # no connection could be leased for it
                raise
            conn = channel.conn
            assert conn is not None
            if not conn.connected:
                self._drop_channel(channel)  # ended, its reader not told yet: not sent, try another
                continue
            future: asyncio.Future[Any] = loop.create_future()
            channel.waiting[request_id] = future
            try:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise TimeoutError
                if conn.buffered_amount == 0:
                    # Nothing waits to drain, so this send cannot suspend (and cannot be
                    # cancelled half way); skipping the bounded path saves a task per request.
                    await conn.send(payload)
                else:
                    await conn.send(payload, timeout=remaining)
                # One timer, not an asyncio.timeout() scope: this is the hot path.
                timer = loop.call_at(deadline, _time_out, future)
                try:
                    reply = await future
                finally:
                    timer.cancel()
            except ConnectionReleasedError:
                # The channel was retired between picking and writing: never sent.
                channel.waiting.pop(request_id, None)
                if self._closed:
                    raise PoolClosedError("this multiplexer is closed") from None
                continue
            except ConnectionClosedError:
                channel.waiting.pop(request_id, None)
                self._stats["failed"] += 1
                raise
            except TimeoutError:
                self._expire(channel, request_id, future)
                self._stats["timeouts"] += 1
                raise TimeoutError(f"no reply to request {request_id} within {limit} s") from None
            except BaseException:
                self._expire(channel, request_id, future)  # cancelled: a reply may still come
                self._stats["cancelled"] += 1
                raise
            self._stats["replies"] += 1
            return reply

    @staticmethod
    def _expire(channel: _Channel, request_id: Hashable, future: asyncio.Future[Any]) -> None:
        if channel.waiting.pop(request_id, None) is not None and not channel.dead:
            channel.expired[request_id] = None
            if len(channel.expired) > LATE_REPLY_MEMORY:
                channel.expired.popitem(last=False)
        if future.done() and not future.cancelled():
            future.exception()  # retrieved: an error set at the same moment is not "never seen"

    async def _channel(self, key: str | None, deadline: float) -> _Channel:
        """A live channel for the next request, opening one if the load asks for it."""
        while True:
            if self._closed:
                raise PoolClosedError("this multiplexer is closed")
            channel = self._by_key.get(key) if key is not None else None
            if channel is not None and channel.dead:
                del self._by_key[key]  # type: ignore[arg-type]
                channel = None
            if channel is None and key is not None:
                channel = self._open(key)
                self._by_key[key] = channel
                if len(self._by_key) > KEY_MEMORY:
                    self._by_key.popitem(last=False)
            if channel is None:
                channel = self._least_loaded()
                if channel is None or (
                    channel.load >= self._spread and len(self._channels) < self.max_connections
                ):
                    channel = self._open(None)
            if not channel.ready.done():
                channel.reserved += 1
                try:
                    async with asyncio.timeout_at(deadline):
                        await asyncio.shield(channel.ready)
                finally:
                    channel.reserved -= 1
            channel = channel.alias or channel
            if not channel.dead:
                return channel

    def _least_loaded(self) -> _Channel | None:
        best: _Channel | None = None
        for channel in self._channels:
            if not channel.dead and (best is None or channel.load < best.load):
                best = channel
        return best

    # -- connections -----------------------------------------------------------------

    def _open(self, key: str | None) -> _Channel:
        loop = asyncio.get_running_loop()
        channel = _Channel(loop.create_future())
        self._channels.append(channel)
        self._spawn(self._lease(channel, key), "wsclient-request-open")
        return channel

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _lease(self, channel: _Channel, key: str | None) -> None:
        try:
            conn = await self._pool.acquire(key=key)
        except (WSClientError, OSError, TimeoutError) as exc:
            self._drop_channel(channel)
            channel.ready.set_exception(exc)
            channel.ready.exception()  # retrieved: the waiters re-raise it, if any
            return
        except asyncio.CancelledError:
            self._drop_channel(channel)
            channel.ready.cancel()
            raise
        if self._closed:
            self._pool.release(conn)
            self._drop_channel(channel)
            channel.ready.set_exception(PoolClosedError("this multiplexer is closed"))
            channel.ready.exception()
            return
        if key is not None:
            for other in self._channels:
                if other is not channel and not other.dead and other.backend_id == conn.backend_id:
                    # The key's backend already has a connection here: share it.
                    self._pool.release(conn)
                    self._drop_channel(channel)
                    channel.alias = other
                    self._by_key[key] = other
                    channel.ready.set_result(None)
                    return
        channel.conn = conn
        channel.backend_id = conn.backend_id
        self._spawn(self._read(channel, conn), f"wsclient-request-read-{conn.id}")
        channel.ready.set_result(None)

    def _drop_channel(self, channel: _Channel) -> None:
        channel.dead = True
        if channel in self._channels:
            self._channels.remove(channel)

    async def _read(self, channel: _Channel, conn: Connection) -> None:
        decode = self._envelope.decode
        error: ConnectionClosedError
        try:
            while True:
                message = await conn.receive()
                rid, value = decode(message)
                if rid is not None:
                    future = channel.waiting.pop(rid, None)
                    if future is not None:
                        if not future.done():
                            future.set_result(value)
                        else:  # timed out this very loop iteration
                            self._stats["late_replies"] += 1
                        continue
                    if rid in channel.expired:
                        del channel.expired[rid]
                        self._stats["late_replies"] += 1
                        continue
                self._unsolicited(value, conn)
        except ConnectionClosedError as exc:
            error = exc
        except ConnectionReleasedError:
            error = ConnectionClosedError(None, "the multiplexer gave the connection back")
        except asyncio.CancelledError:
            error = ConnectionClosedError(None, "the multiplexer is closed")
            self._retire(channel, conn, error)
            raise
        except Exception as exc:  # too big, or an envelope that raised: the link is suspect
            logger.warning("request reader on %s failed: %s", conn.backend_id, type(exc).__name__)
            conn.drop()
            error = ConnectionClosedError(conn.close_code, f"reader failed: {type(exc).__name__}")
        self._retire(channel, conn, error)

    def _retire(self, channel: _Channel, conn: Connection, error: ConnectionClosedError) -> None:
        """The channel's connection ended: fail exactly what was in flight on it."""
        self._drop_channel(channel)
        for key in [k for k, c in self._by_key.items() if c is channel]:
            del self._by_key[key]
        waiting, channel.waiting = channel.waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(error)
        if waiting:
            logger.info(
                "connection to %s ended with %d request(s) in flight: %s",
                channel.backend_id,
                len(waiting),
                error,
            )
        if not conn.released:
            self._pool.release(conn)

    def _unsolicited(self, value: Any, conn: Connection) -> None:
        self._stats["unsolicited"] += 1
        handler = self._on_unsolicited
        if handler is None:
            logger.debug("unsolicited message on %s dropped", conn.backend_id)
            return
        try:
            result = handler(value, conn)
        except Exception:
            logger.exception("on_unsolicited handler failed")
            return
        if asyncio.iscoroutine(result):
            self._spawn(_logged(result), "wsclient-request-unsolicited")

    # -- closing ---------------------------------------------------------------------

    async def aclose(self) -> None:
        """Fail what is in flight (``ConnectionClosedError``), give the connections back."""
        if self._closed:
            return
        self._closed = True
        if self._attached:
            self._pool._detach_client(self)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)


def _time_out(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


async def _logged(coro: Any) -> None:
    try:
        await coro
    except Exception:
        logger.exception("on_unsolicited handler failed")
