"""Recipe: a WebSocketPool in a FastAPI (Starlette) app: lifespan plus a dependency.

The ``lifespan`` opens the pool before the app accepts requests and closes it
at shutdown; it is kept on ``app.state``. The ``PooledConnection`` dependency
leases a connection for exactly one request and gives it back when the
response is done, even if the handler raises. ``POST /forward`` sends the
JSON body to a backend and returns its reply (503 when no backend is
available, 504 when the reply is late). A plain Starlette app uses the same
``lifespan`` and ``request.app.state.pool``.

``python examples/fastapi_app.py`` serves it with uvicorn on 127.0.0.1 in
front of two local echo backends and sends one request through it;
``tests/test_recipes.py`` runs it too.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Annotated, Any

import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Request

from wsclient import (
    AcquireTimeoutError,
    Connection,
    NoHealthyBackendError,
    PoolConfig,
    WebSocketPool,
)

#: How long a request may wait for a connection and then for the backend's reply.
REPLY_TIMEOUT = 5.0


def pool_lifespan(config: PoolConfig) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """A lifespan that runs the app inside ``async with WebSocketPool(config)``."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with WebSocketPool(config) as pool:
            app.state.pool = pool
            yield

    return lifespan


def get_pool(request: Request) -> WebSocketPool:
    pool: WebSocketPool = request.app.state.pool
    return pool


async def pooled_connection(
    pool: Annotated[WebSocketPool, Depends(get_pool)],
) -> AsyncIterator[Connection]:
    """One leased connection per request, released after the response."""
    try:
        conn = await pool.acquire(timeout=REPLY_TIMEOUT)
    except (NoHealthyBackendError, AcquireTimeoutError) as exc:
        raise HTTPException(503, f"no backend available: {exc}") from None
    try:
        yield conn
    finally:
        pool.release(conn)


PooledConnection = Annotated[Connection, Depends(pooled_connection)]


def create_app(config: PoolConfig) -> FastAPI:
    app = FastAPI(lifespan=pool_lifespan(config))

    @app.post("/forward")
    async def forward(payload: dict[str, Any], conn: PooledConnection) -> dict[str, Any]:
        await conn.send_json(payload, timeout=REPLY_TIMEOUT)
        try:
            reply = await conn.receive_json(timeout=REPLY_TIMEOUT)
        except TimeoutError:
            # The pool closes a connection whose reply is late instead of re-leasing it.
            raise HTTPException(504, "the backend did not reply in time") from None
        return {"backend": conn.backend_id, "reply": reply}

    return app


@asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[str]:
    """Run ``app`` under uvicorn on 127.0.0.1 (a free port); yields its base URL.

    The socket listens before uvicorn starts, so a request sent at once waits
    in the kernel's queue until the lifespan has started the pool: no polling.
    """
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    host, port = sock.getsockname()[:2]
    server = uvicorn.Server(uvicorn.Config(app, lifespan="on", log_level="warning"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        try:
            await asyncio.wait_for(task, 10)
        finally:
            sock.close()


async def main() -> None:
    from aiohttp import ClientSession, ClientTimeout

    from wsclient.testing import BackendServer  # local echo backends, for the demo only

    async with BackendServer() as a, BackendServer() as b:
        # In a service: PoolConfig.load("pool.toml") (file, then WSCLIENT_* variables).
        config = PoolConfig(backends=[a.url, b.url], min_connections=2)
        async with (
            serve(create_app(config)) as base,
            ClientSession(timeout=ClientTimeout(total=10)) as http,
            http.post(f"{base}/forward", json={"hello": "fastapi"}) as response,
        ):
            print(response.status, await response.json())


if __name__ == "__main__":
    asyncio.run(main())
