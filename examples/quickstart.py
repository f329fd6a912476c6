"""The README quickstart, runnable: a pool over two local echo backends."""

from __future__ import annotations

import asyncio

from wsclient import Backend, WebSocketPool
from wsclient.testing import BackendServer


async def main() -> None:
    async with (
        BackendServer() as a,
        BackendServer() as b,
        WebSocketPool(
            backends=[Backend(id="a", url=a.url, weight=2), Backend(id="b", url=b.url)],
            min_connections=2,
            health_check={"path": "/health", "interval": 5},
        ) as pool,
    ):
        async with pool.acquire() as conn:
            await conn.send_json({"type": "hello"})
            print(conn.backend_id, await conn.receive_json(timeout=5))
        for backend_id, health in pool.health_status().items():
            print(backend_id, health.model_dump())


if __name__ == "__main__":
    asyncio.run(main())
