"""A user's program: ``mypy --strict`` must accept it (tests/test_typing.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import wsclient
from wsclient import ApiKeyAuth, Backend, HealthCheckConfig, Message, PoolOptions, WebSocketPool


def on_healthy(backend_id: str) -> None:
    print("healthy", backend_id)


async def on_unhealthy(backend_id: str, error: str | None) -> None:
    print("unhealthy", backend_id, error)


def on_closed(backend_id: str, connection_id: str, code: int | None, reason: str) -> None:
    print(backend_id, connection_id, code, reason)


def on_ejected(backend_id: str, seconds: float, error: str) -> None:
    print(backend_id, seconds, error)


def on_idle(backend_id: str, connection_id: str, message: Message) -> None:
    print(backend_id, connection_id, message.data)


def on_anything(backend_id: str, *details: object) -> None:
    print(backend_id, details)


async def main() -> None:
    options: PoolOptions = {"max_connections": 8, "acquire_timeout": None}
    pool = WebSocketPool(
        backends=[
            Backend(id="a", url="ws://127.0.0.1:9001/ws", weight=2),
            {"url": "ws://127.0.0.1:9002/ws", "weight": 1, "compression": True},
            "ws://127.0.0.1:9003/ws",
        ],
        load_balancing="least-connections",
        min_connections=1,
        health_check={"interval": 5, "path": "/health"},
        circuit_breaker={"failure_threshold": 3},
        reconnect={"initial_delay": 0.5, "max_delay": 30},
        heartbeat={"interval": 10, "timeout": 5},
        auth=ApiKeyAuth(key="k", header="X-Service-Key"),
        headers={"X-Tenant": "blue"},
        protocols=["chat.v1"],
    )
    from_dict = WebSocketPool(**options)  # a typed dict of options, e.g. built elsewhere
    overridden = WebSocketPool(pool.config, health_check=HealthCheckConfig(enabled=False))
    kept = pool.on("backend-healthy", on_healthy)
    kept("direct call keeps its type")
    pool.on("breaker-open", on_healthy)
    pool.on("backend-unhealthy", on_unhealthy)
    pool.on("connection-closed", on_closed)
    pool.on("connection-closed", on_anything)
    pool.on("backend-ejected", on_ejected)
    pool.on("idle-message", on_idle)
    pool.on("connection-open", lambda backend_id, connection_id: None)
    pool.off("backend-healthy", on_healthy)
    async with pool, overridden, from_dict, pool.acquire() as conn:
        await conn.send_json({"op": "ping"})
        reply: dict[str, Any] = await conn.receive_json(timeout=5)
        print(reply)
    single = await wsclient.connect("ws://127.0.0.1:9001/ws", heartbeat={"interval": None})
    await single.close()


if __name__ == "__main__":
    asyncio.run(main())
