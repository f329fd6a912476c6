"""One fleet instance for the multi-process scenario: a pool under traffic, reporting on stdout.

``python instance_main.py CONFIG_JSON``. Config: ``backends`` (id → URL),
``redis`` (URL or null for local state), ``cluster``, ``interval`` (probe
interval). Prints one JSON object per line:

* ``{"ev": "ready", "instance": id}`` once started;
* ``{"ev": "eligible", "b": id, "v": bool, "t": epoch}`` whenever a backend's
  eligibility changes (checked every 5 ms);
* ``{"ev": "shared", "v": bool, "t": epoch}`` when the shared state connects
  or falls back to local;
* on the stdin line ``lat``: ``{"ev": "lat", "n", "failed", "p50", "p99", "max"}``
  (acquire latencies in ms since the previous ``lat``).

Traffic: one acquire + release every 2 ms, each bounded by 1 s. Exits when
stdin closes (the test is gone) or on SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from wsclient import Backend, WebSocketPool
from wsclient.fleet.redis_state import RedisSharedState


def out(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


async def main(config: dict[str, Any]) -> None:
    shared = None
    if config["redis"]:
        shared = RedisSharedState(
            config["redis"],
            cluster=config["cluster"],
            timeout=0.1,
            heartbeat=0.25,
            reconnect_delay=0.25,
        )
    interval = config["interval"]
    pool = WebSocketPool(
        backends=[Backend(id=k, url=v) for k, v in config["backends"].items()],
        shared_state=shared,
        min_connections=2,
        max_connections=8,
        health_check={
            "interval": interval,
            "timeout": interval * 0.8,
            "path": "/health",
            "unhealthy_threshold": 1,
            "healthy_threshold": 1,
        },
        circuit_breaker={"failure_threshold": 1, "recovery_timeout": 30.0},
        reconnect={"initial_delay": 5.0, "max_delay": 10.0},
        acquire_timeout=1.0,
        connect_timeout=0.5,
        shutdown_timeout=0.5,
    )
    latencies: list[float] = []
    failed = 0
    stop = asyncio.Event()

    async def traffic() -> None:
        nonlocal failed
        while not stop.is_set():
            started = time.perf_counter()
            try:
                conn = await pool.acquire(timeout=1.0)
            except Exception:
                failed += 1
            else:
                latencies.append((time.perf_counter() - started) * 1000)
                pool.release(conn)
            await asyncio.sleep(0.002)

    async def watch() -> None:
        seen: dict[str, bool] = {}
        connected: bool | None = None
        while not stop.is_set():
            now = time.time()
            for backend_id, health in pool.health_status().items():
                if seen.get(backend_id) != health.eligible:
                    seen[backend_id] = health.eligible
                    out(ev="eligible", b=backend_id, v=health.eligible, t=now)
            if shared is not None and shared.connected != connected:
                connected = shared.connected
                out(ev="shared", v=connected, t=now)
            await asyncio.sleep(0.005)

    async def commands() -> None:
        nonlocal failed
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while line := await reader.readline():
            if line.strip() == b"lat":
                values = sorted(latencies)
                n = len(values)
                out(
                    ev="lat",
                    n=n,
                    failed=failed,
                    p50=values[n // 2] if n else None,
                    p99=values[min(n - 1, int(n * 0.99))] if n else None,
                    max=values[-1] if n else None,
                )
                latencies.clear()
                failed = 0
        stop.set()

    async with pool:
        out(ev="ready", instance=shared.instance_id if shared else None)
        tasks = [asyncio.create_task(f()) for f in (traffic, watch, commands)]
        await stop.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
