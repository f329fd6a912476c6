"""SharedStore without Redis: what goes out, what comes in, and clocks that disagree."""

from __future__ import annotations

from typing import Any

from wsclient import event_names as ev
from wsclient.config import CircuitBreakerConfig, HealthCheckConfig
from wsclient.fleet.shared_store import SharedStore, Update


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make(clock: Clock) -> tuple[SharedStore, list[tuple[str, Update]], list[tuple[str, str]]]:
    sent: list[tuple[str, Update]] = []
    events: list[tuple[str, str]] = []
    store = SharedStore(
        CircuitBreakerConfig(failure_threshold=1, recovery_timeout=10),
        HealthCheckConfig(unhealthy_threshold=1),
        lambda backend_id, fields: sent.append((backend_id, fields)),
        clock=clock,
    )

    def listener(backend_id: str, event: str, args: tuple[Any, ...]) -> None:
        events.append((backend_id, event))

    store.listener = listener
    store.register("b")
    return store, sent, events


def test_transitions_go_out_as_time_left_not_timestamps() -> None:
    """A breaker opened on a host whose clock is far ahead arrives with the right time left."""
    ahead, behind = Clock(1_000_000.0), Clock(5.0)
    a, sent, _ = make(ahead)
    b, b_sent, b_events = make(behind)
    a.connect_failed("b", "refused", eject_until=ahead.now + 2.0)
    kinds = {k for _, fields in sent for k in fields}
    assert {"br", "br_ms", "ej_ms"} <= kinds
    for _, fields in sent:
        b.apply("b", fields)
    record = b.record("b")
    assert record.breaker_state == "open"
    assert abs(record.breaker.remaining_open_time - 10.0) < 0.01
    assert abs(record.ejected_until - (behind.now + 2.0)) < 0.01
    assert (("b", ev.BREAKER_OPEN) in b_events) and (("b", ev.BACKEND_EJECTED) in b_events)
    assert b_sent == []  # applying never echoes


def test_time_driven_transitions_stay_local() -> None:
    """Half-open and an ejection ending at its deadline are not sent; an early end is."""
    clock = Clock(0.0)
    store, sent, _ = make(clock)
    store.connect_failed("b", "refused", eject_until=2.0)
    sent.clear()
    clock.now = 11.0
    assert store.record("b").breaker_state == "half-open"
    store.end_ejection("b")  # the core's tick, past the deadline
    assert sent == []
    store.connect_failed("b", "again", eject_until=20.0)
    sent.clear()
    store.probe_result("b", True, 1.5, None)  # answers before the deadline
    assert ("b", {"ej_ms": 0}) in sent


def test_probe_results_carry_the_counts() -> None:
    """Each probe result goes out with health and counts; a receiver takes them as they are."""
    clock = Clock(0.0)
    a, sent, _ = make(clock)
    b, _, b_events = make(clock)
    a.probe_result("b", False, None, "HTTP 500")
    (_, fields), *_ = sent
    assert fields == {"h": False, "pf": 1, "ps": 0, "lat": None, "err": "HTTP 500"}
    changed = b.apply("b", {**fields, "lc": 1234.5})
    assert changed and not b.record("b").healthy and b.record("b").last_check == 1234.5
    assert ("b", ev.BACKEND_UNHEALTHY) in b_events
    assert b.apply("unknown", fields) is False


def test_a_closed_breaker_is_shared() -> None:
    """A successful trial closes the breaker here and there."""
    clock = Clock(0.0)
    a, sent, _ = make(clock)
    b, _, _ = make(clock)
    a.connect_failed("b", "refused", eject_until=1.0)
    for _, fields in sent:
        b.apply("b", fields)
    sent.clear()
    clock.now = 10.5
    assert a.try_admit("b")  # the half-open trial
    a.connect_succeeded("b")
    assert ("b", {"br": "closed"}) in sent
    for _, fields in sent:
        b.apply("b", fields)
    assert b.record("b").breaker_state == "closed"


def test_a_resync_pushes_bad_news_only() -> None:
    """After an outage the snapshot carries an open breaker and an ejection, never a 'closed'."""
    clock = Clock(0.0)
    store, _, _ = make(clock)
    quiet = store.snapshot("b")
    assert "br" not in quiet and "ej_ms" not in quiet and quiet["h"] is True
    store.connect_failed("b", "refused", eject_until=3.0)
    loud = store.snapshot("b")
    assert loud["br"] == "open" and loud["br_ms"] == 10_000 and loud["ej_ms"] == 3_000
