"""wsclient.timing: the pool's histograms and the bounded buffer OpenTelemetry drains."""

from __future__ import annotations

from bisect import bisect_left

from hypothesis import given, settings
from hypothesis import strategies as st

from wsclient.timing import BUCKETS, PendingTimes, TimingHistogram

# Waits and leases: mostly sub-millisecond, some on a bucket bound, a few long.
seconds = st.one_of(
    st.floats(min_value=0.0, max_value=0.002),
    st.sampled_from(BUCKETS),
    st.floats(min_value=0.0, max_value=30.0),
)


def summary(values: list[float]) -> tuple[int, float, list[int], float, float]:
    counts = [0] * (len(BUCKETS) + 1)
    for v in values:
        counts[bisect_left(BUCKETS, v)] += 1
    return len(values), sum(values), counts, min(values), max(values)


@settings(max_examples=200, deadline=None)
@given(st.lists(seconds, min_size=1, max_size=200), st.integers(0, 8), st.integers(0, 5))
def test_replay_keeps_count_sum_buckets_min_max(
    values: list[float], capacity: int, zeros: int
) -> None:
    """Whatever overflows the kept values comes back with the same number, sum,
    buckets, min and max (what OpenTelemetry's explicit-bucket histogram keeps)."""
    pending = PendingTimes(capacity)
    histogram = TimingHistogram()
    for v in values:
        pending.add(v, histogram.observe(v))
    pending.zeros = zeros
    assert len(pending) == len(values) + zeros
    replayed = list(pending.replay())
    n, total, counts, low, high = summary(values + [0.0] * zeros)
    n2, total2, counts2, low2, high2 = summary(replayed)
    assert (n2, counts2, low2, high2) == (n, counts, low, high)
    assert abs(total2 - total) <= 1e-9 * max(1.0, total)
    assert histogram.counts == summary(values)[2] and histogram.count == len(values)


def test_take_empties_and_memory_stays_bounded() -> None:
    """With nobody collecting, 100,000 observations keep only ``capacity`` values
    plus fixed per-bucket numbers; take() moves them all out, once."""
    pending = PendingTimes(16)
    histogram = TimingHistogram()
    for i in range(100_000):
        v = (i % 1000) / 1e5
        pending.add(v, histogram.observe(v))
    assert len(pending.values) == 16 and len(pending) == 100_000
    taken = pending.take()
    assert len(taken) == 100_000 and len(pending) == 0
    assert list(pending.replay()) == []
    assert sum(1 for _ in taken.replay()) == 100_000
