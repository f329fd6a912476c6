"""ip-hash: a weighted consistent-hash ring with multi-probe lookup."""

from __future__ import annotations

import hashlib
import itertools
import random
import struct
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Sequence

from wsclient.balancers.base import (
    _NO_BACKEND,
    Target,
    _check_all,
    _check_weight,
    _Incremental,
    register_balancer,
)

# --- ip-hash ---------------------------------------------------------------------------

_RING_POINTS_PER_WEIGHT = 32
_RING_MAX_POINTS = 1024
_RING_PROBES = 12
# Mean number of ring points per bucket (see _Ring).
_RING_BUCKET = 512
_MASK64 = (1 << 64) - 1
# Keys whose owner is remembered until the ring changes: affinity keys repeat by
# design (a client's address, a session), and the two blake2b digests and 12
# probes of a lookup are most of an ip-hash acquire (~5 us of ~6). Past this
# many keys the memo starts over: O(1) amortised, bounded memory.
_MEMO_KEYS = 4096
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

    The owners of up to 4,096 keys are remembered until the ring changes (an
    add, a removal, a weight change that moves points, an update), so a
    repeated key costs one dict lookup; when full, the memo starts over (a
    working set of more keys than that never hits, and costs what it did
    without the memo plus an insert).
    """

    name = "ip-hash"
    requires_key = True

    def __init__(self, *, rng: random.Random | None = None) -> None:
        super().__init__(rng=rng)
        self._ring = _Ring()
        self._owners: dict[str, _RingMember] = {}
        # key -> owner on the current ring; cleared by every change of the ring.
        self._memo: dict[str, _RingMember] = {}

    def update(self, targets: Sequence[Target]) -> None:
        # The ring depends only on the final set of (id, weight), so applying
        # the difference gives exactly what clear + add each gives. The pool
        # calls update() on every eligibility change with mostly the same
        # set: then only the changed backends' points move. When much of the
        # set changes, one sorted build is cheaper.
        targets = list(targets)
        _check_all(targets)
        self._memo.clear()
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
        self._memo.clear()
        m = _RingMember(target, _point_count(weight))
        self._owners[target.id] = m
        for p in _ring_points(m.key, 0, m.count):
            self._ring.insert(p, m)

    def _discard(self, tid: str) -> None:
        self._memo.clear()
        m = self._owners.pop(tid)
        for p in _ring_points(m.key, 0, m.count):
            self._ring.delete(p, m)

    def _reweigh(self, target: Target, weight: float) -> None:
        m = self._owners[target.id]
        m.target = target  # the memo holds members: it sees the new target at once
        count = _point_count(weight)
        if count != m.count:
            self._memo.clear()
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
        self._memo.clear()

    def pick(self, key: str | None = None) -> Target:
        if key is None:
            raise ValueError("ip-hash needs an affinity key: call acquire(key=...)")
        memo = self._memo
        m = memo.get(key)
        if m is None:
            if not self._owners:
                raise LookupError(_NO_BACKEND)
            m = self._ring.lookup(_key_probes(key))
            if len(memo) >= _MEMO_KEYS:
                memo.clear()
            memo[key] = m
        return m.target
