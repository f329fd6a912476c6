"""Child-process entry point of :class:`wsclient.testing.interop.InteropServer`.

Run as ``python -m wsclient.testing._interop_main --kind KIND --port N``.  It serves the
same small protocol (see :mod:`wsclient.testing.interop`) with a server wsclient did not
write, prints ``READY <port>`` on standard output once that server accepts connections,
and leaves ``SIGTERM`` to the server's *own* graceful shutdown:

``websockets``
    :func:`websockets.asyncio.server.serve`; ``SIGTERM`` calls ``server.close()``, the
    library's documented shutdown, which closes every WebSocket with 1001.
``uvicorn``
    a starlette app under :class:`uvicorn.Server`, whose own signal handling closes every
    WebSocket with 1012 and then re-raises ``SIGTERM`` (so the exit status is ``-15``).
``aiohttp``
    :func:`aiohttp.web.run_app`; aiohttp does not close WebSockets by itself, so the app
    does what aiohttp's documentation prescribes: an ``on_shutdown`` hook closing them with
    1001.

Only the library of the chosen kind is imported, so the other kinds work without it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import dataclasses
import errno
import json
import math
import os
import signal
import socket
import ssl
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

_PR_SET_PDEATHSIG: Final = 1
_BIND_RETRY_SECONDS: Final = 5.0
_MAX_WAIT_SECONDS: Final = 60.0

Send = Callable[[str | bytes], Awaitable[None]]
Close = Callable[[int, str], Awaitable[None]]


class _State:
    """Counters and the health status, shared by the WebSocket and HTTP handlers."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.open = 0
        self.accepted = 0
        self.messages = 0
        self.health = 200
        self._changed: set[asyncio.Future[None]] = set()

    def snapshot(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "pid": os.getpid(),
            "open": self.open,
            "accepted": self.accepted,
            "messages": self.messages,
            "health": self.health,
        }

    def notify(self) -> None:
        futures, self._changed = self._changed, set()
        for fut in futures:
            if not fut.done():
                fut.set_result(None)

    def opened(self) -> None:
        self.open += 1
        self.accepted += 1
        self.notify()

    def closed(self) -> None:
        self.open -= 1
        self.notify()

    async def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait for ``predicate()`` on a change notification; ``False`` after ``timeout``."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    fut: asyncio.Future[None] = loop.create_future()
                    self._changed.add(fut)
                    try:
                        await fut
                    finally:
                        self._changed.discard(fut)
        except TimeoutError:
            return False
        return True

    # -- protocol ------------------------------------------------------------------------

    async def on_message(self, data: str | bytes, send: Send, close: Close) -> None:
        """Answer one client message (the protocol documented in ``interop``)."""
        self.messages += 1
        if isinstance(data, bytes):
            await send(data)
            return
        try:
            msg = json.loads(data)
        except ValueError:
            msg = None
        op = msg.get("op") if isinstance(msg, dict) else None
        if op == "count" and isinstance(msg, dict):
            n = int(msg.get("n", 0))
            start = int(msg.get("start", 0))
            interval = float(msg.get("interval", 0.0))
            extra = {"id": msg["id"]} if "id" in msg else {}
            delay = float(msg.get("delay", 0.0))
            if delay > 0:
                await asyncio.sleep(delay)  # a reply still owed when the server shuts down
            for seq in range(start, start + n):
                await send(json.dumps({**extra, "seq": seq}))
                if interval > 0:
                    # Pacing is the point here: a slow stream lets a test shut the
                    # server down in the middle of it.
                    await asyncio.sleep(interval)
            return
        if op == "health" and isinstance(msg, dict):
            self.health = int(msg.get("status", 200))
            await send(data)  # the verbatim echo is the acknowledgement
            return
        if op == "blob" and isinstance(msg, dict):
            # One text message of exactly "size" bytes (capped): size limits are
            # tested against the server's own framing.
            await send("x" * min(int(msg.get("size", 0)), 16 * 1024 * 1024))
            return
        if op == "close" and isinstance(msg, dict):
            await close(int(msg.get("code", 1000)), str(msg.get("reason", "")))
            return
        await send(data)  # plain echo; a JSON "id" survives because nothing is re-encoded

    # -- HTTP ------------------------------------------------------------------------------

    async def http(self, path: str, query: Mapping[str, list[str]]) -> tuple[int, dict[str, Any]]:
        """Answer ``/health``, ``/stats`` and ``/control``; ``(404, ...)`` for anything else."""
        if path == "/health":
            ok = 200 <= self.health < 300
            return self.health, {"status": "ok" if ok else "unhealthy", "kind": self.kind}
        if path == "/control":
            if "health" in query:
                self.health = int(query["health"][0])
            return 200, self.snapshot()
        if path == "/stats":
            timeout = min(float(query.get("timeout", ["5"])[0]), _MAX_WAIT_SECONDS)
            conditions: list[Callable[[], bool]] = []
            if "open" in query:
                want_open = int(query["open"][0])
                conditions.append(lambda: self.open == want_open)
            if "accepted" in query:
                want_accepted = int(query["accepted"][0])
                conditions.append(lambda: self.accepted >= want_accepted)
            if conditions and not await self.wait_until(
                lambda: all(c() for c in conditions), timeout
            ):
                return 504, self.snapshot()
            return 200, self.snapshot()
        return 404, {"error": f"no route for {path}"}


# --------------------------------------------------------------------------------------
# One runner per kind
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Options:
    """The server options every kind maps onto its own settings."""

    ping_interval: float | None = None
    ping_timeout: float | None = None
    subprotocols: tuple[str, ...] = ()
    certfile: str | None = None
    keyfile: str | None = None

    def ssl_context(self) -> ssl.SSLContext | None:
        if self.certfile is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.certfile, self.keyfile)
        return context

    def select(self, offered: list[str], query: Mapping[str, list[str]]) -> str | None:
        """``?select=NAME`` forces NAME; otherwise the first offered one we accept."""
        if "select" in query:
            return query["select"][0]
        return next((p for p in offered if p in self.subprotocols), None)


def _ready(port: int) -> None:
    print(f"READY {port}", flush=True)


async def _run_websockets(state: _State, sock: socket.socket, path: str, opts: _Options) -> int:
    from websockets.asyncio.server import ServerConnection, serve
    from websockets.exceptions import ConnectionClosed
    from websockets.http11 import Request, Response

    async def process_request(connection: ServerConnection, request: Request) -> Response | None:
        parts = urlsplit(request.path)
        if parts.path == path:
            return None
        status, body = await state.http(parts.path, parse_qs(parts.query))
        response = connection.respond(status, json.dumps(body))
        response.headers["Content-Type"] = "application/json"
        return response

    async def handler(connection: ServerConnection) -> None:
        async def close(code: int, reason: str) -> None:
            await connection.close(code, reason)

        state.opened()
        try:
            async for data in connection:
                await state.on_message(data, connection.send, close)
        except ConnectionClosed:
            pass  # the peer or a shutdown ended it mid-stream: the normal end here
        finally:
            state.closed()

    def select_subprotocol(connection: ServerConnection, offered: Any) -> Any:
        request_path = connection.request.path if connection.request is not None else ""
        return opts.select(list(offered), parse_qs(urlsplit(request_path).query))

    extra: dict[str, Any] = {"select_subprotocol": select_subprotocol}
    if opts.ping_interval is not None:
        extra["ping_interval"] = opts.ping_interval
    if opts.ping_timeout is not None:
        extra["ping_timeout"] = opts.ping_timeout
    if opts.certfile is not None:
        extra["ssl"] = opts.ssl_context()
    loop = asyncio.get_running_loop()
    async with serve(handler, sock=sock, process_request=process_request, **extra) as server:
        # The library's documented graceful shutdown: close() sends 1001 to every open
        # WebSocket, stops listening and waits for the handlers.
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, server.close)
        _ready(sock.getsockname()[1])
        await server.wait_closed()
    return 0


def _run_uvicorn(
    state: _State, sock: socket.socket, path: str, graceful_timeout: float, opts: _Options
) -> int:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route, WebSocketRoute
    from starlette.websockets import WebSocket, WebSocketDisconnect

    async def http(request: Request) -> JSONResponse:
        status, body = await state.http(request.url.path, parse_qs(request.url.query))
        return JSONResponse(body, status_code=status)

    async def ws_endpoint(websocket: WebSocket) -> None:
        offered = list(websocket.scope.get("subprotocols", []))
        query = parse_qs(websocket.scope.get("query_string", b"").decode())
        await websocket.accept(subprotocol=opts.select(offered, query))
        state.opened()

        async def send(data: str | bytes) -> None:
            if isinstance(data, bytes):
                await websocket.send_bytes(data)
            else:
                await websocket.send_text(data)

        async def close(code: int, reason: str) -> None:
            await websocket.close(code, reason)

        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                text, data = message.get("text"), message.get("bytes")
                await state.on_message(text if text is not None else data or b"", send, close)
        except (WebSocketDisconnect, RuntimeError, OSError):
            # uvicorn's shutdown (1012) or the peer ended the socket while we were
            # sending; starlette reports a send after close as RuntimeError.
            pass
        finally:
            state.closed()

    app = Starlette(
        routes=[
            Route("/health", http),
            Route("/stats", http),
            Route("/control", http),
            WebSocketRoute(path, ws_endpoint),
        ]
    )

    class _Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if not self.should_exit:
                _ready(sock.getsockname()[1])

    extra: dict[str, Any] = {}
    if opts.ping_interval is not None:
        extra["ws_ping_interval"] = opts.ping_interval
    if opts.ping_timeout is not None:
        extra["ws_ping_timeout"] = opts.ping_timeout
    if opts.certfile is not None:
        extra["ssl_certfile"], extra["ssl_keyfile"] = opts.certfile, opts.keyfile
    config = uvicorn.Config(
        app,
        **extra,
        lifespan="off",
        log_level="warning",
        access_log=False,
        # uvicorn takes whole seconds here.
        timeout_graceful_shutdown=max(1, math.ceil(graceful_timeout)),
    )
    # Server.run() installs uvicorn's own SIGTERM/SIGINT handlers (capture_signals), shuts
    # down (1012 to every WebSocket) and re-raises the signal, as in production.
    _Server(config).run(sockets=[sock])
    return 0


def _run_aiohttp(
    state: _State, sock: socket.socket, path: str, graceful_timeout: float, opts: _Options
) -> int:
    from aiohttp import WSCloseCode, WSMsgType, web

    sockets: set[web.WebSocketResponse] = set()

    async def http(request: web.Request) -> web.Response:
        status, body = await state.http(request.path, parse_qs(request.query_string))
        return web.json_response(body, status=status)

    async def ws_endpoint(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=opts.subprotocols, heartbeat=opts.ping_interval)
        await ws.prepare(request)
        sockets.add(ws)
        state.opened()

        async def close(code: int, reason: str) -> None:
            await ws.close(code=code, message=reason.encode())

        async def send(data: str | bytes) -> None:
            if isinstance(data, bytes):
                await ws.send_bytes(data)
            else:
                await ws.send_str(data)

        try:
            async for msg in ws:
                if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                    await state.on_message(msg.data, send, close)
        except (ConnectionError, RuntimeError):
            pass  # the shutdown hook or the peer closed it while we were sending
        finally:
            sockets.discard(ws)
            state.closed()
        return ws

    async def on_shutdown(_app: web.Application) -> None:
        # aiohttp's documented graceful shutdown for WebSockets (it has no built-in one).
        await asyncio.gather(
            *(ws.close(code=WSCloseCode.GOING_AWAY, message=b"Server shutdown") for ws in sockets),
            return_exceptions=True,
        )

    app = web.Application()
    app.router.add_get("/health", http)
    app.router.add_get("/stats", http)
    app.router.add_get("/control", http)
    app.router.add_get(path, ws_endpoint)
    app.on_shutdown.append(on_shutdown)
    port = sock.getsockname()[1]
    # run_app calls ``print`` once every site listens: that is our READY moment.
    web.run_app(
        app,
        sock=sock,
        shutdown_timeout=graceful_timeout,
        ssl_context=opts.ssl_context(),
        print=lambda *_args, **_kw: _ready(port),
        access_log=None,
    )
    return 0


# --------------------------------------------------------------------------------------
# Process plumbing
# --------------------------------------------------------------------------------------


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket with SO_REUSEADDR, like the servers' own binds, so a restart on
    the same port works while old connections sit in TIME_WAIT.  Retries EADDRINUSE for
    a few seconds: the previous child's socket may still be going away."""
    deadline = time.monotonic() + _BIND_RETRY_SECONDS
    while True:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(128)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            if exc.errno != errno.EADDRINUSE or port == 0 or time.monotonic() > deadline:
                raise
            time.sleep(0.05)  # a blocking retry before anything else runs in this child
            continue
        return sock


def _die_with_parent(parent_pid: int) -> None:
    """Be SIGKILLed when the parent dies, even while SIGSTOPped (Linux only); the stdin
    watcher covers the graceful case and other systems."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if parent_pid and os.getppid() != parent_pid:
        os._exit(1)  # the parent died before prctl took effect


def _watch_stdin() -> None:
    """SIGTERM ourselves when stdin reaches EOF (the parent went away), so every kind
    takes its own graceful path."""
    import threading

    def watch() -> None:
        with contextlib.suppress(OSError):
            while os.read(sys.stdin.fileno(), 4096):
                pass
        os.kill(os.getpid(), signal.SIGTERM)

    # A daemon thread works under every kind's event loop (uvicorn and aiohttp own theirs).
    threading.Thread(target=watch, name="stdin-eof", daemon=True).start()


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m wsclient.testing._interop_main",
        description="Echo server on a third-party WebSocket server (wsclient.testing.interop).",
    )
    parser.add_argument("--kind", choices=("websockets", "uvicorn", "aiohttp"), required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--path", default="/ws")
    parser.add_argument(
        "--graceful-timeout",
        type=float,
        default=5.0,
        help="uvicorn timeout_graceful_shutdown / aiohttp shutdown_timeout (seconds)",
    )
    parser.add_argument("--parent-pid", type=int, default=0)
    parser.add_argument("--ping-interval", type=float, default=None)
    parser.add_argument("--ping-timeout", type=float, default=None)
    parser.add_argument("--subprotocols", default="")
    parser.add_argument("--certfile", default=None)
    parser.add_argument("--keyfile", default=None)
    parser.add_argument(
        "--exit-on-stdin-eof",
        action="store_true",
        help="shut down when standard input is closed (the parent process went away)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Serve until the server's own shutdown completes; return the exit status."""
    args = _parse_args(argv)
    _die_with_parent(args.parent_pid)
    sock = _bind(args.host, args.port)
    if args.exit_on_stdin_eof:
        _watch_stdin()
    state = _State(args.kind)
    opts = _Options(
        ping_interval=args.ping_interval,
        ping_timeout=args.ping_timeout,
        subprotocols=tuple(p for p in args.subprotocols.split(",") if p),
        certfile=args.certfile,
        keyfile=args.keyfile,
    )
    if args.kind == "websockets":
        return asyncio.run(_run_websockets(state, sock, args.path, opts))
    if args.kind == "uvicorn":
        return _run_uvicorn(state, sock, args.path, args.graceful_timeout, opts)
    return _run_aiohttp(state, sock, args.path, args.graceful_timeout, opts)


if __name__ == "__main__":
    sys.exit(main())
