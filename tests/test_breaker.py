"""Tests for wsclient.breaker: transitions, timing on a fake clock, and invariants."""

from __future__ import annotations

import logging

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from wsclient.breaker import BreakerState, CircuitBreaker

# Edges a breaker may take on its own; reset() may additionally jump to closed.
LEGAL_EDGES = {
    ("closed", "open"),
    ("open", "half-open"),
    ("half-open", "closed"),
    ("half-open", "open"),
}


class FakeClock:
    """A mutable time source: advance it by hand, never sleep."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Recorder:
    """Collects on_state_change calls."""

    def __init__(self) -> None:
        self.changes: list[tuple[BreakerState, BreakerState]] = []

    def __call__(self, old: BreakerState, new: BreakerState) -> None:
        self.changes.append((old, new))


def make(
    clock: FakeClock, recorder: Recorder | None = None, **kwargs: int | float
) -> CircuitBreaker:
    params: dict[str, int | float] = {"failure_threshold": 3, "recovery_timeout": 10.0}
    params.update(kwargs)
    return CircuitBreaker(
        failure_threshold=int(params["failure_threshold"]),
        recovery_timeout=float(params["recovery_timeout"]),
        half_open_max_trials=int(params.get("half_open_max_trials", 1)),
        name="b1",
        clock=clock,
        on_state_change=recorder,
    )


def state(breaker: CircuitBreaker) -> BreakerState:
    # A call, so mypy does not carry a narrowed ``breaker.state`` across mutations.
    return breaker.state


def trip(breaker: CircuitBreaker) -> None:
    while state(breaker) == "closed":
        breaker.record_failure()


def test_starts_closed_and_allows() -> None:
    """A new breaker is closed, counts nothing and allows attempts."""
    breaker = make(FakeClock())
    assert state(breaker) == "closed"
    assert breaker.failure_count == 0
    assert breaker.opened_at is None
    assert breaker.remaining_open_time == 0.0
    assert all(breaker.allow() for _ in range(10))


def test_opens_exactly_at_threshold() -> None:
    """threshold - 1 failures keep it closed; the threshold-th opens it."""
    clock, recorder = FakeClock(), Recorder()
    breaker = make(clock, recorder, failure_threshold=3)
    breaker.record_failure()
    breaker.record_failure()
    assert state(breaker) == "closed"
    assert breaker.failure_count == 2
    breaker.record_failure()
    assert state(breaker) == "open"
    assert breaker.failure_count == 3
    assert breaker.opened_at == clock.now
    assert not breaker.allow()
    assert recorder.changes == [("closed", "open")]


def test_success_resets_count_in_closed() -> None:
    """A success in closed clears the consecutive failure count."""
    breaker = make(FakeClock(), failure_threshold=3)
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()
    assert breaker.failure_count == 0
    breaker.record_failure()
    breaker.record_failure()
    assert state(breaker) == "closed"


def test_recovery_timing_on_injected_clock() -> None:
    """Open lasts exactly recovery_timeout on the clock, then turns half-open once."""
    clock, recorder = FakeClock(), Recorder()
    breaker = make(clock, recorder, recovery_timeout=10.0)
    trip(breaker)
    clock.advance(4.0)
    assert breaker.remaining_open_time == pytest.approx(6.0)
    clock.advance(5.999)
    assert state(breaker) == "open"
    assert not breaker.allow()
    clock.advance(0.001)
    assert breaker.remaining_open_time == 0.0
    assert state(breaker) == "half-open"
    assert state(breaker) == "half-open"
    assert recorder.changes == [("closed", "open"), ("open", "half-open")]


def test_half_open_success_closes() -> None:
    """A trial success closes the circuit and clears the count."""
    clock, recorder = FakeClock(), Recorder()
    breaker = make(clock, recorder)
    trip(breaker)
    clock.advance(10.0)
    assert breaker.allow()
    breaker.record_success()
    assert state(breaker) == "closed"
    assert breaker.failure_count == 0
    assert recorder.changes[-1] == ("half-open", "closed")


def test_half_open_failure_reopens_and_restarts_timer() -> None:
    """A trial failure reopens the circuit with a fresh recovery timer."""
    clock, recorder = FakeClock(), Recorder()
    breaker = make(clock, recorder)
    trip(breaker)
    clock.advance(15.0)
    assert breaker.allow()
    breaker.record_failure()
    assert state(breaker) == "open"
    assert breaker.opened_at == clock.now
    assert breaker.remaining_open_time == pytest.approx(10.0)
    assert recorder.changes == [("closed", "open"), ("open", "half-open"), ("half-open", "open")]


def test_half_open_admits_max_trials_and_neutral_frees_a_slot() -> None:
    """half-open admits half_open_max_trials in flight; a neutral outcome frees one."""
    clock, recorder = FakeClock(), Recorder()
    breaker = make(clock, recorder, half_open_max_trials=2)
    trip(breaker)
    clock.advance(10.0)
    assert breaker.allow()
    assert breaker.allow()
    assert not breaker.allow()
    breaker.record_neutral()
    assert state(breaker) == "half-open"
    assert breaker.allow()
    assert not breaker.allow()
    assert recorder.changes == [("closed", "open"), ("open", "half-open")]


def test_each_half_open_period_gets_fresh_trial_slots() -> None:
    """Trials left in flight when half-open ends do not carry over to the next period."""
    clock = FakeClock()
    breaker = make(clock, half_open_max_trials=1)
    trip(breaker)
    clock.advance(10.0)
    assert breaker.allow()
    breaker.record_failure()
    clock.advance(10.0)
    assert breaker.allow()


def test_neutral_is_a_no_op_outside_half_open() -> None:
    """record_neutral changes nothing in closed or open."""
    clock = FakeClock()
    breaker = make(clock)
    breaker.record_failure()
    breaker.record_neutral()
    assert (state(breaker), breaker.failure_count) == ("closed", 1)
    trip(breaker)
    opened_at = breaker.opened_at
    breaker.record_neutral()
    assert (state(breaker), breaker.opened_at) == ("open", opened_at)


def test_outcomes_while_open_are_ignored() -> None:
    """Late outcomes from attempts started before the trip neither close nor extend open."""
    clock, recorder = FakeClock(), Recorder()
    breaker = make(clock, recorder)
    trip(breaker)
    opened_at = breaker.opened_at
    clock.advance(3.0)
    breaker.record_success()
    breaker.record_failure()
    assert state(breaker) == "open"
    assert breaker.opened_at == opened_at
    assert breaker.failure_count == 3
    assert recorder.changes == [("closed", "open")]


def test_force_open_and_reset() -> None:
    """force_open opens (or restarts the timer); reset closes with a zero count."""
    clock, recorder = FakeClock(), Recorder()
    breaker = make(clock, recorder)
    breaker.record_failure()
    breaker.force_open()
    assert state(breaker) == "open"
    clock.advance(5.0)
    breaker.force_open()
    assert breaker.opened_at == clock.now
    assert breaker.remaining_open_time == pytest.approx(10.0)
    breaker.reset()
    assert state(breaker) == "closed"
    assert breaker.failure_count == 0
    assert breaker.allow()
    breaker.reset()
    assert recorder.changes == [("closed", "open"), ("open", "closed")]


def test_callback_exception_is_logged_and_breaker_stays_consistent(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A raising on_state_change is logged; the transition still completes."""
    clock = FakeClock()
    seen: list[tuple[BreakerState, BreakerState]] = []

    def explode(old: BreakerState, new: BreakerState) -> None:
        seen.append((old, new))
        raise RuntimeError("listener bug")

    breaker = CircuitBreaker(
        failure_threshold=1, recovery_timeout=1.0, name="b1", clock=clock, on_state_change=explode
    )
    with caplog.at_level(logging.ERROR, logger="wsclient.breaker"):
        breaker.record_failure()
        assert state(breaker) == "open"
        clock.advance(1.0)
        assert breaker.allow()
        breaker.record_success()
    assert state(breaker) == "closed"
    assert seen == [("closed", "open"), ("open", "half-open"), ("half-open", "closed")]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 3
    assert all(r.exc_info is not None and "b1" in r.getMessage() for r in errors)


def test_callback_sees_the_new_state() -> None:
    """on_state_change runs after the breaker has fully moved to the new state."""
    clock = FakeClock()
    observed: list[tuple[BreakerState, BreakerState]] = []
    breaker: CircuitBreaker

    def look(old: BreakerState, new: BreakerState) -> None:
        observed.append((new, breaker.state))

    breaker = CircuitBreaker(failure_threshold=1, clock=clock, on_state_change=look)
    breaker.record_failure()
    assert observed == [("open", "open")]


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"failure_threshold": 0}, "failure_threshold"),
        ({"recovery_timeout": 0.0}, "recovery_timeout"),
        ({"recovery_timeout": float("nan")}, "recovery_timeout"),
        ({"half_open_max_trials": 0}, "half_open_max_trials"),
    ],
)
def test_validation_names_the_parameter(kwargs: dict[str, float], name: str) -> None:
    """Invalid parameters raise ValueError naming the parameter."""
    with pytest.raises(ValueError, match=name):
        CircuitBreaker(**kwargs)  # type: ignore[arg-type]


def test_default_clock_is_monotonic() -> None:
    """Without a clock the breaker times itself with time.monotonic."""
    breaker = CircuitBreaker(failure_threshold=1, recovery_timeout=60.0)
    breaker.record_failure()
    assert 59.0 < breaker.remaining_open_time <= 60.0


class BreakerMachine(RuleBasedStateMachine):
    """Random success/failure/neutral/allow/clock sequences against the invariants."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.recorder = Recorder()
        self.breaker: CircuitBreaker | None = None
        self.threshold = 1
        self.timeout = 1.0
        self.max_trials = 1
        self.in_flight = 0  # trials admitted in the current half-open period
        self.checked = 0  # recorder entries already validated
        self.resets: set[int] = set()  # recorder indexes caused by reset()
        self.last_state: BreakerState = "closed"

    @property
    def b(self) -> CircuitBreaker:
        assert self.breaker is not None
        return self.breaker

    @precondition(lambda self: self.breaker is None)
    @rule(
        threshold=st.integers(1, 5),
        timeout=st.floats(0.1, 100.0),
        max_trials=st.integers(1, 3),
    )
    def create(self, threshold: int, timeout: float, max_trials: int) -> None:
        self.threshold, self.timeout, self.max_trials = threshold, timeout, max_trials
        self.breaker = CircuitBreaker(
            failure_threshold=threshold,
            recovery_timeout=timeout,
            half_open_max_trials=max_trials,
            clock=self.clock,
            on_state_change=self.recorder,
        )

    def _observe(self) -> BreakerState:
        """Read the state (may fire the lazy transition) and check the callback log."""
        state = self.b.state
        for i in range(self.checked, len(self.recorder.changes)):
            old, new = self.recorder.changes[i]
            assert old != new
            assert (old, new) in LEGAL_EDGES or (i in self.resets and new == "closed")
            # Contiguous chain: a duplicated or missing notification breaks it.
            assert old == self.last_state
            self.last_state = new
            if new != "half-open":
                self.in_flight = 0
        self.checked = len(self.recorder.changes)
        assert state == self.last_state
        return state

    @precondition(lambda self: self.breaker is not None)
    @rule(seconds=st.floats(0.0, 150.0))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @precondition(lambda self: self.breaker is not None)
    @rule()
    def allow(self) -> None:
        before = self._observe()
        allowed = self.b.allow()
        if before == "closed":
            assert allowed
        elif before == "open":
            assert not allowed
        else:
            assert allowed == (self.in_flight < self.max_trials)
            self.in_flight += allowed
        assert self._observe() == before

    @precondition(lambda self: self.breaker is not None)
    @rule()
    def success(self) -> None:
        before = self._observe()
        count = self.b.failure_count
        self.b.record_success()
        after = self._observe()
        expected = {"closed": "closed", "half-open": "closed", "open": "open"}[before]
        assert after == expected
        assert self.b.failure_count == (count if before == "open" else 0)

    @precondition(lambda self: self.breaker is not None)
    @rule()
    def failure(self) -> None:
        before = self._observe()
        count = self.b.failure_count
        self.b.record_failure()
        after = self._observe()
        if before == "closed":
            assert self.b.failure_count == count + 1
            assert after == ("open" if count + 1 >= self.threshold else "closed")
        elif before == "half-open":
            assert after == "open"
        else:
            assert after == "open" and self.b.failure_count == count
        if after == "open" and before != "open":
            assert self.b.opened_at == self.clock.now

    @precondition(lambda self: self.breaker is not None)
    @rule()
    def neutral(self) -> None:
        before = self._observe()
        count = self.b.failure_count
        self.b.record_neutral()
        assert self._observe() == before
        assert self.b.failure_count == count
        if before == "half-open":
            self.in_flight = max(0, self.in_flight - 1)

    @precondition(lambda self: self.breaker is not None)
    @rule()
    def force_open(self) -> None:
        self._observe()
        self.b.force_open()
        assert self._observe() == "open"
        assert self.b.opened_at == self.clock.now

    @precondition(lambda self: self.breaker is not None)
    @rule()
    def reset(self) -> None:
        self._observe()
        self.resets.add(len(self.recorder.changes))
        self.b.reset()
        assert self._observe() == "closed"
        assert self.b.failure_count == 0

    @invariant()
    def consistent(self) -> None:
        if self.breaker is None:
            return
        state = self._observe()
        remaining = self.b.remaining_open_time
        opened_at = self.b.opened_at
        if state == "open":
            assert opened_at is not None
            assert 0 < remaining <= self.timeout
            assert remaining == self.timeout - (self.clock.now - opened_at)
            assert not self.b.allow()
        else:
            assert remaining == 0.0
        if state == "half-open":
            assert opened_at is not None
            assert self.clock.now - opened_at >= self.timeout
            assert 0 <= self.in_flight <= self.max_trials
        if state == "closed":
            assert self.b.failure_count < self.threshold


BreakerMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
test_breaker_state_machine = BreakerMachine.TestCase
