"""``wsclient demo``: local backends, live traffic, injected faults, a live table.

Three backends run as child processes (weights 2:1:1); workers send and
receive through one pool; along the way one backend is SIGKILLed and
restarted and another's ``/health`` answers 503 for a while, so detection,
failover and recovery show in a table refreshed in place. A summary follows.
The fault times are fractions of ``--duration``, so a short run shows them all.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from wsclient.cli.view import LiveView, pool_line
from wsclient.config import Backend
from wsclient.errors import WSClientError
from wsclient.pool import WebSocketPool
from wsclient.stats import PoolStats
from wsclient.testing import BackendProcess

WEIGHTS = (2, 1, 1)

# (fraction of the duration, what happens, action)
SCENARIO = (
    (0.15, "SIGKILL ws-2", "kill"),
    (0.35, "ws-3 /health answers 503", "sick"),
    (0.55, "ws-2 restarted on its port", "restart"),
    (0.70, "ws-3 /health answers 200", "heal"),
)


class _Timeline:
    def __init__(self, started: float) -> None:
        self.started = started
        self.entries: list[tuple[float, str]] = []

    def add(self, text: str) -> None:
        self.entries.append((time.monotonic() - self.started, text))

    @property
    def last(self) -> str:
        return self.entries[-1][1] if self.entries else "starting"


async def run_demo(console: Console, duration: float, workers: int = 8) -> int:
    procs = [BackendProcess(name=f"ws-{i + 1}") for i in range(len(WEIGHTS))]
    await asyncio.gather(*(p.start() for p in procs))
    try:
        return await _run(console, procs, duration, workers)
    finally:
        await asyncio.gather(*(p.stop() for p in procs))


async def _run(
    console: Console, procs: list[BackendProcess], duration: float, n_workers: int
) -> int:
    pool = WebSocketPool(
        backends=[
            Backend(id=p.name, url=p.url, weight=w) for p, w in zip(procs, WEIGHTS, strict=True)
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
    served: Counter[str] = Counter()
    caller_errors: Counter[str] = Counter()
    view = LiveView(pool)
    errors = view.errors
    started = time.monotonic()
    timeline = _Timeline(started)

    def note(words: str) -> Callable[[str], None]:
        return lambda backend_id: timeline.add(f"{backend_id}: {words}")

    def failed(backend_id: str, words: str, error: str | None) -> None:
        timeline.add(f"{backend_id}: {words}")
        if error:
            errors.failed(backend_id, error)

    pool.on("backend-unhealthy", lambda bid, error: failed(bid, "unhealthy", error))
    pool.on("backend-ejected", lambda bid, seconds, error: failed(bid, "ejected", error))
    pool.on("backend-healthy", note("healthy"))
    pool.on("backend-unejected", note("back in rotation"))
    pool.on("breaker-open", note("breaker open"))
    pool.on("breaker-half-open", note("breaker half-open"))
    pool.on("breaker-closed", note("breaker closed"))

    stop = asyncio.Event()

    async def worker(n: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            try:
                async with pool.acquire() as conn:
                    await conn.send_json({"worker": n, "i": i})
                    reply = await conn.receive_json(timeout=1.0)
                    if reply.get("i") == i:
                        served[conn.backend_id] += 1
            except (WSClientError, TimeoutError) as exc:
                caller_errors[type(exc).__name__] += 1
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.005)

    def frame() -> Group:
        def header(stats: PoolStats) -> Text:
            return Text.assemble(
                ("wsclient demo", "bold"),
                f"  t={time.monotonic() - started:4.1f}s/{duration:.0f}s  {pool_line(stats)}\n",
                f"round trips {sum(served.values())}, caller errors "
                f"{sum(caller_errors.values())}; last: {timeline.last}",
            )

        return view.frame(console, header)

    async with pool:
        tasks = [asyncio.create_task(worker(n)) for n in range(n_workers)]
        steps = list(SCENARIO)
        try:
            with Live(frame(), console=console, auto_refresh=False) as live:
                while (elapsed := time.monotonic() - started) < duration:
                    while steps and elapsed >= steps[0][0] * duration:
                        _, label, action = steps.pop(0)
                        timeline.add(f"fault: {label}")
                        await _inject(procs, action)
                    live.update(frame(), refresh=True)
                    await asyncio.sleep(0.25)
                live.update(frame(), refresh=True)
        finally:
            stop.set()
            await asyncio.gather(*tasks)
        stats = pool.stats()
    _summary(console, stats, served, caller_errors, timeline, duration)
    return 0


async def _inject(procs: list[BackendProcess], action: str) -> None:
    if action == "kill":
        await procs[1].kill()
    elif action == "restart":
        await procs[1].start()
    elif action in ("sick", "heal"):
        await procs[2].set_health_status(503 if action == "sick" else 200)


def _summary(
    console: Console,
    stats: PoolStats,
    served: Counter[str],
    caller_errors: Counter[str],
    timeline: _Timeline,
    duration: float,
) -> None:
    total = sum(served.values())
    weight_total = sum(WEIGHTS)
    console.print()
    console.print(
        f"[bold]summary[/bold]: {total} round trips in {duration:.0f}s "
        f"({total / duration:.0f}/s; shares skewed by the faults), caller errors: "
        + (", ".join(f"{k}={v}" for k, v in sorted(caller_errors.items())) or "none")
    )
    for (bid, b), weight in zip(stats.backends.items(), WEIGHTS, strict=True):
        console.print(
            f"  {bid}: {served[bid] / total if total else 0:.0%} of traffic "
            f"(weight {weight}/{weight_total} = {weight / weight_total:.0%}), "
            f"lost {b.lost}, reconnects {b.reconnects}, ejections {b.ejections}, "
            f"breaker opened {b.breaker_transitions['open']}x"
        )
    a, w = stats.acquires, stats.wait_time
    p99 = f"{w.p99_seconds * 1000:.1f} ms" if w.p99_seconds is not None else "-"
    console.print(
        f"  acquires: {a.immediate} immediate, {a.waited} waited (p99 {p99}), "
        f"{a.timeout} timed out, {a.no_backend} no backend"
    )
    console.print("  timeline:")
    for t, text in timeline.entries:
        console.print(f"    {t:5.1f}s  {text}", highlight=False)
