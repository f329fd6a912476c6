"""Backend state that can be shared: health, circuit breaker, ejection.

The pool core reads this state synchronously on every decision (is this
backend usable? ejected until when? may a half-open trial start?), so the
store is an in-memory object even when a fleet shares it: a shared store
(Redis, a later module) keeps a local copy that it writes through and
refreshes, and never makes the core wait.

Writes report the transitions they cause through one listener,
``listener(backend_id, event, args)``, with ``event`` one of the pool's event
names (``breaker-open``, ``backend-unhealthy``, ``backend-ejected`` …). The
pool queues them and delivers them after the step that caused them, on
consistent state.

What is *not* here: connection counts, backoff delays and weights. Those
belong to one pool instance (``core.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from wsclient import event_names as ev
from wsclient.breaker import BreakerState, CircuitBreaker
from wsclient.config import CircuitBreakerConfig, HealthCheckConfig

__all__ = ["BackendRecord", "BackendStateStore", "LocalStateStore", "StateListener"]

StateListener = Callable[[str, str, tuple[Any, ...]], None]

_BREAKER_EVENTS: dict[BreakerState, str] = {
    "open": ev.BREAKER_OPEN,
    "half-open": ev.BREAKER_HALF_OPEN,
    "closed": ev.BREAKER_CLOSED,
}


class BackendRecord:
    """The shareable state of one backend (what ``health_status()`` reports from)."""

    __slots__ = (
        "breaker",
        "breaker_enabled",
        "ejected_until",
        "healthy",
        "id",
        "last_check",
        "last_error",
        "latency_ms",
        "probe_failures",
        "probe_successes",
    )

    def __init__(self, backend_id: str, breaker: CircuitBreaker, breaker_enabled: bool) -> None:
        self.id = backend_id
        self.healthy = True
        self.probe_failures = 0
        self.probe_successes = 0
        self.latency_ms: float | None = None
        self.last_check: float | None = None
        self.last_error: str | None = None
        self.ejected_until = 0.0
        self.breaker = breaker
        self.breaker_enabled = breaker_enabled

    @property
    def breaker_state(self) -> BreakerState:
        return self.breaker.state if self.breaker_enabled else "closed"

    @property
    def usable(self) -> bool:
        """Healthy and breaker not open (ejection is judged by the core, with ``now``)."""
        return self.healthy and self.breaker_state != "open"


class BackendStateStore(Protocol):
    """What the pool core needs of a state store. Every method is synchronous."""

    listener: StateListener | None

    def register(self, backend_id: str) -> BackendRecord: ...

    def unregister(self, backend_id: str) -> None: ...

    def record(self, backend_id: str) -> BackendRecord: ...

    def try_admit(self, backend_id: str) -> bool:
        """May a connect attempt start now? In half-open this takes a trial slot."""
        ...

    def connect_succeeded(self, backend_id: str) -> None: ...

    def connect_failed(self, backend_id: str, error: str, eject_until: float) -> None: ...

    def attempt_abandoned(self, backend_id: str) -> None:
        """A connect attempt ended without a verdict (cancelled): frees its trial slot."""
        ...

    def end_ejection(self, backend_id: str) -> None: ...

    def probe_result(
        self,
        backend_id: str,
        ok: bool,
        latency_ms: float | None,
        error: str | None,
        *,
        conclusive: bool = False,
    ) -> None: ...


class LocalStateStore:
    """The in-process store: one ``BackendRecord`` per backend, nothing shared."""

    def __init__(
        self,
        breaker: CircuitBreakerConfig,
        health: HealthCheckConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._breaker = breaker
        self._health = health
        self._clock = clock
        self._wall_clock = wall_clock
        self._records: dict[str, BackendRecord] = {}
        self.listener: StateListener | None = None

    def _emit(self, backend_id: str, event: str, *args: Any) -> None:
        if self.listener is not None:
            self.listener(backend_id, event, args)

    def register(self, backend_id: str) -> BackendRecord:
        cb = self._breaker

        def changed(old: BreakerState, new: BreakerState) -> None:
            self._emit(backend_id, _BREAKER_EVENTS[new])

        breaker = CircuitBreaker(
            failure_threshold=cb.failure_threshold,
            recovery_timeout=cb.recovery_timeout,
            half_open_max_trials=cb.half_open_max_trials,
            name=backend_id,
            clock=self._clock,
            on_state_change=changed,
        )
        record = BackendRecord(backend_id, breaker, cb.enabled)
        self._records[backend_id] = record
        return record

    def unregister(self, backend_id: str) -> None:
        self._records.pop(backend_id, None)

    def record(self, backend_id: str) -> BackendRecord:
        return self._records[backend_id]

    def try_admit(self, backend_id: str) -> bool:
        record = self._records[backend_id]
        return not record.breaker_enabled or record.breaker.allow()

    def connect_succeeded(self, backend_id: str) -> None:
        record = self._records.get(backend_id)
        if record is None:
            return
        if record.breaker_enabled:
            record.breaker.record_success()
        if record.ejected_until:
            record.ejected_until = 0.0
            self._emit(backend_id, ev.BACKEND_UNEJECTED)

    def connect_failed(self, backend_id: str, error: str, eject_until: float) -> None:
        record = self._records.get(backend_id)
        if record is None:
            return
        record.last_error = error
        if record.breaker_enabled:
            record.breaker.record_failure()
        if eject_until > record.ejected_until:
            newly = not record.ejected_until
            record.ejected_until = eject_until
            if newly:
                seconds = round(max(0.0, eject_until - self._clock()), 3)
                self._emit(backend_id, ev.BACKEND_EJECTED, seconds, error)

    def attempt_abandoned(self, backend_id: str) -> None:
        record = self._records.get(backend_id)
        if record is not None and record.breaker_enabled:
            record.breaker.record_neutral()

    def end_ejection(self, backend_id: str) -> None:
        record = self._records.get(backend_id)
        if record is not None and record.ejected_until:
            record.ejected_until = 0.0
            self._emit(backend_id, ev.BACKEND_UNEJECTED)

    def probe_result(
        self,
        backend_id: str,
        ok: bool,
        latency_ms: float | None,
        error: str | None,
        *,
        conclusive: bool = False,
    ) -> None:
        record = self._records.get(backend_id)
        if record is None:
            return
        cfg = self._health
        record.last_check = self._wall_clock()
        if ok:
            record.latency_ms = latency_ms
            record.probe_failures = 0
            record.probe_successes += 1
            # Envoy's successful_active_health_check_uneject_host: the backend
            # answers again, so the ejection a passive failure caused is over.
            self.end_ejection(backend_id)
            if not record.healthy and record.probe_successes >= cfg.healthy_threshold:
                record.healthy = True
                self._emit(backend_id, ev.BACKEND_HEALTHY)
            return
        record.probe_successes = 0
        record.probe_failures += 1
        record.last_error = error
        if record.healthy and (conclusive or record.probe_failures >= cfg.unhealthy_threshold):
            record.healthy = False
            self._emit(backend_id, ev.BACKEND_UNHEALTHY, error)
