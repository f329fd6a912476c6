from __future__ import annotations

import bisect
import hashlib
import itertools
import math
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsclient.balancers import (
    BALANCERS,
    Balancer,
    IpHash,
    LeastConnections,
    PowerOfTwoLeastConnections,
    RoundRobin,
    Target,
    WeightedRandom,
    WeightedRoundRobin,
    balancer_names,
    create_balancer,
    register_balancer,
)


@dataclass
class Node:
    id: str
    weight: float = 1.0
    active: int = 0


class CountingNode:
    """Target that counts every attribute read, to show pick() does no per-target scan."""

    def __init__(self, id: str, weight: float) -> None:
        self._id = id
        self._weight = weight
        self.reads = 0

    @property
    def id(self) -> str:
        self.reads += 1
        return self._id

    @property
    def weight(self) -> float:
        self.reads += 1
        return self._weight

    @property
    def active(self) -> int:
        self.reads += 1
        return 0


def nodes(weights: Sequence[float]) -> list[Node]:
    return [Node(f"n{i}", w) for i, w in enumerate(weights)]


def make(cls: type[Balancer], targets: Sequence[Target], seed: int = 0) -> Balancer:
    b = cls(rng=random.Random(seed))
    b.update(targets)
    return b


def counts(b: Balancer, n: int, key: str | None = None) -> Counter[str]:
    return Counter(b.pick(key).id for _ in range(n))


KEYS = [f"10.{i // 256}.{i % 256}.7" for i in range(2000)]


# --- round-robin ---------------------------------------------------------------


def test_round_robin_cycles_all_targets_equally() -> None:
    """Every target is picked exactly once per cycle, in list order, whatever the weights."""
    targets = nodes([5, 1, 1, 3])
    b = make(RoundRobin, targets)
    seq = [b.pick().id for _ in range(40)]
    assert Counter(seq) == {t.id: 10 for t in targets}
    first = int(seq[0][1:])
    assert seq[:4] == [f"n{(first + i) % 4}" for i in range(4)]


def test_round_robin_start_offset_varies_with_seed() -> None:
    """Different rng seeds start the rotation on different targets."""
    targets = nodes([1] * 8)
    firsts = {make(RoundRobin, targets, seed).pick().id for seed in range(40)}
    assert len(firsts) > 3


def test_round_robin_update_only_returns_new_members() -> None:
    """After update() the rotation covers exactly the new set."""
    b = make(RoundRobin, nodes([1, 1, 1]))
    new = [Node("x"), Node("y")]
    b.update(new)
    assert {b.pick().id for _ in range(10)} == {"x", "y"}


# --- weighted round-robin --------------------------------------------------------


def test_wrr_shares_2_1_1() -> None:
    """Weights 2:1:1 over 12,000 picks give 50/25/25 % within ±1 %."""
    b = make(WeightedRoundRobin, nodes([2, 1, 1]))
    c = counts(b, 12_000)
    for tid, share in (("n0", 0.5), ("n1", 0.25), ("n2", 0.25)):
        assert abs(c[tid] / 12_000 - share) <= 0.01
    # EDF is exact, not just statistically close.
    assert abs(c["n0"] - 6000) <= 1


@settings(max_examples=60, deadline=None)
@given(
    weights=st.lists(st.integers(1, 100), min_size=1, max_size=20),
    cycles=st.integers(1, 5),
    seed=st.integers(0, 2**32),
)
def test_wrr_integer_weights_exact_per_cycle(weights: list[int], cycles: int, seed: int) -> None:
    """With integer weights, k full cycles give each target k*weight picks within ±1."""
    b = make(WeightedRoundRobin, nodes(weights), seed)
    c = counts(b, cycles * sum(weights))
    for i, w in enumerate(weights):
        assert abs(c[f"n{i}"] - cycles * w) <= 1


@settings(max_examples=60, deadline=None)
@given(
    weights=st.lists(
        st.floats(0.1, 10.0, allow_nan=False, allow_infinity=False), min_size=1, max_size=20
    ),
    picks=st.integers(1, 2000),
    seed=st.integers(0, 2**32),
)
def test_wrr_float_weights_track_share(weights: list[float], picks: int, seed: int) -> None:
    """With float weights every prefix of picks matches weight/sum(weights) within ±2."""
    b = make(WeightedRoundRobin, nodes(weights), seed)
    c = counts(b, picks)
    total = sum(weights)
    for i, w in enumerate(weights):
        assert abs(c[f"n{i}"] - picks * w / total) <= 2


def test_wrr_fractional_weights_long_run() -> None:
    """Slow-start style fractional weights keep exact proportions over a long run."""
    b = make(WeightedRoundRobin, nodes([0.25, 1.5, 2.25]))
    c = counts(b, 40_000)
    for tid, w in (("n0", 0.25), ("n1", 1.5), ("n2", 2.25)):
        assert abs(c[tid] - 40_000 * w / 4.0) <= 2


def test_wrr_fleet_not_in_lockstep() -> None:
    """Equal weights with different seeds give different first picks."""
    targets = nodes([1] * 10)
    firsts = {make(WeightedRoundRobin, targets, seed).pick().id for seed in range(40)}
    assert len(firsts) > 3


def test_wrr_update_only_returns_new_members() -> None:
    """After update() with a changed set only members of the new set are returned."""
    b = make(WeightedRoundRobin, nodes([3, 1, 1]))
    counts(b, 17)
    new = [Node("a", 1.0), Node("n1", 2.0), Node("c", 0.5)]
    b.update(new)
    c = counts(b, 350)
    assert set(c) == {"a", "n1", "c"}
    assert abs(c["n1"] - 200) <= 2


def test_wrr_pick_does_not_scan_targets() -> None:
    """pick() touches no target and keeps a valid heap of one entry per weight lane."""
    targets = [CountingNode(f"n{i}", 1 + i % 7) for i in range(500)]
    b = WeightedRoundRobin(rng=random.Random(1))
    b.update(targets)
    for t in targets:
        t.reads = 0
    for _ in range(1000):
        b.pick()
    assert sum(t.reads for t in targets) == 0
    heap = b._heap
    # Seven distinct weights: seven lanes, and the heap orders lanes, not targets.
    assert len(b._lanes) == 7
    assert len(heap) == 7
    assert all(heap[(i - 1) // 2][:2] <= heap[i][:2] for i in range(1, len(heap)))


# --- least connections ------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(
    data=st.lists(st.tuples(st.integers(0, 50), st.integers(1, 10)), min_size=1, max_size=15),
    seed=st.integers(0, 2**32),
)
def test_least_connections_returns_minimum_load(data: list[tuple[int, int]], seed: int) -> None:
    """The pick always has the lowest active/weight, reading active live."""
    targets = [Node(f"n{i}", w, a) for i, (a, w) in enumerate(data)]
    b = make(LeastConnections, targets, seed)
    rng = random.Random(seed)
    for _ in range(5):
        t = b.pick()
        assert t.active / t.weight == min(x.active / x.weight for x in targets)
        # Mutate after update(): the balancer must see the new values.
        rng.choice(targets).active = rng.randrange(50)


def test_least_connections_ties_rotate() -> None:
    """Tied targets are taken in turn, not always the first."""
    targets = nodes([1, 1, 1])
    b = make(LeastConnections, targets)
    assert len({b.pick().id for _ in range(3)}) == 3

    targets = [Node("a", 1, 5), Node("b", 1, 2), Node("c", 2, 4), Node("d", 1, 9)]
    b = make(LeastConnections, targets)
    seq = [b.pick().id for _ in range(6)]
    assert set(seq) == {"b", "c"}
    assert all(x != y for x, y in itertools.pairwise(seq))


def test_least_connections_follows_leases() -> None:
    """Simulating leases, connections spread in proportion to weight."""
    targets = [Node("a", 3), Node("b", 1)]
    by_id = {t.id: t for t in targets}
    b = make(LeastConnections, targets)
    for _ in range(40):
        by_id[b.pick().id].active += 1
    assert (targets[0].active, targets[1].active) == (30, 10)


def test_p2c_two_targets_returns_less_loaded() -> None:
    """With two targets p2c compares both and always returns the less loaded."""
    a, c = Node("a", 1, 3), Node("b", 2, 2)
    b = make(PowerOfTwoLeastConnections, [a, c])
    assert all(b.pick() is c for _ in range(200))
    c.active = 7
    assert all(b.pick() is a for _ in range(200))


def test_p2c_single_target() -> None:
    """A single target is returned without needing a second candidate."""
    only = Node("only", 0.5, 100)
    b = make(PowerOfTwoLeastConnections, [only])
    assert b.pick() is only


@settings(max_examples=80, deadline=None)
@given(
    data=st.lists(
        st.tuples(st.integers(0, 30), st.floats(0.1, 10.0, allow_nan=False)),
        min_size=2,
        max_size=12,
    ),
    seed=st.integers(0, 2**32),
)
def test_p2c_never_returns_unique_maximum(data: list[tuple[int, float]], seed: int) -> None:
    """Two distinct candidates are compared, so a uniquely most-loaded target never wins."""
    targets = [Node(f"n{i}", w, a) for i, (a, w) in enumerate(data)]
    loads = [t.active / t.weight for t in targets]
    top = max(loads)
    b = make(PowerOfTwoLeastConnections, targets, seed)
    picked = {b.pick().id for _ in range(50)}
    assert picked <= {t.id for t in targets}
    if loads.count(top) == 1:
        assert targets[loads.index(top)].id not in picked


def test_p2c_spreads_equal_loads_by_weight() -> None:
    """With equal loads the weighted candidate draw spreads picks roughly by weight."""
    b = make(PowerOfTwoLeastConnections, nodes([3, 1, 1, 1]))
    c = counts(b, 12_000)
    assert set(c) == {"n0", "n1", "n2", "n3"}
    assert abs(c["n0"] / 12_000 - 0.5) <= 0.02


# --- ip-hash ----------------------------------------------------------------------


def reference_ring(key: str, targets: Sequence[Node]) -> str:
    """Independent restatement of the documented ring and probes, to pin the cross-process map."""

    def words(data: bytes, person: bytes) -> list[int]:
        digest = hashlib.blake2b(data, digest_size=64, person=person).digest()
        return [int.from_bytes(digest[i : i + 8], "big") for i in range(0, 64, 8)]

    ring = []
    for t in targets:
        count = min(2048, max(1, round(t.weight * 32)))
        points = [
            p
            for block in range((count + 7) // 8)
            for p in words(t.id.encode() + block.to_bytes(4, "big"), b"wsclient-vnode")
        ]
        ring += [(p, t.id) for p in points[:count]]
    ring.sort()
    positions = [p for p, _ in ring]
    probes = (
        words(key.encode() + b"\x00", b"wsclient-key")
        + words(key.encode() + b"\x01", b"wsclient-key")
    )[:12]
    best = None
    for h in probes:
        i = bisect.bisect_left(positions, h) % len(ring)
        distance = (ring[i][0] - h) % 2**64
        if best is None or distance < best[0]:
            best = (distance, ring[i][1])
    assert best is not None
    return best[1]


def test_ip_hash_same_key_same_target() -> None:
    """Repeated picks for one key always return the same target."""
    b = make(IpHash, nodes([1, 2, 3, 1]))
    for key in KEYS[:200]:
        first = b.pick(key)
        assert all(b.pick(key) is first for _ in range(3))


def test_ip_hash_stable_across_instances_and_processes() -> None:
    """Instances with different rngs, and the documented blake2b formula, agree on every key."""
    targets = nodes([1, 2, 1, 0.5, 3])
    b1 = make(IpHash, targets, seed=1)
    b2 = IpHash()
    b2.update(list(reversed(targets)))
    for key in KEYS:
        assert b1.pick(key).id == b2.pick(key).id == reference_ring(key, targets)


def test_ip_hash_removal_moves_only_keys_on_removed_target() -> None:
    """Removing one of 5 targets keeps every other key in place and spreads its keys out."""
    targets = nodes([1] * 5)
    b = make(IpHash, targets)
    before = {k: b.pick(k).id for k in KEYS}
    b.update([t for t in targets if t.id != "n2"])
    after = {k: b.pick(k).id for k in KEYS}
    moved = [k for k in KEYS if before[k] != after[k]]
    assert moved and all(before[k] == "n2" for k in moved)
    assert len(moved) == sum(1 for k in KEYS if before[k] == "n2")
    assert len({after[k] for k in moved}) == 4


def test_ip_hash_addition_moves_keys_only_onto_new_target() -> None:
    """Adding a target only moves keys onto the new target, about 1/(n+1) of them."""
    targets = nodes([1] * 4)
    b = make(IpHash, targets)
    before = {k: b.pick(k).id for k in KEYS}
    b.update([*targets, Node("new")])
    after = {k: b.pick(k).id for k in KEYS}
    moved = [k for k in KEYS if before[k] != after[k]]
    assert all(after[k] == "new" for k in moved)
    assert 0.15 <= len(moved) / len(KEYS) <= 0.25


def test_ip_hash_shares_follow_weights() -> None:
    """Weights 2:1:1 split 20,000 keys 50/25/25 % within ±3 %."""
    b = make(IpHash, nodes([2, 1, 1]))
    c = Counter(b.pick(f"client-{i}").id for i in range(20_000))
    for tid, share in (("n0", 0.5), ("n1", 0.25), ("n2", 0.25)):
        assert abs(c[tid] / 20_000 - share) <= 0.03


def test_ip_hash_requires_key() -> None:
    """pick(None) raises ValueError pointing at acquire(key=...)."""
    b = make(IpHash, nodes([1, 1]))
    assert IpHash.requires_key
    with pytest.raises(ValueError, match=r"acquire\(key=\.\.\.\)"):
        b.pick()


# --- random -----------------------------------------------------------------------


def test_weighted_random_shares() -> None:
    """Seeded weighted random picks land within ±2 % of the weight shares."""
    b = make(WeightedRandom, nodes([2, 1, 1]), seed=7)
    c = counts(b, 20_000)
    for tid, share in (("n0", 0.5), ("n1", 0.25), ("n2", 0.25)):
        assert abs(c[tid] / 20_000 - share) <= 0.02


def test_weighted_random_pick_does_not_scan_targets() -> None:
    """pick() reads no target attributes: the cumulative table is built in update()."""
    targets = [CountingNode(f"n{i}", 0.5 + i) for i in range(100)]
    b = WeightedRandom(rng=random.Random(3))
    b.update(targets)
    for t in targets:
        t.reads = 0
    picked = [b.pick() for _ in range(2000)]
    assert sum(t.reads for t in targets) == 0
    assert len(set(map(id, picked))) > 50


# --- registry and shared behaviour --------------------------------------------------


def test_registry_names() -> None:
    """All six strategies are registered under their documented names, sorted."""
    assert balancer_names() == [
        "ip-hash",
        "least-connections",
        "least-connections-p2c",
        "random",
        "round-robin",
        "weighted-round-robin",
    ]
    assert BALANCERS["weighted-round-robin"] is WeightedRoundRobin
    assert [n for n in balancer_names() if BALANCERS[n].requires_key] == ["ip-hash"]


@pytest.mark.parametrize("name", sorted(BALANCERS))
def test_create_balancer_returns_named_strategy(name: str) -> None:
    """create_balancer builds the registered class with the injected rng."""
    rng = random.Random(5)
    b = create_balancer(name, rng=rng)
    assert type(b) is BALANCERS[name] and b.name == name
    assert b._rng is rng


def test_create_balancer_unknown_name() -> None:
    """An unknown name raises ValueError naming it and listing the known names."""
    with pytest.raises(ValueError) as exc:
        create_balancer("foo")
    msg = str(exc.value)
    assert "unknown load_balancing 'foo'" in msg
    assert all(n in msg for n in balancer_names())


def test_register_duplicate_name_rejected() -> None:
    """Registering a second class under an existing name raises and leaves the registry alone."""

    class Impostor(RoundRobin):
        name = "round-robin"

    with pytest.raises(ValueError, match="round-robin"):
        register_balancer(Impostor)
    assert BALANCERS["round-robin"] is RoundRobin


def test_register_custom_balancer() -> None:
    """A new class registers via the decorator and becomes creatable by name."""

    @register_balancer
    class First(RoundRobin):
        name = "test-first"

        def pick(self, key: str | None = None) -> Target:
            return self._targets[0]

    try:
        assert "test-first" in balancer_names()
        b = create_balancer("test-first")
        b.update(nodes([1, 1]))
        assert b.pick().id == "n0"
    finally:
        del BALANCERS["test-first"]


def test_default_rng_differs_per_instance() -> None:
    """Without an injected rng, instances are seeded independently."""
    targets = nodes([1] * 50)
    firsts = set()
    for _ in range(10):
        b = RoundRobin()
        b.update(targets)
        firsts.add(b.pick().id)
    assert len(firsts) > 1


@pytest.mark.parametrize("name", sorted(BALANCERS))
def test_empty_set_raises_lookup_error(name: str) -> None:
    """pick() on an empty eligible set raises LookupError, also after emptying via update()."""
    b = create_balancer(name, rng=random.Random(0))
    key = "1.2.3.4" if b.requires_key else None
    with pytest.raises(LookupError, match="no eligible backend"):
        b.pick(key)
    b.update(nodes([1, 2]))
    assert b.pick(key).id in {"n0", "n1"}
    b.update([])
    with pytest.raises(LookupError, match="no eligible backend"):
        b.pick(key)


@pytest.mark.parametrize("name", sorted(BALANCERS))
@pytest.mark.parametrize("weight", [0.0, -1.0, math.inf, math.nan])
def test_invalid_weight_rejected(name: str, weight: float) -> None:
    """Every strategy rejects weights that are not finite and positive in update()."""
    b = create_balancer(name, rng=random.Random(0))
    with pytest.raises(ValueError, match="invalid weight"):
        b.update([Node("ok"), Node("bad", weight)])
