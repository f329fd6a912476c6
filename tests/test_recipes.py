"""The integration recipes in examples/, run against real backends and real servers.

Each recipe serves HTTP on 127.0.0.1 (aiohttp's own server; uvicorn for
FastAPI) and forwards every request over a pooled WebSocket connection to
local echo backends; the tests check the replies, that connections are
pooled (not opened per request), the error statuses, and that the pool is
closed with the application.
"""

from __future__ import annotations

import importlib.util
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from aiohttp import ClientSession, ClientTimeout, web

from wsclient import PoolConfig, WebSocketPool
from wsclient.pytest_plugin import BackendsFactory
from wsclient.testing import BackendServer

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # FastAPI resolves the handlers' annotations through it
    spec.loader.exec_module(module)
    return module


aiohttp_app = load_example("aiohttp_app")
fastapi_app = load_example("fastapi_app")


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@asynccontextmanager
async def serve_aiohttp(config: PoolConfig) -> AsyncIterator[tuple[str, web.Application]]:
    app = aiohttp_app.create_app(config)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}", app
    finally:
        await runner.cleanup()


@asynccontextmanager
async def serve_fastapi(config: PoolConfig) -> AsyncIterator[tuple[str, Any]]:
    app = fastapi_app.create_app(config)
    async with fastapi_app.serve(app) as base:
        yield base, app


SERVERS = {"aiohttp": serve_aiohttp, "fastapi": serve_fastapi}


def pool_of(kind: str, app: Any) -> WebSocketPool:
    pool: WebSocketPool = app[aiohttp_app.POOL] if kind == "aiohttp" else app.state.pool
    return pool


async def post(http: ClientSession, url: str, payload: object) -> tuple[int, Any]:
    async with http.post(url, json=payload) as response:
        body = await response.json() if response.status == 200 else await response.text()
        return response.status, body


@pytest.fixture
async def http() -> AsyncIterator[ClientSession]:
    async with ClientSession(timeout=ClientTimeout(total=15)) as session:
        yield session


@pytest.mark.parametrize("kind", SERVERS)
async def test_recipe_forwards_requests_over_pooled_connections(
    kind: str, wsclient_backends: BackendsFactory, http: ClientSession
) -> None:
    """Every request is answered by a backend, over the warm set: no connection per request."""
    backends: list[BackendServer] = await wsclient_backends(2)
    # No active probes: the first comes at a random point of the first interval, and a
    # probe's handshake would count as a third accepted connection (seen once, in a
    # full-suite run).
    config = PoolConfig(
        backends=[b.url for b in backends],
        min_connections=2,
        max_connections=2,
        health_check={"enabled": False},
    )
    async with SERVERS[kind](config) as (base, app):
        answered_by = set()
        for n in range(6):
            status, body = await post(http, f"{base}/forward", {"n": n, "via": kind})
            assert status == 200, body
            assert body["reply"] == {"n": n, "via": kind}
            answered_by.add(body["backend"])
        assert answered_by == {b.url for b in backends}
        assert sum(b.accepted_total for b in backends) == 2  # the two warm connections
        assert sum(b.messages_received for b in backends) == 6
        assert pool_of(kind, app).active_count == 0  # every lease was given back
    for backend in backends:  # the pool closed with the application
        await backend.wait_for_connections(0)


@pytest.mark.parametrize("kind", SERVERS)
async def test_recipe_answers_503_when_no_backend_is_available(
    kind: str, http: ClientSession
) -> None:
    """A pool whose only backend refuses connections: 503, not a hang or a 500."""
    config = PoolConfig(
        backends=[f"ws://127.0.0.1:{closed_port()}/ws"],
        min_connections=1,
        health_check={"enabled": False},
        connect_timeout=1,
    )
    async with SERVERS[kind](config) as (base, _):
        status, body = await post(http, f"{base}/forward", {"n": 1})
    assert status == 503
    assert "no backend available" in body


@pytest.mark.parametrize("kind", SERVERS)
async def test_recipe_answers_504_when_the_reply_is_late(
    kind: str,
    wsclient_backend: BackendServer,
    http: ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A backend slower than the recipe's reply timeout: 504, and the app keeps serving."""
    module = aiohttp_app if kind == "aiohttp" else fastapi_app
    monkeypatch.setattr(module, "REPLY_TIMEOUT", 0.2)
    config = PoolConfig(backends=[wsclient_backend.url], min_connections=1)
    async with SERVERS[kind](config) as (base, _):
        wsclient_backend.set_reply_delay(0.6)
        status, body = await post(http, f"{base}/forward", {"n": 1})
        assert status == 504, body
        wsclient_backend.set_reply_delay(0)
        status, body = await post(http, f"{base}/forward", {"n": 2})
        assert (status, body["reply"]) == (200, {"n": 2})


@pytest.mark.parametrize("module", [aiohttp_app, fastapi_app], ids=["aiohttp", "fastapi"])
async def test_recipe_examples_run_as_scripts_do(
    module: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    """`python examples/<recipe>.py`: its main() serves one forwarded request."""
    await module.main()
    out = capsys.readouterr().out
    assert out.startswith("200 {'backend': 'ws://127.0.0.1:")
    assert "'reply': {'hello':" in out
