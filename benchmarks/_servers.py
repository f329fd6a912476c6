"""Echo backends for the benchmarks: several WebSocket servers in ONE child process.

Run as a script it listens on ``--count`` OS-assigned ports of 127.0.0.1 (path ``/ws``;
text is echoed as the same text, binary as the same bytes), prints
``READY <port> <port> ...`` and serves until SIGTERM/SIGINT or until its stdin reaches
EOF (so it also goes away if the benchmark process dies without cleaning up).

The benchmark imports :class:`EchoServers`, which spawns that process, waits for the
``READY`` line and always reaps it (``stop()``, ``kill()`` or the ``with`` block).

Why not ``wsclient.testing.BackendProcess``: it starts one process per backend and its
server carries fault-injection hooks and counters on the message path. On a 2-core machine
the client must get one core to itself and the echo side the other, so the throughput
scenario serves all its backends from one lean process; the failover scenario starts one
``EchoServers(count=1)`` per backend so that a single backend can be SIGKILLed.

``--impl picows`` serves with picows on uvloop instead of aiohttp (``EchoServers(impl=
"picows")``): the fastest echo Python has, so that in ``client_bound.py`` the *client* is
the bottleneck. Either way the child raises its soft file-descriptor limit to the hard one
(the 10,000-connection scenario puts 1,000 sockets on each backend).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from aiohttp import WSMsgType, web

PATH = "/ws"
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


# ----------------------------------------------------------------------------- child side


async def _echo(request: web.Request) -> web.StreamResponse:
    ws = web.WebSocketResponse(heartbeat=None, autoping=True)
    await ws.prepare(request)
    async for msg in ws:
        if msg.type is WSMsgType.TEXT:
            await ws.send_str(msg.data)
        elif msg.type is WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
    return ws


def _listen(host: str, backlog: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


def raise_nofile_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _stop_event() -> asyncio.Event:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # The parent holds the write end of our stdin: EOF means it is gone.
    loop.add_reader(sys.stdin.fileno(), stop.set)
    return stop


def _ready(socks: list[socket.socket]) -> None:
    ports = " ".join(str(s.getsockname()[1]) for s in socks)
    sys.stdout.write(f"READY {ports}\n")
    sys.stdout.flush()


async def _serve_picows(count: int, host: str, backlog: int) -> None:
    # Imported here: the aiohttp servers (and the tests that use them) need no picows.
    import picows

    class Echo(picows.WSListener):
        def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
            kind = frame.msg_type
            if kind is picows.WSMsgType.TEXT or kind is picows.WSMsgType.BINARY:
                transport.send(kind, frame.get_payload_as_memoryview())
            elif kind is picows.WSMsgType.CLOSE:
                transport.send_close(frame.get_close_code(), frame.get_close_message())
                transport.disconnect()

    def factory(_request: Any) -> Echo:
        return Echo()

    stop = _stop_event()
    socks = [_listen(host, backlog) for _ in range(count)]
    servers = [await picows.ws_create_server(factory, sock=sock) for sock in socks]
    try:
        _ready(socks)
        await stop.wait()
    finally:
        for server in servers:
            server.close()
        for sock in socks:
            sock.close()


async def _serve(count: int, host: str, backlog: int) -> None:
    stop = _stop_event()
    app = web.Application()
    app.router.add_get(PATH, _echo)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    socks = [_listen(host, backlog) for _ in range(count)]
    try:
        for sock in socks:
            await web.SockSite(runner, sock, shutdown_timeout=1.0).start()
        _ready(socks)
        await stop.wait()
    finally:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2.0):
                await runner.cleanup()
        for sock in socks:
            sock.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=3, help="number of ports to serve")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--backlog", type=int, default=1024)
    parser.add_argument("--impl", choices=("aiohttp", "picows"), default="aiohttp")
    args = parser.parse_args(argv)
    raise_nofile_limit()
    if args.impl == "picows":
        import uvloop

        uvloop.run(_serve_picows(args.count, args.host, args.backlog))
    else:
        asyncio.run(_serve(args.count, args.host, args.backlog))


# ----------------------------------------------------------------------------- parent side


def stop_process(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM to our child, SIGKILL after ``timeout``; always reaps it."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class EchoServers:
    """A child process serving ``count`` echo backends; ``urls`` once started."""

    def __init__(
        self,
        count: int = 3,
        *,
        host: str = "127.0.0.1",
        startup_timeout: float = 20.0,
        impl: Literal["aiohttp", "picows"] = "aiohttp",
    ):
        self.count = count
        self.impl = impl
        self.host = host
        self.startup_timeout = startup_timeout
        self.ports: list[int] = []
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def urls(self) -> list[str]:
        return [f"ws://{self.host}:{port}{PATH}" for port in self.ports]

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("not started")
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> EchoServers:
        """Spawn the child and wait for its ``READY`` line."""
        self.start_async()
        self.wait_ready()
        return self

    def start_async(self) -> None:
        """Spawn the child without waiting (start several, then ``wait_ready()`` each)."""
        if self._proc is not None:
            raise RuntimeError("already started")
        self._proc = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "--count",
                str(self.count),
                "--impl",
                self.impl,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            start_new_session=True,  # a terminal Ctrl-C reaches only us; we stop it in finally
        )

    def wait_ready(self) -> None:
        if self._proc is None:
            raise RuntimeError("not started")
        try:
            self.ports = self._read_ready(self._proc)
        except BaseException:
            self.kill()
            raise

    def _read_ready(self, proc: subprocess.Popen[bytes]) -> list[int]:
        assert proc.stdout is not None
        deadline = time.monotonic() + self.startup_timeout
        buf = b""
        while b"\n" not in buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"echo server not ready after {self.startup_timeout} s")
            ready, _, _ = select.select([proc.stdout], [], [], remaining)
            if ready:
                chunk = os.read(proc.stdout.fileno(), 4096)
                if not chunk:
                    raise RuntimeError(f"echo server exited with {proc.wait()} before READY")
                buf += chunk
        words = buf.split(b"\n", 1)[0].decode().split()
        if not words or words[0] != "READY" or len(words) != self.count + 1:
            raise RuntimeError(f"unexpected line from echo server: {buf!r}")
        return [int(w) for w in words[1:]]

    def cpu_seconds(self) -> float:
        """User + system CPU time the child has used so far (from /proc)."""
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, RuntimeError):
            return float("nan")
        # After the ")" that ends comm: field 3 is index 0, so utime (14) is 11, stime 12.
        return (int(fields[11]) + int(fields[12])) / _CLK_TCK

    def kill(self) -> None:
        """SIGKILL the child (a crashing backend) and reap it."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.kill()
        proc.wait()
        self._close_pipes(proc)

    def stop(self, timeout: float = 3.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; always reaps. Idempotent."""
        proc = self._proc
        if proc is None:
            return
        stop_process(proc, timeout)
        self._close_pipes(proc)

    @staticmethod
    def _close_pipes(proc: subprocess.Popen[bytes]) -> None:
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()

    def __enter__(self) -> EchoServers:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


if __name__ == "__main__":
    main()
