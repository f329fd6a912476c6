"""Two pool instances sharing state through Redis (README "Running a fleet").

``REDIS_URL=redis://127.0.0.1:6379/0 python examples/fleet.py``: instance A
sees a backend fail and opens its breaker; instance B, which never dialled
that backend, takes it out of rotation through Redis.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from wsclient import Backend, RedisSharedState, WebSocketPool
from wsclient.testing import BackendServer


async def main() -> None:
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    async with BackendServer() as one, BackendServer() as two:
        backends = [Backend(id="one", url=one.url), Backend(id="two", url=two.url)]
        options: dict[str, Any] = {
            "backends": backends,
            "health_check": {"enabled": False},
            "circuit_breaker": {"failure_threshold": 1},
            "reconnect": {"initial_delay": 0.1},
        }
        a = WebSocketPool(**options, shared_state=RedisSharedState(url, cluster="example"))
        b = WebSocketPool(
            **options, min_connections=0, shared_state=RedisSharedState(url, cluster="example")
        )
        seen = asyncio.Event()
        b.on("breaker-open", lambda backend_id: seen.set())
        async with a, b:
            started = time.monotonic()
            await one.stop()  # A's connection to "one" closes and its reconnect is refused
            await asyncio.wait_for(seen.wait(), 5)
            print(f"B saw 'one' open after {time.monotonic() - started:.2f} s")
            print("B:", {k: (h.breaker, h.eligible) for k, h in b.health_status().items()})


if __name__ == "__main__":
    asyncio.run(main())
