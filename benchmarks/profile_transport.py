"""Client CPU per round trip on each transport, against its raw library; optional profile.

    .venv/bin/python benchmarks/profile_transport.py [--conns 16] [--trips 20000]
        [--rounds 3] [--profile yappi|cprofile] [--transport picows] [--uvloop]

One echo process (``_servers.EchoServers``, aiohttp) serves; this process runs
``--conns`` workers doing acquire -> send 100 B -> receive -> release through a
``WebSocketPool`` (``pool-aiohttp``, ``pool-picows``), send -> receive on unpooled
``Connection`` objects (``conn-*``: the transport layer without the pool), and the
same loop over the raw libraries with one connection per worker (``raw-aiohttp``,
``raw-picows``), alternating rounds. The figure is this process's CPU time (user + system) per
round trip, median over rounds; the ratio is pool / raw of the same library.

``--profile`` runs one extra pool round of ``--transport`` under yappi (wall
clock, all coroutines) or cProfile and prints the functions with the most own
time: where the pool's microseconds go. Numbers are for this machine only;
``make bench`` is the suite.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _servers import EchoServers

from wsclient import WebSocketPool, connect
from wsclient.config import TransportName

PAYLOAD = "x" * 100


async def _workers(n: int, trips: int, one: Callable[[int], Awaitable[None]]) -> float:
    per = trips // n
    started = time.process_time()

    async def worker(i: int) -> None:
        for _ in range(per):
            await one(i)

    await asyncio.gather(*(worker(i) for i in range(n)))
    return (time.process_time() - started) / (per * n) * 1e6


async def _measured(n: int, trips: int, one: Callable[[int], Awaitable[None]]) -> float:
    """A warm-up of 50 trips per worker, then the measured ``trips``."""
    await _workers(n, n * 50, one)
    return await _workers(n, trips, one)


async def pool_round(url: str, transport: TransportName, conns: int, trips: int) -> float:
    pool = WebSocketPool(
        backends=[url],
        transport=transport,
        min_connections=conns,
        max_connections=conns,
        health_check={"enabled": False},
    )
    async with pool:

        async def one(_i: int) -> None:
            conn = await pool.acquire()
            try:
                await conn.send(PAYLOAD)
                await conn.receive()
            finally:
                pool.release(conn)

        return await _measured(conns, trips, one)


async def connection_round(url: str, transport: TransportName, conns: int, trips: int) -> float:
    """Unpooled ``Connection`` objects: the transport and handle without the pool."""
    connections = [
        await connect(url, transport=transport, heartbeat={"interval": None}) for _ in range(conns)
    ]

    async def one(i: int) -> None:
        conn = connections[i]
        await conn.send(PAYLOAD)
        await conn.receive()

    try:
        return await _measured(conns, trips, one)
    finally:
        for conn in connections:
            await conn.close()


async def raw_aiohttp_round(url: str, conns: int, trips: int) -> float:
    async with aiohttp.ClientSession() as session:
        sockets = [await session.ws_connect(url) for _ in range(conns)]

        async def one(i: int) -> None:
            ws = sockets[i]
            await ws.send_str(PAYLOAD)
            await ws.receive()

        try:
            return await _measured(conns, trips, one)
        finally:
            for ws in sockets:
                await ws.close()


async def raw_picows_round(url: str, conns: int, trips: int) -> float:
    import picows

    class Listener(picows.WSListener):
        def __init__(self) -> None:
            self.waiter: asyncio.Future[str] | None = None

        def on_ws_frame(self, transport: Any, frame: Any) -> None:
            if frame.msg_type == picows.WSMsgType.TEXT and self.waiter is not None:
                waiter, self.waiter = self.waiter, None
                waiter.set_result(frame.get_payload_as_utf8_text())

    pairs: list[tuple[Any, Listener]] = []
    for _ in range(conns):
        transport, listener = await picows.ws_connect(Listener, url)
        assert isinstance(listener, Listener)
        pairs.append((transport, listener))
    loop = asyncio.get_running_loop()

    async def one(i: int) -> None:
        transport, listener = pairs[i]
        listener.waiter = loop.create_future()
        transport.send(picows.WSMsgType.TEXT, PAYLOAD)
        await listener.waiter

    try:
        return await _measured(conns, trips, one)
    finally:
        for transport, _ in pairs:
            transport.send_close(picows.WSCloseCode.OK)
            transport.disconnect()


def _print_yappi(limit: int) -> None:
    import yappi  # type: ignore[import-untyped]

    stats = yappi.get_func_stats()
    stats.sort("tsub", "desc")
    total = sum(s.tsub for s in stats)
    print(f"\n{'own s':>8} {'own %':>6} {'calls':>9}  function")
    for s in list(stats)[:limit]:
        where = f"{Path(s.module).name}:{s.lineno} {s.name}"
        print(f"{s.tsub:8.3f} {100 * s.tsub / total:6.1f} {s.ncall:9d}  {where}")


async def main(args: argparse.Namespace) -> None:
    with EchoServers(count=1) as servers:
        url = servers.urls[0]
        kinds: dict[str, Callable[[], Awaitable[float]]] = {
            "raw-aiohttp": lambda: raw_aiohttp_round(url, args.conns, args.trips),
            "conn-aiohttp": lambda: connection_round(url, "aiohttp", args.conns, args.trips),
            "pool-aiohttp": lambda: pool_round(url, "aiohttp", args.conns, args.trips),
            "raw-picows": lambda: raw_picows_round(url, args.conns, args.trips),
            "conn-picows": lambda: connection_round(url, "picows", args.conns, args.trips),
            "pool-picows": lambda: pool_round(url, "picows", args.conns, args.trips),
        }
        results: dict[str, list[float]] = {k: [] for k in kinds}
        for _ in range(args.rounds):
            for name, run in kinds.items():
                results[name].append(await run())
        med = {k: statistics.median(v) for k, v in results.items()}
        print(
            f"client CPU per round trip, {args.conns} connections, "
            f"{args.trips} trips x {args.rounds} rounds"
        )
        for name, value in med.items():
            lib = name.split("-")[1]
            ratio = "" if name.startswith("raw") else f"  {value / med['raw-' + lib]:.2f}x raw"
            spread = ", ".join(f"{v:.1f}" for v in results[name])
            print(f"  {name:13} {value:6.1f} us  ({spread}){ratio}")
        if args.profile == "yappi":
            import yappi

            yappi.set_clock_type("cpu")
            yappi.start()
            await pool_round(url, args.transport, args.conns, args.trips)
            yappi.stop()
            _print_yappi(args.top)
        elif args.profile == "cprofile":
            profiler = cProfile.Profile()
            profiler.enable()
            await pool_round(url, args.transport, args.conns, args.trips)
            profiler.disable()
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(args.top)
            print(out.getvalue())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--conns", type=int, default=16)
    parser.add_argument("--trips", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", choices=["yappi", "cprofile"], default=None)
    parser.add_argument("--transport", choices=["aiohttp", "picows"], default="picows")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--uvloop", action="store_true", help="run the client under uvloop")
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.uvloop:
        import uvloop

        uvloop.run(main(arguments))
    else:
        asyncio.run(main(arguments))
