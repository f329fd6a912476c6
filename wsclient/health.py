"""Active health checks: one probe loop per backend.

A probe never touches pooled connections. With ``health_check.path`` it is an
HTTP GET on the backend's origin (``ws://h:p/x`` → ``http://h:p`` + path): 2xx
is a success, 503 marks the backend unhealthy at once (the server says so
itself), anything else is a failure. Without a path it is a fresh WebSocket
handshake plus a ping/pong round trip, closed right after.

``unhealthy_threshold`` consecutive failures mark a backend unhealthy,
``healthy_threshold`` consecutive successes mark it healthy again; the pool
hears of each crossing once. Intervals are jittered so a fleet of clients
doesn't probe in lockstep. Passive signals (connect errors, abnormal closes,
missed pongs) feed the circuit breaker instead; see ``backend.py``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import TYPE_CHECKING, NamedTuple

import aiohttp
from yarl import URL

from wsclient.connection import _ssl_argument, auth_headers, describe_connect_error

if TYPE_CHECKING:
    from wsclient.backend import BackendState
    from wsclient.pool import WebSocketPool

logger = logging.getLogger("wsclient.health")


class ProbeResult(NamedTuple):
    ok: bool
    latency_ms: float | None
    error: str | None
    conclusive: bool = False
    """A failure that marks the backend unhealthy at once (HTTP 503)."""


def http_origin(ws_url: str) -> URL:
    """``ws://host:port/path`` → ``http://host:port`` (wss → https)."""
    url = URL(ws_url)
    scheme = "https" if url.scheme == "wss" else "http"
    return URL.build(scheme=scheme, host=url.host or "", port=url.explicit_port)


class HealthChecker:
    """Runs the probe loops of one pool and reports threshold crossings to it."""

    def __init__(self, pool: WebSocketPool) -> None:
        self._pool = pool
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._rng = random.Random()

    def watch(self, backend: BackendState) -> None:
        if not self._pool.config.health_check.enabled or backend.id in self._tasks:
            return
        self._tasks[backend.id] = asyncio.get_running_loop().create_task(
            self._loop(backend), name=f"wsclient-health-{backend.id}"
        )

    async def unwatch(self, backend: BackendState) -> None:
        task = self._tasks.pop(backend.id, None)
        if task is not None:
            task.cancel()
            await asyncio.wait((task,))

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    async def _loop(self, backend: BackendState) -> None:
        cfg = self._pool.config.health_check
        # First probe at a random point of the first interval: spreads a fleet.
        await asyncio.sleep(cfg.interval * self._rng.uniform(0.0, 1.0))
        while True:
            result = await self.probe(backend)
            self.record(backend, result)
            await asyncio.sleep(cfg.interval * self._rng.uniform(1 - cfg.jitter, 1 + cfg.jitter))

    async def probe(self, backend: BackendState) -> ProbeResult:
        """Run one probe; never raises (except cancellation)."""
        cfg = self._pool.config.health_check
        started = time.perf_counter()
        try:
            async with asyncio.timeout(cfg.timeout):
                if cfg.path is not None:
                    result = await self._probe_http(backend, cfg.path)
                else:
                    result = await self._probe_ws(backend)
        except TimeoutError:
            return ProbeResult(False, None, f"probe timed out after {cfg.timeout} s")
        except (aiohttp.ClientError, OSError) as exc:
            return ProbeResult(False, None, _describe(exc))
        if result is not None:
            return result
        return ProbeResult(True, (time.perf_counter() - started) * 1000.0, None)

    async def _probe_http(self, backend: BackendState, path: str) -> ProbeResult | None:
        session = self._pool._session
        url = http_origin(backend.url).with_path(path)
        async with session.get(url, ssl=_ssl_argument(backend.options.ssl)) as response:
            await response.read()
            if 200 <= response.status < 300:
                return None
            return ProbeResult(
                False,
                None,
                f"health check returned HTTP {response.status}",
                conclusive=response.status == 503,
            )

    async def _probe_ws(self, backend: BackendState) -> ProbeResult | None:
        options = backend.options
        headers = {**options.headers, **await auth_headers(options.auth)}
        session = self._pool._session
        async with session.ws_connect(
            backend.url,
            headers=headers,
            protocols=options.protocols,
            ssl=_ssl_argument(options.ssl),
            autoping=False,
            timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=1.0),
        ) as ws:
            payload = b"wsclient-health"
            await ws.ping(payload)
            while True:
                msg = await ws.receive()
                if msg.type is aiohttp.WSMsgType.PONG:
                    return None
                if msg.type is aiohttp.WSMsgType.PING:
                    await ws.pong(msg.data)
                    continue
                if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    continue  # a greeting from the server: keep waiting for the pong
                return ProbeResult(
                    False, None, f"WebSocket probe: connection ended ({msg.type.name})"
                )

    def record(self, backend: BackendState, result: ProbeResult) -> None:
        """Apply one probe result; tell the pool when a threshold is crossed."""
        cfg = self._pool.config.health_check
        backend.last_check = time.time()
        if result.ok:
            backend.latency_ms = result.latency_ms
            backend.probe_failures = 0
            backend.probe_successes += 1
            if not backend.healthy and backend.probe_successes >= cfg.healthy_threshold:
                backend.healthy = True
                logger.info("backend %s is healthy again", backend.id)
                self._pool._on_health_change(backend, True, None)
            return
        backend.probe_successes = 0
        backend.probe_failures += 1
        backend.last_error = result.error
        if backend.healthy and (
            result.conclusive or backend.probe_failures >= cfg.unhealthy_threshold
        ):
            backend.healthy = False
            logger.warning("backend %s is unhealthy: %s", backend.id, result.error)
            self._pool._on_health_change(backend, False, result.error)


def _describe(exc: BaseException) -> str:
    # Shown in health_status() and logs: TLS failures named as such, URLs
    # redacted, never an aiohttp repr (it carries the request headers).
    if isinstance(exc, aiohttp.WSServerHandshakeError) and exc.status != 101:
        return f"WebSocket probe rejected with HTTP {exc.status}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"connect failed: {describe_connect_error(exc)}"
    return describe_connect_error(exc)
