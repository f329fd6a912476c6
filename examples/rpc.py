"""RPC over WebSocket: a ``wsclient.Router`` serves ``{type, action, data}`` calls inside a
`websockets` server, and the client calls it with ``pool.request()``: many calls in flight
on a few shared connections, each reply matched to its caller by ``"id"``.
Run: ``.venv/bin/python examples/rpc.py``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pydantic
from websockets.asyncio.server import ServerConnection, serve

from wsclient import RouteContext, Router, WebSocketPool


class Add(pydantic.BaseModel):
    a: int
    b: int


router = Router()


@router.route("math", "add", model=Add)
async def add(data: Add, ctx: RouteContext) -> dict[str, Any]:
    return {"sum": data.a + data.b}


async def handler(ws: ServerConnection) -> None:
    """The server side: every message through the router, every reply back."""
    async for raw in ws:
        reply = await router.dispatch(raw)
        if reply is not None:
            await ws.send(reply)


async def main() -> None:
    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        url = f"ws://127.0.0.1:{port}/"
        async with WebSocketPool(backends=[url], min_connections=2, max_connections=4) as pool:
            calls = [
                {"type": "math", "action": "add", "data": {"a": i, "b": i}} for i in range(100)
            ]
            replies = await asyncio.gather(*(pool.request(call, timeout=5) for call in calls))
            assert [r["data"]["sum"] for r in replies] == [2 * i for i in range(100)]
            print(f"100 concurrent calls answered over {pool.active_count} shared connections")

            bad = await pool.request({"type": "math", "action": "add", "data": {"a": "x"}})
            print(
                "invalid call ->",
                bad["type"],
                bad["action"],
                [d["loc"] for d in bad["data"]["details"]],
            )


if __name__ == "__main__":
    asyncio.run(main())
