"""Child-process entry point of :class:`wsclient.testing.BackendProcess`.

Run as ``python -m wsclient.testing._backend_main --port N``: starts a
:class:`~wsclient.testing.BackendServer` with its remote-control API enabled, prints
``READY <port>`` on standard output once it listens, and runs until ``SIGTERM``/``SIGINT``
(or, with ``--exit-on-stdin-eof``, until its standard input is closed, i.e. the parent
died), then closes every WebSocket with ``1001 Going Away`` and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from wsclient.testing import BackendServer


class _EofWatcher(asyncio.Protocol):
    """Sets ``done`` when the watched pipe reaches end-of-file."""

    def __init__(self, done: asyncio.Event) -> None:
        self._done = done

    def eof_received(self) -> bool | None:
        self._done.set()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._done.set()


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m wsclient.testing._backend_main",
        description="WebSocket echo backend with fault injection (wsclient.testing).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--path", default="/ws")
    parser.add_argument("--name", default=None)
    parser.add_argument(
        "--exit-on-stdin-eof",
        action="store_true",
        help="exit when standard input is closed (the parent process went away)",
    )
    return parser.parse_args(argv)


async def _run(args: argparse.Namespace) -> int:
    server = BackendServer(
        host=args.host, port=args.port, path=args.path, name=args.name, control=True
    )
    await server.start()
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    stdin_transport: asyncio.BaseTransport | None = None
    if args.exit_on_stdin_eof:
        stdin_transport, _ = await loop.connect_read_pipe(lambda: _EofWatcher(done), sys.stdin)
    try:
        print(f"READY {server.port}", flush=True)
        await done.wait()
    finally:
        if stdin_transport is not None:
            stdin_transport.close()
        await server.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the backend until told to stop; return the exit status."""
    return asyncio.run(_run(_parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
