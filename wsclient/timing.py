"""Cheap timing accumulators: wait, use and create time of one pool's connections.

A pool has none until something instruments it (``wsclient.metrics``), so an
uninstrumented pool pays one ``is None`` test per acquire and per release.
Once created, each observation is a bisect into fixed buckets and three
additions (about 0.1 µs); exporters read the buckets when they are scraped,
never on the hot path. An OpenTelemetry instrumentation also attaches a
``PendingTimes`` per histogram: each observation is appended to it (or, once
it is full, counted in its buckets) and handed to the SDK's ``record()`` at
collection time, not on the hot path.

A leaf module: no I/O, no clock (callers pass seconds and ``now``).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator

__all__ = ["BUCKETS", "PENDING_CAPACITY", "PendingTimes", "PoolTiming", "TimingHistogram"]

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
    """Counts per bucket (``counts[i]``: observations ``<= BUCKETS[i]``, the last: above
    all), their sum and their number. Not cumulative; exporters accumulate."""

    __slots__ = ("count", "counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, seconds: float) -> int:
        """Count one observation; returns its bucket."""
        bucket = bisect_left(BUCKETS, seconds)
        self.counts[bucket] += 1
        self.sum += seconds
        self.count += 1
        return bucket

    def cumulative(self, extra_zero: int = 0) -> list[int]:
        """Prometheus-style cumulative counts per bound, +Inf last; ``extra_zero``
        observations of 0 s (acquires that never waited) are added to every bucket."""
        total = extra_zero
        out = []
        for n in self.counts:
            total += n
            out.append(total)
        return out


class PendingTimes:
    """Observations waiting for a slow consumer (an OpenTelemetry histogram's
    ``record()``, called at collection time), in bounded memory whether or not
    anything ever collects them.

    The first ``capacity`` are kept as they were (``values``); the rest only per
    bucket: number, sum, smallest and largest (``replay()`` gives them back as
    the smallest, the largest and the others at their mean, so count, sum, the
    buckets, min and max all stay exact). ``zeros``: observations of 0 s known
    only as a number (acquires served at once, counted by the pool anyway).
    """

    __slots__ = ("capacity", "counts", "highs", "lows", "sums", "values", "zeros")

    def __init__(self, capacity: int | None = None) -> None:
        self.capacity = PENDING_CAPACITY if capacity is None else capacity
        self.values: list[float] = []
        self.zeros = 0
        n = len(BUCKETS) + 1
        self.counts = [0] * n
        self.sums = [0.0] * n
        self.lows = [float("inf")] * n
        self.highs = [0.0] * n

    def add(self, seconds: float, bucket: int) -> None:
        """One observation, ``bucket`` its index (``TimingHistogram.observe``'s)."""
        values = self.values
        if len(values) < self.capacity:
            values.append(seconds)
            return
        self.counts[bucket] += 1
        self.sums[bucket] += seconds
        if seconds < self.lows[bucket]:
            self.lows[bucket] = seconds
        if seconds > self.highs[bucket]:
            self.highs[bucket] = seconds

    def __len__(self) -> int:
        return len(self.values) + self.zeros + sum(self.counts)

    def take(self) -> PendingTimes:
        """Everything pending, moved into a new object; this one starts empty."""
        taken = PendingTimes(self.capacity)
        taken.values, self.values = self.values, taken.values
        taken.zeros, self.zeros = self.zeros, 0
        taken.counts, self.counts = self.counts, taken.counts
        taken.sums, self.sums = self.sums, taken.sums
        taken.lows, self.lows = self.lows, taken.lows
        taken.highs, self.highs = self.highs, taken.highs
        return taken

    def replay(self) -> Iterator[float]:
        """One value per observation: the kept ones, the zeros, then per bucket its
        smallest, its largest and the rest at their mean (kept inside the two)."""
        yield from self.values
        for _ in range(self.zeros):
            yield 0.0
        for bucket, n in enumerate(self.counts):
            if not n:
                continue
            low, high = self.lows[bucket], self.highs[bucket]
            yield low
            if n == 1:
                continue
            yield high
            if n > 2:
                mean = min(high, max(low, (self.sums[bucket] - low - high) / (n - 2)))
                for _ in range(n - 2):
                    yield mean


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
            bucket = self.wait.observe(waited)
            for pending in self.wait_pending:
                pending.add(waited, bucket)

    def released(self, link: object, now: float) -> None:
        started = self._leased.pop(link, None)
        if started is not None:
            seconds = now - started
            use = self.use  # observe() inlined: this runs on every release
            bucket = bisect_left(BUCKETS, seconds)
            use.counts[bucket] += 1
            use.sum += seconds
            use.count += 1
            for pending in self.use_pending:
                pending.add(seconds, bucket)

    def forget(self, link: object) -> None:
        """The lease ended without a release (closed under its lessee, pool closed)."""
        self._leased.pop(link, None)

    def created(self, seconds: float) -> None:
        bucket = self.create.observe(seconds)
        for pending in self.create_pending:
            pending.add(seconds, bucket)

    def clear(self) -> None:
        """The pool closed: no lease is open any more (pending observations stay)."""
        self._leased.clear()
