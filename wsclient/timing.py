"""Cheap timing accumulators: wait, use and create time of one pool's connections.

A pool has none until something instruments it (``wsclient.metrics``), so an
uninstrumented pool pays one ``is None`` test per acquire and per release.
Once created, each observation is a bisect into fixed buckets and three
additions (about 0.1 µs); exporters read the buckets when they are scraped,
never on the hot path. Sinks (OpenTelemetry histograms) get every observation
too, at whatever their own ``record()`` costs.

A leaf module: no I/O, no clock (callers pass seconds and ``now``).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable

__all__ = ["BUCKETS", "PoolTiming", "TimingHistogram"]

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

#: ``sink(seconds)``: one observation (an OpenTelemetry histogram's bound ``record``).
TimingSink = Callable[[float], None]


class TimingHistogram:
    """Counts per bucket (``counts[i]``: observations ``<= BUCKETS[i]``, the last: above
    all), their sum and their number. Not cumulative; exporters accumulate."""

    __slots__ = ("count", "counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(BUCKETS, seconds)] += 1
        self.sum += seconds
        self.count += 1

    def cumulative(self, extra_zero: int = 0) -> list[int]:
        """Prometheus-style cumulative counts per bound, +Inf last; ``extra_zero``
        observations of 0 s (acquires that never waited) are added to every bucket."""
        total = extra_zero
        out = []
        for n in self.counts:
            total += n
            out.append(total)
        return out


class PoolTiming:
    """What an instrumented pool records: the three histograms and lease start times."""

    __slots__ = (
        "_leased",
        "create",
        "create_sinks",
        "immediate_base",
        "instant_sinks",
        "use",
        "use_sinks",
        "wait",
        "wait_sinks",
    )

    def __init__(self, immediate_base: int = 0) -> None:
        #: acquires served at once before timing began (exporters subtract it)
        self.immediate_base = immediate_base
        self.wait = TimingHistogram()
        self.use = TimingHistogram()
        self.create = TimingHistogram()
        # Extra receivers of each observation; ``instant_sinks`` get 0.0 for every
        # acquire served at once (an idle connection), ``wait_sinks`` the others.
        self.instant_sinks: list[TimingSink] = []
        self.wait_sinks: list[TimingSink] = []
        self.use_sinks: list[TimingSink] = []
        self.create_sinks: list[TimingSink] = []
        self._leased: dict[object, float] = {}

    def leased(self, link: object, now: float, waited: float | None = None) -> None:
        """A lease began at ``now``; ``waited``: seconds the acquire waited (None: at once,
        which the buckets derive from the pool's counts instead)."""
        self._leased[link] = now
        if waited is None:
            for sink in self.instant_sinks:
                sink(0.0)
            return
        self.wait.observe(waited)
        for sink in self.wait_sinks:
            sink(waited)

    def released(self, link: object, now: float) -> None:
        started = self._leased.pop(link, None)
        if started is not None:
            seconds = now - started
            use = self.use  # observe() inlined: this runs on every release
            use.counts[bisect_left(BUCKETS, seconds)] += 1
            use.sum += seconds
            use.count += 1
            for sink in self.use_sinks:
                sink(seconds)

    def forget(self, link: object) -> None:
        """The lease ended without a release (closed under its lessee, pool closed)."""
        self._leased.pop(link, None)

    def created(self, seconds: float) -> None:
        self.create.observe(seconds)
        for sink in self.create_sinks:
            sink(seconds)

    def clear(self) -> None:
        self._leased.clear()
