"""Recipe: one WebSocketPool per aiohttp application, opened and closed with the app.

``cleanup_ctx`` starts the pool before the first request is served and closes
it (bounded by ``shutdown_timeout``) after the last one, and a typed
``web.AppKey`` hands it to the handlers. ``POST /forward`` sends the request's
JSON body to a backend over a pooled connection and returns the reply; a pool
with no eligible backend answers 503, a backend that does not reply in time
504.

``python examples/aiohttp_app.py`` runs it against two local echo backends
and sends one request through it; ``tests/test_recipes.py`` runs it too.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from aiohttp import ClientSession, web

from wsclient import AcquireTimeoutError, NoHealthyBackendError, PoolConfig, WebSocketPool

#: The application's pool, typed: ``request.app[POOL]`` is a ``WebSocketPool``.
POOL = web.AppKey("wsclient_pool", WebSocketPool)
#: How long a request may wait for a connection and then for the backend's reply.
REPLY_TIMEOUT = 5.0


async def forward(request: web.Request) -> web.Response:
    """Send the JSON body over a pooled connection; answer with the backend's reply."""
    try:
        payload = await request.json()
    except json.JSONDecodeError:
        raise web.HTTPBadRequest(text="the body must be JSON") from None
    pool = request.app[POOL]
    try:
        async with pool.acquire(timeout=REPLY_TIMEOUT) as conn:
            await conn.send_json(payload, timeout=REPLY_TIMEOUT)
            reply = await conn.receive_json(timeout=REPLY_TIMEOUT)
            backend_id = conn.backend_id
    except (NoHealthyBackendError, AcquireTimeoutError) as exc:
        raise web.HTTPServiceUnavailable(text=f"no backend available: {exc}") from None
    except TimeoutError:
        # The pool closes a connection whose reply is late instead of re-leasing it.
        raise web.HTTPGatewayTimeout(text="the backend did not reply in time") from None
    return web.json_response({"backend": backend_id, "reply": reply})


def create_app(config: PoolConfig) -> web.Application:
    """The application; its pool lives exactly as long as the app runs."""

    async def pool_context(app: web.Application) -> AsyncIterator[None]:
        async with WebSocketPool(config) as pool:
            app[POOL] = pool
            yield

    app = web.Application()
    app.cleanup_ctx.append(pool_context)
    app.router.add_post("/forward", forward)
    return app


async def main() -> None:
    from wsclient.testing import BackendServer  # local echo backends, for the demo only

    async with BackendServer() as a, BackendServer() as b:
        # In a service: PoolConfig.load("pool.toml") (file, then WSCLIENT_* variables).
        config = PoolConfig(backends=[a.url, b.url], min_connections=2)
        runner = web.AppRunner(create_app(config))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        try:
            host, port = runner.addresses[0][:2]
            async with (
                ClientSession() as http,
                http.post(f"http://{host}:{port}/forward", json={"hello": "aiohttp"}) as response,
            ):
                print(response.status, await response.json())
        finally:
            await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
