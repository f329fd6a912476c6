"""``SharedStore``: the in-memory store a fleet shares, without the I/O.

The pool core reads backend state synchronously (``state.py``), so a shared
store is a ``LocalStateStore`` plus two conversions, both pure:

* **out**: a transition this instance caused (its breaker opened, it ejected
  a backend, its probe answered) becomes an *update*, a small dict of record
  fields handed to ``sink(backend_id, fields)``; the Redis layer writes and
  publishes it. Durations travel as remaining milliseconds (``br_ms``,
  ``ej_ms``), never as this host's timestamps, so clock skew between hosts
  does not matter: Redis turns them into deadlines on its own clock.
* **in**: an update another instance published, or the fleet's snapshot read
  at start, is applied to the local record with :meth:`apply`, which fires
  the same events a local transition would (``breaker-open``,
  ``backend-ejected`` …) and does not echo anything back out.

Time-driven transitions are not sent: open → half-open and the end of an
ejection happen on every instance from the same deadline. Only an ejection
ended early (a probe answered) and a breaker closed by a successful trial go
out.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from wsclient import event_names as ev
from wsclient.config import CircuitBreakerConfig, HealthCheckConfig
from wsclient.state import BackendRecord, LocalStateStore, StateListener

__all__ = ["SharedStore", "Sink", "Update"]

Update = dict[str, Any]
"""Record fields: ``h`` healthy, ``pf``/``ps`` consecutive probe failures/successes,
``lat`` latency ms, ``err`` last error, ``lc`` last check (epoch s), ``br`` breaker
("open"/"closed"), ``br_ms`` ms until half-open, ``ej_ms`` ms of ejection left (0: none)."""

Sink = Callable[[str, Update], None]


class SharedStore:
    """A ``BackendStateStore`` whose transitions go to ``sink`` and which applies the fleet's."""

    def __init__(
        self,
        breaker: CircuitBreakerConfig,
        health: HealthCheckConfig,
        sink: Sink,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._local = LocalStateStore(breaker, health, clock=clock, wall_clock=wall_clock)
        self._local.listener = self._on_local_event
        self._sink = sink
        self._clock = clock
        self._applying = False  # an inbound update is being applied: send nothing out
        self._at_deadline = False
        self.listener: StateListener | None = None
        self.on_remote_change: Callable[[str], None] | None = None
        """Called after an inbound update changed a record (the pool re-judges the backend)."""
        self.on_register: Callable[[str], None] | None = None
        """Called when a backend is registered (the shared state reads the fleet's view of it)."""
        self._ids: dict[str, None] = {}

    # ------------------------------------------------------------------ BackendStateStore

    def register(self, backend_id: str) -> BackendRecord:
        record = self._local.register(backend_id)
        self._ids[backend_id] = None
        if self.on_register is not None:
            self.on_register(backend_id)
        return record

    def unregister(self, backend_id: str) -> None:
        self._local.unregister(backend_id)
        self._ids.pop(backend_id, None)

    def registered(self) -> list[str]:
        return list(self._ids)

    def record(self, backend_id: str) -> BackendRecord:
        return self._local.record(backend_id)

    def known(self, backend_id: str) -> bool:
        return backend_id in self._ids

    def try_admit(self, backend_id: str) -> bool:
        return self._local.try_admit(backend_id)

    def connect_succeeded(self, backend_id: str) -> None:
        self._local.connect_succeeded(backend_id)

    def connect_failed(self, backend_id: str, error: str, eject_until: float) -> None:
        self._local.connect_failed(backend_id, error, eject_until)

    def attempt_abandoned(self, backend_id: str) -> None:
        self._local.attempt_abandoned(backend_id)

    def end_ejection(self, backend_id: str) -> None:
        # The core calls this when the deadline has passed (its tick).
        self._at_deadline = True
        try:
            self._local.end_ejection(backend_id)
        finally:
            self._at_deadline = False

    def probe_result(
        self,
        backend_id: str,
        ok: bool,
        latency_ms: float | None,
        error: str | None,
        *,
        conclusive: bool = False,
    ) -> None:
        if not self.known(backend_id):
            return
        self._local.probe_result(backend_id, ok, latency_ms, error, conclusive=conclusive)
        record = self._local.record(backend_id)
        # Every probe result goes out (not only crossings): the fleet's other
        # instances do not probe this backend while a lease holder does, and a
        # new instance reads the counts to continue the thresholds.
        self._send(
            backend_id,
            {
                "h": record.healthy,
                "pf": record.probe_failures,
                "ps": record.probe_successes,
                "lat": record.latency_ms,
                "err": record.last_error,
            },
        )

    # ------------------------------------------------------------------ out

    def _send(self, backend_id: str, fields: Update) -> None:
        if not self._applying:
            self._sink(backend_id, fields)

    def _on_local_event(self, backend_id: str, event: str, args: tuple[Any, ...]) -> None:
        if self.listener is not None:
            self.listener(backend_id, event, args)
        if self._applying:
            return
        record = self._local.record(backend_id)
        if event == ev.BREAKER_OPEN:
            self._send(backend_id, {"br": "open", "br_ms": _ms(record.breaker.remaining_open_time)})
        elif event == ev.BREAKER_CLOSED:
            self._send(backend_id, {"br": "closed"})
        elif event == ev.BACKEND_EJECTED:
            remaining = record.ejected_until - self._clock()
            self._send(backend_id, {"ej_ms": _ms(remaining), "err": record.last_error})
        elif event == ev.BACKEND_UNEJECTED and not self._at_deadline:
            # An ejection that ends at its deadline ends everywhere at once; one
            # ended before it (a probe or a connect succeeded) is news.
            self._send(backend_id, {"ej_ms": 0})

    def snapshot(self, backend_id: str) -> Update:
        """This instance's view of one backend, pushed when Redis returns after an outage.

        Bad news only: an open breaker or an ejection seen here while the
        fleet could not hear of it is pushed; a closed breaker or no ejection
        is not, so one instance's quiet outage never clears what another one
        opened meanwhile (fresh probes and trials clear it).
        """
        record = self._local.record(backend_id)
        now = self._clock()
        fields: Update = {
            "h": record.healthy,
            "pf": record.probe_failures,
            "ps": record.probe_successes,
            "lat": record.latency_ms,
            "err": record.last_error,
        }
        if record.ejected_until > now:
            fields["ej_ms"] = _ms(record.ejected_until - now)
        if record.breaker_state == "open":
            fields["br"] = "open"
            fields["br_ms"] = _ms(record.breaker.remaining_open_time)
        return fields

    # ------------------------------------------------------------------ in

    def apply(self, backend_id: str, fields: Update) -> bool:
        """Apply a fleet update (deadlines already turned into ``br_ms``/``ej_ms`` left).

        Returns whether the record changed in a way the core must re-judge.
        Unknown backends are ignored: membership is each instance's own.
        """
        if not self.known(backend_id):
            return False
        record = self._local.record(backend_id)
        before = (record.healthy, record.breaker_state, record.ejected_until > self._clock())
        self._applying = True
        try:
            self._apply(record, fields)
        finally:
            self._applying = False
        after = (record.healthy, record.breaker_state, record.ejected_until > self._clock())
        changed = before != after
        if changed and self.on_remote_change is not None:
            self.on_remote_change(backend_id)
        return changed

    def _apply(self, record: BackendRecord, fields: Update) -> None:
        backend_id = record.id
        if "pf" in fields:
            record.probe_failures = int(fields["pf"])
        if "ps" in fields:
            record.probe_successes = int(fields["ps"])
        if "lat" in fields:
            record.latency_ms = fields["lat"]
        if fields.get("lc") is not None:
            record.last_check = float(fields["lc"])
        if "err" in fields and fields["err"] is not None:
            record.last_error = str(fields["err"])
        if "h" in fields and bool(fields["h"]) != record.healthy:
            record.healthy = bool(fields["h"])
            if record.healthy:
                self._emit(backend_id, ev.BACKEND_HEALTHY)
            else:
                self._emit(backend_id, ev.BACKEND_UNHEALTHY, record.last_error)
        if record.breaker_enabled and "br" in fields:
            if fields["br"] == "open":
                remaining = float(fields.get("br_ms", 0)) / 1000.0
                if remaining > 0:
                    record.breaker.force_open(remaining)  # fires breaker-open if it was not
            elif record.breaker.state != "closed":
                record.breaker.reset()  # fires breaker-closed
        if "ej_ms" in fields:
            remaining = float(fields["ej_ms"]) / 1000.0
            now = self._clock()
            if remaining > 0:
                newly = record.ejected_until <= now
                record.ejected_until = now + remaining
                if newly:
                    self._emit(
                        backend_id, ev.BACKEND_EJECTED, round(remaining, 3), record.last_error
                    )
            elif record.ejected_until:
                self._local.end_ejection(backend_id)

    def _emit(self, backend_id: str, event: str, *args: Any) -> None:
        if self.listener is not None:
            self.listener(backend_id, event, args)


def _ms(seconds: float) -> int:
    return max(0, round(seconds * 1000))
