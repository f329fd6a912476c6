"""Servers wsclient did not write, in child processes, as controllable test backends.

:class:`InteropServer` runs a real third-party WebSocket server in its own child process
(``python -m wsclient.testing._interop_main``), bound to ``127.0.0.1``, so a client can be
tested against the library's real handshake, framing and - above all - its own graceful
shutdown, crash (``SIGKILL``), freeze (``SIGSTOP``) and restart on the same port.

Kinds (:data:`INTEROP_KINDS`):

``"websockets"``
    the `websockets` library's :func:`websockets.asyncio.server.serve`; ``SIGTERM`` runs
    its documented ``server.close()``: every WebSocket is closed with **1001**, exit 0.
``"uvicorn"``
    a starlette ``WebSocketRoute`` under :class:`uvicorn.Server` with uvicorn's own
    signal handling (its default WebSocket implementation); ``SIGTERM`` closes every
    WebSocket with **1012** and uvicorn then re-raises the signal, so the exit status is
    ``-SIGTERM`` (``-15``).
``"aiohttp"``
    :func:`aiohttp.web.run_app` with the ``on_shutdown`` hook aiohttp's documentation
    prescribes (aiohttp itself does not close WebSockets): **1001**, exit 0.

:data:`SHUTDOWN_CLOSE_CODES` and :data:`SHUTDOWN_EXIT_CODES` hold these observed values
(``tests/test_interop_servers.py`` checks them against the real servers).

Every kind serves the same protocol:

``/ws`` (WebSocket)
    echoes text and binary messages verbatim (so a JSON ``"id"`` is preserved); a JSON
    text ``{"op": "count", "n": K}`` makes it send ``K`` messages ``{"seq": 0}`` ...
    ``{"seq": K-1}`` in order (with the request's ``"id"`` if it had one, and paced by an
    optional ``"interval"`` in seconds, to shut down mid-stream; an optional ``"start": S``
    numbers them ``S`` ... ``S+K-1``, so a reconnecting client can resume a feed; an
    optional ``"delay"`` in seconds holds the first one back);
    ``{"op": "blob", "size": N}`` sends one text message of exactly ``N`` bytes;
    ``{"op": "health", "status": 503}`` sets the ``/health`` status and is echoed back
    as the acknowledgement; ``{"op": "close", "code": C, "reason": R}`` makes the server
    close that WebSocket with ``C``.
``GET /health``
    answers with the current health status (200 at start).
``GET /control?health=503``
    sets the health status without a WebSocket (so the counters do not move).
``GET /stats``
    ``{"kind", "pid", "open", "accepted", "messages", "health"}``: WebSockets open now,
    handshakes completed since the child started, messages received.  With
    ``?open=N`` (exactly ``N`` open) and/or ``?accepted=N`` (at least ``N``) it waits up
    to ``?timeout=S`` (default 5) for that and answers 504 if it does not happen.

The parent side only needs :mod:`aiohttp`; the child imports just the library of its
kind, which must be installed (``websockets``; ``uvicorn`` and ``starlette``).  POSIX
only.  Example::

    async with InteropServer("uvicorn") as server, aiohttp.ClientSession() as session:
        async with session.ws_connect(server.url) as ws:
            await server.wait_for_open(1)
            await server.terminate()
            assert (await ws.receive()).data == 1012
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import os
import signal
import ssl
import sys
import warnings
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Final, Literal, Self, get_args

import aiohttp

from wsclient.testing._common import _format_host
from wsclient.testing.process import _child_env

__all__ = [
    "INTEROP_KINDS",
    "SHUTDOWN_CLOSE_CODES",
    "SHUTDOWN_EXIT_CODES",
    "InteropError",
    "InteropKind",
    "InteropServer",
    "InteropStats",
]

logger = logging.getLogger("wsclient.testing.interop")

InteropKind = Literal["websockets", "uvicorn", "aiohttp"]
"""Which server :class:`InteropServer` runs."""

INTEROP_KINDS: Final[tuple[InteropKind, ...]] = get_args(InteropKind)
"""Every :data:`InteropKind`, handy for ``pytest.mark.parametrize``."""

SHUTDOWN_CLOSE_CODES: Final[Mapping[InteropKind, int]] = {
    "websockets": 1001,
    "uvicorn": 1012,
    "aiohttp": 1001,
}
"""The close code each kind sends to open WebSockets on ``SIGTERM`` (1001 Going Away,
1012 Service Restart)."""

SHUTDOWN_EXIT_CODES: Final[Mapping[InteropKind, int]] = {
    "websockets": 0,
    "uvicorn": -signal.SIGTERM,
    "aiohttp": 0,
}
"""The exit status after a graceful ``SIGTERM`` shutdown, as :meth:`InteropServer.terminate`
returns it (uvicorn re-raises the signal once it has shut down)."""

_OUTPUT_TAIL: Final = 40


class InteropError(RuntimeError):
    """The child process did not start, answer or exit as expected (message says how)."""


@dataclasses.dataclass(frozen=True)
class InteropStats:
    """Counters reported by an :class:`InteropServer`'s ``GET /stats``."""

    open: int
    """WebSockets open in the server now."""
    accepted: int
    """WebSocket handshakes completed since this child process started."""
    messages: int
    """Text and binary messages received since this child process started."""
    health: int
    """The HTTP status ``GET /health`` answers with."""
    pid: int
    """PID of the child that answered."""


class InteropServer:
    """A third-party WebSocket server in a child process (see the module docstring).

    :param kind: ``"websockets"`` (default), ``"uvicorn"`` or ``"aiohttp"``.
    :param host: address to bind (``127.0.0.1``).
    :param port: port to bind; ``0`` (default) lets the OS choose on the first
        :meth:`start`, and every later start or :meth:`restart` reuses that port.
    :param path: path of the WebSocket endpoint (``/ws``).
    :param startup_timeout: how long :meth:`start` waits for the child's ``READY`` line.
    :param stop_timeout: how long :meth:`terminate` waits for the child to exit after
        ``SIGTERM``, and :meth:`kill` after ``SIGKILL``.
    :param control_timeout: timeout of each HTTP request to ``/stats``, ``/health`` and
        ``/control`` (on top of the wait a long-poll asks for).
    :param graceful_timeout: passed to the child as uvicorn's
        ``timeout_graceful_shutdown`` and aiohttp's ``shutdown_timeout``; websockets
        bounds its closing handshakes with its own ``close_timeout`` (10 s).
    :param ping_interval: the server's own keep-alive: it pings every WebSocket this
        often and closes one whose pong does not come within ``ping_timeout``
        (websockets ``ping_interval``/``ping_timeout``, uvicorn ``ws_ping_interval``/
        ``ws_ping_timeout``, aiohttp ``heartbeat``, whose pong wait is half of it).
        None: each library's default.
    :param subprotocols: subprotocols the server accepts; it selects the first one the
        client offers that is in this list. A connection to ``url + "?select=NAME"``
        gets ``NAME`` selected whatever the client offered (websockets and uvicorn;
        aiohttp's server cannot be made to), to test a client's refusal.
    :param tls: ``(certfile, keyfile)``: serve ``wss://``/``https://``; the control
        requests then trust ``client_ssl``.

    ``async with`` starts the child and, on exit, always ``SIGKILL``\\ s and reaps it
    (:meth:`close`); call :meth:`terminate` inside the block for a graceful shutdown.
    The child also dies with its parent (``PR_SET_PDEATHSIG`` on Linux, and EOF on its
    standard input), and an object garbage-collected with a live child kills it with a
    :class:`ResourceWarning`.
    """

    def __init__(
        self,
        kind: InteropKind = "websockets",
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        path: str = "/ws",
        startup_timeout: float = 15.0,
        stop_timeout: float = 10.0,
        control_timeout: float = 5.0,
        graceful_timeout: float = 5.0,
        ping_interval: float | None = None,
        ping_timeout: float | None = None,
        subprotocols: tuple[str, ...] = (),
        tls: tuple[str, str] | None = None,
        client_ssl: ssl.SSLContext | None = None,
    ) -> None:
        if kind not in INTEROP_KINDS:
            raise ValueError(f"unknown kind {kind!r}; expected one of {INTEROP_KINDS}")
        if not path.startswith("/"):
            raise ValueError("path must start with '/'")
        self._kind: InteropKind = kind
        self._host = host
        self._port = port
        self._path = path
        self._startup_timeout = startup_timeout
        self._stop_timeout = stop_timeout
        self._control_timeout = control_timeout
        self._graceful_timeout = graceful_timeout
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._subprotocols = subprotocols
        self._tls = tls
        self._client_ssl = client_ssl
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._output: collections.deque[str] = collections.deque(maxlen=_OUTPUT_TAIL)
        self._paused = False

    def __repr__(self) -> str:
        return f"<InteropServer {self._kind} {self._host}:{self._port} pid={self.pid}>"

    # -- properties ----------------------------------------------------------------------

    @property
    def kind(self) -> InteropKind:
        """Which server runs in the child."""
        return self._kind

    @property
    def host(self) -> str:
        """The bound address."""
        return self._host

    @property
    def port(self) -> int:
        """The bound port (``0`` until first started when constructed with ``port=0``)."""
        return self._port

    @property
    def url(self) -> str:
        """WebSocket URL, e.g. ``ws://127.0.0.1:PORT/ws``."""
        return f"{'wss' if self._tls else 'ws'}://{self._netloc}{self._path}"

    @property
    def http_url(self) -> str:
        """HTTP origin, e.g. ``http://127.0.0.1:PORT``."""
        return f"{'https' if self._tls else 'http'}://{self._netloc}"

    @property
    def health_url(self) -> str:
        """``http://127.0.0.1:PORT/health``."""
        return f"{self.http_url}/health"

    @property
    def _netloc(self) -> str:
        return f"{_format_host(self._host)}:{self._port}"

    @property
    def pid(self) -> int | None:
        """PID of the current (or last) child, if one was started."""
        return self._proc.pid if self._proc is not None else None

    @property
    def returncode(self) -> int | None:
        """Exit status of the last child (negative signal number if killed by a signal)."""
        return self._proc.returncode if self._proc is not None else None

    @property
    def running(self) -> bool:
        """Whether a child is alive (possibly paused)."""
        return self._proc is not None and self._proc.returncode is None

    @property
    def paused(self) -> bool:
        """Whether the child is stopped by :meth:`pause`."""
        return self._paused

    @property
    def output(self) -> str:
        """The last lines the child wrote on stdout/stderr (for failure messages)."""
        return "".join(self._output)

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Spawn the child and wait (at most ``startup_timeout``) until it serves.

        Reuses the previous port, if any.  Raises :class:`InteropError` if the child
        exits first (its output is in the message) or :class:`TimeoutError` if it is not
        ready in time; either way no child is left behind.
        """
        if self.running:
            raise InteropError(f"{self!r} is already running")
        await self._reap()
        cmd = [
            sys.executable,
            "-m",
            "wsclient.testing._interop_main",
            "--kind",
            self._kind,
            "--host",
            self._host,
            "--port",
            str(self._port),
            "--path",
            self._path,
            "--graceful-timeout",
            str(self._graceful_timeout),
            "--parent-pid",
            str(os.getpid()),
            "--exit-on-stdin-eof",
        ]
        if self._ping_interval is not None:
            cmd += ["--ping-interval", str(self._ping_interval)]
        if self._ping_timeout is not None:
            cmd += ["--ping-timeout", str(self._ping_timeout)]
        if self._subprotocols:
            cmd += ["--subprotocols", ",".join(self._subprotocols)]
        if self._tls is not None:
            cmd += ["--certfile", self._tls[0], "--keyfile", self._tls[1]]
        self._output.clear()
        # stderr joins stdout so one task drains both: a child whose pipe nobody reads
        # would block on a write and look hung.
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=_child_env(),
        )
        self._proc = proc
        self._paused = False
        ready: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read_output(proc, ready))
        try:
            async with asyncio.timeout(self._startup_timeout):
                port = await ready
            if port is None:
                await self._reap()
                raise InteropError(
                    f"{self._kind} server exited with {proc.returncode} before it was "
                    f"ready; output:\n{self.output}"
                )
        except TimeoutError:
            await self._kill_and_reap()
            raise TimeoutError(
                f"{self._kind} server did not print READY within {self._startup_timeout}s; "
                f"output:\n{self.output}"
            ) from None
        except BaseException:
            await self._kill_and_reap()
            raise
        self._port = port

    async def _read_output(
        self, proc: asyncio.subprocess.Process, ready: asyncio.Future[int | None]
    ) -> None:
        """Drain the child's output until EOF; resolve ``ready`` with the READY port, or
        with ``None`` if the output ends first."""
        assert proc.stdout is not None
        try:
            while line := await proc.stdout.readline():
                text = line.decode(errors="replace")
                parts = text.split()
                if not ready.done() and len(parts) == 2 and parts[0] == "READY":
                    ready.set_result(int(parts[1]))
                    continue
                self._output.append(text)
                logger.debug("%s child: %s", self._kind, text.rstrip())
        finally:
            if not ready.done():
                ready.set_result(None)

    async def terminate(self) -> int:
        """``SIGTERM`` the child - the server's own graceful shutdown - and reap it.

        A paused child is resumed first so it can act on the signal.  Returns the exit
        status (see :data:`SHUTDOWN_EXIT_CODES`).  If the child has not exited within
        ``stop_timeout`` it is killed and :class:`TimeoutError` is raised.
        """
        proc = self._proc
        if proc is None:
            raise InteropError(f"{self!r} was never started")
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
                if self._paused:
                    proc.send_signal(signal.SIGCONT)
            self._paused = False
            try:
                async with asyncio.timeout(self._stop_timeout):
                    await proc.wait()
            except TimeoutError:
                await self._kill_and_reap()
                raise TimeoutError(
                    f"{self._kind} server did not exit within {self._stop_timeout}s of "
                    f"SIGTERM (killed); output:\n{self.output}"
                ) from None
        await self._reap()
        assert proc.returncode is not None
        return proc.returncode

    async def kill(self) -> int:
        """``SIGKILL`` the child (a crash: no close frames, sockets reset) and reap it.

        Returns the exit status (``-9``, or the earlier one if it had already exited).
        """
        proc = self._proc
        if proc is None:
            raise InteropError(f"{self!r} was never started")
        await self._kill_and_reap()
        assert proc.returncode is not None
        return proc.returncode

    def pause(self) -> None:
        """``SIGSTOP`` the child: its TCP connections stay up, but nothing is read,
        answered or ponged until :meth:`resume`."""
        self._signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """``SIGCONT`` a paused child."""
        self._signal(signal.SIGCONT)
        self._paused = False

    async def restart(self, *, graceful: bool = True) -> None:
        """Stop the child if it runs (:meth:`terminate`, or :meth:`kill` if not
        ``graceful``) and start a new one on the same port."""
        if self.running:
            if graceful:
                await self.terminate()
            else:
                await self.kill()
        await self.start()

    async def close(self) -> None:
        """``SIGKILL`` and reap the child if it runs.  Idempotent; what ``async with`` does
        on exit."""
        await self._kill_and_reap()

    def _signal(self, sig: signal.Signals) -> None:
        if not self.running:
            raise InteropError(f"{self!r} is not running")
        assert self._proc is not None
        with contextlib.suppress(ProcessLookupError):
            self._proc.send_signal(sig)

    async def _kill_and_reap(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL)
        await self._reap()

    async def _reap(self) -> None:
        """Wait for the child's exit and release its pipes and output task (bounded)."""
        proc = self._proc
        if proc is None:
            return
        try:
            async with asyncio.timeout(self._stop_timeout):
                await proc.wait()
        except TimeoutError:
            raise InteropError(
                f"{self._kind} child pid {proc.pid} was not reaped within {self._stop_timeout}s"
            ) from None
        self._paused = False
        if proc.stdin is not None and not proc.stdin.is_closing():
            proc.stdin.close()
        reader, self._reader = self._reader, None
        if reader is not None:
            # The output reaches EOF once the child is gone; the bound is only a guard
            # against something else holding the pipe open.
            try:
                async with asyncio.timeout(self._stop_timeout):
                    await asyncio.shield(reader)
            except TimeoutError:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __del__(self) -> None:
        # Last resort for a server that was never closed: no child may outlive its owner.
        proc = getattr(self, "_proc", None)
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(OSError):
                os.kill(proc.pid, signal.SIGKILL)
            warnings.warn(
                f"InteropServer {self._kind} pid {proc.pid} was not closed; killed it",
                ResourceWarning,
                stacklevel=1,
            )

    # -- HTTP control --------------------------------------------------------------------

    async def _get(
        self, path: str, params: Mapping[str, str] | None = None, *, wait: float = 0.0
    ) -> tuple[int, Any]:
        if not self.running:
            raise InteropError(f"{self!r} is not running")
        timeout = self._control_timeout + wait
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
                session.get(
                    self.http_url + path,
                    params=params,
                    ssl=self._client_ssl if self._client_ssl is not None else True,
                ) as resp,
            ):
                return resp.status, await resp.json(content_type=None)
        except TimeoutError:
            state = "paused" if self._paused else "running"
            raise TimeoutError(
                f"{self!r} ({state}) did not answer GET {path} within {timeout}s"
            ) from None

    async def stats(self) -> InteropStats:
        """Fetch the child's counters (``GET /stats``)."""
        return self._to_stats((await self._get("/stats"))[1])

    async def wait_for_open(self, n: int, timeout: float = 5.0) -> InteropStats:
        """Wait until exactly ``n`` WebSockets are open in the server; raise
        :class:`TimeoutError` after ``timeout``.  Returns the counters at that moment."""
        return await self._wait({"open": str(n)}, timeout)

    async def wait_for_accepted(self, n: int, timeout: float = 5.0) -> InteropStats:
        """Wait until the current child has completed at least ``n`` handshakes."""
        return await self._wait({"accepted": str(n)}, timeout)

    async def _wait(self, condition: dict[str, str], timeout: float) -> InteropStats:
        status, body = await self._get(
            "/stats", {**condition, "timeout": str(timeout)}, wait=timeout
        )
        if status == 504:
            raise TimeoutError(
                f"{self._kind} server: {condition} not reached in {timeout}s: {body}"
            )
        if status != 200:
            raise InteropError(f"{self._kind} server: GET /stats answered {status}: {body}")
        return self._to_stats(body)

    @staticmethod
    def _to_stats(body: Any) -> InteropStats:
        return InteropStats(**{f.name: int(body[f.name]) for f in dataclasses.fields(InteropStats)})

    async def set_health(self, status: int) -> None:
        """Make ``GET /health`` answer with HTTP ``status`` (``GET /control?health=``)."""
        code, body = await self._get("/control", {"health": str(status)})
        if code != 200 or int(body["health"]) != status:
            raise InteropError(f"{self._kind} server refused health={status}: {code} {body}")

    async def health(self) -> int:
        """The HTTP status of ``GET /health`` now."""
        return (await self._get("/health"))[0]
