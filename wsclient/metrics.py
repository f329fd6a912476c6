"""Metrics for a pool: a Prometheus collector and OpenTelemetry instruments.

Extra ``wsclient[metrics]`` (``prometheus-client``, ``opentelemetry-api``);
``import wsclient`` never imports this module, so an application that does not
use it pays nothing.

Both exporters read the counts the pool keeps anyway (``pool.stats()``,
``pool.health_status()``) when they are scraped or collected, never on the
hot path. The three time histograms (wait, use, create) need one observation
per event: instrumenting a pool turns its timing on (``wsclient.timing``), a
bisect into fixed buckets per acquire and per release. Prometheus reads those
buckets at scrape time. OpenTelemetry has no asynchronous histogram, and its
SDK's ``record()`` costs microseconds, so ``instrument()`` keeps that off the
hot path too: the pool's hooks append each observation to a bounded buffer
(``PendingTimes``) and a callback of one observable instrument, which the SDK
runs at the start of every collection, records the buffer into the
synchronous histograms (``make bench`` measures both halves).

Names follow the OpenTelemetry connection-pool conventions
(``db.client.connection.*``, with ``wsclient`` for ``db.client``); each
series is defined once, in ``_SERIES``, for both exporters (Prometheus
spells ``wsclient.connection.count`` as ``wsclient_connections``, adds
``_total`` to counters and ``_seconds`` to durations). README "Operating"
lists them. Every series carries ``pool`` (OTel: ``pool.name``) and, per
backend, ``backend`` (OTel: ``backend.id``).

A pool belongs to its event loop's thread; a scrape or an export usually runs
in another thread (``prometheus_client.start_http_server``, OTel's periodic
reader). The snapshot is then taken on the loop, through
``call_soon_threadsafe``, and the scrape waits for it at most
``snapshot_timeout`` seconds (a blocked loop makes the scrape fail loudly
rather than read half-updated state).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Literal, NamedTuple

from wsclient.backend import BackendHealth
from wsclient.breaker import BreakerState
from wsclient.loop_bridge import on_loop
from wsclient.pool import WebSocketPool
from wsclient.stats import BackendStats, PoolStats
from wsclient.timing import BUCKETS, Pending, PendingTimes, PoolTiming, TimingHistogram

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
    return on_loop(pool, lambda: _Snapshot(pool.stats(), pool.health_status()), timeout)


Rows = Iterable[tuple[float, dict[str, str]]]


def _connection_rows(snap: _Snapshot) -> Rows:
    """Per backend and state, with OTel's state names (``used`` for leased)."""
    for backend_id, b in snap.stats.backends.items():
        c = b.connections
        for state, n in (
            ("idle", c.idle),
            ("used", c.active),
            ("connecting", c.connecting),
            ("closing", c.closing),
        ):
            yield n, {"backend": backend_id, "state": state}


def _per_backend(
    value: Callable[[BackendStats, BackendHealth | None], float | None],
) -> Callable[[_Snapshot], Rows]:
    def rows(snap: _Snapshot) -> Rows:
        for backend_id, b in snap.stats.backends.items():
            v = value(b, snap.health.get(backend_id))
            if v is not None:
                yield v, {"backend": backend_id}

    return rows


def _breaker_rows(current: bool) -> Callable[[_Snapshot], Rows]:
    def rows(snap: _Snapshot) -> Rows:
        for backend_id, b in snap.stats.backends.items():
            for state in _BREAKER_STATES:
                v = float(b.breaker == state) if current else b.breaker_transitions[state]
                yield v, {"backend": backend_id, "state": state}

    return rows


class _Series(NamedTuple):
    """One series, for both exporters: its OTel name (Prometheus: dots become
    underscores, ``_total`` added to counters, ``_seconds`` to durations)."""

    name: str
    kind: Literal["counter", "updown", "gauge"]  # OTel's observable instrument
    unit: str
    labels: tuple[str, ...]  # besides "pool"; OTel calls "backend" "backend.id"
    doc: str
    rows: Callable[[_Snapshot], Rows]


_SERIES: tuple[_Series, ...] = (
    _Series(
        "wsclient.connection.count",
        "updown",
        "{connection}",
        ("backend", "state"),
        "Connections by backend and state (idle, used, connecting, closing).",
        _connection_rows,
    ),
    _Series(
        "wsclient.connection.max",
        "updown",
        "{connection}",
        (),
        "max_connections of the pool.",
        lambda s: [(s.stats.max_connections, {})],
    ),
    _Series(
        "wsclient.connection.pending_requests",
        "updown",
        "{request}",
        (),
        "Acquires waiting for a connection.",
        lambda s: [(s.stats.pending_requests, {})],
    ),
    _Series(
        "wsclient.connection.timeouts",
        "counter",
        "{timeout}",
        (),
        "Acquires that gave up with AcquireTimeoutError.",
        lambda s: [(s.stats.acquires.timeout, {})],
    ),
    _Series(
        "wsclient.acquires",
        "counter",
        "{acquire}",
        ("outcome",),
        "acquire() calls by outcome.",
        lambda s: ((getattr(s.stats.acquires, o), {"outcome": o}) for o in _OUTCOMES),
    ),
    _Series(
        "wsclient.backend.healthy",
        "gauge",
        "1",
        ("backend",),
        "1 if the active probe finds it healthy.",
        _per_backend(lambda b, h: float(b.healthy)),
    ),
    _Series(
        "wsclient.backend.breaker.state",
        "gauge",
        "1",
        ("backend", "state"),
        "1 for the circuit breaker's current state, 0 for the others.",
        _breaker_rows(current=True),
    ),
    _Series(
        "wsclient.backend.ejected",
        "gauge",
        "1",
        ("backend",),
        "1 while it is ejected from rotation.",
        _per_backend(lambda b, h: float(b.ejected)),
    ),
    _Series(
        "wsclient.backend.share",
        "gauge",
        "1",
        ("backend",),
        "Its fraction of all leases served.",
        _per_backend(lambda b, h: b.share),
    ),
    _Series(
        "wsclient.backend.latency",
        "gauge",
        "s",
        ("backend",),
        "Latency of the last probe.",
        _per_backend(lambda b, h: None if h is None or h.latency is None else h.latency / 1000),
    ),
    _Series(
        "wsclient.backend.breaker.transitions",
        "counter",
        "{transition}",
        ("backend", "state"),
        "Circuit-breaker transitions by the state entered.",
        _breaker_rows(current=False),
    ),
    _Series(
        "wsclient.backend.ejections",
        "counter",
        "{ejection}",
        ("backend",),
        "Times it was ejected.",
        _per_backend(lambda b, h: b.ejections),
    ),
    _Series(
        "wsclient.backend.reconnects",
        "counter",
        "{connection}",
        ("backend",),
        "Connections opened after a lost one or a failed connect.",
        _per_backend(lambda b, h: b.reconnects),
    ),
    _Series(
        "wsclient.backend.connections_lost",
        "counter",
        "{connection}",
        ("backend",),
        "Connections that ended on their own (peer close, error, missed pong).",
        _per_backend(lambda b, h: b.lost),
    ),
)

# (kind, description) of the three time histograms
_HISTOGRAMS = (
    ("wait", "Time an acquire waited for a connection (0 when one was idle)."),
    ("use", "Time a connection stayed leased."),
    ("create", "Time to open a connection (handshake and init)."),
)


def _prometheus_name(series: _Series) -> str:
    name = series.name.replace(".", "_")
    if name == "wsclient_connection_count":
        return "wsclient_connections"  # a count of things, in Prometheus words
    if name == "wsclient_connection_max":
        return "wsclient_connections_max"
    if name == "wsclient_connection_pending_requests":
        return "wsclient_pending_requests"
    return name + "_seconds" if series.unit == "s" else name


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

        for series in _SERIES:
            labels = ["pool", *series.labels]
            family_type = CounterMetricFamily if series.kind == "counter" else GaugeMetricFamily
            family = family_type(_prometheus_name(series), series.doc, labels=labels)
            if snap is not None:
                for value, attrs in series.rows(snap):
                    family.add_metric([self._name, *(attrs[k] for k in series.labels)], value)
            yield family
        bounds = [repr(b) for b in BUCKETS] + ["+Inf"]
        for kind, doc in _HISTOGRAMS:
            name = f"wsclient_connection_{kind}_time_seconds"
            histogram_family = HistogramMetricFamily(name, doc, labels=["pool"])
            if snap is not None:
                immediate = 0
                if kind == "wait":  # acquires served at once: 0 s, in the lowest bucket
                    immediate = max(0, snap.stats.acquires.immediate - self._timing.immediate_base)
                histogram: TimingHistogram = getattr(self._timing, kind)
                cumulative = histogram.cumulative(immediate)
                histogram_family.add_metric(
                    [self._name], list(zip(bounds, cumulative, strict=True)), histogram.sum
                )
            yield histogram_family


# ---------------------------------------------------------------------- OpenTelemetry


class Instrumentation:
    """What ``instrument()`` returns; ``close()`` stops reporting this pool.

    The pool's hooks only append to one ``PendingTimes`` per histogram; ``flush()``
    (run by a callback at each collection) takes them on the pool's loop and
    records them into the SDK's histograms in the collecting thread.
    """

    def __init__(
        self,
        pool: WebSocketPool,
        timing: PoolTiming,
        records: dict[str, Callable[[float], None]],
        *,
        per_lease: bool,
        snapshot_timeout: float,
    ) -> None:
        self._pool = pool
        self._timing = timing
        self._records = records  # histogram kind -> bound record()
        self._per_lease = per_lease
        self._timeout = snapshot_timeout
        self._pending = {kind: PendingTimes(getattr(timing, kind)) for kind in records}
        self._immediate_seen = pool.stats().acquires.immediate
        self._lists = {
            "wait": timing.wait_pending,
            "use": timing.use_pending,
            "create": timing.create_pending,
        }
        for kind, pending in self._pending.items():
            self._lists[kind].append(pending)
        self._closed_with: dict[str, Pending] = {}
        self.active = True

    def _count_immediates(self) -> None:
        """Acquires served at once since the last look: zero waits (pool's loop only)."""
        immediate = self._pool.stats().acquires.immediate
        if self._per_lease:
            self._pending["wait"].zeros += max(0, immediate - self._immediate_seen)
        self._immediate_seen = immediate

    def _take(self) -> dict[str, Pending]:
        """Everything pending, per histogram (on the pool's loop)."""
        if not self.active:  # what close() took, handed out once
            taken, self._closed_with = self._closed_with, {}
            return taken
        self._count_immediates()
        return {kind: pending.take() for kind, pending in self._pending.items()}

    def flush(self) -> None:
        """Record what is pending (from any thread; called at each collection)."""
        taken = on_loop(self._pool, self._take, self._timeout)
        for kind, pending in taken.items():
            record = self._records[kind]
            for seconds in pending.replay():
                record(seconds)

    def close(self) -> None:
        """Stop observing (from any thread: done on the pool's loop). What is pending
        is recorded at the next collection, once; the gauges stop reporting."""
        on_loop(self._pool, self._close, self._timeout)

    def _close(self) -> None:
        if self.active:
            self._closed_with = self._take()
            self.active = False
            for kind, pending in self._pending.items():
                self._lists[kind].remove(pending)


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

    The three histograms are recorded at collection time: each observation waits
    in a bounded buffer until the next collection (README "Operating").
    ``per_lease=False`` records no use time and no wait time for acquires served
    at once (fewer ``record()`` calls per collection; waits that waited and
    connect times are still recorded).
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
        for kind, doc in _HISTOGRAMS
    }
    records: dict[str, Callable[[float], None]] = {
        kind: functools.partial(h.record, attributes=base)
        for kind, h in histograms.items()
        if per_lease or kind != "use"
    }
    handle = Instrumentation(
        pool, timing, records, per_lease=per_lease, snapshot_timeout=snapshot_timeout
    )

    def flush(options: CallbackOptions) -> Iterable[Observation]:
        # An observable instrument's callback runs at every collection, before the
        # SDK reads its storage: what it records lands in this collection.
        handle.flush()
        return []

    def callback(series: _Series) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            if not handle.active:
                return []
            snap = snapshot(pool, snapshot_timeout)
            return [
                otel.Observation(value, {**base, **_otel_attributes(attrs)})
                for value, attrs in series.rows(snap)
            ]

        return observe

    create = {
        "counter": meter.create_observable_counter,
        "updown": meter.create_observable_up_down_counter,
        "gauge": meter.create_observable_gauge,
    }
    for i, series in enumerate(_SERIES):
        callbacks = [callback(series)] + ([flush] if i == 0 else [])
        create[series.kind](series.name, callbacks, unit=series.unit, description=series.doc)
    return handle


def _otel_attributes(attrs: dict[str, str]) -> dict[str, str]:
    return {("backend.id" if k == "backend" else k): v for k, v in attrs.items()}
