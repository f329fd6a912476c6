"""`make demo`: three local backends (weights 2:1:1), live traffic, injected faults.

Starts each backend as its own process, runs concurrent acquire/send/receive/
release traffic through a WebSocketPool, and every half second prints the
health table. Along the way it SIGKILLs one backend, turns another's /health
to 503, then brings both back, so you can watch detection, failover and
recovery. Ends with per-backend counts. Takes about 15 seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import Counter
from collections.abc import Callable

from wsclient import Backend, WebSocketPool, WSClientError
from wsclient.testing import BackendProcess

SCENARIO = [
    (3.0, "SIGKILL backend ws-2", "kill"),
    (6.0, "backend ws-3 /health -> 503", "sick"),
    (8.5, "restart ws-2 on the same port", "restart"),
    (10.5, "backend ws-3 /health -> 200", "heal"),
]


def render(pool: WebSocketPool, served: Counter[str], errors: Counter[str], note: str) -> str:
    rows = [
        f"{'backend':8} {'weight':>6} {'healthy':>8} {'breaker':>10} {'active':>6} {'idle':>5} "
        f"{'latency ms':>10} {'served':>7}  last error"
    ]
    for bid, h in pool.health_status().items():
        latency = f"{h.latency:.1f}" if h.latency is not None else "-"
        error = (h.last_error or "")[:40]
        rows.append(
            f"{bid:8} {h.weight:>6} {h.healthy!s:>8} {h.breaker:>10} {h.active:>6} {h.idle:>5} "
            f"{latency:>10} {served[bid]:>7}  {error}"
        )
    err = ", ".join(f"{k}={v}" for k, v in errors.items()) or "none"
    rows.append(f"pool: {pool!r}")
    rows.append(f"errors seen by callers: {err}")
    rows.append(f"last event: {note}")
    return "\n".join(rows)


async def main(duration: float) -> None:
    procs = [BackendProcess(name=f"ws-{i + 1}") for i in range(3)]
    await asyncio.gather(*(p.start() for p in procs))
    served: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    note = "starting"
    pool = WebSocketPool(
        backends=[
            Backend(id=p.name, url=p.url, weight=w) for p, w in zip(procs, [2, 1, 1], strict=True)
        ],
        load_balancing="weighted-round-robin",
        min_connections=4,
        max_connections=16,
        acquire_timeout=2.0,
        health_check={"interval": 0.5, "timeout": 1.0, "path": "/health"},
        circuit_breaker={"failure_threshold": 3, "recovery_timeout": 1.5},
        reconnect={"initial_delay": 0.2, "max_delay": 2.0},
        heartbeat={"interval": 1.0, "timeout": 1.0},
    )

    def on_event(name: str) -> Callable[..., None]:
        def record(*args: object) -> None:
            nonlocal note
            note = f"{name} {args[0]}"

        return record

    for event in ("backend-healthy", "backend-unhealthy", "breaker-open", "breaker-closed"):
        pool.on(event, on_event(event))

    stop = asyncio.Event()

    async def worker(n: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            try:
                async with pool.acquire() as conn:
                    await conn.send_json({"worker": n, "i": i})
                    reply = await conn.receive_json(timeout=1.0)
                    assert reply["i"] == i
                    served[conn.backend_id] += 1
            except (WSClientError, TimeoutError) as exc:
                errors[type(exc).__name__] += 1
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.005)

    interactive = sys.stdout.isatty()
    try:
        async with pool:
            workers = [asyncio.create_task(worker(n)) for n in range(8)]
            started = time.monotonic()
            steps = list(SCENARIO)
            while (elapsed := time.monotonic() - started) < duration:
                if steps and elapsed >= steps[0][0]:
                    _, label, action = steps.pop(0)
                    note = label
                    if action == "kill":
                        await procs[1].kill()
                    elif action == "restart":
                        await procs[1].start()
                    elif action in ("sick", "heal"):
                        status = 503 if action == "sick" else 200
                        await procs[2].fault("health_status", status=status)
                table = render(pool, served, errors, note)
                if interactive:
                    print("\033[2J\033[H" + f"wsclient demo  t={elapsed:4.1f}s\n" + table)
                else:
                    print(f"--- t={elapsed:4.1f}s\n{table}")
                await asyncio.sleep(0.5 if interactive else 1.5)
            stop.set()
            await asyncio.gather(*workers)
            print("\nfinal:\n" + render(pool, served, errors, note))
            total = sum(served.values())
            shares = ", ".join(f"{b}={served[b] / total:.0%}" for b in sorted(served))
            print(f"\n{total} round trips; shares {shares} (weights 2:1:1, skewed by the faults)")
    finally:
        await asyncio.gather(*(p.stop() for p in procs))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=14.0)
    asyncio.run(main(parser.parse_args().duration))
