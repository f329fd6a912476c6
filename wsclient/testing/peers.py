"""Hostile WebSocket peers: small raw servers that break the rules on purpose.

Where :class:`wsclient.testing.BackendServer` is a well-behaved server with fault
switches, the peers here misbehave at the byte level, in ways a real aiohttp server
never would: they redirect the handshake, select a subprotocol nobody offered, stop
reading, ignore close frames, trickle messages forever, or flood the client with pings.
Like the rest of :mod:`wsclient.testing` they depend only on :mod:`aiohttp` and the
standard library, so they can test any WebSocket client.

Every peer is an async context manager with a ``url``::

    async with RedirectingPeer("ws://elsewhere.example/ws") as peer:
        with pytest.raises(ConnectError):
            await connect(peer.url)
        assert peer.requests[0].header("upgrade") == "websocket"

Common ground:

* they bind ``127.0.0.1`` on an OS-assigned port;
* they accept at most ``max_connections`` connections at a time (more are closed at
  once) and read at most 16 KiB of request head, so a runaway client cannot make them
  grow without bound;
* every read, write and wait on their side is bounded by ``io_timeout`` seconds;
* leaving the ``async with`` block (or ``await peer.stop()``) cancels every task and
  closes every socket they opened.

Peers: :class:`HandshakePeer` (answers the handshake with any status and headers,
records each request), :class:`RedirectingPeer`, :class:`NeverReadingPeer`,
:class:`CloseIgnoringPeer` (optionally dribbling a message every ``interval``;
:class:`DribblingPeer` does by default),
:class:`PingFloodingPeer` and :class:`SendingPeer` (an aiohttp server that sends given
messages, with or without permessage-deflate).

Why one file of about 700 lines: the peers share one raw-socket server base
and its handshake; most peers are a short subclass of it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import socket
import struct
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Final, Literal, Self

from aiohttp import web

__all__ = [
    "CloseIgnoringPeer",
    "DribblingPeer",
    "HandshakePeer",
    "NeverReadingPeer",
    "PingFloodingPeer",
    "RecordedRequest",
    "RedirectingPeer",
    "SendingPeer",
]

_WS_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_MAX_HEAD: Final = 16 * 1024
_OP_TEXT: Final = 0x1
_OP_CLOSE: Final = 0x8
_OP_PING: Final = 0x9
_OP_PONG: Final = 0xA


@dataclasses.dataclass(frozen=True)
class RecordedRequest:
    """One HTTP request head a peer received."""

    method: str
    target: str
    headers: tuple[tuple[str, str], ...]
    """Header lines in the order received, names as sent."""

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        lowered = name.lower()
        for key, value in self.headers:
            if key.lower() == lowered:
                return value
        return None


def _parse_head(head: bytes) -> RecordedRequest:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    method, target = (parts[0], parts[1]) if len(parts) >= 2 else (lines[0], "")
    headers = []
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            headers.append((name.strip(), value.strip()))
    return RecordedRequest(method, target, tuple(headers))


def _frame(opcode: int, payload: bytes) -> bytes:
    """A final, unmasked server frame."""
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", 0x80 | opcode, length)
    elif length < 1 << 16:
        header = struct.pack("!BBH", 0x80 | opcode, 126, length)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 127, length)
    return header + payload


class _FrameParser:
    """Splits the client's (masked) byte stream into ``(opcode, payload)`` frames."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self._buf += data
        frames = []
        while True:
            buf = self._buf
            if len(buf) < 2:
                break
            opcode, length, pos = buf[0] & 0x0F, buf[1] & 0x7F, 2
            if length == 126:
                if len(buf) < 4:
                    break
                length, pos = struct.unpack_from("!H", buf, 2)[0], 4
            elif length == 127:
                if len(buf) < 10:
                    break
                length, pos = struct.unpack_from("!Q", buf, 2)[0], 10
            masked = bool(buf[1] & 0x80)
            end = pos + (4 if masked else 0) + length
            if len(buf) < end:
                break
            if masked:
                mask = buf[pos : pos + 4]
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(buf[pos + 4 : end]))
            else:
                payload = bytes(buf[pos:end])
            frames.append((opcode, payload))
            del buf[:end]
        return frames


class _RawPeer:
    """A raw TCP listener on 127.0.0.1 that runs :meth:`_serve` for each connection."""

    path = "/ws"

    def __init__(
        self,
        *,
        max_connections: int = 16,
        io_timeout: float = 5.0,
        recv_buffer: int | None = None,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        if not io_timeout > 0:
            raise ValueError("io_timeout must be a positive number of seconds")
        self.max_connections = max_connections
        self.io_timeout = io_timeout
        self._recv_buffer = recv_buffer
        self._listener: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._socks: set[socket.socket] = set()
        self._changed = asyncio.Event()
        self.requests: list[RecordedRequest] = []
        """Every request head received, in order."""
        self.port = 0

    # -- addresses -------------------------------------------------------------------

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def url(self) -> str:
        """``ws://127.0.0.1:PORT/ws``."""
        if not self.port:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return f"ws://{self.host}:{self.port}{self.path}"

    @property
    def http_url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://{self.host}:{self.port}"

    @property
    def open_connections(self) -> int:
        """Client connections currently open on the peer's side."""
        return len(self._socks)

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if self._recv_buffer is not None:
                # Set before listen(): accepted sockets inherit it, so a peer that
                # stops reading fills up after a few KiB instead of megabytes.
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._recv_buffer)
            listener.bind((self.host, 0))
            listener.listen(self.max_connections)
            listener.setblocking(False)
        except BaseException:
            listener.close()
            raise
        self._listener = listener
        self.port = listener.getsockname()[1]
        self._accepting = asyncio.get_running_loop().create_task(self._accept_loop())

    async def stop(self) -> None:
        tasks = [t for t in (self._accepting, *self._handlers) if t is not None]
        self._accepting = None
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for sock in list(self._socks):
            sock.close()
        self._socks.clear()
        if self._listener is not None:
            self._listener.close()
            self._listener = None

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

    async def wait_for_requests(self, n: int, timeout: float = 5.0) -> None:
        """Return once ``n`` requests have arrived; ``TimeoutError`` after ``timeout``."""
        await self._wait(lambda: len(self.requests) >= n, timeout)

    async def wait_for_open_connections(self, n: int, timeout: float = 5.0) -> None:
        """Return once exactly ``n`` client connections are open on the peer's side."""
        await self._wait(lambda: len(self._socks) == n, timeout)

    async def _wait(self, predicate: Callable[[], bool], timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()

    # -- serving ---------------------------------------------------------------------

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._listener is not None
        while True:
            sock, _ = await loop.sock_accept(self._listener)
            if len(self._socks) >= self.max_connections:
                sock.close()  # bounded: a client opening connections in a loop gets refused
                continue
            sock.setblocking(False)
            self._socks.add(sock)
            task = loop.create_task(self._run(sock))
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)

    async def _run(self, sock: socket.socket) -> None:
        try:
            await self._serve(sock)
        except (OSError, TimeoutError):
            pass  # the client went away or stalled: that is what these peers provoke
        finally:
            self._socks.discard(sock)
            sock.close()
            self._notify()

    async def _serve(self, sock: socket.socket) -> None:
        raise NotImplementedError

    async def _read_head(self, sock: socket.socket) -> RecordedRequest | None:
        """Read one request head (bounded in size and time) and record it."""
        loop = asyncio.get_running_loop()
        data = b""
        async with asyncio.timeout(self.io_timeout):
            while b"\r\n\r\n" not in data:
                if len(data) > _MAX_HEAD:
                    return None
                chunk = await loop.sock_recv(sock, 4096)
                if not chunk:
                    return None
                data += chunk
        request = _parse_head(data.split(b"\r\n\r\n", 1)[0])
        self.requests.append(request)
        self._notify()
        return request

    async def _send(self, sock: socket.socket, data: bytes) -> None:
        async with asyncio.timeout(self.io_timeout):
            await asyncio.get_running_loop().sock_sendall(sock, data)

    async def _accept_handshake(
        self, sock: socket.socket, extra: Mapping[str, str] | None = None
    ) -> RecordedRequest | None:
        """Read the upgrade request and answer 101 (with ``extra`` headers)."""
        request = await self._read_head(sock)
        if request is None:
            return None
        key = (request.header("sec-websocket-key") or "").encode()
        accept = base64.b64encode(hashlib.sha1(key + _WS_GUID).digest()).decode()
        lines = [
            "HTTP/1.1 101 Switching Protocols",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Accept: {accept}",
            *(f"{name}: {value}" for name, value in (extra or {}).items()),
        ]
        await self._send(sock, ("\r\n".join(lines) + "\r\n\r\n").encode())
        return request

    async def _discard_until_eof(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while await loop.sock_recv(sock, 65536):
            pass


class HandshakePeer(_RawPeer):
    """Answers every request with ``status`` and ``headers`` and records what it got.

    ``status=101`` completes a WebSocket handshake (with a correct
    ``Sec-WebSocket-Accept``) and then reads and discards frames until the client
    disconnects: with ``headers={"Sec-WebSocket-Protocol": "evil"}`` it selects a
    subprotocol the client never offered. Any other status is sent as a plain HTTP
    response (with ``body``) and the connection is closed: a server that rejects the
    handshake (401, 500, ...).
    """

    def __init__(
        self,
        status: int = 101,
        headers: Mapping[str, str] | None = None,
        *,
        body: bytes = b"",
        max_connections: int = 16,
        io_timeout: float = 5.0,
    ) -> None:
        super().__init__(max_connections=max_connections, io_timeout=io_timeout)
        if not 100 <= status <= 599:
            raise ValueError(f"status must be an HTTP status code, got {status}")
        for name, value in (headers or {}).items():
            if any(c in name + value for c in "\r\n"):
                raise ValueError(f"header {name!r} contains CR or LF")
        self.status = status
        self.headers = dict(headers or {})
        self.body = body

    async def _serve(self, sock: socket.socket) -> None:
        if self.status == 101:
            if await self._accept_handshake(sock, self.headers) is not None:
                await self._discard_until_eof(sock)
            return
        if await self._read_head(sock) is None:
            return
        lines = [
            f"HTTP/1.1 {self.status} Peer Says No",
            f"Content-Length: {len(self.body)}",
            "Connection: close",
            *(f"{name}: {value}" for name, value in self.headers.items()),
        ]
        await self._send(sock, ("\r\n".join(lines) + "\r\n\r\n").encode() + self.body)


class RedirectingPeer(HandshakePeer):
    """Answers every handshake with a redirect (``status``, default 307) to ``location``."""

    def __init__(self, location: str, *, status: int = 307, io_timeout: float = 5.0) -> None:
        if status not in (301, 302, 303, 307, 308):
            raise ValueError(f"status must be a redirect (301-303, 307, 308), got {status}")
        super().__init__(status, {"Location": location}, io_timeout=io_timeout)
        self.location = location


class NeverReadingPeer(_RawPeer):
    """Completes the handshake, then never reads another byte.

    The peer's receive buffer is kept small (``recv_buffer`` bytes), so a client's
    writes back up into its own socket and transport buffers quickly, as with a peer
    that is frozen or overloaded. :meth:`wait_disconnect` then tells whether the
    client reset the connection (``transport.abort()`` with linger 0) or closed it
    gracefully, which on a stuck peer leaves the socket open behind its queued data.
    """

    def __init__(
        self, *, recv_buffer: int = 4096, max_connections: int = 16, io_timeout: float = 5.0
    ) -> None:
        super().__init__(
            max_connections=max_connections, io_timeout=io_timeout, recv_buffer=recv_buffer
        )
        self._conns: list[socket.socket] = []
        self._released = asyncio.Event()
        self.drained = 0
        """Bytes read by :meth:`wait_disconnect` before the connection ended."""

    async def _serve(self, sock: socket.socket) -> None:
        if await self._accept_handshake(sock) is None:
            return
        self._conns.append(sock)
        self._notify()
        # Hold the socket open without reading until stop() or wait_disconnect().
        await self._released.wait()

    async def wait_for_connections(self, n: int = 1, timeout: float = 5.0) -> None:
        """Return once ``n`` handshakes have completed."""
        await self._wait(lambda: len(self._conns) >= n, timeout)

    async def wait_disconnect(
        self, timeout: float = 1.0, *, index: int = -1
    ) -> Literal["reset", "eof"]:
        """Start reading connection ``index`` and say how it ends: ``"reset"`` or ``"eof"``.

        Reads (and counts in :attr:`drained`) whatever the client managed to queue. A
        reset arrives as soon as the queued bytes that reached this side are read; a
        graceful close only after everything the client had buffered, if ever.
        ``TimeoutError`` if the connection is still open after ``timeout`` seconds.
        """
        sock = self._conns[index]
        loop = asyncio.get_running_loop()
        self.drained = 0
        async with asyncio.timeout(timeout):
            while True:
                try:
                    chunk = await loop.sock_recv(sock, 65536)
                except ConnectionResetError:
                    return "reset"
                if not chunk:
                    return "eof"
                self.drained += len(chunk)


class CloseIgnoringPeer(_RawPeer):
    """Completes the handshake, never answers a close frame, optionally dribbles data.

    It reads and discards everything the client sends, counting close frames in
    :attr:`close_frames`. With ``interval`` it also sends a small text message
    (``payload``) every ``interval`` seconds until the client disconnects: the client
    keeps receiving data, so a per-read timeout never expires.
    """

    def __init__(
        self,
        *,
        interval: float | None = None,
        payload: str = "tick",
        max_connections: int = 16,
        io_timeout: float = 5.0,
    ) -> None:
        super().__init__(max_connections=max_connections, io_timeout=io_timeout)
        if interval is not None and not interval >= 0.001:
            raise ValueError("interval must be at least 0.001 s (or None: send nothing)")
        self.interval = interval
        self.payload = payload.encode()
        self.close_frames = 0
        """Close frames received (and ignored)."""
        self.messages_sent = 0

    async def _serve(self, sock: socket.socket) -> None:
        if await self._accept_handshake(sock) is None:
            return
        dribble = (
            asyncio.get_running_loop().create_task(self._dribble(sock))
            if self.interval is not None
            else None
        )
        try:
            parser = _FrameParser()
            loop = asyncio.get_running_loop()
            while chunk := await loop.sock_recv(sock, 65536):
                for opcode, _ in parser.feed(chunk):
                    if opcode == _OP_CLOSE:
                        self.close_frames += 1
                        self._notify()
        finally:
            if dribble is not None:
                dribble.cancel()
                await asyncio.gather(dribble, return_exceptions=True)

    async def _dribble(self, sock: socket.socket) -> None:
        assert self.interval is not None
        while True:
            await self._send(sock, _frame(_OP_TEXT, self.payload))
            self.messages_sent += 1
            self._notify()
            await asyncio.sleep(self.interval)

    async def wait_for_close_frames(self, n: int = 1, timeout: float = 5.0) -> None:
        """Return once ``n`` close frames have been received (and ignored)."""
        await self._wait(lambda: self.close_frames >= n, timeout)

    async def wait_for_messages_sent(self, n: int, timeout: float = 5.0) -> None:
        """Return once ``n`` dribbled messages have been written."""
        await self._wait(lambda: self.messages_sent >= n, timeout)


class DribblingPeer(CloseIgnoringPeer):
    """A :class:`CloseIgnoringPeer` that sends ``payload`` every ``interval`` (0.5 s) seconds."""

    def __init__(
        self,
        interval: float = 0.5,
        *,
        payload: str = "tick",
        max_connections: int = 16,
        io_timeout: float = 5.0,
    ) -> None:
        super().__init__(
            interval=interval,
            payload=payload,
            max_connections=max_connections,
            io_timeout=io_timeout,
        )


class PingFloodingPeer(_RawPeer):
    """Completes the handshake, then sends ``count`` pings (125-byte ``payload``s capped).

    As fast as the socket takes them, or ``rate`` pings a second. With ``read=True``
    (the default) pongs the client sends back are counted in :attr:`pongs` and the
    peer keeps reading until the client disconnects. With ``read=False`` it never
    reads (its receive buffer is kept at ``recv_buffer`` bytes): every pong the client
    writes piles up on the client's side, and the client's own pings go unanswered,
    which is what a heartbeat must notice. The socket is held until the client ends
    it or the peer stops.
    """

    def __init__(
        self,
        count: int = 10_000,
        *,
        read: bool = True,
        rate: float | None = None,
        payload: bytes = b"flood",
        recv_buffer: int | None = None,
        max_connections: int = 16,
        io_timeout: float = 5.0,
    ) -> None:
        super().__init__(
            max_connections=max_connections,
            io_timeout=io_timeout,
            recv_buffer=recv_buffer if recv_buffer is not None else (None if read else 4096),
        )
        if not 0 <= count <= 10_000_000:
            raise ValueError("count must be between 0 and 10,000,000")
        if rate is not None and not 1 <= rate <= 1_000_000:
            raise ValueError("rate must be between 1 and 1,000,000 pings a second (or None)")
        if len(payload) > 125:
            raise ValueError("a ping payload is at most 125 bytes")
        self.count = count
        self.read = read
        self.rate = rate
        self.payload = payload
        self.pings_sent = 0
        self.pongs = 0

    async def _serve(self, sock: socket.socket) -> None:
        if await self._accept_handshake(sock) is None:
            return
        loop = asyncio.get_running_loop()
        reader = loop.create_task(self._count_pongs(sock) if self.read else asyncio.Event().wait())
        try:
            ping = _frame(_OP_PING, self.payload)
            batch = ping * 100
            started = loop.time()
            while self.pings_sent < self.count:
                n = min(100, self.count - self.pings_sent)
                await self._send(sock, batch if n == 100 else ping * n)
                self.pings_sent += n
                self._notify()
                if self.rate is not None:
                    # Paced by the clock, not by sleeps that add up: 10,000/s stays 10,000/s.
                    await asyncio.sleep(
                        max(0.0, started + self.pings_sent / self.rate - loop.time())
                    )
            await reader
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

    async def _count_pongs(self, sock: socket.socket) -> None:
        parser = _FrameParser()
        loop = asyncio.get_running_loop()
        while chunk := await loop.sock_recv(sock, 65536):
            self.pongs += sum(1 for opcode, _ in parser.feed(chunk) if opcode == _OP_PONG)
            self._notify()

    async def wait_for_pongs(self, n: int, timeout: float = 5.0) -> None:
        await self._wait(lambda: self.pongs >= n, timeout)

    async def wait_for_pings_sent(self, n: int, timeout: float = 5.0) -> None:
        await self._wait(lambda: self.pings_sent >= n, timeout)


class SendingPeer:
    """An aiohttp WebSocket server that sends ``messages`` to each client, then waits.

    With ``compress=True`` it negotiates permessage-deflate (if the client offers it) and
    sends every message compressed. After the messages it reads until the client closes
    (answering the close frame, as aiohttp does). Each connection is served for at most
    ``io_timeout`` seconds, and client messages over ``max_msg_size`` bytes end it.
    """

    path = "/ws"

    def __init__(
        self,
        messages: Iterable[str | bytes],
        *,
        compress: bool = False,
        io_timeout: float = 5.0,
        max_msg_size: int = 4 * 1024 * 1024,
    ) -> None:
        if not io_timeout > 0:
            raise ValueError("io_timeout must be a positive number of seconds")
        if max_msg_size < 1:
            raise ValueError("max_msg_size must be at least 1 (the peer's reads are bounded)")
        self.max_msg_size = max_msg_size
        self.messages = list(messages)
        self.compress = compress
        self.io_timeout = io_timeout
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.compressed_clients = 0
        """Clients that negotiated permessage-deflate."""
        self.close_codes: list[int | None] = []
        """The close code of each finished client connection (None: no close frame)."""
        self._changed = asyncio.Event()

    @property
    def url(self) -> str:
        if not self.port:
            raise RuntimeError("SendingPeer is not started")
        return f"ws://127.0.0.1:{self.port}{self.path}"

    async def _handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=self.compress, max_msg_size=self.max_msg_size)
        await ws.prepare(request)
        if ws.compress:
            self.compressed_clients += 1
        with contextlib.suppress(ConnectionError, TimeoutError):
            async with asyncio.timeout(self.io_timeout):
                for message in self.messages:
                    if isinstance(message, str):
                        await ws.send_str(message)
                    else:
                        await ws.send_bytes(message)
                async for _ in ws:
                    pass
        self.close_codes.append(ws.close_code)
        self._changed.set()
        return ws

    async def wait_for_closes(self, n: int, timeout: float = 5.0) -> None:
        """Return once ``n`` client connections have finished."""
        async with asyncio.timeout(timeout):
            while len(self.close_codes) < n:
                self._changed.clear()
                await self._changed.wait()

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get(self.path, self._handle)
        runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=self.io_timeout)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

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
