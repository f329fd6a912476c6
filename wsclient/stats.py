"""``PoolStats``: what ``pool.stats()`` reports, and the counters it is built from.

Most of the numbers are counts the pool keeps anyway (connections by state,
waiters, per-backend leases in the core); the rest are counted on slow paths
only: a connect attempt, a lost link, a state-store transition, an acquire
that had to wait or failed. An acquire served from an idle link adds one to
its backend's lease count and nothing else; ``stats()`` does the arithmetic.

The models are frozen snapshots: ``pool.stats()`` builds a new one per call,
``.model_dump()`` is JSON-ready, ``PoolStats.model_json_schema()`` describes it.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Iterable, Mapping

from pydantic import BaseModel, ConfigDict, Field

from wsclient import event_names as ev
from wsclient.breaker import BreakerState

__all__ = [
    "AcquireCounts",
    "BackendStats",
    "ConnectionCounts",
    "PoolStats",
    "StatsRecorder",
    "WaitTimeSummary",
]

#: How many recent waits the percentiles of ``WaitTimeSummary`` are taken over.
WAIT_SAMPLE = 1024


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ConnectionCounts(_Frozen):
    """Connections by state (one backend's, or the whole pool's)."""

    idle: int = Field(description="Open and waiting in the pool.")
    active: int = Field(description="Leased to the application ('used' in OTel terms).")
    connecting: int = Field(description="Connect attempts (handshake and init) in flight.")
    closing: int = Field(description="Close handshakes in flight.")


class BackendStats(_Frozen):
    """One backend's counts since the pool started."""

    id: str
    connections: ConnectionCounts
    acquires: int = Field(description="Leases served by this backend.")
    share: float = Field(
        description="This backend's fraction of all leases served (0..1; 0 before any)."
    )
    opened: int = Field(description="Connections opened.")
    open_failures: int = Field(description="Connect attempts that failed and were blamed.")
    lost: int = Field(
        description="Connections that ended on their own (peer close, error, missed pong)."
    )
    reconnects: int = Field(
        description="Connections opened after a lost connection or a failed connect."
    )
    ejections: int = Field(description="Times it was ejected (out of rotation for a while).")
    breaker_transitions: dict[BreakerState, int] = Field(
        description="Circuit-breaker transitions by the state entered."
    )
    unhealthy_transitions: int = Field(description="Times the active probe marked it unhealthy.")
    healthy: bool
    breaker: BreakerState
    ejected: bool


class AcquireCounts(_Frozen):
    """``acquire()`` calls by outcome."""

    total: int = Field(description="All outcomes added up.")
    immediate: int = Field(description="Served without waiting (an idle connection).")
    waited: int = Field(description="Served after waiting (an open, a release, a hand-over).")
    timeout: int = Field(description="Gave up with AcquireTimeoutError.")
    no_backend: int = Field(description="Failed with NoHealthyBackendError.")
    cancelled: int = Field(description="The caller cancelled while waiting.")
    closed: int = Field(
        description="Refused or failed: the pool was not running (not started, closing, closed)."
    )


class WaitTimeSummary(_Frozen):
    """How long served acquires waited. Immediate ones count as 0 s in ``mean_seconds``;
    the percentiles are over the last 1,024 acquires that had to wait."""

    waited: int = Field(description="Served acquires that waited.")
    total_seconds: float = Field(description="Sum of their waits.")
    mean_seconds: float = Field(description="total_seconds over all served acquires.")
    max_seconds: float
    p50_seconds: float | None = Field(description="Median of recent waits; None before any.")
    p99_seconds: float | None = Field(description="99th percentile of recent waits.")


class FleetStats(_Frozen):
    """The resolver's and the shared state's counts (None: the pool has none)."""

    resolver_failures: int | None = Field(
        default=None, description="Failed resolutions since start (the last good list is kept)."
    )
    resolver_failing: bool | None = Field(default=None, description="The latest resolution failed.")
    shared_state_connected: bool | None = Field(
        default=None, description="Redis answers (False: the pool uses local state)."
    )
    shared_state_errors: int | None = Field(
        default=None, description="Redis calls that failed or timed out since start."
    )


class PoolStats(_Frozen):
    """A snapshot of one pool (``pool.stats()``)."""

    taken_at: float = Field(description="Epoch seconds when the snapshot was taken.")
    state: str = Field(description="'new', 'running', 'closing' or 'closed'.")
    size: int = Field(description="Open connections (idle + active).")
    max_connections: int
    connections: ConnectionCounts
    pending_requests: int = Field(description="Acquires waiting for a connection now.")
    acquires: AcquireCounts
    wait_time: WaitTimeSummary
    opened: int = Field(description="Connections opened since start.")
    open_failures: int
    closed: int = Field(description="Connections closed since start, for any reason.")
    lost: int
    reconnects: int
    ejections: int
    breaker_opens: int = Field(description="Breaker transitions to open, all backends.")
    idle_messages: int = Field(description="Messages that arrived on idle connections.")
    fleet: FleetStats = Field(description="Resolver and shared-state counts.")
    backends: dict[str, BackendStats]


class _BackendCounters:
    __slots__ = (
        "breaker",
        "ejections",
        "lost",
        "open_failures",
        "opened",
        "reconnect_due",
        "reconnects",
        "unhealthy",
    )

    def __init__(self) -> None:
        self.opened = 0
        self.open_failures = 0
        self.lost = 0
        self.reconnects = 0
        self.reconnect_due = False
        self.ejections = 0
        self.unhealthy = 0
        self.breaker: dict[BreakerState, int] = {"open": 0, "half-open": 0, "closed": 0}


_BREAKER_STATES: dict[str, BreakerState] = {
    ev.BREAKER_OPEN: "open",
    ev.BREAKER_HALF_OPEN: "half-open",
    ev.BREAKER_CLOSED: "closed",
}


class StatsRecorder:
    """The counters ``PoolStats`` needs beyond the core's own; slow paths only."""

    def __init__(self) -> None:
        self._backends: dict[str, _BackendCounters] = {}
        self.waited = 0
        self.wait_total = 0.0
        self.wait_max = 0.0
        self._recent_waits: deque[float] = deque(maxlen=WAIT_SAMPLE)
        self.timeouts = 0
        self.no_backend = 0
        self.cancelled = 0
        self.closed = 0
        self.retired_leases = 0  # leases of removed backends, kept in the totals
        self.lost = 0

    def backend(self, backend_id: str) -> _BackendCounters:
        counters = self._backends.get(backend_id)
        if counters is None:
            counters = self._backends[backend_id] = _BackendCounters()
        return counters

    def opened(self, backend_id: str) -> None:
        c = self.backend(backend_id)
        c.opened += 1
        if c.reconnect_due:
            c.reconnect_due = False
            c.reconnects += 1

    def open_failed(self, backend_id: str) -> None:
        c = self.backend(backend_id)
        c.open_failures += 1
        c.reconnect_due = True

    def link_lost(self, backend_id: str) -> None:
        c = self.backend(backend_id)
        c.lost += 1
        c.reconnect_due = True
        self.lost += 1

    def store_event(self, backend_id: str, event: str) -> None:
        c = self.backend(backend_id)
        if event == ev.BACKEND_EJECTED:
            c.ejections += 1
        elif event == ev.BACKEND_UNHEALTHY:
            c.unhealthy += 1
        else:
            state = _BREAKER_STATES.get(event)
            if state is not None:
                c.breaker[state] += 1

    def waited_for(self, seconds: float) -> None:
        self.waited += 1
        self.wait_total += seconds
        self.wait_max = max(self.wait_max, seconds)
        self._recent_waits.append(seconds)

    def removed(self, backend_id: str, leases: int) -> None:
        self.retired_leases += leases  # its other counters stay in the pool's totals

    def wait_summary(self, served: int) -> WaitTimeSummary:
        recent = sorted(self._recent_waits)
        return WaitTimeSummary(
            waited=self.waited,
            total_seconds=round(self.wait_total, 6),
            mean_seconds=round(self.wait_total / served, 6) if served else 0.0,
            max_seconds=round(self.wait_max, 6),
            p50_seconds=_percentile(recent, 0.50),
            p99_seconds=_percentile(recent, 0.99),
        )

    def backend_stats(
        self,
        backend_id: str,
        counts: ConnectionCounts,
        leases: int,
        all_leases: int,
        *,
        healthy: bool,
        breaker: BreakerState,
        ejected: bool,
    ) -> BackendStats:
        c = self.backend(backend_id)
        return BackendStats(
            id=backend_id,
            connections=counts,
            acquires=leases,
            share=round(leases / all_leases, 4) if all_leases else 0.0,
            opened=c.opened,
            open_failures=c.open_failures,
            lost=c.lost,
            reconnects=c.reconnects,
            ejections=c.ejections,
            breaker_transitions=dict(c.breaker),
            unhealthy_transitions=c.unhealthy,
            healthy=healthy,
            breaker=breaker,
            ejected=ejected,
        )

    def pool_stats(
        self,
        *,
        state: str,
        max_connections: int,
        counts: ConnectionCounts,
        pending: int,
        leases: int,
        core_counts: Mapping[str, int],
        idle_messages: int,
        backends: Iterable[BackendStats],
        fleet: FleetStats | None = None,
    ) -> PoolStats:
        """``leases``: every lease served, live backends' and removed ones' together."""
        served = leases + self.retired_leases
        per_backend = {b.id: b for b in backends}
        return PoolStats(
            taken_at=time.time(),
            state=state,
            size=counts.idle + counts.active,
            max_connections=max_connections,
            connections=counts,
            pending_requests=pending,
            acquires=AcquireCounts(
                total=served + self.timeouts + self.no_backend + self.cancelled + self.closed,
                immediate=max(0, served - self.waited),
                waited=self.waited,
                timeout=self.timeouts,
                no_backend=self.no_backend,
                cancelled=self.cancelled,
                closed=self.closed,
            ),
            wait_time=self.wait_summary(served),
            opened=core_counts["opened"],
            open_failures=core_counts["open_failures"],
            closed=core_counts["closed"],
            lost=self.lost,
            reconnects=sum(c.reconnects for c in self._backends.values()),
            ejections=sum(c.ejections for c in self._backends.values()),
            breaker_opens=sum(c.breaker["open"] for c in self._backends.values()),
            idle_messages=idle_messages,
            fleet=fleet if fleet is not None else FleetStats(),
            backends=per_backend,
        )


def _percentile(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    index = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))  # nearest rank
    return round(ordered[index], 6)
