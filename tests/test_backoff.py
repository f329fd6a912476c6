"""Tests for wsclient.backoff: the delay curve, jitter spread, and retry_async."""

from __future__ import annotations

import asyncio
import random
import statistics
from collections import Counter

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from wsclient.backoff import Backoff
from wsclient.retry import default_should_retry, retry_async


class FakeSleep:
    """Records requested delays instead of sleeping; can block on an Event."""

    def __init__(self, block: asyncio.Event | None = None) -> None:
        self.delays: list[float] = []
        self.block = block
        self.entered = asyncio.Event()

    async def __call__(self, delay: float) -> None:
        self.delays.append(float(delay))
        self.entered.set()
        if self.block is not None:
            await self.block.wait()


class Flaky:
    """An async callable that raises the given errors in turn, then returns 'ok'."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def test_default_bases_grow_by_multiplier_and_cap() -> None:
    """Defaults give bases 1, 1.6, 2.56, ... capped at 120."""
    backoff = Backoff(rng=random.Random(0))
    bases = []
    for _ in range(20):
        bases.append(backoff.peek_base())
        backoff.next_delay()
    assert bases[:4] == pytest.approx([1.0, 1.6, 2.56, 4.096])
    assert max(bases) == 120.0
    assert bases[-1] == 120.0
    assert 1.6**10 < 120 < 1.6**11 and bases[10] < 120.0 and bases[11] == 120.0


def test_each_delay_within_jitter_band_of_its_base() -> None:
    """Every delay lies in [base*(1-j), min(max, base*(1+j))]."""
    backoff = Backoff(rng=random.Random(1))
    for _ in range(40):
        base = backoff.peek_base()
        delay = backoff.next_delay()
        assert base * 0.8 <= delay <= min(120.0, base * 1.2)


@given(
    initial=st.floats(min_value=1e-3, max_value=100.0),
    multiplier=st.floats(min_value=1.0, max_value=10.0),
    jitter=st.floats(min_value=0.0, max_value=0.99),
    cap_factor=st.floats(min_value=1.0, max_value=1e4),
    seed=st.integers(min_value=0, max_value=2**32),
    steps=st.integers(min_value=1, max_value=80),
)
def test_delays_bounded_and_bases_non_decreasing(
    initial: float, multiplier: float, jitter: float, cap_factor: float, seed: int, steps: int
) -> None:
    """For any valid parameters, 0 < delay <= max_delay and the base never decreases."""
    max_delay = initial * cap_factor
    backoff = Backoff(
        initial_delay=initial,
        multiplier=multiplier,
        jitter=jitter,
        max_delay=max_delay,
        rng=random.Random(seed),
    )
    previous_base = 0.0
    for _ in range(steps):
        base = backoff.peek_base()
        assert previous_base <= base <= max_delay
        delay = backoff.next_delay()
        assert 0.0 < delay <= max_delay
        assert base * (1 - jitter) <= delay
        previous_base = base


def test_attempts_counts_failures_and_reset_restarts() -> None:
    """reset() starts again from initial_delay and zeroes the attempt count."""
    backoff = Backoff(initial_delay=2.0, multiplier=3.0, jitter=0.0, max_delay=1000.0)
    assert [backoff.next_delay() for _ in range(3)] == [2.0, 6.0, 18.0]
    assert backoff.attempts == 3
    backoff.reset()
    assert backoff.attempts == 0
    assert backoff.peek_base() == 2.0
    assert backoff.next_delay() == 2.0


def test_extra_steps_jump_ahead_for_one_delay() -> None:
    """extra_steps moves one delay further up the curve and counts one failure."""
    backoff = Backoff(initial_delay=1.0, multiplier=2.0, jitter=0.0, max_delay=100.0)
    assert backoff.next_delay(extra_steps=3) == 8.0
    assert backoff.attempts == 1
    assert backoff.next_delay() == 2.0
    assert backoff.next_delay(extra_steps=100) == 100.0
    with pytest.raises(ValueError, match="extra_steps"):
        backoff.next_delay(extra_steps=-1)


def test_delays_generator_matches_next_delay() -> None:
    """delays() yields the same sequence as repeated next_delay() calls."""
    a = Backoff(rng=random.Random(7))
    b = Backoff(rng=random.Random(7))
    gen = a.delays()
    assert [next(gen) for _ in range(25)] == [b.next_delay() for _ in range(25)]
    assert a.attempts == 25


def test_peek_base_does_not_count_or_consume_randomness() -> None:
    """peek_base() neither counts an attempt nor draws from the rng."""
    a = Backoff(rng=random.Random(3))
    b = Backoff(rng=random.Random(3))
    for _ in range(5):
        a.peek_base()
    assert a.attempts == 0
    assert a.next_delay() == b.next_delay()


def _spread(delays: list[float], low: float, high: float) -> None:
    buckets = Counter(int(d * 100) for d in delays)  # 10 ms buckets
    assert max(buckets.values()) <= 0.05 * len(delays)
    assert min(delays) >= low and max(delays) <= high
    # Most of the band is covered: the extremes are within 10 % of its ends.
    width = high - low
    assert min(delays) < low + 0.1 * width
    assert max(delays) > high - 0.1 * width
    assert statistics.stdev(delays) > 0.2 * width


def test_jitter_spreads_first_delay_across_clients() -> None:
    """200 independently seeded clients spread their first delay over [0.8, 1.2]."""
    delays = [Backoff(rng=random.Random(seed)).next_delay() for seed in range(200)]
    _spread(delays, 0.8, 1.2)


def test_jitter_spreads_at_the_cap() -> None:
    """At attempt 30 (capped) the spread still covers most of [96, 120]."""
    delays = []
    for seed in range(200):
        backoff = Backoff(rng=random.Random(seed))
        for _ in range(30):
            backoff.next_delay()
        assert backoff.peek_base() == 120.0
        delays.append(backoff.next_delay())
    _spread(delays, 96.0, 120.0)


def test_default_rng_differs_per_instance() -> None:
    """Without an rng, instances are seeded independently (no lockstep)."""
    assert len({Backoff().next_delay() for _ in range(50)}) > 40


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"initial_delay": 0}, "initial_delay"),
        ({"initial_delay": -1.0}, "initial_delay"),
        ({"initial_delay": float("nan")}, "initial_delay"),
        ({"multiplier": 0.5}, "multiplier"),
        ({"jitter": -0.1}, "jitter"),
        ({"jitter": 1.0}, "jitter"),
        ({"max_delay": 0.5}, "max_delay"),
        ({"max_delay": float("inf")}, "max_delay"),
    ],
)
def test_validation_names_the_parameter(kwargs: dict[str, float], name: str) -> None:
    """Invalid parameters raise ValueError naming the parameter and its value."""
    with pytest.raises(ValueError, match=name) as info:
        Backoff(**kwargs)  # type: ignore[arg-type]
    assert repr(next(iter(kwargs.values()))) in str(info.value)


def test_default_should_retry_classifies_errors() -> None:
    """Network errors are retryable; programming errors and cancellation are not."""
    assert default_should_retry(OSError("refused"))
    assert default_should_retry(ConnectionResetError())
    assert default_should_retry(TimeoutError())
    assert default_should_retry(aiohttp.ClientConnectionError("down"))
    assert not default_should_retry(ValueError("bad"))
    assert not default_should_retry(asyncio.CancelledError())
    assert not default_should_retry(KeyboardInterrupt())


async def test_retry_async_retries_with_backoff_delays() -> None:
    """Retryable errors are retried, sleeping exactly the backoff's delays."""
    fn = Flaky(OSError("a"), TimeoutError("b"), aiohttp.ClientConnectionError("c"))
    sleep = FakeSleep()
    expected = Backoff(rng=random.Random(5))
    backoff = Backoff(rng=random.Random(5))
    assert await retry_async(fn, backoff, sleep=sleep) == "ok"
    assert fn.calls == 4
    assert sleep.delays == [expected.next_delay() for _ in range(3)]


async def test_retry_async_reraises_last_error_after_max_attempts() -> None:
    """After max_attempts the last real exception is re-raised, not RetryError."""
    last = ConnectionRefusedError("third")
    fn = Flaky(OSError("first"), OSError("second"), last, OSError("never"))
    sleep = FakeSleep()
    backoff = Backoff(jitter=0.0)
    with pytest.raises(ConnectionRefusedError) as info:
        await retry_async(fn, backoff, max_attempts=3, sleep=sleep)
    assert info.value is last
    assert fn.calls == 3
    assert sleep.delays == pytest.approx([1.0, 1.6])
    assert backoff.attempts == 3  # every failure counted, the last one too


async def test_retry_async_does_not_retry_non_retryable() -> None:
    """A ValueError propagates at once, with no sleep and no counted failure."""
    fn = Flaky(ValueError("bug"))
    sleep = FakeSleep()
    backoff = Backoff()
    with pytest.raises(ValueError, match="bug"):
        await retry_async(fn, backoff, sleep=sleep)
    assert fn.calls == 1
    assert sleep.delays == []
    assert backoff.attempts == 0


async def test_retry_async_uses_custom_predicate() -> None:
    """should_retry replaces the default classification."""
    fn = Flaky(KeyError("x"))
    sleep = FakeSleep()
    result = await retry_async(
        fn, Backoff(), should_retry=lambda e: isinstance(e, KeyError), sleep=sleep
    )
    assert result == "ok"
    assert len(sleep.delays) == 1


async def test_retry_async_resets_backoff_after_success() -> None:
    """A success resets the backoff to its initial delay."""
    backoff = Backoff(jitter=0.0)
    backoff.next_delay()
    backoff.next_delay()
    assert await retry_async(Flaky(OSError()), backoff, sleep=FakeSleep()) == "ok"
    assert backoff.attempts == 0
    assert backoff.peek_base() == 1.0


async def test_retry_async_accepts_plain_callable_returning_awaitable() -> None:
    """fn may be a lambda returning a coroutine, not only an async def."""
    fn = Flaky(OSError())
    assert await retry_async(lambda: fn(), Backoff(), sleep=FakeSleep()) == "ok"
    assert fn.calls == 2


async def test_retry_async_rejects_bad_max_attempts() -> None:
    """max_attempts below 1 is a ValueError naming the parameter."""
    with pytest.raises(ValueError, match="max_attempts"):
        await retry_async(Flaky(), Backoff(), max_attempts=0)


async def test_cancel_during_sleep_propagates_and_is_not_retried() -> None:
    """Cancelling the task while it sleeps raises CancelledError; no further attempt."""
    sleep = FakeSleep(block=asyncio.Event())
    fn = Flaky(OSError(), OSError())
    backoff = Backoff()
    task = asyncio.create_task(retry_async(fn, backoff, should_retry=lambda e: True, sleep=sleep))
    await asyncio.wait_for(sleep.entered.wait(), timeout=5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, timeout=5)
    assert task.cancelled()
    assert fn.calls == 1
    assert len(sleep.delays) == 1


async def test_cancel_during_attempt_propagates_and_is_not_retried() -> None:
    """Cancelling mid-attempt raises CancelledError even if the predicate retries everything."""
    started = asyncio.Event()
    calls = 0

    async def hang() -> str:
        nonlocal calls
        calls += 1
        started.set()
        await asyncio.Event().wait()
        return "unreachable"

    sleep = FakeSleep()
    backoff = Backoff()
    task = asyncio.create_task(retry_async(hang, backoff, should_retry=lambda e: True, sleep=sleep))
    await asyncio.wait_for(started.wait(), timeout=5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, timeout=5)
    assert task.cancelled()
    assert calls == 1
    assert sleep.delays == []
    assert backoff.attempts == 0


async def test_cancelled_error_raised_by_fn_is_not_retried() -> None:
    """A CancelledError raised by fn itself is re-raised, never retried."""
    fn = Flaky(asyncio.CancelledError())
    sleep = FakeSleep()
    with pytest.raises(asyncio.CancelledError):
        await retry_async(fn, Backoff(), should_retry=lambda e: True, sleep=sleep)
    assert fn.calls == 1
    assert sleep.delays == []
