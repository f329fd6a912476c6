"""``FaultProxy``: a TCP proxy that black-holes, resets, delays, throttles or refuses."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
from collections.abc import Callable

from wsclient.testing._common import (
    _CHUNK,
    _abort_transport,
    _format_host,
    _Listener,
    _Service,
    _TaskSet,
    _Waiters,
    logger,
)


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
