"""The pytest plugin as a user's project sees it (this is the README example)."""

from __future__ import annotations

import asyncio

from wsclient import Backend, WebSocketPool
from wsclient.pytest_plugin import BackendsFactory, FaultProxyFactory


async def test_fails_over_from_a_silent_backend(
    wsclient_backends: BackendsFactory, wsclient_fault_proxy: FaultProxyFactory
) -> None:
    """README 'Testing your service': a blackholed backend is found and avoided."""
    primary, spare = await wsclient_backends(2)
    proxy = await wsclient_fault_proxy(primary)
    async with WebSocketPool(
        backends=[
            Backend(id="primary", url=proxy.url_for("/ws")),
            Backend(id="spare", url=spare.url),
        ],
        heartbeat={"interval": 0.2, "timeout": 0.2},
        connect_timeout=0.5,
    ) as pool:
        gone = asyncio.Event()

        def on_closed(backend_id: str, *details: object) -> None:
            if backend_id == "primary":
                gone.set()

        pool.on("connection-closed", on_closed)
        proxy.blackhole()
        await asyncio.wait_for(gone.wait(), 5)
        async with pool.acquire() as conn:
            await conn.send("still served")
            assert (await conn.receive(timeout=5)).data == "still served"
            assert conn.backend_id == "spare"
