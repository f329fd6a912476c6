"""Load-balancing strategies: pure, synchronous, no I/O.

A balancer never owns connections. The pool hands it the currently eligible
targets through ``update()`` (rare: membership, weight or health changes) and
asks for one through ``pick()`` (every acquire, so it must be cheap). Expensive
preparation therefore happens in ``update()``; ``pick()`` only reads the live
``active`` counts where the strategy needs them.

Each instance draws from its own ``random.Random`` seeded from ``os.urandom``,
so a fleet of clients starting at the same moment does not send its first
requests to the same backend or march through the rotation in lockstep. Tests
inject a seeded ``rng`` to make that randomness reproducible.

Weighted round-robin is an earliest-deadline-first scheduler on a heap
(O(log n) per pick) with randomised first deadlines; least-connections also
comes as a power-of-two-choices variant for large sets; ip-hash is weighted
rendezvous hashing over a stable hash so separate processes agree.
"""

from __future__ import annotations

import bisect
import hashlib
import heapq
import itertools
import math
import os
import random
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar, Protocol

__all__ = [
    "BALANCERS",
    "Balancer",
    "IpHash",
    "LeastConnections",
    "PowerOfTwoLeastConnections",
    "RoundRobin",
    "Target",
    "WeightedRandom",
    "WeightedRoundRobin",
    "balancer_names",
    "create_balancer",
    "register_balancer",
]

_NO_BACKEND = "no eligible backend"


class Target(Protocol):
    """What a balancer sees of a backend. The pool passes its own runtime objects."""

    @property
    def id(self) -> str: ...

    @property
    def weight(self) -> float:
        """Effective weight, > 0; fractional while a slow-start ramp is in progress."""
        ...

    @property
    def active(self) -> int:
        """Connections currently leased to the app; live, read at pick time."""
        ...


class Balancer(ABC):
    """Chooses one target from the eligible set handed over by ``update()``."""

    name: ClassVar[str]
    requires_key: ClassVar[bool] = False

    def __init__(self, *, rng: random.Random | None = None) -> None:
        # Seed explicitly from the OS so two pools created in the same process
        # (or forked processes) never share a sequence.
        self._rng = rng if rng is not None else random.Random(os.urandom(16))

    # Incremental changes; this fallback rebuilds through update() (O(n)).
    def _members(self) -> dict[str, Target]:
        members: dict[str, Target] = self.__dict__.setdefault("_fallback_members", {})
        return members

    def add(self, target: Target) -> None:
        self._members()[target.id] = target
        self.update(list(self._members().values()))

    def remove(self, target: Target) -> None:
        del self._members()[target.id]
        self.update(list(self._members().values()))

    def reweight(self, target: Target) -> None:
        self.update(list(self._members().values()))

    def __len__(self) -> int:
        return len(self._members())

    @abstractmethod
    def update(self, targets: Sequence[Target]) -> None:
        """Replace the eligible set.

        Called when membership, weights or health change (rarely); may be O(n log n).
        """

    @abstractmethod
    def pick(self, key: str | None = None) -> Target:
        """Return one target.

        Called on every acquire: must be cheap. Raises ``LookupError('no eligible backend')``
        if the set is empty.
        """


def _weights(targets: Sequence[Target]) -> list[float]:
    """Read every weight once, rejecting values that would break the arithmetic."""
    weights = [float(t.weight) for t in targets]
    for t, w in zip(targets, weights, strict=True):
        # A zero, negative, inf or nan weight would give infinite periods or a
        # corrupt cumulative table; failing loudly in update() beats a skewed
        # or crashing pick() later.
        if not (w > 0.0 and math.isfinite(w)):
            raise ValueError(f"target {t.id!r} has invalid weight {w!r}; must be finite and > 0")
    return weights


BALANCERS: dict[str, type[Balancer]] = {}


def register_balancer(cls: type[Balancer]) -> type[Balancer]:
    """Register ``cls`` under ``cls.name``; usable as a class decorator."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__qualname__} must define a non-empty class attribute 'name'")
    if name in BALANCERS:
        raise ValueError(
            f"load balancer name {name!r} is already registered by {BALANCERS[name].__qualname__}"
        )
    BALANCERS[name] = cls
    return cls


def balancer_names() -> list[str]:
    """Registered balancer names, sorted."""
    return sorted(BALANCERS)


def create_balancer(name: str, *, rng: random.Random | None = None) -> Balancer:
    """Instantiate the balancer registered as ``name``."""
    try:
        cls = BALANCERS[name]
    except KeyError:
        raise ValueError(
            f"unknown load_balancing {name!r}; choose one of: {', '.join(balancer_names())}"
        ) from None
    return cls(rng=rng)


@register_balancer
class RoundRobin(Balancer):
    """Cycles through the targets in order, ignoring weight."""

    name = "round-robin"

    def __init__(self, *, rng: random.Random | None = None) -> None:
        super().__init__(rng=rng)
        self._targets: tuple[Target, ...] = ()
        self._next = 0

    def update(self, targets: Sequence[Target]) -> None:
        self._targets = tuple(targets)
        # Random start so a fleet of freshly started clients spreads its first
        # picks instead of all hitting targets[0].
        self._next = self._rng.randrange(len(self._targets)) if self._targets else 0

    def pick(self, key: str | None = None) -> Target:
        targets = self._targets
        if not targets:
            raise LookupError(_NO_BACKEND)
        i = self._next
        self._next = (i + 1) % len(targets)
        return targets[i]


@register_balancer
class WeightedRoundRobin(Balancer):
    """Earliest-deadline-first: each target is due every ``1/weight`` time units."""

    name = "weighted-round-robin"

    def __init__(self, *, rng: random.Random | None = None) -> None:
        super().__init__(rng=rng)
        self._targets: tuple[Target, ...] = ()
        self._offsets: list[float] = []
        self._periods: list[float] = []
        self._rounds: list[int] = []
        # (deadline, tie-break sequence, target index): the sequence keeps equal
        # deadlines FIFO and means targets themselves are never compared.
        self._heap: list[tuple[float, int, int]] = []
        self._seq = itertools.count()

    def update(self, targets: Sequence[Target]) -> None:
        weights = _weights(targets)
        self._targets = tuple(targets)
        self._periods = [1.0 / w for w in weights]
        # A random phase within one period desynchronises a fleet while still
        # giving every target exactly its share over each full cycle.
        self._offsets = [self._rng.random() * p for p in self._periods]
        self._rounds = [0] * len(weights)
        self._seq = itertools.count()
        self._heap = [(off, next(self._seq), i) for i, off in enumerate(self._offsets)]
        heapq.heapify(self._heap)

    def pick(self, key: str | None = None) -> Target:
        heap = self._heap
        if not heap:
            raise LookupError(_NO_BACKEND)
        i = heap[0][2]
        rounds = self._rounds[i] + 1
        self._rounds[i] = rounds
        # offset + rounds * period rather than repeatedly adding the period:
        # accumulated float error would otherwise drift the shares over long
        # runs with fractional weights.
        deadline = self._offsets[i] + rounds * self._periods[i]
        heapq.heapreplace(heap, (deadline, next(self._seq), i))
        return self._targets[i]


@register_balancer
class LeastConnections(Balancer):
    """Lowest ``active / weight`` wins; ties rotate so equal loads spread out."""

    name = "least-connections"

    def __init__(self, *, rng: random.Random | None = None) -> None:
        super().__init__(rng=rng)
        self._targets: tuple[Target, ...] = ()
        self._weights: list[float] = []
        self._cursor = 0

    def update(self, targets: Sequence[Target]) -> None:
        self._weights = _weights(targets)
        self._targets = tuple(targets)
        self._cursor = self._rng.randrange(len(self._targets)) if self._targets else 0

    def pick(self, key: str | None = None) -> Target:
        targets = self._targets
        n = len(targets)
        if not n:
            raise LookupError(_NO_BACKEND)
        weights = self._weights
        start = self._cursor
        best = start
        best_load = targets[start].active / weights[start]
        # Scanning from a moving cursor and keeping only strictly lower loads
        # makes the first tied target after the previous pick win: a
        # round-robin among ties with no extra bookkeeping.
        for step in range(1, n):
            i = start + step
            if i >= n:
                i -= n
            load = targets[i].active / weights[i]
            if load < best_load:
                best, best_load = i, load
        self._cursor = best + 1 if best + 1 < n else 0
        return targets[best]


def _cumulative(weights: list[float]) -> tuple[list[float], float]:
    cum = list(itertools.accumulate(weights))
    return cum, (cum[-1] if cum else 0.0)


@register_balancer
class PowerOfTwoLeastConnections(Balancer):
    """Two distinct weighted-random candidates; the one with lower ``active / weight`` wins."""

    name = "least-connections-p2c"

    def __init__(self, *, rng: random.Random | None = None) -> None:
        super().__init__(rng=rng)
        self._targets: tuple[Target, ...] = ()
        self._weights: list[float] = []
        self._cum: list[float] = []
        self._total = 0.0

    def update(self, targets: Sequence[Target]) -> None:
        self._weights = _weights(targets)
        self._targets = tuple(targets)
        self._cum, self._total = _cumulative(self._weights)

    def _draw(self, x: float) -> int:
        # bisect_right on inclusive prefix sums maps [cum[i-1], cum[i]) to i;
        # the clamp absorbs x == total from float rounding.
        return min(bisect.bisect_right(self._cum, x), len(self._cum) - 1)

    def pick(self, key: str | None = None) -> Target:
        targets = self._targets
        n = len(targets)
        if not n:
            raise LookupError(_NO_BACKEND)
        if n == 1:
            return targets[0]
        rng = self._rng
        a = self._draw(rng.random() * self._total)
        # Second draw without replacement: sample over total - w[a] and skip
        # a's slice, so the pair is distinct and weighted in one draw.
        wa = self._weights[a]
        x = rng.random() * (self._total - wa)
        if x >= self._cum[a] - wa:
            x += wa
        b = self._draw(x)
        if b == a:  # only reachable through float rounding at a slice edge
            b = a + 1 if a + 1 < n else a - 1
        ta, tb = targets[a], targets[b]
        # Ties go to the first draw, which is already random.
        if tb.active / self._weights[b] < ta.active / self._weights[a]:
            return tb
        return ta


@register_balancer
class IpHash(Balancer):
    """Key affinity by weighted rendezvous (highest-random-weight) hashing."""

    name = "ip-hash"
    requires_key = True

    def __init__(self, *, rng: random.Random | None = None) -> None:
        super().__init__(rng=rng)
        self._entries: list[tuple[bytes, float, Target]] = []

    def update(self, targets: Sequence[Target]) -> None:
        weights = _weights(targets)
        self._entries = [
            (b"\x00" + t.id.encode(), w, t) for t, w in zip(targets, weights, strict=True)
        ]

    def pick(self, key: str | None = None) -> Target:
        if key is None:
            raise ValueError("ip-hash needs an affinity key: call acquire(key=...)")
        if not self._entries:
            raise LookupError(_NO_BACKEND)
        # blake2b, never hash(): str hashing is salted per process and every
        # process in a fleet has to map a key to the same backend.
        prefix = hashlib.blake2b(key.encode(), digest_size=8)
        best: Target | None = None
        best_score = -1.0
        best_id = b""
        for suffix, weight, target in self._entries:
            h = prefix.copy()
            h.update(suffix)
            # Top 53 bits plus a half step: exactly representable and strictly
            # inside (0, 1), so log(u) is finite and negative.
            u = ((int.from_bytes(h.digest(), "big") >> 11) + 0.5) / 9007199254740992.0
            # -w / ln(u) makes P(target wins) = w / sum(w): each target's share
            # follows its weight and only keys won by a changed target move.
            score = -weight / math.log(u)
            # Equal scores are astronomically rare; the id tie-break keeps even
            # those independent of list order.
            if score > best_score or (score == best_score and suffix > best_id):
                best, best_score, best_id = target, score, suffix
        assert best is not None
        return best


@register_balancer
class WeightedRandom(Balancer):
    """Independent weighted random pick per acquire."""

    name = "random"

    def __init__(self, *, rng: random.Random | None = None) -> None:
        super().__init__(rng=rng)
        self._targets: tuple[Target, ...] = ()
        self._cum: list[float] = []
        self._total = 0.0

    def update(self, targets: Sequence[Target]) -> None:
        weights = _weights(targets)
        self._targets = tuple(targets)
        self._cum, self._total = _cumulative(weights)

    def pick(self, key: str | None = None) -> Target:
        targets = self._targets
        if not targets:
            raise LookupError(_NO_BACKEND)
        i = bisect.bisect_right(self._cum, self._rng.random() * self._total)
        return targets[min(i, len(targets) - 1)]
