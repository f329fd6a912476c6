"""Weighted sampling (prefix-sum tree and lanes): random and least-connections."""

from __future__ import annotations

import itertools
import random
from array import array
from bisect import bisect_right
from collections.abc import Sequence
from typing import ClassVar

from wsclient.balancers.base import (
    _NO_BACKEND,
    Target,
    _check_all,
    _clamp,
    _Incremental,
    register_balancer,
)

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
        # Lanes are arrays, not lists: a list holds a pointer to an int object of
        # its own, one more cache miss per draw at 10,000 slots (the weights stay
        # a list: the least-connections scan reads them all, and an array read
        # builds a float each time).
        self.lanes: dict[int, array[int]] = {}
        self.lane_pos: list[int] = []
        # (running sums of lane totals, lane slot arrays, lane units) or None.
        self.plan: tuple[list[int], list[array[int]], list[int]] | None = None

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
        lane = self.lanes.get(u)
        if lane is None:
            lane = self.lanes[u] = array("q")
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
