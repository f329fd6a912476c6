"""Round-robin and weighted round-robin (earliest deadline first over lanes)."""

from __future__ import annotations

import heapq
import itertools
import math
import random
from array import array

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
    """One target's membership in the EDF schedule: what stays fixed while it is picked.

    How often it has been picked follows from its lane's counters (see
    ``_Lane``), so a pick never touches this object: at 10,000 targets it
    would be a cache miss (and its floats and int three more) on every pick.
    """

    __slots__ = ("base", "dead", "lane", "period", "target")

    def __init__(self, target: Target, base: float, lane: _Lane) -> None:
        self.target = target
        # The first deadline; the n-th after it is base + n * period.
        self.base = base
        self.lane = lane
        self.period = lane.period
        self.dead = False

    @property
    def due(self) -> float:
        """The next deadline (a lookup in the lane: for changes and tests, not picks)."""
        lane = self.lane
        return lane.due_at(lane.find(self))


class _Lane:
    """The targets that share one weight, in the cyclic order of their deadlines.

    Targets with the same period never overtake one another: the one due
    first is picked, gets one period later and so becomes the last. Read
    cyclically from ``head``, the deadlines are sorted and span at most one
    period, so the lane needs no heap of its own, only a cursor. Removed
    targets stay in place as ``None``, until the cursor reaches them.

    Member ``j`` is ``members[j]`` (the target itself, so a pick returns it
    without reading anything else), ``bases[j]``, its first deadline, and
    ``offsets[j]``, the last two in C arrays. The cursor passes every member
    once per lap, so the count of picks since its first deadline is
    ``laps - offsets[j]``, plus one if the cursor has passed it in this lap
    (``j < head``); its deadline is ``base + picks * period``, computed
    exactly as one record per target would, so the order is unchanged. A
    pick moves the cursor and reads the next member's two numbers,
    neighbours of the previous pick's in memory, instead of two records and
    their number objects scattered over the heap, and writes nothing per
    member.
    """

    __slots__ = ("bases", "dead", "gen", "head", "laps", "live", "members", "offsets", "period")

    def __init__(self, period: float) -> None:
        self.period = period
        self.members: list[Target | None] = []
        self.bases = array("d")
        self.offsets = array("q")
        # Times the cursor went from the last member back to the first.
        self.laps = 0
        self.head = 0
        self.live = 0
        self.dead = 0
        # Bumped whenever the lane's entry in the heap of lanes goes stale.
        self.gen = 0

    def due_at(self, j: int) -> float:
        picks = self.laps - self.offsets[j] + (j < self.head)
        return self.bases[j] + picks * self.period

    def _lower_bound(self, d: float, *, after_equal: bool) -> int:
        """Cyclic offset from ``head`` of the first deadline > ``d`` (>= unless after_equal)."""
        m = len(self.members)
        head = self.head
        due_at = self.due_at
        lo, hi = 0, m
        while lo < hi:
            mid = (lo + hi) // 2
            j = head + mid
            due = due_at(j if j < m else j - m)
            if due < d or (after_equal and due == d):
                lo = mid + 1
            else:
                hi = mid
        return lo

    def insert(self, s: _Schedule) -> bool:
        """Put ``s`` in deadline order; True if it is now the lane's first."""
        members = self.members
        m = len(members)
        head = self.head
        # Equal deadlines: after the existing ones, so ties stay first come
        # first served.
        lo = self._lower_bound(s.base, after_equal=True)
        # A list insert moves pointers with one memmove (and each array its
        # doubles with another): linear in the lane's size in principle,
        # about a microsecond at 10,000 targets.
        j = head + lo
        passed = j >= m and head != 0
        if passed:
            # Before the cursor: counted as passed in this lap.
            j -= m
            self.head = head + 1
        members.insert(j, s.target)
        self.bases.insert(j, s.base)
        self.offsets.insert(j, self.laps + passed)
        self.live += 1
        return lo == 0

    def find(self, s: _Schedule) -> int:
        """The index of live member ``s``: O(log n).

        Every deadline in the lane lies within one period of the head's (the
        virtual time is at most the head's deadline and nothing is due later
        than a period after it), so ``s`` has been picked one of a few
        candidate counts of times; each candidate deadline is looked up by
        bisection and ``s`` is recognised among the members due then.
        """
        members = self.members
        m = len(members)
        target, base, period = s.target, s.base, self.period
        head, due_at = self.head, self.due_at
        near = max(0, math.floor((due_at(head) - base) / period))
        for picks in (near, near + 1, near - 1, near + 2):
            if picks < 0:
                continue
            d = base + picks * period
            k = self._lower_bound(d, after_equal=False)
            while k < m:
                j = head + k
                j = j if j < m else j - m
                if due_at(j) != d:
                    break
                if members[j] is target:
                    return j
                k += 1
        # Not reached while the invariant above holds; kept so a float corner
        # case costs a scan rather than a wrong removal.
        for j, t in enumerate(members):
            if t is target and self.bases[j] == base:
                return j
        raise LookupError(f"target {target.id!r} is not in its lane")

    def drop_head(self) -> None:
        """Remove the (dead) member at the cursor; the cursor moves to the next one."""
        head = self.head
        del self.members[head]
        del self.bases[head]
        del self.offsets[head]
        if head == len(self.members):
            self.head = 0
            self.laps += 1

    def compact(self) -> None:
        members, bases, offsets, head = self.members, self.bases, self.offsets, self.head
        m = len(members)
        keep = [j % m for j in range(head, head + m) if members[j % m] is not None]
        self.members = [members[j] for j in keep]
        self.bases = array("d", (bases[j] for j in keep))
        # With the cursor back at 0 no member counts as passed in this lap:
        # those that were carry their pick in the offset instead.
        self.offsets = array("q", (offsets[j] - (j < head) for j in keep))
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
        # Virtual time: the deadline of the last pick (read it as ``_now``).
        self._vt = 0.0
        # The only lane, while the heap holds nothing else (every target of one
        # weight: the usual case). Its picks then skip the heap, and its entry
        # there is brought up to date (_unsolo) before anything else reads it.
        self._solo: _Lane | None = None

    @property
    def _now(self) -> float:
        """Virtual time. One-lane picks leave it to be worked out here: the last pick
        was the member just before the cursor, at the deadline it had then."""
        lane = self._solo
        if lane is None:
            return self._vt
        j, laps = lane.head - 1, lane.laps
        if j < 0:  # the cursor has wrapped since that pick
            j, laps = len(lane.members) - 1, laps - 1
        return lane.bases[j] + (laps - lane.offsets[j]) * lane.period

    def _unsolo(self) -> None:
        lane = self._solo
        if lane is not None:
            self._vt = self._now
            self._solo = None
            head = lane.head
            due = lane.bases[head] + (lane.laps - lane.offsets[head]) * lane.period
            self._heap[0] = (due, next(self._seq), lane, lane.gen)

    def _enqueue(self, target: Target, due: float, period: float) -> None:
        self._unsolo()
        lane = self._lanes.get(period)
        fresh = lane is None
        if lane is None:
            lane = self._lanes[period] = _Lane(period)
        s = _Schedule(target, due, lane)
        self._schedules[target.id] = s
        if lane.insert(s) and not fresh:
            # The lane's first deadline moved earlier: its heap entry is stale.
            lane.gen += 1
            self._stale += 1
        elif not fresh:
            return
        heapq.heappush(self._heap, (due, next(self._seq), lane, lane.gen))
        if self._stale > len(self._lanes) + 64:
            # Keeps the heap within a constant of the number of lanes; O(k),
            # after k stale entries: O(1) amortised.
            self._heap = [e for e in self._heap if e[3] == e[2].gen]
            heapq.heapify(self._heap)
            self._stale = 0

    def _retire(self, s: _Schedule) -> float:
        """Take ``s`` out of the schedule; returns the deadline it had."""
        # Lazy deletion: the entry stays in its lane until the cursor reaches it.
        self._unsolo()
        s.dead = True
        lane = s.lane
        j = lane.find(s)
        due = lane.due_at(j)
        lane.members[j] = None
        lane.live -= 1
        lane.dead += 1
        if not lane.live:
            del self._lanes[lane.period]
            lane.gen += 1
            self._stale += 1
        elif lane.dead > lane.live + 16:
            # Only a lane that is rarely picked accumulates dead entries.
            lane.compact()
            # The first member may have changed: re-key the lane in the heap.
            lane.gen += 1
            self._stale += 1
            heapq.heappush(self._heap, (lane.due_at(0), next(self._seq), lane, lane.gen))
        return due

    def _insert(self, target: Target, weight: float) -> None:
        period = 1.0 / _clamp(weight)
        # A random phase within one period desynchronises a fleet while still
        # giving every target exactly its share over each full cycle.
        self._unsolo()  # before reading the virtual time: a plain attribute again
        self._enqueue(target, self._vt + self._rng.random() * period, period)

    def _discard(self, tid: str) -> None:
        self._retire(self._schedules.pop(tid))

    def _reweigh(self, target: Target, weight: float) -> None:
        old = self._schedules[target.id]
        period = 1.0 / _clamp(weight)
        # Keep the fraction of the period still to run: a slow-start ramp that
        # reweights often then neither loses nor gains picks at each step.
        left = min(max((self._retire(old) - self._vt) / old.period, 0.0), 1.0)
        self._enqueue(target, self._vt + left * period, period)

    def _clear(self) -> None:
        self._unsolo()  # keeps the virtual time of the last pick
        self._schedules = {}
        self._lanes = {}
        self._heap = []
        self._stale = 0

    def pick(self, key: str | None = None) -> Target:
        lane = self._solo
        if lane is not None:
            # One lane: its members in turn, as the heap would give them.
            members = lane.members
            head = lane.head
            target = members[head]
            if target is not None:
                # The virtual time moves to this member's deadline (see _now).
                head += 1
                if head == len(members):
                    head = 0
                    lane.laps += 1
                lane.head = head
                return target
            self._unsolo()  # a dead member at the cursor: the general path drops it
        heap = self._heap
        while heap:
            deadline, _, lane, gen = heap[0]
            if gen != lane.gen:
                heapq.heappop(heap)
                self._stale -= 1
                continue
            members = lane.members
            head = lane.head
            target = members[head]
            if target is None:
                # A live lane always has a live member, so this loop ends.
                lane.drop_head()
                lane.dead -= 1
                heapq.heapreplace(heap, (lane.due_at(lane.head), next(self._seq), lane, gen))
                continue
            self._vt = deadline
            # Passing the member is its pick: its deadline moves one period on.
            head += 1
            if head == len(members):
                head = 0
                lane.laps += 1
            lane.head = head
            # due_at(head), inlined: the next member is not passed yet.
            due = lane.bases[head] + (lane.laps - lane.offsets[head]) * lane.period
            heapq.heapreplace(heap, (due, next(self._seq), lane, gen))
            if len(heap) == 1:
                self._solo = lane
            return target
        raise LookupError(_NO_BACKEND)
