"""Load-balancing strategies: pure, synchronous, clock-free, no I/O.

A balancer never owns connections. The pool tells it about membership changes
one at a time -- ``add(target)``, ``remove(target)``, ``reweight(target)`` --
and asks for one target through ``pick()`` on every acquire. ``update(targets)``
remains as a full reset (clear, then ``add`` each). Every built-in strategy keeps
an incremental structure, so with ``n`` eligible targets:

=====================  ==========================================  =============  ============
strategy               structure                                   change         pick
=====================  ==========================================  =============  ============
round-robin            list + id -> index map, swap-remove, cursor O(1)           O(1)
weighted-round-robin   EDF over lanes of equal weight, lazy delete O(log n) [1]   O(log k)
least-connections      exact scan up to 32 targets, else weighted  O(log n)       O(log n) [2]
                       p2c (weighted sampling, below)
least-connections-p2c  weighted p2c (weighted sampling, below)     O(log n)       O(log n) [2]
random                 weighted sampling, below                    O(log n)       O(log n) [2]
ip-hash                weighted point ring (sorted buckets),       O(w log n)     O(log n)
                       multi-probe lookup
=====================  ==========================================  =============  ============

[1] amortised; k is the number of distinct weights (k <= n). Adding a target
to its lane is a binary search plus one memmove of the lane's pointers: linear
in principle, about a microsecond among 10,000 targets. w is the number of
ring points of the changed backend (32 per unit of weight, at most 1024).
[2] O(1) while there are at most 16 distinct weights.

**Weighted sampling** (``_WeightIndex``, used by random and both
least-connections strategies) has two routes to the same distribution. The
general one is a prefix-sum tree: the slot weights, as integers, under a tree
of fan-out 128 whose every node stores the running sums of its children; a draw
is one C ``bisect`` per level, and there are always at least two levels, so a
draw costs the same from 1 to 16,384 targets (a third level appears only beyond
that). A weight change rewrites at most 128 sums per level (one C ``map``
each). The fast one serves the usual case of a few distinct weights (at most
16): slots of equal weight form a lane, and a draw is one bisect over the
lanes' running sums and one division, O(1) and touching two short lists instead
of two tree blocks, which at 10,000 targets is most of a draw's cost. Weights
become fixed-point integers (``2**32`` units per unit of weight), so the sums
never drift however many changes pass, and a draw below the total always lands
on a slot with a positive weight. A removed slot is filled by the last one
(swap-remove).

**Weighted round-robin** is Envoy's earliest-deadline-first scheduler: each
target is due every ``1/weight`` units of virtual time and the earliest
deadline is picked. Targets of equal weight never overtake one another, so
they share a *lane*: a list in the cyclic order of their deadlines with a
cursor, and the heap orders only lanes. A pick is O(log k) for k distinct
weights -- constant for the usual few integer weights, O(log n) at worst -- and
yields exactly the order one heap over all targets would. A removed or
reweighted target is only marked dead (lazy deletion) and dropped when the
cursor reaches it; stale heap entries carry an old generation and are skipped.
A new target's first deadline is "now" plus a random phase within its period,
so each full cycle still gives every target its share and a fleet does not
move in lockstep; a reweighted target keeps the fraction of its period still
to run, so a slow-start ramp neither gains nor loses picks at each step.

**ip-hash** must send one key to one backend in every process, move only the
removed backend's keys on a removal and only keys onto the new backend on an
add. Weighted rendezvous hashing does all that but costs O(n) per pick, so the
strategy is a consistent-hash ring instead: each backend owns
``round(weight * 32)`` points (at least 1, at most 1024) at blake2b positions
derived from its id, kept sorted in buckets by their top bits (a lookup indexes
its bucket directly and bisects it in C; an insert moves one bucket's tail; see
``_Ring``). A plain ring is too uneven with few points (at 100 points per unit
of weight, 2:1:1 misses 50/25/25 by more than 3 % for about 40 % of id sets),
so lookups use multi-probe consistent hashing (Appleton & O'Reilly, 2015): the
key is hashed to 12 positions and the ring point nearest after any of them
wins. With 32 points per unit of weight that brings 2:1:1 to within about 1 %
(2.3 % for the worst of 40 id sets) and keeps both consistency properties:
removing points only lengthens some probes' distances, so only keys that chose
a removed point move, and adding points only shortens them, so keys move only
onto the new points. The mapping depends only on the set of (id, weight), never
on the order of calls, and blake2b makes it identical across processes. The
approximation in the weights is documented on ``IpHash``.

**Weights** are validated on every ``add``/``reweight`` (finite and > 0, or a
``ValueError`` naming the target) and then clamped to [2**-32, 2**32], a range
wider than any configuration needs, so no period, sum or float conversion can
overflow.

**Custom strategies** may subclass ``Balancer`` and implement only ``update()``
and ``pick()``: the base class then records the members ``update()`` was given
and implements ``add``/``remove``/``reweight`` by calling ``update()`` with the
changed list, which is O(n) per change.

Each instance draws from its own ``random.Random`` seeded from ``os.urandom``,
so a fleet of clients starting at the same moment does not send its first
requests to the same backend or march through the rotation in lockstep. Tests
inject a seeded ``rng`` to make that randomness reproducible.
"""

from __future__ import annotations

import functools
import hashlib
import heapq
import itertools
import math
import os
import random
import struct
from abc import ABC, abstractmethod
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Sequence
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


# Weights are honoured exactly between these bounds and clamped outside them:
# enough range for any real configuration, and it keeps 1/weight, the
# fixed-point units and their sums finite (no inf or nan can reach a heap or
# a float conversion).
_MIN_WEIGHT = 2.0**-32
_MAX_WEIGHT = 2.0**32


def _clamp(weight: float) -> float:
    return min(max(weight, _MIN_WEIGHT), _MAX_WEIGHT)


def _check_weight(target: Target) -> float:
    """Read the weight once, rejecting values that would break the arithmetic."""
    w = float(target.weight)
    # A zero, negative, inf or nan weight would give infinite periods or a
    # corrupt sum tree; failing loudly on add beats a skewed or crashing pick().
    if not (w > 0.0 and math.isfinite(w)):
        raise ValueError(f"target {target.id!r} has invalid weight {w!r}; must be finite and > 0")
    return w


def _check_all(targets: Sequence[Target]) -> None:
    """Validate a whole ``update()`` list first, so a bad one leaves the old set in place."""
    seen: set[str] = set()
    for t in targets:
        _check_weight(t)
        if t.id in seen:
            raise ValueError(f"target id {t.id!r} appears twice")
        seen.add(t.id)


def _target_id(target: object) -> str | None:
    if isinstance(target, str):
        return target
    tid = getattr(target, "id", None)
    return tid if isinstance(tid, str) else None


def _recording_update(
    update: Callable[[Balancer, Sequence[Target]], None],
) -> Callable[[Balancer, Sequence[Target]], None]:
    """Wrap a custom ``update()`` so the base class knows the members it was given."""

    @functools.wraps(update)
    def wrapper(self: Balancer, targets: Sequence[Target]) -> None:
        targets = list(targets)
        update(self, targets)
        # Recorded only after the subclass accepted the list, so a rejected
        # update leaves the recorded members as they were.
        self._members = {t.id: t for t in targets}

    return wrapper


class Balancer(ABC):
    """Chooses one target from the eligible set it has been told about.

    Built-in strategies implement ``add``/``remove``/``reweight`` in O(log n). A
    custom subclass may implement only ``update()`` and ``pick()``; the defaults
    below then rebuild through ``update()``, which costs O(n) per change. (A
    subclass that overrides ``add``/``remove`` too should also override
    ``__len__`` and ``__contains__``: the base class only sees ``update()``.)
    """

    name: ClassVar[str]
    requires_key: ClassVar[bool] = False
    # True for classes that keep ``_members`` themselves; for the others the
    # base class wraps ``update()`` to record the members it receives.
    _tracks_members: ClassVar[bool] = False

    def __init__(self, *, rng: random.Random | None = None) -> None:
        # Seed explicitly from the OS so two pools created in the same process
        # (or forked processes) never share a sequence.
        self._rng = rng if rng is not None else random.Random(os.urandom(16))
        # id -> target, in insertion order: the membership every strategy
        # answers len() and ``in`` from.
        self._members: dict[str, Target] = {}

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("update")
        if own is not None and not cls._tracks_members:
            # setattr: mypy refuses assignment to a method.
            setattr(cls, "update", _recording_update(own))  # noqa: B010

    @abstractmethod
    def update(self, targets: Sequence[Target]) -> None:
        """Replace the eligible set: the same as removing every member, then adding each target."""

    @abstractmethod
    def pick(self, key: str | None = None) -> Target:
        """Return one target; ``LookupError('no eligible backend')`` if there is none."""

    def add(self, target: Target) -> None:
        """Add one target. ``ValueError`` on a duplicate id or an invalid weight.

        This default rebuilds through ``update()``: O(n). Built-ins are O(log n).
        """
        _check_weight(target)
        if target.id in self._members:
            raise ValueError(f"target id {target.id!r} is already a member")
        self.update([*self._members.values(), target])

    def remove(self, target: Target) -> None:
        """Remove the member with ``target.id``; ``KeyError`` if there is none.

        This default rebuilds through ``update()``: O(n). Built-ins are O(log n).
        """
        if target.id not in self._members:
            raise KeyError(target.id)
        self.update([t for tid, t in self._members.items() if tid != target.id])

    def reweight(self, target: Target) -> None:
        """Take note that ``target.weight`` changed; ``KeyError`` if it is not a member.

        This default rebuilds through ``update()``: O(n). Built-ins are O(log n).
        """
        if target.id not in self._members:
            raise KeyError(target.id)
        _check_weight(target)
        self.update([target if tid == target.id else t for tid, t in self._members.items()])

    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, target: object) -> bool:
        """Membership by id: a target object or the id string itself."""
        tid = _target_id(target)
        return tid is not None and tid in self._members

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} targets={len(self._members)}>"


class _Incremental(Balancer):
    """Shared bookkeeping for the built-ins: validation, ``_members``, ``update()``."""

    _tracks_members = True

    def add(self, target: Target) -> None:
        weight = _check_weight(target)
        if target.id in self._members:
            raise ValueError(f"target id {target.id!r} is already a member")
        self._insert(target, weight)
        self._members[target.id] = target

    def remove(self, target: Target) -> None:
        tid = target.id
        if tid not in self._members:
            raise KeyError(tid)
        self._discard(tid)
        del self._members[tid]

    def reweight(self, target: Target) -> None:
        tid = target.id
        if tid not in self._members:
            raise KeyError(tid)
        weight = _check_weight(target)
        self._reweigh(target, weight)
        # The pool may hand over a fresh object for the same backend; picks
        # return the latest one.
        self._members[tid] = target

    def update(self, targets: Sequence[Target]) -> None:
        targets = list(targets)
        _check_all(targets)
        self._members = {}
        self._clear()
        for t in targets:
            self.add(t)

    @abstractmethod
    def _insert(self, target: Target, weight: float) -> None: ...

    @abstractmethod
    def _discard(self, tid: str) -> None: ...

    @abstractmethod
    def _reweigh(self, target: Target, weight: float) -> None: ...

    @abstractmethod
    def _clear(self) -> None: ...


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


# --- round-robin --------------------------------------------------------------------


@register_balancer
class RoundRobin(_Incremental):
    """Cycles through the targets, ignoring weight; each target once per cycle."""

    name = "round-robin"

    def __init__(self, *, rng: random.Random | None = None) -> None:
        super().__init__(rng=rng)
        self._targets: list[Target] = []
        self._index: dict[str, int] = {}
        # Next position to hand out: [0, _next) has been served this cycle.
        self._next = 0
        # False until the first pick after the set was (re)built: until then
        # the rotation may start anywhere.
        self._started = False

    def _insert(self, target: Target, weight: float) -> None:
        # Appended after the cursor: served in the current cycle.
        self._index[target.id] = len(self._targets)
        self._targets.append(target)
        if not self._started:
            # Random start so a fleet of freshly started clients, adding the
            # same backends in the same order, spreads its first picks instead
            # of all hitting the first one.
            self._next = self._rng.randrange(len(self._targets))

    def _move(self, src: int, dst: int) -> None:
        t = self._targets[src]
        self._targets[dst] = t
        self._index[t.id] = dst

    def _discard(self, tid: str) -> None:
        targets = self._targets
        i = self._index.pop(tid)
        last = len(targets) - 1
        if i < self._next:
            # The hole is in the served part. Filling it with the last target
            # (not yet served) would skip that target this cycle, so the last
            # served one fills the hole and the last target takes its place,
            # just at the cursor.
            self._next -= 1
            if i != self._next:
                self._move(self._next, i)
            if self._next != last:
                self._move(last, self._next)
        elif i != last:
            self._move(last, i)
        targets.pop()
        if self._next >= len(targets):
            self._next = 0
        if not targets:
            self._started = False

    def _reweigh(self, target: Target, weight: float) -> None:
        self._targets[self._index[target.id]] = target

    def _clear(self) -> None:
        self._targets = []
        self._index = {}
        self._next = 0
        self._started = False

    def pick(self, key: str | None = None) -> Target:
        targets = self._targets
        if not targets:
            raise LookupError(_NO_BACKEND)
        i = self._next
        self._next = i + 1 if i + 1 < len(targets) else 0
        self._started = True
        return targets[i]


# --- weighted round-robin -------------------------------------------------------------


class _Schedule:
    """One target's place in the EDF schedule."""

    __slots__ = ("base", "dead", "due", "period", "rounds", "target")

    def __init__(self, target: Target, due: float, period: float) -> None:
        self.target = target
        self.base = due
        self.period = period
        self.rounds = 0
        self.due = due
        self.dead = False

    def advance(self) -> None:
        self.rounds += 1
        # base + rounds * period rather than repeatedly adding the period:
        # accumulated float error would otherwise drift the shares over long
        # runs with fractional weights.
        self.due = self.base + self.rounds * self.period


class _Lane:
    """The targets that share one weight, in the cyclic order of their deadlines.

    Targets with the same period never overtake one another: the one due
    first is picked, gets one period later and so becomes the last. Read
    cyclically from ``head``, the deadlines are sorted and span at most one
    period, so the lane needs no heap of its own, only a cursor. Removed
    targets stay in place, marked dead, until the cursor reaches them.
    """

    __slots__ = ("dead", "gen", "head", "live", "members")

    def __init__(self) -> None:
        self.members: list[_Schedule] = []
        self.head = 0
        self.live = 0
        self.dead = 0
        # Bumped whenever the lane's entry in the heap of lanes goes stale.
        self.gen = 0

    def insert(self, s: _Schedule) -> bool:
        """Put ``s`` in deadline order; True if it is now the lane's first."""
        members = self.members
        m = len(members)
        head = self.head
        d = s.due
        # Binary search over the cyclic order (equal deadlines: after the
        # existing ones, so ties stay first come first served).
        lo, hi = 0, m
        while lo < hi:
            mid = (lo + hi) // 2
            j = head + mid
            if members[j if j < m else j - m].due <= d:
                lo = mid + 1
            else:
                hi = mid
        # A list insert moves pointers with one memmove: linear in the lane's
        # size in principle, about a microsecond at 10,000 targets.
        j = head + lo
        if j < m or head == 0:
            members.insert(j, s)
        else:
            members.insert(j - m, s)
            self.head = head + 1
        self.live += 1
        return lo == 0

    def compact(self) -> None:
        members = self.members
        head = self.head
        self.members = [s for s in itertools.chain(members[head:], members[:head]) if not s.dead]
        self.head = 0
        self.dead = 0


@register_balancer
class WeightedRoundRobin(_Incremental):
    """Earliest-deadline-first: each target is due every ``1/weight`` units of virtual time.

    Targets of equal weight share a lane (see ``_Lane``) and the heap orders
    lanes by their first deadline, so a pick costs O(log k) for k distinct
    weights: O(1) for the usual handful of integer weights, O(log n) at worst
    (every weight different: then it is a plain EDF heap, and a pick among
    10,000 targets costs about 3.5 times one among 10). Backends ramping up
    together in slow start share their ramp fraction, so they stay in few
    lanes. The order of picks is exactly that of one heap over all targets.
    """

    name = "weighted-round-robin"

    def __init__(self, *, rng: random.Random | None = None) -> None:
        super().__init__(rng=rng)
        self._schedules: dict[str, _Schedule] = {}
        self._lanes: dict[float, _Lane] = {}
        # (first deadline, tie-break sequence, lane, lane generation): the
        # sequence keeps equal deadlines FIFO and means lanes themselves are
        # never compared. Entries whose generation is old are stale.
        self._heap: list[tuple[float, int, _Lane, int]] = []
        self._seq = itertools.count()
        self._stale = 0
        # Virtual time: the deadline of the last pick.
        self._now = 0.0

    def _enqueue(self, s: _Schedule) -> None:
        lane = self._lanes.get(s.period)
        if lane is None:
            lane = self._lanes[s.period] = _Lane()
            lane.insert(s)
        elif lane.insert(s):
            # The lane's first deadline moved earlier: its heap entry is stale.
            lane.gen += 1
            self._stale += 1
        else:
            return
        heapq.heappush(self._heap, (s.due, next(self._seq), lane, lane.gen))
        if self._stale > len(self._lanes) + 64:
            # Keeps the heap within a constant of the number of lanes; O(k),
            # after k stale entries: O(1) amortised.
            self._heap = [e for e in self._heap if e[3] == e[2].gen]
            heapq.heapify(self._heap)
            self._stale = 0

    def _retire(self, s: _Schedule) -> None:
        # Lazy deletion: the entry stays in its lane until the cursor reaches it.
        s.dead = True
        lane = self._lanes[s.period]
        lane.live -= 1
        lane.dead += 1
        if not lane.live:
            del self._lanes[s.period]
            lane.gen += 1
            self._stale += 1
        elif lane.dead > lane.live + 16:
            # Only a lane that is rarely picked accumulates dead entries.
            lane.compact()
            # The first member may have changed: re-key the lane in the heap.
            lane.gen += 1
            self._stale += 1
            heapq.heappush(self._heap, (lane.members[0].due, next(self._seq), lane, lane.gen))

    def _insert(self, target: Target, weight: float) -> None:
        period = 1.0 / _clamp(weight)
        # A random phase within one period desynchronises a fleet while still
        # giving every target exactly its share over each full cycle.
        s = _Schedule(target, self._now + self._rng.random() * period, period)
        self._schedules[target.id] = s
        self._enqueue(s)

    def _discard(self, tid: str) -> None:
        self._retire(self._schedules.pop(tid))

    def _reweigh(self, target: Target, weight: float) -> None:
        old = self._schedules[target.id]
        period = 1.0 / _clamp(weight)
        # Keep the fraction of the period still to run: a slow-start ramp that
        # reweights often then neither loses nor gains picks at each step.
        left = min(max((old.due - self._now) / old.period, 0.0), 1.0)
        self._retire(old)
        s = _Schedule(target, self._now + left * period, period)
        self._schedules[target.id] = s
        self._enqueue(s)

    def _clear(self) -> None:
        self._schedules = {}
        self._lanes = {}
        self._heap = []
        self._stale = 0

    def pick(self, key: str | None = None) -> Target:
        heap = self._heap
        while heap:
            deadline, _, lane, gen = heap[0]
            if gen != lane.gen:
                heapq.heappop(heap)
                self._stale -= 1
                continue
            members = lane.members
            head = lane.head
            s = members[head]
            if s.dead:
                # A live lane always has a live member, so this loop ends.
                del members[head]
                lane.dead -= 1
                if head == len(members):
                    lane.head = head = 0
                heapq.heapreplace(heap, (members[head].due, next(self._seq), lane, gen))
                continue
            self._now = deadline
            s.advance()
            head += 1
            if head == len(members):
                head = 0
            lane.head = head
            heapq.heapreplace(heap, (members[head].due, next(self._seq), lane, gen))
            return s.target
        raise LookupError(_NO_BACKEND)


# --- prefix-sum tree: random and least-connections --------------------------------------

_FANOUT = 128
# Fixed-point weight units: integer sums are exact, so no drift after millions
# of reweights. 2**32 units per unit of weight resolves slow-start fractions far
# below anything meaningful; any positive weight gets at least one unit.
_UNITS_PER_WEIGHT = 2**32


def _units(weight: float) -> int:
    return max(1, round(_clamp(weight) * _UNITS_PER_WEIGHT))


# Up to this many distinct weights, draws go through the lanes of _WeightIndex.
_MAX_SAMPLE_LANES = 16


class _WeightIndex:
    """Slots with integer weights and O(log n) weighted sampling, two ways.

    The tree: ``levels[0]`` holds blocks of ``_FANOUT`` running sums over the
    slot weights, ``levels[1]`` running sums over the totals of those blocks,
    and so on up to a single root block. Blocks are created as slots are
    appended; slots past the end count as zero, so a draw below the total
    never reaches them. There are always at least two levels: the second
    bisect costs about 100 ns, and in exchange a draw costs the same from 1 to
    16,384 slots (a third level comes only beyond that).

    The lanes: slots of equal weight, each lane a list of slot numbers. While
    there are at most ``_MAX_SAMPLE_LANES`` distinct weights (the usual case:
    a few integer weights), ``plan`` holds the running sums over the lanes and
    a draw is one bisect over that short list and one division -- O(1), and
    it touches two small lists instead of two blocks of the tree, which at
    10,000 slots is most of what a draw costs. Both ways give every slot
    exactly ``units[i] / total`` of the draws. Each change rebuilds the plan
    in O(lanes), so O(1) too; with more distinct weights (say, every backend
    in its own slow-start ramp) ``plan`` is None and draws use the tree.
    """

    __slots__ = ("lane_pos", "lanes", "levels", "plan", "slots", "units", "weights")

    def __init__(self) -> None:
        self.slots: list[Target] = []
        self.weights: list[float] = []
        self.units: list[int] = []
        self.levels: list[list[list[int]]] = [[[0] * _FANOUT], [[0] * _FANOUT]]
        self.lanes: dict[int, list[int]] = {}
        self.lane_pos: list[int] = []
        # (running sums of lane totals, lane slot lists, lane units) or None.
        self.plan: tuple[list[int], list[list[int]], list[int]] | None = None

    @property
    def total(self) -> int:
        return self.levels[-1][0][-1]

    def _add(self, i: int, delta: int) -> None:
        add = delta.__add__
        for level in self.levels:
            b, c = divmod(i, _FANOUT)
            block = level[b]
            block[c:] = map(add, block[c:])
            i = b

    def _join_lane(self, i: int, u: int) -> None:
        lane = self.lanes.setdefault(u, [])
        self.lane_pos[i] = len(lane)
        lane.append(i)

    def _leave_lane(self, i: int, u: int) -> None:
        lane = self.lanes[u]
        j = self.lane_pos[i]
        last = lane.pop()
        if last != i:
            lane[j] = last
            self.lane_pos[last] = j
        if not lane:
            del self.lanes[u]

    def _replan(self) -> None:
        lanes = self.lanes
        if not lanes or len(lanes) > _MAX_SAMPLE_LANES:
            self.plan = None
            return
        units = list(lanes)
        members = list(lanes.values())
        sums = list(itertools.accumulate(u * len(m) for u, m in zip(units, members, strict=True)))
        self.plan = (sums, members, units)

    def append(self, target: Target, weight: float) -> int:
        i = len(self.slots)
        levels = self.levels
        if i == _FANOUT ** len(levels):
            # Full: a new root whose first child is the old root.
            levels.append([[self.total] * _FANOUT])
        pos = i
        for level in levels[:-1]:
            b, c = divmod(pos, _FANOUT)
            if c:
                break
            if b == len(level):
                level.append([0] * _FANOUT)
            pos = b
        u = _units(weight)
        self.slots.append(target)
        self.weights.append(_clamp(weight))
        self.units.append(u)
        self.lane_pos.append(0)
        self._join_lane(i, u)
        self._add(i, u)
        self._replan()
        return i

    def set(self, i: int, target: Target, weight: float) -> None:
        u = _units(weight)
        old = self.units[i]
        self.slots[i] = target
        self.weights[i] = _clamp(weight)
        if u != old:
            self._add(i, u - old)
            self.units[i] = u
            self._leave_lane(i, old)
            self._join_lane(i, u)
            self._replan()

    def pop(self) -> None:
        """Drop the last slot (callers move it into a hole first: swap-remove)."""
        last = len(self.slots) - 1
        self._add(last, -self.units[last])
        self._leave_lane(last, self.units[last])
        self.slots.pop()
        self.weights.pop()
        self.units.pop()
        self.lane_pos.pop()
        self._replan()
        levels = self.levels
        # Drop blocks that just became empty, then roots with a single child,
        # so the depth follows the current size.
        pos = last
        for level in levels[:-1]:
            b, c = divmod(pos, _FANOUT)
            if c or b == 0:
                break
            level.pop()
            pos = b
        while len(levels) > 2 and last <= _FANOUT ** (len(levels) - 1):
            levels.pop()

    def locate(self, x: int) -> tuple[int, int]:
        """Through the tree: the slot whose units hold ``x`` (0 <= x < total), and the units before.

        "Before" counts the slots in slot order.
        """
        levels = self.levels
        if len(levels) == 2:
            # Up to 16,384 slots: two bisects. Unrolled because picks are hot
            # and the generic loop below costs a third more.
            root = levels[1][0]
            c = bisect_right(root, x)
            before = root[c - 1] if c else 0
            block = levels[0][c]
            k = bisect_right(block, x - before)
            return c * _FANOUT + k, before + block[k - 1] if k else before
        before = 0
        i = 0
        for level in reversed(levels):
            block = level[i]
            c = bisect_right(block, x)
            if c:
                s = block[c - 1]
                x -= s
                before += s
            i = i * _FANOUT + c
        return i, before

    def lane_locate(self, x: int) -> tuple[int, int]:
        """Through the lanes (``plan`` must be set): the slot for ``x``, and the units before.

        "Before" counts the slots in lane order.
        """
        assert self.plan is not None
        sums, members, units = self.plan
        ln = bisect_right(sums, x)
        before = sums[ln - 1] if ln else 0
        u = units[ln]
        k = (x - before) // u
        return members[ln][k], before + k * u

    def draw(self, u: float) -> int:
        """The slot drawn by ``u`` in [0, 1): slot i with probability units[i] / total."""
        levels = self.levels
        total = levels[-1][0][-1]
        # int(u * total) rather than randrange(total): a third of the cost, and
        # 53 bits of resolution are far finer than any share. The clamp absorbs
        # rounding up to total once total exceeds 2**53.
        x = int(u * total)
        if x >= total:
            x = total - 1
        plan = self.plan
        if plan is not None:
            # lane_locate() inlined: a call costs as much as the lookup.
            sums, members, units = plan
            ln = bisect_right(sums, x)
            if ln:
                x -= sums[ln - 1]
            return members[ln][x // units[ln]]
        if len(levels) == 2:
            root = levels[1][0]
            c = bisect_right(root, x)
            if c:
                x -= root[c - 1]
            return c * _FANOUT + bisect_right(levels[0][c], x)
        return self.locate(x)[0]

    def draw_pair(self, u: float, v: float) -> tuple[int, int]:
        """Two distinct slots, weighted, drawn by ``u`` and ``v`` (needs two or more slots)."""
        total = self.levels[-1][0][-1]
        find = self.locate if self.plan is None else self.lane_locate
        x = int(u * total)
        a, before = find(x if x < total else total - 1)
        ua = self.units[a]
        rest = total - ua
        # Second draw without replacement in one step: sample over the other
        # slots' units and step over a's range (contiguous in the order find
        # uses). Integer sums make b != a exact.
        y = int(v * rest)
        if y >= rest:
            y = rest - 1
        if y >= before:
            y += ua
        return a, find(y)[0]

    def clear(self) -> None:
        self.slots, self.weights, self.units = [], [], []
        self.levels = [[[0] * _FANOUT], [[0] * _FANOUT]]
        self.lanes, self.lane_pos, self.plan = {}, [], None

    def build(self, targets: Sequence[Target], weights: Sequence[float]) -> None:
        """Replace the content in O(n): what appending each target would give."""
        self.clear()
        self.slots = list(targets)
        self.weights = [_clamp(w) for w in weights]
        self.units = [_units(w) for w in weights]
        for i, u in enumerate(self.units):
            self.lane_pos.append(0)
            self._join_lane(i, u)
        self._replan()
        children = self.units
        levels: list[list[list[int]]] = []
        # Each level's blocks are the running sums of 128 children; the next
        # level's children are those blocks' totals. Padding with zeros keeps
        # every block full, as appends would have left it.
        while True:
            blocks = [
                list(itertools.accumulate(children[lo : lo + _FANOUT]))
                for lo in range(0, max(len(children), 1), _FANOUT)
            ]
            for block in blocks:
                block += [block[-1] if block else 0] * (_FANOUT - len(block))
            levels.append(blocks)
            if len(blocks) == 1 and len(levels) >= 2:
                break
            children = [block[-1] for block in blocks]
        self.levels = levels


class _WeightedSet(_Incremental):
    """Targets in a ``_WeightIndex`` with an id -> slot map and swap-remove."""

    def __init__(self, *, rng: random.Random | None = None) -> None:
        super().__init__(rng=rng)
        self._tree = _WeightIndex()
        self._slot: dict[str, int] = {}

    def update(self, targets: Sequence[Target]) -> None:
        # Same result as clear + add each, built in O(n) with C-level sums.
        targets = list(targets)
        _check_all(targets)
        self._tree.build(targets, [float(t.weight) for t in targets])
        self._slot = {t.id: i for i, t in enumerate(targets)}
        self._members = {t.id: t for t in targets}

    def _insert(self, target: Target, weight: float) -> None:
        self._slot[target.id] = self._tree.append(target, weight)

    def _discard(self, tid: str) -> None:
        tree = self._tree
        i = self._slot.pop(tid)
        last = len(tree.slots) - 1
        if i != last:
            moved = tree.slots[last]
            tree.set(i, moved, tree.weights[last])
            self._slot[moved.id] = i
        tree.pop()

    def _reweigh(self, target: Target, weight: float) -> None:
        self._tree.set(self._slot[target.id], target, weight)

    def _clear(self) -> None:
        self._tree.clear()
        self._slot = {}


class _LeastLoaded(_WeightedSet):
    """Lowest ``active / weight`` wins: an exact scan up to ``scan_limit`` targets, p2c beyond."""

    scan_limit: ClassVar[int]

    def __init__(self, *, rng: random.Random | None = None) -> None:
        super().__init__(rng=rng)
        self._cursor = 0

    def update(self, targets: Sequence[Target]) -> None:
        super().update(targets)
        self._cursor = self._rng.randrange(len(self._tree.slots)) if self._tree.slots else 0

    def _insert(self, target: Target, weight: float) -> None:
        super()._insert(target, weight)
        # The scan's starting point decides ties; a random one after each add
        # keeps a fleet that adds the same backends in the same order from
        # breaking its ties the same way.
        self._cursor = self._rng.randrange(len(self._tree.slots))

    def _scan(self) -> Target:
        targets = self._tree.slots
        n = len(targets)
        if not n:
            raise LookupError(_NO_BACKEND)
        weights = self._tree.weights
        start = self._cursor if self._cursor < n else 0
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

    def pick(self, key: str | None = None) -> Target:
        tree = self._tree
        slots = tree.slots
        if len(slots) <= self.scan_limit:
            return self._scan()
        # Power of two choices: two distinct weighted draws, the one with the
        # lower active / weight wins.
        levels = tree.levels
        plan = tree.plan
        if plan is not None:
            # Lanes (few distinct weights): draw_pair() inlined, as below.
            rnd = self._rng.random
            sums, members, units = plan
            total = sums[-1]
            x = int(rnd() * total)
            if x >= total:
                x = total - 1
            ln = bisect_right(sums, x)
            before = sums[ln - 1] if ln else 0
            ua = units[ln]
            k = (x - before) // ua
            a = members[ln][k]
            before += k * ua
            rest = total - ua
            y = int(rnd() * rest)
            if y >= rest:
                y = rest - 1
            if y >= before:
                y += ua
            ln = bisect_right(sums, y)
            if ln:
                y -= sums[ln - 1]
            b = members[ln][y // units[ln]]
        elif len(levels) != 2:
            a, b = tree.draw_pair(self._rng.random(), self._rng.random())
        else:
            # draw_pair() inlined for up to 16,384 targets: p2c is the pick of
            # least-connections beyond its scan limit, and each call saved is
            # a tenth of its cost.
            rnd = self._rng.random
            root = levels[1][0]
            leaves = levels[0]
            total = root[-1]
            x = int(rnd() * total)
            if x >= total:
                x = total - 1
            c = bisect_right(root, x)
            before = root[c - 1] if c else 0
            block = leaves[c]
            k = bisect_right(block, x - before)
            # a's units are the step in its block's running sums.
            if k:
                lo = block[k - 1]
                before += lo
                ua = block[k] - lo
            else:
                ua = block[0]
            a = c * _FANOUT + k
            rest = total - ua
            y = int(rnd() * rest)
            if y >= rest:
                y = rest - 1
            if y >= before:
                y += ua
            c = bisect_right(root, y)
            if c:
                y -= root[c - 1]
            b = c * _FANOUT + bisect_right(leaves[c], y)
        ta = slots[a]
        tb = slots[b]
        weights = tree.weights
        # Cross-multiplied to avoid two divisions; ties go to the first draw,
        # which is already random.
        if tb.active * weights[a] < ta.active * weights[b]:
            return tb
        return ta


@register_balancer
class LeastConnections(_LeastLoaded):
    """Lowest ``active / weight`` wins.

    Up to ``scan_limit`` targets every pick scans them all (exact, ties rotate
    so equal loads spread out). Beyond it a scan would make the pick O(n), so
    the pick becomes power-of-two-choices over weighted draws, as in Envoy's
    least-request: not always the global minimum, but with high probability
    within a small constant of it, in O(log n). Weighted draws (rather than
    uniform ones) let a backend with a large share of the total weight be a
    candidate often enough to carry its share.
    """

    name = "least-connections"
    # Around 32 targets a scan of live ``active`` reads costs as much as the
    # two weighted draws of p2c.
    scan_limit: ClassVar[int] = 32


@register_balancer
class PowerOfTwoLeastConnections(_LeastLoaded):
    """Two distinct weighted-random candidates; the one with lower ``active / weight`` wins."""

    name = "least-connections-p2c"
    # Only an empty or single-target set is "scanned" (no second candidate).
    scan_limit: ClassVar[int] = 1


@register_balancer
class WeightedRandom(_WeightedSet):
    """Independent weighted random pick per acquire."""

    name = "random"

    def pick(self, key: str | None = None) -> Target:
        if not self._tree.slots:
            raise LookupError(_NO_BACKEND)
        tree = self._tree
        return tree.slots[tree.draw(self._rng.random())]


# --- ip-hash ---------------------------------------------------------------------------

_RING_POINTS_PER_WEIGHT = 32
_RING_MAX_POINTS = 1024
_RING_PROBES = 12
# Mean number of ring points per bucket (see _Ring).
_RING_BUCKET = 512
_MASK64 = (1 << 64) - 1
_UNPACK_8Q = struct.Struct(">8Q").unpack


def _ring_points(key: bytes, start: int, stop: int) -> list[int]:
    """Points ``start..stop-1`` of the backend whose encoded id is ``key``.

    Point i is the (i % 8)-th 64-bit word of blake2b-512(id || i // 8 as 4
    bytes, person "wsclient-vnode"). A backend's points are a fixed sequence,
    so a weight change adds or removes only its last points.
    """
    first = start // 8
    out: list[int] = []
    for block in range((stop + 7) // 8 - first):
        digest = hashlib.blake2b(
            key + (first + block).to_bytes(4, "big"), digest_size=64, person=b"wsclient-vnode"
        ).digest()
        out.extend(_UNPACK_8Q(digest))
    return out[start - first * 8 : stop - first * 8]


def _key_probes(key: str) -> tuple[int, ...]:
    """The 12 ring positions of an affinity key: words of blake2b-512(key || 0) and (key || 1)."""
    k = key.encode("utf-8", "surrogatepass")
    h = hashlib.blake2b(k + b"\x00", digest_size=64, person=b"wsclient-key").digest()
    h += hashlib.blake2b(k + b"\x01", digest_size=64, person=b"wsclient-key").digest()
    return struct.unpack(">16Q", h)[:_RING_PROBES]


def _point_count(weight: float) -> int:
    return min(_RING_MAX_POINTS, max(1, round(weight * _RING_POINTS_PER_WEIGHT)))


class _RingMember:
    __slots__ = ("count", "key", "target")

    def __init__(self, target: Target, count: int) -> None:
        self.target = target
        self.key = target.id.encode("utf-8", "surrogatepass")
        self.count = count


class _Ring:
    """The ring's points, sorted, in ``2**bits`` buckets by their top bits.

    Bucket ``j`` holds the points ``p`` with ``p >> (64 - bits) == j`` as an
    unsigned 64-bit array (8 bytes a point) with a parallel list of owners.
    Points are uniform hashes, so the buckets stay close to their mean size
    and a lookup goes straight to its bucket: one shift, one C bisect, the
    same work at 100 points or a million. ``bits`` follows the size (mean
    bucket between ``_RING_BUCKET / 2`` and ``2 * _RING_BUCKET`` points);
    changing it splits or joins every bucket with C slices and never changes
    the mapping. Equal positions (a 64-bit collision) are ordered by owner
    id, so the content is independent of the order points arrived in.
    """

    __slots__ = ("bits", "count", "own", "pos", "shift")

    def __init__(self) -> None:
        self.bits = 0
        self.shift = 64
        self.count = 0
        self.pos: list[array[int]] = [array("Q")]
        self.own: list[list[_RingMember]] = [[]]

    def __len__(self) -> int:
        return self.count

    @staticmethod
    def _bits_for(count: int) -> int:
        return max(0, (count // _RING_BUCKET).bit_length() - 1)

    def build(self, points: list[int], owners: list[_RingMember]) -> None:
        # Stable sort of indices: callers list members in id order, so equal
        # positions end up ordered by id, as insert() would order them.
        order = sorted(range(len(points)), key=points.__getitem__)
        # map() with bound __getitem__ runs the gather in C: a third of the
        # cost of a list comprehension over 100,000s of points.
        flat = array("Q", map(points.__getitem__, order))
        flat_own = list(map(owners.__getitem__, order))
        self.count = len(flat)
        self.bits = self._bits_for(self.count)
        self.shift = 64 - self.bits
        self.pos, self.own = [], []
        lo = 0
        for j in range(1 << self.bits):
            hi = bisect_left(flat, (j + 1) << self.shift, lo)
            self.pos.append(flat[lo:hi])
            self.own.append(flat_own[lo:hi])
            lo = hi

    def _resize(self) -> None:
        bits = self._bits_for(self.count)
        while bits > self.bits:
            # Split every bucket in two at the next bit.
            self.bits += 1
            self.shift -= 1
            pos: list[array[int]] = []
            own: list[list[_RingMember]] = []
            for j, (p, o) in enumerate(zip(self.pos, self.own, strict=True)):
                k = bisect_left(p, ((2 * j + 1) << self.shift))
                pos += (p[:k], p[k:])
                own += (o[:k], o[k:])
            self.pos, self.own = pos, own
        while bits < self.bits:
            # Join neighbouring buckets.
            self.bits -= 1
            self.shift += 1
            self.pos = [a + b for a, b in zip(self.pos[::2], self.pos[1::2], strict=True)]
            self.own = [a + b for a, b in zip(self.own[::2], self.own[1::2], strict=True)]

    def insert(self, p: int, m: _RingMember) -> None:
        j = p >> self.shift
        pos, own = self.pos[j], self.own[j]
        i = bisect_left(pos, p)
        while i < len(pos) and pos[i] == p and own[i].key < m.key:
            i += 1
        # An insert moves one bucket's tail: a few hundred points, one memmove.
        pos.insert(i, p)
        own.insert(i, m)
        self.count += 1
        if self.count >= _RING_BUCKET << (self.bits + 1):
            # Amortised O(1): the number of points doubled since the last split.
            self._resize()

    def delete(self, p: int, m: _RingMember) -> None:
        j = p >> self.shift
        pos, own = self.pos[j], self.own[j]
        i = bisect_left(pos, p)
        while i < len(pos) and pos[i] == p:
            if own[i] is m:
                del pos[i]
                del own[i]
                self.count -= 1
                if self.bits and self.count < _RING_BUCKET << (self.bits - 1):
                    self._resize()
                return
            i += 1
        raise AssertionError(f"ring point {p} of {m.target.id!r} is missing")

    def lookup(self, probes: Iterable[int]) -> _RingMember:
        """The owner of the point nearest after any probe (clockwise, wrapping)."""
        buckets, shift = self.pos, self.shift
        best_d = _MASK64 + 1
        best_j = best_i = 0
        for h in probes:
            j = h >> shift
            bucket = buckets[j]
            i = bisect_left(bucket, h)
            if i < len(bucket):
                d = bucket[i] - h
            else:
                # Past the bucket's last point (rare with ~500 per bucket):
                # the next non-empty bucket's first point, wrapping around.
                i = 0
                j += 1
                while True:
                    if j == len(buckets):
                        j = 0
                    if buckets[j]:
                        break
                    j += 1
                d = (buckets[j][0] - h) & _MASK64
            if d < best_d:
                best_d, best_j, best_i = d, j, i
        return self.own[best_j][best_i]


@register_balancer
class IpHash(_Incremental):
    """Key affinity by multi-probe consistent hashing over a weighted ring.

    Guarantees: one key maps to one backend, in every process (blake2b, never
    ``hash()``); removing a backend moves only the keys that were on it; adding
    one (or raising its weight) moves keys only onto it. Pick is O(log n):
    two blake2b digests give 12 probes, each one bisect in its ring bucket.

    Approximation of weights: a backend owns ``round(weight * 32)`` ring
    points, clamped to [1, 1024]. Its expected share is its points over all
    points, so weights are quantised to 1/32 (a weight below 1/64 counts as
    1/32; a slow-start ramp starting at 0.1 weighs 3/32 = 0.094), and weights
    above 32 count as 32, which also bounds one add or remove to 1024 ring
    updates (about 3 ms among 10,000 backends). On top of that comes the ring's
    placement noise: with 12 probes and 32 points per unit of weight the
    shares of 2:1:1 land within about 1 % of 50/25/25 (worst of 40 random id
    sets: 2.3 %, including key sampling noise).
    """

    name = "ip-hash"
    requires_key = True

    def __init__(self, *, rng: random.Random | None = None) -> None:
        super().__init__(rng=rng)
        self._ring = _Ring()
        self._owners: dict[str, _RingMember] = {}

    def update(self, targets: Sequence[Target]) -> None:
        # The ring depends only on the final set of (id, weight), so applying
        # the difference gives exactly what clear + add each gives. The pool
        # calls update() on every eligibility change with mostly the same
        # set: then only the changed backends' points move. When much of the
        # set changes, one sorted build is cheaper.
        targets = list(targets)
        _check_all(targets)
        old = self._owners
        new_ids = {t.id for t in targets}
        gone = [tid for tid in old if tid not in new_ids]
        fresh = [t for t in targets if t.id not in old]
        if 4 * (len(gone) + len(fresh)) < len(old):
            for tid in gone:
                self._discard(tid)
            for t in targets:
                if t.id in old:
                    self._reweigh(t, _check_weight(t))
                else:
                    self._insert(t, _check_weight(t))
            self._members = {t.id: t for t in targets}
            return
        points: list[int] = []
        owners: list[_RingMember] = []
        members: dict[str, _RingMember] = {}
        for t in sorted(targets, key=lambda t: t.id):
            m = _RingMember(t, _point_count(_check_weight(t)))
            members[t.id] = m
            points.extend(_ring_points(m.key, 0, m.count))
            owners.extend(itertools.repeat(m, m.count))
        self._ring.build(points, owners)
        self._owners = members
        self._members = {t.id: t for t in targets}

    def _insert(self, target: Target, weight: float) -> None:
        m = _RingMember(target, _point_count(weight))
        self._owners[target.id] = m
        for p in _ring_points(m.key, 0, m.count):
            self._ring.insert(p, m)

    def _discard(self, tid: str) -> None:
        m = self._owners.pop(tid)
        for p in _ring_points(m.key, 0, m.count):
            self._ring.delete(p, m)

    def _reweigh(self, target: Target, weight: float) -> None:
        m = self._owners[target.id]
        m.target = target
        count = _point_count(weight)
        # Only the points past the smaller count change hands, so keys move
        # only onto (weight up) or off (weight down) this backend.
        if count > m.count:
            for p in _ring_points(m.key, m.count, count):
                self._ring.insert(p, m)
        else:
            for p in _ring_points(m.key, count, m.count):
                self._ring.delete(p, m)
        m.count = count

    def _clear(self) -> None:
        self._ring = _Ring()
        self._owners = {}

    def pick(self, key: str | None = None) -> Target:
        if key is None:
            raise ValueError("ip-hash needs an affinity key: call acquire(key=...)")
        if not self._owners:
            raise LookupError(_NO_BACKEND)
        return self._ring.lookup(_key_probes(key)).target
