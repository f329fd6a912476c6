"""Metrics for a pool: a Prometheus collector and OpenTelemetry instruments.

Extra ``wsclient[metrics]`` (``prometheus-client``, ``opentelemetry-api``);
``import wsclient`` never imports this module, so an application that does not
use it pays nothing.

Both exporters read the counts the pool keeps anyway (``pool.stats()``,
``pool.health_status()``) when they are scraped or collected, never on the
hot path. The three time histograms (wait, use, create) need one observation
per event: instrumenting a pool turns its timing on (``wsclient.timing``), a
bisect into fixed buckets per acquire and per release. Prometheus reads those
buckets at scrape time. OpenTelemetry has no asynchronous histogram, so its
three histograms are recorded per event and cost what the SDK's ``record()``
costs (``make bench`` measures both).

Names follow the OpenTelemetry connection-pool conventions
(``db.client.connection.*``) with ``wsclient`` for ``db.client``:

============================================  ===============================================
OpenTelemetry                                 Prometheus
============================================  ===============================================
``wsclient.connection.count`` {state}         ``wsclient_connections{state}`` (idle, used,
                                              connecting, closing; per backend)
``wsclient.connection.max``                   ``wsclient_connections_max``
``wsclient.connection.pending_requests``      ``wsclient_pending_requests``
``wsclient.connection.timeouts``              ``wsclient_connection_timeouts_total``
``wsclient.connection.wait_time`` (s)         ``wsclient_connection_wait_time_seconds``
``wsclient.connection.use_time`` (s)          ``wsclient_connection_use_time_seconds``
``wsclient.connection.create_time`` (s)       ``wsclient_connection_create_time_seconds``
``wsclient.acquires`` {outcome}               ``wsclient_acquires_total{outcome}``
``wsclient.backend.healthy``                  ``wsclient_backend_healthy``
``wsclient.backend.breaker.state`` {state}    ``wsclient_backend_breaker_state{state}`` (1/0)
``wsclient.backend.ejected``                  ``wsclient_backend_ejected``
``wsclient.backend.share``                    ``wsclient_backend_share``
``wsclient.backend.latency`` (s)              ``wsclient_backend_latency_seconds``
``wsclient.backend.breaker.transitions``      ``wsclient_backend_breaker_transitions_total``
``wsclient.backend.ejections``                ``wsclient_backend_ejections_total``
``wsclient.backend.reconnects``               ``wsclient_backend_reconnects_total``
``wsclient.backend.connections_lost``         ``wsclient_backend_connections_lost_total``
============================================  ===============================================

Every series carries ``pool`` (OTel: ``pool.name``) and, per backend,
``backend`` (OTel: ``backend.id``).

A pool belongs to its event loop's thread; a scrape or an export usually runs
in another thread (``prometheus_client.start_http_server``, OTel's periodic
reader). The snapshot is then taken on the loop, through
``call_soon_threadsafe``, and the scrape waits for it at most
``snapshot_timeout`` seconds (a blocked loop makes the scrape fail loudly
rather than read half-updated state).
"""

from __future__ import annotations

import concurrent.futures
import functools
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

from wsclient.backend import BackendHealth
from wsclient.breaker import BreakerState
from wsclient.pool import WebSocketPool
from wsclient.stats import PoolStats
from wsclient.timing import BUCKETS, PoolTiming, TimingHistogram

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation
    from prometheus_client.metrics_core import Metric

__all__ = ["Instrumentation", "PrometheusCollector", "instrument"]

_BREAKER_STATES: tuple[BreakerState, ...] = ("closed", "open", "half-open")
_OUTCOMES = ("immediate", "waited", "timeout", "no_backend", "cancelled", "closed")


class _Snapshot(NamedTuple):
    stats: PoolStats
    health: dict[str, BackendHealth]


def _missing(package: str) -> ImportError:
    return ImportError(f"wsclient.metrics needs {package}: pip install 'wsclient[metrics]'")


def snapshot(pool: WebSocketPool, timeout: float = 2.0) -> _Snapshot:
    """``pool.stats()`` and ``pool.health_status()``, taken on the pool's own loop."""
    loop = pool._loop
    if (
        loop is None
        or loop.is_closed()
        or not loop.is_running()
        or threading.get_ident() == pool._thread
    ):
        return _Snapshot(pool.stats(), pool.health_status())
    future: concurrent.futures.Future[_Snapshot] = concurrent.futures.Future()

    def take() -> None:
        try:
            future.set_result(_Snapshot(pool.stats(), pool.health_status()))
        except BaseException as exc:  # handed to the scraping thread
            future.set_exception(exc)

    loop.call_soon_threadsafe(take)
    try:
        return future.result(timeout)
    except concurrent.futures.TimeoutError:
        raise TimeoutError(
            f"wsclient.metrics: the pool's event loop did not answer within {timeout} s"
        ) from None


def _connection_rows(snap: _Snapshot) -> Iterator[tuple[str, str, int]]:
    """(backend, state, count) with OTel's state names (``used`` for leased)."""
    for backend_id, b in snap.stats.backends.items():
        c = b.connections
        yield backend_id, "idle", c.idle
        yield backend_id, "used", c.active
        yield backend_id, "connecting", c.connecting
        yield backend_id, "closing", c.closing


# ---------------------------------------------------------------------- Prometheus


class PrometheusCollector:
    """A ``prometheus_client`` collector for one pool.

    ``prometheus_client.REGISTRY.register(PrometheusCollector(pool))`` (or any
    ``CollectorRegistry``). Creating it turns the pool's timing on.
    """

    def __init__(
        self, pool: WebSocketPool, *, pool_name: str = "default", snapshot_timeout: float = 2.0
    ) -> None:
        try:
            import prometheus_client  # noqa: F401
        except ImportError:  # pragma: no cover - depends on the environment
            raise _missing("prometheus-client") from None
        self._pool = pool
        self._name = pool_name
        self._timeout = snapshot_timeout
        self._timing = pool._instrumented()

    def describe(self) -> Iterable[Metric]:
        """The metric names, without taking a snapshot (called once at registration)."""
        return list(self._families())

    def collect(self) -> Iterable[Metric]:
        snap = snapshot(self._pool, self._timeout)
        return list(self._families(snap))

    def _families(self, snap: _Snapshot | None = None) -> Iterator[Metric]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        pool = self._name
        b_labels = ["pool", "backend"]
        connections = GaugeMetricFamily(
            "wsclient_connections",
            "Connections by backend and state (idle, used, connecting, closing).",
            labels=["pool", "backend", "state"],
        )
        pending = GaugeMetricFamily(
            "wsclient_pending_requests", "Acquires waiting for a connection.", labels=["pool"]
        )
        maximum = GaugeMetricFamily(
            "wsclient_connections_max", "max_connections of the pool.", labels=["pool"]
        )
        timeouts = CounterMetricFamily(
            "wsclient_connection_timeouts",
            "Acquires that gave up with AcquireTimeoutError.",
            labels=["pool"],
        )
        acquires = CounterMetricFamily(
            "wsclient_acquires", "acquire() calls by outcome.", labels=["pool", "outcome"]
        )
        healthy = GaugeMetricFamily(
            "wsclient_backend_healthy", "1 if the active probe finds it healthy.", labels=b_labels
        )
        breaker = GaugeMetricFamily(
            "wsclient_backend_breaker_state",
            "1 for the circuit breaker's current state, 0 for the others.",
            labels=["pool", "backend", "state"],
        )
        ejected = GaugeMetricFamily(
            "wsclient_backend_ejected", "1 while it is ejected from rotation.", labels=b_labels
        )
        share = GaugeMetricFamily(
            "wsclient_backend_share", "Its fraction of all leases served.", labels=b_labels
        )
        latency = GaugeMetricFamily(
            "wsclient_backend_latency_seconds", "Latency of the last probe.", labels=b_labels
        )
        transitions = CounterMetricFamily(
            "wsclient_backend_breaker_transitions",
            "Circuit-breaker transitions by the state entered.",
            labels=["pool", "backend", "state"],
        )
        ejections = CounterMetricFamily(
            "wsclient_backend_ejections", "Times it was ejected.", labels=b_labels
        )
        reconnects = CounterMetricFamily(
            "wsclient_backend_reconnects",
            "Connections opened after a lost one or a failed connect.",
            labels=b_labels,
        )
        lost = CounterMetricFamily(
            "wsclient_backend_connections_lost",
            "Connections that ended on their own (peer close, error, missed pong).",
            labels=b_labels,
        )
        histograms = [
            ("wait", "Time an acquire waited for a connection (0 when one was idle)."),
            ("use", "Time a connection stayed leased."),
            ("create", "Time to open a connection (handshake and init)."),
        ]
        if snap is not None:
            stats = snap.stats
            for backend_id, state, count in _connection_rows(snap):
                connections.add_metric([pool, backend_id, state], count)
            pending.add_metric([pool], stats.pending_requests)
            maximum.add_metric([pool], stats.max_connections)
            timeouts.add_metric([pool], stats.acquires.timeout)
            counts = stats.acquires.model_dump()
            for outcome in _OUTCOMES:
                acquires.add_metric([pool, outcome], counts[outcome])
            for backend_id, b in stats.backends.items():
                labels = [pool, backend_id]
                healthy.add_metric(labels, float(b.healthy))
                for state in _BREAKER_STATES:
                    breaker.add_metric([*labels, state], float(b.breaker == state))
                    transitions.add_metric([*labels, state], b.breaker_transitions[state])
                ejected.add_metric(labels, float(b.ejected))
                share.add_metric(labels, b.share)
                health = snap.health.get(backend_id)
                if health is not None and health.latency is not None:
                    latency.add_metric(labels, health.latency / 1000)
                ejections.add_metric(labels, b.ejections)
                reconnects.add_metric(labels, b.reconnects)
                lost.add_metric(labels, b.lost)
        yield from (connections, pending, maximum, timeouts, acquires)
        for kind, doc in histograms:
            family = HistogramMetricFamily(
                f"wsclient_connection_{kind}_time_seconds", doc, labels=["pool"]
            )
            if snap is not None:
                immediate = 0
                if kind == "wait":
                    immediate = max(0, snap.stats.acquires.immediate - self._timing.immediate_base)
                histogram: TimingHistogram = getattr(self._timing, kind)
                cumulative = histogram.cumulative(immediate)
                bounds = [repr(b) for b in BUCKETS] + ["+Inf"]
                family.add_metric(
                    [pool], list(zip(bounds, cumulative, strict=True)), sum_value=histogram.sum
                )
            yield family
        yield from (healthy, breaker, ejected, share, latency)
        yield from (transitions, ejections, reconnects, lost)


# ---------------------------------------------------------------------- OpenTelemetry


class Instrumentation:
    """What ``instrument()`` returns; ``close()`` stops reporting this pool."""

    def __init__(
        self, timing: PoolTiming, sinks: dict[str, Callable[[float], None]], *, per_lease: bool
    ) -> None:
        self._timing = timing
        self._sinks = sinks
        self._per_lease = per_lease
        self.active = True
        self._attach(True)

    def _attach(self, attach: bool) -> None:
        timing = self._timing
        for kind, receivers in (
            ("instant", timing.instant_sinks),
            ("wait", timing.wait_sinks),
            ("use", timing.use_sinks),
            ("create", timing.create_sinks),
        ):
            sink = self._sinks.get(kind)
            if sink is None:
                continue
            if attach:
                receivers.append(sink)
            elif sink in receivers:
                receivers.remove(sink)

    def close(self) -> None:
        """Stop recording and observing (the instruments stay registered, empty)."""
        if self.active:
            self.active = False
            self._attach(False)


def instrument(
    pool: WebSocketPool,
    meter_provider: MeterProvider | None = None,
    *,
    pool_name: str = "default",
    snapshot_timeout: float = 2.0,
    per_lease: bool = True,
) -> Instrumentation:
    """Report ``pool`` through OpenTelemetry instruments (the global meter provider
    unless one is given). Returns a handle whose ``close()`` stops it.

    ``per_lease=False`` records no use time and no wait time for acquires served
    at once: with the SDK each ``record()`` costs microseconds, which this keeps
    off the hot path (waits that waited and connect times are still recorded).
    """
    try:
        from opentelemetry import metrics as otel
    except ImportError:  # pragma: no cover - depends on the environment
        raise _missing("opentelemetry-api") from None
    from wsclient import __version__

    provider = meter_provider if meter_provider is not None else otel.get_meter_provider()
    meter = provider.get_meter("wsclient", __version__)
    base = {"pool.name": pool_name}
    timing = pool._instrumented()
    histograms = {
        kind: meter.create_histogram(
            f"wsclient.connection.{kind}_time",
            unit="s",
            description=doc,
            explicit_bucket_boundaries_advisory=BUCKETS,
        )
        for kind, doc in (
            ("wait", "Time an acquire waited for a connection."),
            ("use", "Time a connection stayed leased."),
            ("create", "Time to open a connection."),
        )
    }
    # Bound ``record`` methods with the attributes fixed: no Python frame of ours
    # between the pool's hook and the SDK.
    sinks: dict[str, Callable[[float], None]] = {
        kind: functools.partial(h.record, attributes=base) for kind, h in histograms.items()
    }
    if per_lease:
        sinks["instant"] = sinks["wait"]
    else:
        del sinks["use"]
    handle = Instrumentation(timing, sinks, per_lease=per_lease)

    def observe(
        rows: Callable[[_Snapshot], Iterable[tuple[float, dict[str, Any]]]],
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            if not handle.active:
                return []
            snap = snapshot(pool, snapshot_timeout)
            return [otel.Observation(value, {**base, **attrs}) for value, attrs in rows(snap)]

        return callback

    def per_backend(
        value: Callable[[Any, BackendHealth | None], float | None],
    ) -> Callable[[_Snapshot], Iterator[tuple[float, dict[str, Any]]]]:
        def rows(snap: _Snapshot) -> Iterator[tuple[float, dict[str, Any]]]:
            for backend_id, b in snap.stats.backends.items():
                v = value(b, snap.health.get(backend_id))
                if v is not None:
                    yield v, {"backend.id": backend_id}

        return rows

    def breaker_rows(field: str) -> Callable[[_Snapshot], Iterator[tuple[float, dict[str, Any]]]]:
        def rows(snap: _Snapshot) -> Iterator[tuple[float, dict[str, Any]]]:
            for backend_id, b in snap.stats.backends.items():
                for state in _BREAKER_STATES:
                    if field == "state":
                        v = float(b.breaker == state)
                    else:
                        v = b.breaker_transitions[state]
                    yield v, {"backend.id": backend_id, "state": state}

        return rows

    meter.create_observable_up_down_counter(
        "wsclient.connection.count",
        [
            observe(
                lambda s: (
                    (n, {"backend.id": b, "state": state}) for b, state, n in _connection_rows(s)
                )
            )
        ],
        unit="{connection}",
        description="Connections by backend and state (idle, used, connecting, closing).",
    )
    meter.create_observable_up_down_counter(
        "wsclient.connection.max",
        [observe(lambda s: [(s.stats.max_connections, {})])],
        unit="{connection}",
        description="max_connections of the pool.",
    )
    meter.create_observable_up_down_counter(
        "wsclient.connection.pending_requests",
        [observe(lambda s: [(s.stats.pending_requests, {})])],
        unit="{request}",
        description="Acquires waiting for a connection.",
    )
    meter.create_observable_counter(
        "wsclient.connection.timeouts",
        [observe(lambda s: [(s.stats.acquires.timeout, {})])],
        unit="{timeout}",
        description="Acquires that gave up with AcquireTimeoutError.",
    )
    meter.create_observable_counter(
        "wsclient.acquires",
        [
            observe(
                lambda s: ((s.stats.acquires.model_dump()[o], {"outcome": o}) for o in _OUTCOMES)
            )
        ],
        unit="{acquire}",
        description="acquire() calls by outcome.",
    )
    gauges: list[tuple[str, str, str, Callable[[Any, BackendHealth | None], float | None]]] = [
        ("healthy", "1", "1 if the active probe finds it healthy.", lambda b, h: float(b.healthy)),
        ("ejected", "1", "1 while it is ejected from rotation.", lambda b, h: float(b.ejected)),
        ("share", "1", "Its fraction of all leases served.", lambda b, h: b.share),
        (
            "latency",
            "s",
            "Latency of the last probe.",
            lambda b, h: None if h is None or h.latency is None else h.latency / 1000,
        ),
    ]
    for name, unit, doc, value in gauges:
        meter.create_observable_gauge(
            f"wsclient.backend.{name}", [observe(per_backend(value))], unit=unit, description=doc
        )
    meter.create_observable_gauge(
        "wsclient.backend.breaker.state",
        [observe(breaker_rows("state"))],
        unit="1",
        description="1 for the circuit breaker's current state, 0 for the others.",
    )
    meter.create_observable_counter(
        "wsclient.backend.breaker.transitions",
        [observe(breaker_rows("transitions"))],
        unit="{transition}",
        description="Circuit-breaker transitions by the state entered.",
    )
    counters: list[tuple[str, str, str, Callable[[Any, BackendHealth | None], float | None]]] = [
        ("ejections", "{ejection}", "Times it was ejected.", lambda b, h: b.ejections),
        (
            "reconnects",
            "{connection}",
            "Connections opened after a lost one or a failed connect.",
            lambda b, h: b.reconnects,
        ),
        (
            "connections_lost",
            "{connection}",
            "Connections that ended on their own.",
            lambda b, h: b.lost,
        ),
    ]
    for name, unit, doc, value in counters:
        meter.create_observable_counter(
            f"wsclient.backend.{name}", [observe(per_backend(value))], unit=unit, description=doc
        )
    return handle
