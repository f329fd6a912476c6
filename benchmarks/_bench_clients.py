"""The client side of ``client_bound.py``: one measurement per process, JSON on stdout.

``client_bound.py`` starts this script once per run, so every figure comes from a fresh
interpreter (no warm caches, no garbage from an earlier client). Sub-commands:

``probe``   is ``WebSocketPool(transport="picows")`` accepted by the installed wsclient?
``rt``      ``--conns`` connections, one worker each, looping 100-byte binary round trips;
            after ``--warmup`` s it counts the round trips completed in ``--window`` s, times
            each one (``perf_counter``), and reads this process's CPU time (``getrusage``)
            and that of the ``--watch`` PIDs (the backends, HAProxy; from ``/proc``).
``mem``     RSS growth per idle connection when ``--conns`` connections are opened.
``warm``    a pool of ``--conns`` warm connections: start time, RSS, idle CPU over
            ``--window`` s with every option but the sizes at its default (heartbeat on).

Client kinds (``--kind``): ``wsclient-aiohttp`` and ``wsclient-picows`` are the pool
(``async with pool.acquire() as c: await c.send(m); await c.receive()``); ``raw-aiohttp``
(``ClientSession.ws_connect``, ``send_bytes``/``receive``), ``raw-picows`` (a
``WSListener`` that resolves a future per frame), ``websockets`` (its asyncio client,
``send``/``recv``) each own one connection per worker. The event loop is uvloop for every
kind unless ``--loop asyncio``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import functools
import gc
import json
import os
import pstats
import resource
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cprofile_groups import profile_groups, profile_text
from _servers import raise_nofile_limit

PAYLOAD = b"x" * 100
POOL_KINDS = {"wsclient-aiohttp": None, "wsclient-picows": "picows"}
RAW_KINDS = ("raw-aiohttp", "raw-picows", "websockets")
# Only for ``profile_hot_path.py``'s decomposition of the pool's cost: raw aiohttp with
# the pool's default heartbeat, and wsclient's Connection without the pool around it.
# And the pool with each worker holding one leased connection for the whole run.
LAYER_KINDS = ("raw-aiohttp-hb", "wsclient-connection", "wsclient-held")
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")

# A worker factory: connection index -> coroutine function doing one round trip.
RoundTrip = Callable[[], Awaitable[None]]


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads) from /proc, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def machine_busy_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine, all cores, from /proc/stat."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:9]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    total = sum(ticks)
    return (total - idle) / _CLK_TCK, total / _CLK_TCK


def self_cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def pool_options(kind: str, urls: list[str], n: int, *, defaults: bool = False) -> dict[str, Any]:
    """The pool arm: sizes fixed at n; health checks off unless ``defaults`` (active probes
    open extra WebSockets on a timer, which is noise in a round, not hot-path cost)."""
    opts: dict[str, Any] = {"backends": urls, "min_connections": n, "max_connections": n}
    if not defaults:
        opts["health_check"] = {"enabled": False}
    transport = POOL_KINDS[kind]
    if transport is not None:
        opts["transport"] = transport
    return opts


class Clients:
    """Opens n connections of one kind and hands out one round-trip function per worker."""

    def __init__(self, kind: str, urls: list[str]) -> None:
        self.kind = kind
        self.urls = urls
        self._closers: list[Callable[[], Awaitable[None]]] = []
        self.pool: Any = None

    async def open(self, n: int, *, pool_defaults: bool = False) -> list[RoundTrip]:
        if self.kind in POOL_KINDS:
            return await self._open_pool(n, pool_defaults)
        if self.kind == "wsclient-held":
            return await self._open_held(n)
        opener: dict[str, Callable[[int], Awaitable[list[RoundTrip]]]] = {
            "raw-aiohttp": self._open_aiohttp,
            "raw-aiohttp-hb": functools.partial(self._open_aiohttp, heartbeat=20.0),
            "wsclient-connection": self._open_connections,
            "raw-picows": self._open_picows,
            "websockets": self._open_websockets,
        }
        return await opener[self.kind](n)

    async def _open_pool(self, n: int, defaults: bool) -> list[RoundTrip]:
        from wsclient import WebSocketPool

        pool = WebSocketPool(**pool_options(self.kind, self.urls, n, defaults=defaults))
        self.pool = pool
        self._closers.append(pool.close)
        await pool.start()
        await wait_for(lambda: pool.idle_count >= n, 300.0, f"{n} idle pooled connections")
        acquire = pool.acquire

        async def rt() -> None:
            async with acquire() as c:
                await c.send(PAYLOAD)
                await c.receive()

        return [rt] * n

    async def _open_held(self, n: int) -> list[RoundTrip]:
        from wsclient import Connection

        self.kind = "wsclient-aiohttp"
        await self._open_pool(n, False)
        pool = self.pool
        held = [await pool.acquire() for _ in range(n)]

        async def release() -> None:
            for conn in held:
                pool.release(conn)

        self._closers.insert(0, release)
        fns: list[RoundTrip] = []
        for conn in held:

            async def rt(c: Connection = conn) -> None:
                await c.send(PAYLOAD)
                await c.receive()

            fns.append(rt)
        return fns

    async def _open_aiohttp(self, n: int, heartbeat: float | None = None) -> list[RoundTrip]:
        import aiohttp

        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        self._closers.append(session.close)
        sockets = await asyncio.gather(
            *(
                session.ws_connect(self.urls[i % len(self.urls)], heartbeat=heartbeat)
                for i in range(n)
            )
        )
        fns: list[RoundTrip] = []
        for ws in sockets:

            async def close(ws: aiohttp.ClientWebSocketResponse = ws) -> None:
                await ws.close()

            self._closers.insert(0, close)

            async def rt(ws: aiohttp.ClientWebSocketResponse = ws) -> None:
                await ws.send_bytes(PAYLOAD)
                await ws.receive()

            fns.append(rt)
        return fns

    async def _open_connections(self, n: int) -> list[RoundTrip]:
        from wsclient import Connection, connect

        conns = await asyncio.gather(*(connect(self.urls[i % len(self.urls)]) for i in range(n)))
        fns: list[RoundTrip] = []
        for conn in conns:
            self._closers.insert(0, conn.close)

            async def rt(c: Connection = conn) -> None:
                await c.send(PAYLOAD)
                await c.receive()

            fns.append(rt)
        return fns

    async def _open_picows(self, n: int) -> list[RoundTrip]:
        import picows

        loop = asyncio.get_running_loop()

        class Listener(picows.WSListener):
            waiter: asyncio.Future[bytes] | None = None

            def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
                w = self.waiter
                if w is not None and not w.done():
                    w.set_result(frame.get_payload_as_bytes())

        pairs = await asyncio.gather(
            *(picows.ws_connect(Listener, self.urls[i % len(self.urls)]) for i in range(n))
        )
        fns: list[RoundTrip] = []
        binary = picows.WSMsgType.BINARY
        for transport, base in pairs:
            assert isinstance(base, Listener)
            listener = base

            async def close(t: picows.WSTransport = transport) -> None:
                t.send_close(picows.WSCloseCode.OK)
                t.disconnect()
                await asyncio.wait_for(t.wait_disconnected(), 5.0)

            self._closers.insert(0, close)

            async def rt(t: picows.WSTransport = transport, li: Listener = listener) -> None:
                w = li.waiter = loop.create_future()
                t.send(binary, PAYLOAD)
                await w

            fns.append(rt)
        return fns

    async def _open_websockets(self, n: int) -> list[RoundTrip]:
        from websockets.asyncio.client import ClientConnection, connect

        conns = await asyncio.gather(*(connect(self.urls[i % len(self.urls)]) for i in range(n)))
        fns: list[RoundTrip] = []
        for ws in conns:
            self._closers.insert(0, ws.close)

            async def rt(ws: ClientConnection = ws) -> None:
                await ws.send(PAYLOAD)
                await ws.recv()

            fns.append(rt)
        return fns

    async def aclose(self) -> None:
        for close in self._closers:
            await asyncio.wait_for(close(), 10.0)
        self._closers.clear()


async def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} after {timeout} s")
        await asyncio.sleep(0.005)


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, round(q / 100.0 * len(sorted_values) + 0.5) - 1))
    return sorted_values[k]


# ----------------------------------------------------------------------------- commands


async def cmd_probe() -> dict[str, Any]:
    """Does the installed wsclient take ``transport="picows"``? Only configuration is tried:
    the pool is never started."""
    try:
        import picows  # noqa: F401

        from wsclient import WebSocketPool

        WebSocketPool(**pool_options("wsclient-picows", ["ws://127.0.0.1:9/ws"], 1))
    except Exception as exc:  # any refusal means "not available"; the reason is shown
        errors = getattr(exc, "errors", None)
        if callable(errors):  # pydantic: "transport: Extra inputs are not permitted"
            why = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors())
        else:
            why = " ".join(str(exc).split())
        return {"available": False, "reason": f"{type(exc).__name__}: {why[:160]}"}
    return {"available": True, "reason": ""}


async def cmd_rt(args: argparse.Namespace) -> dict[str, Any]:
    clients = Clients(args.kind, args.urls)
    latencies: list[float] = []
    stop = False

    async def worker(rt: RoundTrip) -> None:
        perf = time.perf_counter
        append = latencies.append
        while not stop:
            t = perf()
            await rt()
            append(perf() - t)

    t_open = time.perf_counter()
    fns = await clients.open(args.conns)
    open_s = time.perf_counter() - t_open
    tasks = [asyncio.create_task(worker(fn)) for fn in fns]
    # Timed by this thread's CPU clock, not the wall clock: on a shared machine a write()
    # that wakes the backend often loses the core, and wall time then charges 80 us to the
    # frame writer. The CPU clock is a system call per profiler event, so frame costs are
    # inflated about 3x: read the shares, and the unprofiled layers for absolute figures.
    profile = cProfile.Profile(time.thread_time) if args.profile else None
    try:
        await asyncio.sleep(args.warmup)
        watch0 = [proc_cpu_seconds(pid) for pid in args.watch]
        busy0, _ = machine_busy_seconds()
        cpu0, i0, t0 = self_cpu_seconds(), len(latencies), time.perf_counter()
        if profile is not None:
            profile.enable()
        await asyncio.sleep(args.window)
        if profile is not None:
            profile.disable()
        cpu1, i1, t1 = self_cpu_seconds(), len(latencies), time.perf_counter()
        busy1, _ = machine_busy_seconds()
        watch1 = [proc_cpu_seconds(pid) for pid in args.watch]
    finally:
        stop = True
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10.0)
        await clients.aclose()
    wall = t1 - t0
    n_rt = i1 - i0
    window = sorted(latencies[i0:i1])
    res: dict[str, Any] = {
        "kind": args.kind,
        "conns": args.conns,
        "open_s": open_s,
        "window_s": wall,
        "round_trips": n_rt,
        "throughput": n_rt / wall,
        "p50_us": percentile(window, 50) * 1e6,
        "p99_us": percentile(window, 99) * 1e6,
        "mean_us": statistics.fmean(window) * 1e6 if window else float("nan"),
        "client_cpu_us_per_rt": (cpu1 - cpu0) / n_rt * 1e6 if n_rt else float("nan"),
        "client_cpu_pct": (cpu1 - cpu0) / wall * 100,
        "watched_cpu_pct": {
            str(pid): (b - a) / wall * 100
            for pid, a, b in zip(args.watch, watch0, watch1, strict=True)
        },
        # Every core's busy time, in % of one core (at most 100 x cores): what is left
        # after this process and the watched ones is other people's load.
        "machine_busy_pct": (busy1 - busy0) / wall * 100,
    }
    ours = res["client_cpu_pct"] + sum(res["watched_cpu_pct"].values())
    res["others_cpu_pct"] = max(0.0, res["machine_busy_pct"] - ours)
    if profile is not None:
        res["profile"] = profile_text(profile, n_rt, args.kind)
        res["profile_groups"] = profile_groups(pstats.Stats(profile), n_rt)
    return res


async def cmd_mem(args: argparse.Namespace) -> dict[str, Any]:
    # One small open/close first, so that lazy imports and first-use caches (SSL-free as
    # they are) land before the baseline instead of in the per-connection figure.
    warm = Clients(args.kind, args.urls)
    await warm.open(min(3, args.conns))
    await warm.aclose()
    await asyncio.sleep(0.1)
    gc.collect()
    rss0 = rss_bytes()
    clients = Clients(args.kind, args.urls)
    await clients.open(args.conns)
    await asyncio.sleep(0.2)
    gc.collect()
    rss1 = rss_bytes()
    await clients.aclose()
    return {
        "kind": args.kind,
        "conns": args.conns,
        "rss_delta_bytes": rss1 - rss0,
        "rss_kib_per_conn": (rss1 - rss0) / args.conns / 1024,
    }


async def cmd_warm(args: argparse.Namespace) -> dict[str, Any]:
    import wsclient  # noqa: F401  (imported before the baseline, so RSS counts connections)

    clients = Clients(args.kind, args.urls)
    gc.collect()
    rss0 = rss_bytes()
    t0 = time.perf_counter()
    await clients.open(args.conns, pool_defaults=True)
    start_s = time.perf_counter() - t0
    pool = clients.pool
    rss1 = rss_bytes()
    try:
        cpu0, w0 = self_cpu_seconds(), time.perf_counter()
        await asyncio.sleep(args.window)
        cpu1, w1 = self_cpu_seconds(), time.perf_counter()
        size_after = pool.size
        idle_after = pool.idle_count
    finally:
        t_close = time.perf_counter()
        await clients.aclose()
        close_s = time.perf_counter() - t_close
    hb = pool.config.heartbeat
    return {
        "kind": args.kind,
        "conns": args.conns,
        "backends": len(args.urls),
        "start_s": start_s,
        "rss_bytes": rss1,
        "rss_delta_bytes": rss1 - rss0,
        "rss_kib_per_conn": (rss1 - rss0) / args.conns / 1024,
        "window_s": w1 - w0,
        "idle_cpu_pct": (cpu1 - cpu0) / (w1 - w0) * 100,
        "heartbeat_interval_s": hb.interval if hb is not None else None,
        "size_after_window": size_after,
        "idle_after_window": idle_after,
        "close_s": close_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("command", choices=("probe", "rt", "mem", "warm"))
    parser.add_argument(
        "--kind", default="raw-aiohttp", choices=(*POOL_KINDS, *RAW_KINDS, *LAYER_KINDS)
    )
    parser.add_argument("--urls", type=lambda s: s.split(","), default=[])
    parser.add_argument("--conns", type=int, default=1)
    parser.add_argument("--warmup", type=float, default=0.25)
    parser.add_argument("--window", type=float, default=1.0)
    parser.add_argument("--watch", type=lambda s: [int(x) for x in s.split(",") if x], default=[])
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--profile", action="store_true", help="cProfile the rt window")
    args = parser.parse_args()
    raise_nofile_limit()
    import logging

    logging.getLogger("wsclient").setLevel(logging.ERROR)
    commands: dict[str, Callable[[], Awaitable[dict[str, Any]]]] = {
        "probe": cmd_probe,
        "rt": lambda: cmd_rt(args),
        "mem": lambda: cmd_mem(args),
        "warm": lambda: cmd_warm(args),
    }

    async def run() -> dict[str, Any]:
        return await commands[args.command]()

    if args.loop == "uvloop":
        import uvloop

        result = uvloop.run(run())
    else:
        result = asyncio.run(run())
    result["loop"] = args.loop
    print(json.dumps(result))


if __name__ == "__main__":
    main()
