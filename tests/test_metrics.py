"""wsclient.metrics: a real /metrics endpoint scraped during a backend SIGKILL, and the
OpenTelemetry instruments read through the SDK's in-memory reader."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.parser import text_string_to_metric_families

from wsclient import AcquireTimeoutError, Backend, WebSocketPool
from wsclient.loop_bridge import on_loop
from wsclient.metrics import PrometheusCollector, instrument
from wsclient.testing import BackendProcess, BackendServer

from .conftest import FAST, PoolFactory, until

OPERATING_EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "operating.py"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def endpoint() -> Iterator[tuple[CollectorRegistry, str]]:
    """prometheus_client's own HTTP server on a free loopback port, stopped after."""
    registry = CollectorRegistry()
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    yield registry, f"http://127.0.0.1:{server.server_port}/metrics"
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
async def killable() -> AsyncIterator[list[BackendProcess]]:
    procs = [BackendProcess(name=f"p{i}") for i in range(2)]
    await asyncio.gather(*(p.start() for p in procs))
    yield procs
    await asyncio.gather(*(p.stop() for p in procs))


async def scrape(http: aiohttp.ClientSession, url: str) -> Samples:
    async with http.get(url) as response:
        assert response.status == 200
        text = await response.text()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    key = (name, tuple(sorted({"pool": "orders", **labels}.items())))
    assert key in samples, f"{key} not scraped; have {sorted(k for k in samples if k[0] == name)}"
    return samples[key]


def connections(samples: Samples, backend: str) -> dict[str, float]:
    return {
        state: value(samples, "wsclient_connections", backend=backend, state=state)
        for state in ("idle", "used", "connecting", "closing")
    }


async def test_prometheus_endpoint_during_backend_sigkill(
    killable: list[BackendProcess], endpoint: tuple[CollectorRegistry, str]
) -> None:
    """Scraped over HTTP (from prometheus_client's thread): connection counts per backend
    and state, then after a SIGKILL the lost connections, the ejection and the breaker
    transition on the killed backend's labels only, and the time histograms."""
    registry, url = endpoint
    pool = WebSocketPool(
        backends=[Backend(id=p.name, url=p.url) for p in killable],
        **{**FAST, "reconnect": {"initial_delay": 5.0, "max_delay": 5.0, "jitter": 0.0}},
        min_connections=4,
        heartbeat={"interval": 0.2, "timeout": 0.5},
        circuit_breaker={"failure_threshold": 2, "recovery_timeout": 30},
    )
    opened, ejected = asyncio.Event(), asyncio.Event()
    pool.on("breaker-open", lambda backend_id: opened.set())
    pool.on("backend-ejected", lambda backend_id, seconds, error: ejected.set())
    async with pool, aiohttp.ClientSession() as http:
        registry.register(PrometheusCollector(pool, pool_name="orders"))
        for _ in range(10):
            async with pool.acquire() as conn:
                await conn.send("x")
                await conn.receive(timeout=5)
        before = await scrape(http, url)
        assert connections(before, "p0") == {"idle": 2, "used": 0, "connecting": 0, "closing": 0}
        assert connections(before, "p1")["idle"] == 2
        assert value(before, "wsclient_backend_breaker_state", backend="p1", state="closed") == 1
        assert value(before, "wsclient_backend_healthy", backend="p1") == 1
        assert value(before, "wsclient_acquires_total", outcome="immediate") == 10
        assert value(before, "wsclient_connection_wait_time_seconds_count") == 10
        assert value(before, "wsclient_connection_wait_time_seconds_bucket", le="0.0001") == 10
        assert value(before, "wsclient_connection_use_time_seconds_count") == 10
        assert value(before, "wsclient_connection_create_time_seconds_count") == 0  # before

        await killable[1].kill()
        await asyncio.wait_for(asyncio.gather(opened.wait(), ejected.wait()), 10)
        await until(lambda: pool.stats().backends["p1"].connections.idle == 0)
        after = await scrape(http, url)

    assert sum(connections(after, "p1").values()) == 0
    assert connections(after, "p0")["idle"] >= 2
    assert value(after, "wsclient_backend_connections_lost_total", backend="p1") == 2
    assert value(after, "wsclient_backend_connections_lost_total", backend="p0") == 0
    assert value(after, "wsclient_backend_ejections_total", backend="p1") == 1
    assert value(after, "wsclient_backend_ejections_total", backend="p0") == 0
    assert value(after, "wsclient_backend_ejected", backend="p1") == 1
    assert value(after, "wsclient_backend_breaker_state", backend="p1", state="open") == 1
    assert value(after, "wsclient_backend_breaker_state", backend="p1", state="closed") == 0
    assert value(after, "wsclient_backend_breaker_state", backend="p0", state="closed") == 1
    opens = "wsclient_backend_breaker_transitions_total"
    assert value(after, opens, backend="p1", state="open") == 1
    assert value(after, opens, backend="p0", state="open") == 0
    assert value(after, "wsclient_backend_share", backend="p0") == 0.5


def points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    assert data is not None
    found: dict[str, list[Any]] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                found.setdefault(metric.name, []).extend(metric.data.data_points)
    return found


def by_attrs(found: dict[str, list[Any]], name: str, **attrs: str) -> Any:
    for point in found[name]:
        if all(point.attributes.get(k) == v for k, v in attrs.items()):
            return point
    raise AssertionError(f"no {name} point with {attrs}: {found[name]}")


async def test_opentelemetry_instruments_with_in_memory_reader(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """Connection count by state and backend, pending requests, wait/use/create time
    histograms (every acquire, every lease, every connect), timeouts and per-backend
    gauges, read through the OpenTelemetry SDK; close() stops the reporting."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    pool = await make_pool(servers[:2], min_connections=0, max_connections=1)
    handle = instrument(pool, provider, pool_name="orders")
    held = await pool.acquire()  # opens one: create_time
    backend = held.backend_id
    waiter = asyncio.create_task(pool.acquire())
    await until(lambda: pool.waiting_count == 1)
    found = points(reader)
    pending = by_attrs(found, "wsclient.connection.pending_requests", **{"pool.name": "orders"})
    assert pending.value == 1
    used = by_attrs(found, "wsclient.connection.count", state="used", **{"backend.id": backend})
    assert used.value == 1
    await asyncio.sleep(0.02)
    pool.release(held)
    conn = await waiter
    with pytest.raises(AcquireTimeoutError):
        await pool.acquire(timeout=0.01)
    pool.release(conn)
    async with pool.acquire():
        pass

    found = points(reader)
    wait: HistogramDataPoint = by_attrs(found, "wsclient.connection.wait_time")
    use: HistogramDataPoint = by_attrs(found, "wsclient.connection.use_time")
    create: HistogramDataPoint = by_attrs(found, "wsclient.connection.create_time")
    assert wait.count == 3 and wait.max >= 0.015  # the opener's wait, the hand-over, one idle
    assert use.count == 3 and use.min >= 0 and use.max >= 0.015
    assert create.count == 1 and create.attributes == {"pool.name": "orders"}
    assert by_attrs(found, "wsclient.connection.timeouts").value == 1
    assert by_attrs(found, "wsclient.acquires", outcome="timeout").value == 1
    assert by_attrs(found, "wsclient.acquires", outcome="waited").value == 2
    assert by_attrs(found, "wsclient.connection.max").value == 1
    assert by_attrs(found, "wsclient.backend.healthy", **{"backend.id": backend}).value == 1
    assert by_attrs(found, "wsclient.backend.share", **{"backend.id": backend}).value == 1.0
    closed = by_attrs(
        found, "wsclient.backend.breaker.state", state="closed", **{"backend.id": backend}
    )
    assert closed.value == 1

    handle.close()
    async with pool.acquire():
        pass
    found = points(reader)
    assert by_attrs(found, "wsclient.connection.use_time").count == 3  # not recorded any more
    assert "wsclient.connection.count" not in found or not [
        p for p in found["wsclient.connection.count"] if p.value
    ]
    provider.shutdown()


async def test_uninstrumented_pool_has_no_timing(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """Without wsclient.metrics the pool keeps no timing state at all (the hot path only
    tests it for None); instrumenting twice shares one."""
    pool = await make_pool(servers[:1], min_connections=1)
    async with pool.acquire():
        pass
    assert pool._timing is None
    registry = CollectorRegistry()
    registry.register(PrometheusCollector(pool))
    timing = pool._timing
    assert timing is not None and timing.immediate_base == 1
    instrument(pool, MeterProvider(metric_readers=[InMemoryMetricReader()])).close()
    assert pool._timing is timing
    text = [f.name for f in registry.collect()]
    assert "wsclient_connection_wait_time_seconds" in text


async def test_operating_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """`python examples/operating.py`: the scrape shows the connections and acquires, and
    the stats the 2:1 shares."""
    spec = importlib.util.spec_from_file_location("example_operating", OPERATING_EXAMPLE)
    assert spec is not None and spec.loader is not None
    operating = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(operating)
    # The example configures the wsclient logger as a program would; run in this
    # process, that must not outlive the test (later tests capture DEBUG records).
    wsclient_logger = logging.getLogger("wsclient")
    level, handlers = wsclient_logger.level, list(wsclient_logger.handlers)
    try:
        await operating.main()
    finally:
        wsclient_logger.setLevel(level)
        wsclient_logger.handlers[:] = handlers
    out = capsys.readouterr().out
    assert 'wsclient_connections{backend="a",pool="orders",state="idle"} 2.0' in out, out
    assert 'wsclient_acquires_total{outcome="immediate",pool="orders"} 30.0' in out, out
    assert "acquires: 30, shares: a=67% b=33%" in out


async def test_opentelemetry_per_lease_false_records_only_slow_path_times(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """per_lease=False: no use time and no zero wait per immediate acquire (the SDK's
    record() stays off the hot path); waits that waited and connects still recorded."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    pool = await make_pool(servers[:1], min_connections=0, max_connections=1)
    instrument(pool, provider, per_lease=False)
    for _ in range(3):  # the first waits for the open, the others find it idle
        async with pool.acquire():
            pass
    found = points(reader)
    assert by_attrs(found, "wsclient.connection.wait_time").count == 1
    assert by_attrs(found, "wsclient.connection.create_time").count == 1
    assert "wsclient.connection.use_time" not in found
    assert by_attrs(found, "wsclient.acquires", outcome="immediate").value == 2
    provider.shutdown()


def histogram_points(reader: InMemoryMetricReader) -> dict[str, HistogramDataPoint]:
    found = points(reader)
    return {kind: by_attrs(found, f"wsclient.connection.{kind}_time") for kind in ("wait", "use")}


async def test_opentelemetry_histograms_hold_every_lease_once(
    servers: list[BackendServer], make_pool: PoolFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Recorded at collection time from the bounded buffers (made tiny here, so most
    observations overflow into its buckets): collected from another thread, by two
    readers, across the pool's close, each histogram's count, sum and buckets equal
    the pool's own timings: nothing lost, nothing counted twice."""
    monkeypatch.setattr("wsclient.timing.PENDING_CAPACITY", 3)
    first, second = InMemoryMetricReader(), InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[first, second])
    pool = await make_pool(servers[:1], min_connections=0, max_connections=1)
    instrument(pool, provider, pool_name="orders")
    timing = pool._timing
    assert timing is not None and len(timing.use_pending) == 1

    async def leases(n: int) -> None:
        for _ in range(n):
            async with pool.acquire():
                pass

    def check(seen: dict[str, HistogramDataPoint]) -> None:
        assert timing is not None
        immediate = pool.stats().acquires.immediate  # zero waits, counted by the pool
        assert seen["wait"].count == timing.wait.count + immediate
        assert seen["wait"].sum == pytest.approx(timing.wait.sum, rel=1e-9, abs=1e-12)
        assert seen["use"].count == timing.use.count
        assert seen["use"].sum == pytest.approx(timing.use.sum, rel=1e-9)
        assert list(seen["use"].bucket_counts) == timing.use.counts

    await leases(20)  # the first waits for its connection, the others find it idle
    # A periodic reader collects from its own thread: the buffers are taken on the loop.
    check(await asyncio.to_thread(histogram_points, first))
    assert timing.use.count == 20 and timing.use_pending[0].values == []
    await leases(7)
    check(histogram_points(second))  # has the first flush too, recorded into every reader
    check(histogram_points(first))
    await leases(5)
    await pool.close()
    check(histogram_points(first))  # leases before the pool closed still arrive
    check(histogram_points(second))
    assert histogram_points(first)["use"].count == 32
    provider.shutdown()


async def test_closed_instrumentation_records_what_was_pending_then_nothing(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """close() detaches the buffers from the pool (its hooks stop feeding them); what
    they held is recorded at the next collection, once."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    pool = await make_pool(servers[:1], min_connections=1)
    await until(lambda: pool.stats().connections.idle == 1)
    handle = instrument(pool, provider)
    for _ in range(4):
        async with pool.acquire():
            pass
    handle.close()
    timing = pool._timing
    assert timing is not None and timing.use_pending == timing.wait_pending == []
    for _ in range(3):
        async with pool.acquire():
            pass
    for _ in range(2):  # the second collection finds nothing new
        seen = histogram_points(reader)
        assert seen["use"].count == 4 and seen["wait"].count == 4  # four at once: 0 s
        assert seen["wait"].sum == 0
    provider.shutdown()


async def test_on_loop_gives_up_without_taking_anything(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """A collection that times out waiting for a blocked loop leaves the buffers alone:
    the call it queued does not run once the loop is free (so nothing taken is lost)."""
    pool = await make_pool(servers[:1], min_connections=0)
    ran: list[str] = []
    outcome: list[BaseException] = []
    gave_up = threading.Event()

    def collect() -> None:
        try:
            on_loop(pool, lambda: ran.append("taken"), timeout=0.05)
        except TimeoutError as exc:
            outcome.append(exc)
        finally:
            gave_up.set()

    thread = threading.Thread(target=collect)
    thread.start()
    assert gave_up.wait(5)  # blocks this loop on purpose, until the collector gave up
    thread.join(5)
    for _ in range(3):
        await asyncio.sleep(0)  # the queued call gets its turn
    assert ran == [] and len(outcome) == 1 and "did not answer within 0.05 s" in str(outcome[0])
    assert await asyncio.to_thread(on_loop, pool, lambda: "answered", 5.0) == "answered"
