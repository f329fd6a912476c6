"""Round-robin and weighted round-robin (earliest deadline first over lanes)."""

from __future__ import annotations

import heapq
import itertools
import random

from wsclient.balancers.base import (
    _NO_BACKEND,
    Target,
    _clamp,
    _Incremental,
    register_balancer,
)

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
