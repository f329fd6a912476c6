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
from collections.abc import Awaitable, Callable
from typing import NamedTuple

import aiohttp
from yarl import URL

from wsclient.config import ConnectionOptions, HealthCheckConfig
from wsclient.transports.aiohttp import describe_connect_error, ssl_argument
from wsclient.transports.base import auth_headers, with_host_header

logger = logging.getLogger("wsclient.health")

ProbeGate = Callable[[str], Awaitable[float | None]]
"""Asked before each probe of a backend (a fleet's probe lease): None means probe
now; a number means another instance holds the lease, ask again after that many
seconds (its results arrive through the shared state)."""


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
    """Runs one probe loop per watched backend and reports every result by callback.

    It knows nothing of the pool: ``on_result(backend_id, result)`` is where
    thresholds are applied (the backend-state store), so a shared store can
    take the same results from another process.
    """

    def __init__(
        self,
        config: HealthCheckConfig,
        session: Callable[[], aiohttp.ClientSession],
        on_result: Callable[[str, ProbeResult], None],
        gate: ProbeGate | None = None,
    ) -> None:
        self._config = config
        self._gate = gate
        self._session = session
        self._on_result = on_result
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._rng = random.Random()

    def watch(self, backend_id: str, url: str, options: ConnectionOptions) -> None:
        if not self._config.enabled or backend_id in self._tasks:
            return
        self._tasks[backend_id] = asyncio.get_running_loop().create_task(
            self._loop(backend_id, url, options), name=f"wsclient-health-{backend_id}"
        )

    async def unwatch(self, backend_id: str) -> None:
        task = self._tasks.pop(backend_id, None)
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

    async def _loop(self, backend_id: str, url: str, options: ConnectionOptions) -> None:
        cfg = self._config
        # First probe at a random point of the first interval: spreads a fleet.
        await asyncio.sleep(cfg.interval * self._rng.uniform(0.0, 1.0))
        while True:
            if self._gate is not None:
                wait = await self._gate(backend_id)
                if wait is not None:
                    await asyncio.sleep(wait)
                    continue
            result = await self.probe(url, options)
            try:
                self._on_result(backend_id, result)
            except Exception:  # a listener's bug must not end the probing for good
                logger.exception("recording a probe result of %s failed", backend_id)
            # Under a lease the jitter only shortens the wait, so the holder asks
            # again before its lease (one interval from its result) runs out.
            high = 1.0 if self._gate is not None else 1 + cfg.jitter
            await asyncio.sleep(cfg.interval * self._rng.uniform(1 - cfg.jitter, high))

    async def probe(self, url: str, options: ConnectionOptions) -> ProbeResult:
        """Run one probe; never raises (except cancellation)."""
        cfg = self._config
        started = time.perf_counter()
        try:
            async with asyncio.timeout(cfg.timeout):
                if cfg.path is not None:
                    result = await self._probe_http(url, options, cfg.path)
                else:
                    result = await self._probe_ws(url, options)
        except TimeoutError:
            return ProbeResult(False, None, f"probe timed out after {cfg.timeout} s")
        except (aiohttp.ClientError, OSError) as exc:
            return ProbeResult(False, None, _describe(exc))
        except Exception as exc:
            # An auth provider (or anything else) raising is a failed probe, not
            # the end of the loop; its message may quote credentials, so only
            # the type is kept.
            return ProbeResult(False, None, f"probe failed: {type(exc).__name__}")
        if result is not None:
            return result
        return ProbeResult(True, (time.perf_counter() - started) * 1000.0, None)

    async def _probe_http(
        self, ws_url: str, options: ConnectionOptions, path: str
    ) -> ProbeResult | None:
        url = http_origin(ws_url).with_path(path)
        async with self._session().get(
            url,
            ssl=ssl_argument(options.ssl),
            server_hostname=options.server_hostname,
            headers=with_host_header(url, {}, options.server_hostname),
        ) as response:
            await response.read()
            if 200 <= response.status < 300:
                return None
            return ProbeResult(
                False,
                None,
                f"health check returned HTTP {response.status}",
                conclusive=response.status == 503,
            )

    async def _probe_ws(self, url: str, options: ConnectionOptions) -> ProbeResult | None:
        headers = {**options.headers, **await auth_headers(options.auth)}
        async with self._session().ws_connect(
            url,
            headers=with_host_header(url, headers, options.server_hostname),
            server_hostname=options.server_hostname,
            protocols=options.protocols,
            ssl=ssl_argument(options.ssl),
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


def _describe(exc: BaseException) -> str:
    # Shown in health_status() and logs: TLS failures named as such, URLs
    # redacted, never an aiohttp repr (it carries the request headers).
    if isinstance(exc, aiohttp.WSServerHandshakeError) and exc.status != 101:
        return f"WebSocket probe rejected with HTTP {exc.status}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"connect failed: {describe_connect_error(exc)}"
    return describe_connect_error(exc)
