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


def buckets(values: list[float]) -> list[int]:
    counts = [0] * (len(BUCKETS) + 1)
    for v in values:
        counts[bisect_left(BUCKETS, v)] += 1
    return counts


@settings(max_examples=200, deadline=None)
@given(
    st.lists(seconds, max_size=50),
    st.lists(st.lists(seconds, max_size=60), min_size=1, max_size=3),
    st.integers(0, 8),
    st.integers(0, 5),
)
def test_take_replays_each_observation_once(
    before: list[float], batches: list[list[float]], capacity: int, zeros: int
) -> None:
    """Across takes, the replayed values have each batch's number, sum and buckets
    (what an explicit-bucket histogram keeps); the kept ones exactly, the overflow at
    its bucket's mean; observations from before the buffer existed never appear."""
    histogram = TimingHistogram()
    for v in before:
        histogram.observe(v)
    pending = PendingTimes(histogram, capacity)
    for batch in batches:
        for v in batch:
            histogram.observe(v)
            pending.add(v)
        pending.zeros = zeros
        taken = pending.take()
        replayed = list(taken.replay())
        expected = batch + [0.0] * zeros
        assert len(taken) == len(replayed) == len(expected)
        assert buckets(replayed) == buckets(expected)
        assert abs(sum(replayed) - sum(expected)) <= 1e-9 * max(1.0, sum(histogram.sums))
        assert replayed[: min(capacity, len(batch))] == batch[:capacity]
    assert histogram.counts == buckets(before + [v for b in batches for v in b])


def test_memory_stays_bounded_with_nobody_collecting() -> None:
    """100,000 observations keep ``capacity`` values; take() finds all of them, once."""
    histogram = TimingHistogram()
    pending = PendingTimes(histogram, 16)
    for i in range(100_000):
        v = (i % 1000) / 1e5
        histogram.observe(v)
        pending.add(v)
    assert len(pending.values) == 16
    taken = pending.take()
    assert len(taken) == 100_000 and sum(1 for _ in taken.replay()) == 100_000
    assert len(pending.take()) == 0 and pending.values == []
