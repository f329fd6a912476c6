"""``pool.request`` vs acquire/send/receive/release: 256 callers over the same 8 connections.

Both arms run against the same echo backends (3, in one child process: ``_servers.py``),
in the same run, in alternating rounds (request, acquire, request, ...), each round with
a fresh pool of exactly 8 connections (``min_connections = max_connections = 8``) so
neither arm inherits the other's state:

- ``request``: 256 tasks, each looping ``await pool.request({...})``; the multiplexer
  (``Multiplexer(pool, max_connections=8)``) keeps up to 32 requests in flight per
  connection and matches replies by id.
- ``acquire``: 256 tasks, each looping ``async with pool.acquire() as c: send; receive``
  (one request per lease at a time, 248 callers queued for the 8 leases).

Figure: completed round trips per second (median of the rounds); the target is
request >= 2x acquire. ``make bench`` runs it as scenario ``request``; alone:
``.venv/bin/python benchmarks/request_vs_acquire.py [--quick] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from _servers import EchoServers

from wsclient import Backend, Multiplexer, WebSocketPool

HERE = Path(__file__).resolve().parent
DEFAULT_JSON = HERE / "results" / "request_vs_acquire.json"
CALLERS = 256
CONNECTIONS = 8
TARGET_RATIO = 2.0
ARMS = ("request", "acquire")


def _pool(urls: list[str]) -> WebSocketPool:
    return WebSocketPool(
        backends=[Backend(id=f"b{i}", url=u) for i, u in enumerate(urls)],
        load_balancing="round-robin",
        min_connections=CONNECTIONS,
        max_connections=CONNECTIONS,
        health_check={"enabled": False},  # probes would open extra sockets mid-round
    )


async def _round(arm: str, urls: list[str], seconds: float, warmup: float) -> float:
    """One round of ``arm``: round trips per second over ``seconds`` after ``warmup``."""
    async with _pool(urls) as pool:
        mux = Multiplexer(pool, max_connections=CONNECTIONS)
        counting = False
        done = 0
        stop = asyncio.Event()

        async def request_caller(i: int) -> None:
            nonlocal done
            message = {"caller": i, "payload": "x" * 32}
            while not stop.is_set():
                await mux.request(message, timeout=30)
                if counting:
                    done += 1

        async def acquire_caller(i: int) -> None:
            nonlocal done
            message = json.dumps({"caller": i, "payload": "x" * 32})
            while not stop.is_set():
                async with pool.acquire(timeout=30) as conn:
                    await conn.send(message)
                    await conn.receive(timeout=30)
                if counting:
                    done += 1

        caller = request_caller if arm == "request" else acquire_caller
        tasks = [asyncio.create_task(caller(i)) for i in range(CALLERS)]
        await asyncio.sleep(warmup)
        counting = True
        start = time.perf_counter()
        await asyncio.sleep(seconds)
        counted, elapsed = done, time.perf_counter() - start
        stop.set()
        await asyncio.gather(*tasks)
        await mux.aclose()
    return counted / elapsed


async def run(rounds: int, seconds: float, warmup: float) -> dict[str, Any]:
    with EchoServers(3) as servers:
        per_arm: dict[str, list[float]] = {arm: [] for arm in ARMS}
        for r in range(rounds):
            for arm in ARMS if r % 2 == 0 else tuple(reversed(ARMS)):
                rate = await _round(arm, servers.urls, seconds, warmup)
                per_arm[arm].append(round(rate, 1))
                print(f"  round {r + 1} {arm:8s} {rate:10.0f} round trips/s", file=sys.stderr)
    medians = {arm: statistics.median(v) for arm, v in per_arm.items()}
    ratio = medians["request"] / medians["acquire"]
    return {
        "setup": {
            "callers": CALLERS,
            "connections": CONNECTIONS,
            "backends": 3,
            "rounds": rounds,
            "round_seconds": seconds,
        },
        "rounds_per_second": per_arm,
        "request_per_second": round(medians["request"], 1),
        "acquire_per_second": round(medians["acquire"], 1),
        "ratio": round(ratio, 2),
        "target_ratio": TARGET_RATIO,
        "meets_target": ratio >= TARGET_RATIO,
    }


def fmt_table(res: dict[str, Any]) -> str:
    return (
        f"pool.request vs acquire/send/receive/release, {CALLERS} callers over {CONNECTIONS} "
        f"connections: request {res['request_per_second']:.0f}/s, acquire "
        f"{res['acquire_per_second']:.0f}/s = x{res['ratio']:.2f} "
        f"(target >= x{TARGET_RATIO:.0f}: {'ok' if res['meets_target'] else 'MISSED'})"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 short rounds per arm")
    parser.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)  # tests
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="JSON output path")
    args = parser.parse_args(argv)
    logging.getLogger("wsclient").setLevel(logging.ERROR)
    rounds, seconds, warmup = (
        (1, 0.2, 0.05) if args.smoke else (3, 0.6, 0.2) if args.quick else (7, 2.0, 0.3)
    )
    res = asyncio.run(run(rounds, seconds, warmup))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(res, indent=2) + "\n")
    print(fmt_table(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
