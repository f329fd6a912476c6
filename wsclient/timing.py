"""Cheap timing accumulators: wait, use and create time of one pool's connections.

A pool has none until something instruments it (``wsclient.metrics``), so an
uninstrumented pool pays one ``is None`` test per acquire and per release.
Once created, each observation is a bisect into fixed buckets and two
additions (about 0.1 µs); exporters read the buckets when they are scraped,
never on the hot path. An OpenTelemetry instrumentation also attaches a
``PendingTimes`` per histogram, handed to the SDK's ``record()`` at collection
time: the hook appends an observation to it while it has room and does nothing
more once it is full (the buckets already count the rest).

A leaf module: no I/O, no clock (callers pass seconds and ``now``).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterator

__all__ = [
    "BUCKETS",
    "PENDING_CAPACITY",
    "Pending",
    "PendingTimes",
    "PoolTiming",
    "TimingHistogram",
]

#: Upper bounds (seconds) of the histogram buckets; the last bucket is +Inf.
BUCKETS: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

#: Observations a ``PendingTimes`` keeps as they were; beyond, per bucket.
PENDING_CAPACITY = 1024


class TimingHistogram:
    """Counts and sums per bucket (``counts[i]``: observations ``<= BUCKETS[i]``, the
    last: above all). Not cumulative; exporters accumulate."""

    __slots__ = ("counts", "sums")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.sums = [0.0] * (len(BUCKETS) + 1)

    def observe(self, seconds: float) -> int:
        """Count one observation; returns its bucket."""
        bucket = bisect_left(BUCKETS, seconds)
        self.counts[bucket] += 1
        self.sums[bucket] += seconds
        return bucket

    @property
    def count(self) -> int:
        return sum(self.counts)

    @property
    def sum(self) -> float:
        return math.fsum(self.sums)

    def cumulative(self, extra_zero: int = 0) -> list[int]:
        """Prometheus-style cumulative counts per bound, +Inf last; ``extra_zero``
        observations of 0 s (acquires that never waited) are added to every bucket."""
        total = extra_zero
        out = []
        for n in self.counts:
            total += n
            out.append(total)
        return out


class Pending:
    """What a ``PendingTimes`` held at one ``take()``: observations kept as they were,
    a number of zeros, and per bucket the number and sum of the others."""

    __slots__ = ("counts", "sums", "values", "zeros")

    def __init__(self, values: list[float], zeros: int, counts: list[int], sums: list[float]):
        self.values = values
        self.zeros = zeros
        self.counts = counts
        self.sums = sums

    def __len__(self) -> int:
        return len(self.values) + self.zeros + sum(self.counts)

    def replay(self) -> Iterator[float]:
        """One value per observation: the kept ones, the zeros, then each bucket's
        others at their mean (kept inside the bucket's bounds against rounding)."""
        yield from self.values
        for _ in range(self.zeros):
            yield 0.0
        for bucket, n in enumerate(self.counts):
            if n <= 0:
                continue
            mean = max(0.0, self.sums[bucket] / n)
            if bucket < len(BUCKETS):
                mean = min(mean, BUCKETS[bucket])
            if bucket > 0 and mean <= BUCKETS[bucket - 1]:
                mean = math.nextafter(BUCKETS[bucket - 1], math.inf)
            for _ in range(n):
                yield mean


class PendingTimes:
    """A ``TimingHistogram``'s observations not yet handed to a slower consumer (an
    OpenTelemetry histogram's ``record()``, called at collection time), in bounded
    memory whether or not anything ever collects them.

    The first ``capacity`` observations after each ``take()`` are kept as they were
    (the pool's hook appends them to ``values``); the others cost nothing more on
    the hot path: ``take()`` finds them as what the histogram counted since the
    last take, minus the kept ones, per bucket (number and sum). ``zeros``:
    observations of 0 s known only as a number (acquires served at once).
    """

    __slots__ = ("_histogram", "_seen_counts", "_seen_sums", "capacity", "values", "zeros")

    def __init__(self, histogram: TimingHistogram, capacity: int | None = None) -> None:
        self.capacity = PENDING_CAPACITY if capacity is None else capacity
        self.values: list[float] = []
        self.zeros = 0
        self._histogram = histogram
        self._seen_counts = list(histogram.counts)
        self._seen_sums = list(histogram.sums)

    def add(self, seconds: float) -> None:
        """Keep one observation the histogram also counted, if there is room."""
        if len(self.values) < self.capacity:
            self.values.append(seconds)

    def take(self) -> Pending:
        """Everything observed since the last take; this starts over empty."""
        histogram = self._histogram
        counts = [now - seen for now, seen in zip(histogram.counts, self._seen_counts, strict=True)]
        sums = [now - seen for now, seen in zip(histogram.sums, self._seen_sums, strict=True)]
        values, self.values = self.values, []
        for seconds in values:
            bucket = bisect_left(BUCKETS, seconds)
            counts[bucket] -= 1
            sums[bucket] -= seconds
        self._seen_counts = list(histogram.counts)
        self._seen_sums = list(histogram.sums)
        zeros, self.zeros = self.zeros, 0
        return Pending(values, zeros, counts, sums)


class PoolTiming:
    """What an instrumented pool records: the three histograms, lease start times,
    and the ``PendingTimes`` that OpenTelemetry instrumentations attached."""

    __slots__ = (
        "_leased",
        "create",
        "create_pending",
        "immediate_base",
        "use",
        "use_pending",
        "wait",
        "wait_pending",
    )

    def __init__(self, immediate_base: int = 0) -> None:
        #: acquires served at once before timing began (exporters subtract it)
        self.immediate_base = immediate_base
        self.wait = TimingHistogram()
        self.use = TimingHistogram()
        self.create = TimingHistogram()
        # Each attached buffer gets every observation. Acquires served at once are
        # not observed here at all (the pool counts them): exporters add them as 0 s.
        self.wait_pending: list[PendingTimes] = []
        self.use_pending: list[PendingTimes] = []
        self.create_pending: list[PendingTimes] = []
        self._leased: dict[object, float] = {}

    def leased(self, link: object, now: float, waited: float | None = None) -> None:
        """A lease began at ``now``; ``waited``: seconds the acquire waited (None: at once,
        which exporters derive from the pool's counts instead)."""
        self._leased[link] = now
        if waited is not None:
            self.wait.observe(waited)
            for pending in self.wait_pending:
                pending.add(waited)

    def released(self, link: object, now: float) -> None:
        started = self._leased.pop(link, None)
        if started is not None:
            seconds = now - started
            use = self.use  # observe() inlined: this runs on every release
            bucket = bisect_left(BUCKETS, seconds)
            use.counts[bucket] += 1
            use.sums[bucket] += seconds
            for pending in self.use_pending:  # add() inlined
                values = pending.values
                if len(values) < pending.capacity:
                    values.append(seconds)

    def forget(self, link: object) -> None:
        """The lease ended without a release (closed under its lessee, pool closed)."""
        self._leased.pop(link, None)

    def created(self, seconds: float) -> None:
        self.create.observe(seconds)
        for pending in self.create_pending:
            pending.add(seconds)

    def clear(self) -> None:
        """The pool closed: no lease is open any more (pending observations stay)."""
        self._leased.clear()
