"""Instructions per round trip and per acquire+release, counted by callgrind:
``.venv/bin/python benchmarks/instruction_counts.py`` (about 6 minutes; not part of
``make bench``; needs ``valgrind``, which it installs with apt-get when missing and it
runs as root).

Wall-clock and CPU-time figures on a shared 2-core machine move by 10-30 % from run to
run, which hides a change of a few percent. Instruction counts do not move: each figure
here is ``(I(2N) - I(N)) / N`` for the same client run with N and with 2N operations, so
start-up, imports and connection set-up cancel out. They count user-space instructions
only (not the system calls, not cache misses), so they rank hot-path changes and leave
absolute time to ``client_bound.py``.

1. round trips   three picows echo backends (own processes, outside valgrind); 16
                 workers over 16 connections, 100-byte binary round trips, uvloop: raw
                 aiohttp, wsclient's ``Connection`` (no pool), the pool with every worker
                 holding its connection, the pool with ``async with pool.acquire()`` per
                 round trip over 1 and over 3 backends, raw picows and the pool on picows.
2. pairs         ``conn = await pool.acquire(); pool.release(conn)`` with one idle
                 connection, default asyncio loop, per strategy, beside
                 ``await q.get(); q.put_nowait(item)`` on an ``asyncio.Queue``.

Writes ``results/instruction_counts.json`` (``--json``) and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

# (label, client kind of _bench_clients.py, backends)
ROUND_TRIPS: tuple[tuple[str, str, int], ...] = (
    ("raw aiohttp", "raw-aiohttp", 3),
    ("wsclient Connection (aiohttp, no pool)", "wsclient-connection", 3),
    ("pool (aiohttp), connections held", "wsclient-held", 3),
    ("pool (aiohttp), acquire/release per round trip, 1 backend", "wsclient-aiohttp", 1),
    ("pool (aiohttp), acquire/release per round trip, 3 backends", "wsclient-aiohttp", 3),
    ("raw picows", "raw-picows", 3),
    ("pool (picows), acquire/release per round trip, 3 backends", "wsclient-picows", 3),
)
PAIRS = ("queue", "round-robin", "weighted-round-robin", "least-connections", "random")
CONNS = 16


def ensure_valgrind() -> str:
    found = shutil.which("valgrind")
    if found is None:
        subprocess.run(["apt-get", "install", "-y", "-q", "valgrind"], check=True)
        found = shutil.which("valgrind")
    if found is None:
        raise SystemExit("valgrind is not installed and apt-get could not install it")
    return found


def count(valgrind: str, *args: str) -> int:
    """Instructions callgrind collected running this script with ``args``."""
    proc = subprocess.run(
        [
            valgrind,
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            str(Path(__file__).resolve()),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    match = re.search(r"Collected\s*:\s*(\d+)", proc.stderr)
    if proc.returncode != 0 or match is None:
        raise RuntimeError(f"callgrind run {args} failed:\n{proc.stderr[-2000:]}")
    return int(match.group(1))


def per_op(valgrind: str, n: int, *args: str) -> float:
    return (count(valgrind, *args, str(2 * n)) - count(valgrind, *args, str(n))) / n


# ----------------------------------------------------------------------------- children


async def child_round_trips(kind: str, urls: list[str], total: int) -> None:
    from _bench_clients import Clients

    clients = Clients(kind, urls)
    fns = await clients.open(CONNS)
    left = total

    async def worker(rt: Any) -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await rt()

    await asyncio.gather(*(worker(fn) for fn in fns))
    await clients.aclose()


async def child_pairs(strategy: str, url: str, n: int) -> None:
    if strategy == "queue":
        queue: asyncio.Queue[int] = asyncio.Queue()
        queue.put_nowait(1)
        get, put = queue.get, queue.put_nowait
        for _ in range(n):
            put(await get())
        return
    from _bench_clients import wait_for

    from wsclient import WebSocketPool

    async with WebSocketPool(
        backends=[url],
        min_connections=1,
        max_connections=1,
        load_balancing=strategy,
        health_check={"enabled": False},
    ) as pool:
        await wait_for(lambda: pool.idle_count >= 1, 60.0, "an idle pooled connection")
        acquire, release = pool.acquire, pool.release
        for _ in range(n):
            release(await acquire())


def child(argv: list[str]) -> None:
    import logging

    logging.getLogger("wsclient").setLevel(logging.ERROR)
    what = argv[0]
    if what == "rt":
        import uvloop

        kind, urls, total = argv[1], argv[2].split(","), int(argv[3])
        uvloop.run(child_round_trips(kind, urls, total))
    else:
        strategy, url, n = argv[1], argv[2], int(argv[3])
        asyncio.run(child_pairs(strategy, url, n))


# ----------------------------------------------------------------------------- parent


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else argv
    if args_in and args_in[0] == "--child":
        child(args_in[1:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trips", type=int, default=5_000, help="N for the round trips")
    parser.add_argument("--pairs", type=int, default=20_000, help="N for the pairs")
    parser.add_argument("--json", type=Path, default=RESULTS / "instruction_counts.json")
    args = parser.parse_args(args_in)
    valgrind = ensure_valgrind()
    from client_bound import backends

    out: dict[str, Any] = {"round_trips": {}, "pairs": {}, "conns": CONNS}
    with backends(3) as servers:
        urls = [srv.urls[0] for srv in servers]
        for label, kind, nb in ROUND_TRIPS:
            target = ",".join(urls[:nb])
            out["round_trips"][label] = per_op(valgrind, args.trips, "--child", "rt", kind, target)
            print(f"{label:<62} {out['round_trips'][label]:9,.0f} instr / round trip")
        for strategy in PAIRS:
            out["pairs"][strategy] = per_op(
                valgrind, args.pairs, "--child", "pair", strategy, urls[0]
            )
        queue = out["pairs"]["queue"]
        for strategy, instr in out["pairs"].items():
            what = "asyncio.Queue get + put" if strategy == "queue" else f"pool, {strategy}"
            print(f"{what:<62} {instr:9,.0f} instr / pair   x{instr / queue:.2f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2) + "\n")
    print(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
