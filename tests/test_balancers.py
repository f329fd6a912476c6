from __future__ import annotations

import bisect
import hashlib
import itertools
import math
import random
import statistics
import unittest
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

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
        count = min(1024, max(1, round(t.weight * 32)))
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


# --- incremental membership -------------------------------------------------------


ALL = sorted(BALANCERS)


def key_for(b: Balancer) -> str | None:
    return "10.0.0.1" if b.requires_key else None


@pytest.mark.parametrize("name", ALL)
def test_add_remove_reweight_basics(name: str) -> None:
    """add/remove/reweight change membership; len and `in` follow, by object or id."""
    b = create_balancer(name, rng=random.Random(0))
    a, c = Node("a", 1.0), Node("c", 2.0)
    b.add(a)
    b.add(c)
    assert len(b) == 2 and a in b and "c" in b and Node("x") not in b and 42 not in b
    c.weight = 0.5
    b.reweight(c)
    b.remove(a)
    assert len(b) == 1 and a not in b and "a" not in b
    assert all(b.pick(key_for(b)) is c for _ in range(20))
    b.remove(c)
    assert len(b) == 0
    with pytest.raises(LookupError, match="no eligible backend"):
        b.pick(key_for(b))


@pytest.mark.parametrize("name", ALL)
def test_membership_errors(name: str) -> None:
    """Duplicate ids and bad weights raise ValueError naming the id; unknown ids KeyError."""
    b = create_balancer(name, rng=random.Random(0))
    b.add(Node("a"))
    with pytest.raises(ValueError, match="'a' is already a member"):
        b.add(Node("a", 3.0))
    for bad in (0.0, -2.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="target 'z' has invalid weight"):
            b.add(Node("z", bad))
        with pytest.raises(ValueError, match="target 'a' has invalid weight"):
            b.reweight(Node("a", bad))
    with pytest.raises(KeyError):
        b.remove(Node("nope"))
    with pytest.raises(KeyError):
        b.reweight(Node("nope"))
    # Nothing above changed the set.
    assert len(b) == 1 and "a" in b and "z" not in b
    assert b.pick(key_for(b)).id == "a"


@pytest.mark.parametrize("name", ALL)
def test_rejected_update_keeps_previous_set(name: str) -> None:
    """An update() with a bad weight or a duplicate id leaves the old members in place."""
    b = create_balancer(name, rng=random.Random(0))
    b.update(nodes([1, 1]))
    with pytest.raises(ValueError, match="invalid weight"):
        b.update([Node("x"), Node("y", -1.0)])
    with pytest.raises(ValueError, match="'x' appears twice"):
        b.update([Node("x"), Node("x")])
    assert len(b) == 2 and "n0" in b and "x" not in b
    assert {b.pick(key_for(b)).id for _ in range(50)} <= {"n0", "n1"}


@pytest.mark.parametrize("name", ALL)
def test_reweight_hands_out_the_new_object(name: str) -> None:
    """reweight() with a fresh object for the same id makes picks return that object."""
    b = create_balancer(name, rng=random.Random(0))
    old = Node("only", 1.0)
    b.add(old)
    new = Node("only", 2.0)
    b.reweight(new)
    assert b.pick(key_for(b)) is new


# Operations for the property tests: (op, target index, weight).
OPS = st.lists(
    st.tuples(
        st.sampled_from(["add", "remove", "reweight"]),
        st.integers(0, 11),
        st.sampled_from([0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 7.0]),
    ),
    max_size=40,
)


def apply_ops(
    b: Balancer, ops: list[tuple[str, int, float]], members: dict[str, Node] | None = None
) -> dict[str, Node]:
    """Apply ops to b, skipping those that do not apply; returns the resulting members."""
    members = {} if members is None else members
    for op, i, w in ops:
        tid = f"t{i}"
        if op == "add" and tid not in members:
            members[tid] = Node(tid, w)
            b.add(members[tid])
        elif op == "remove" and tid in members:
            b.remove(members.pop(tid))
        elif op == "reweight" and tid in members:
            members[tid].weight = w
            b.reweight(members[tid])
    return members


@settings(max_examples=60, deadline=None)
@given(ops=OPS, seed=st.integers(0, 2**32))
def test_wrr_shares_after_changes(ops: list[tuple[str, int, float]], seed: int) -> None:
    """After any add/remove/reweight sequence every prefix of EDF picks tracks the weights (±2)."""
    b = WeightedRoundRobin(rng=random.Random(seed))
    first = {t.id: t for t in [Node("t0", 1.0), Node("t1", 2.0)]}
    for t in first.values():
        b.add(t)
    counts(b, 7)
    members = apply_ops(b, ops, first)
    if not members:
        return
    total = sum(t.weight for t in members.values())
    picks = int(4 * total / min(t.weight for t in members.values())) + 20
    seen: Counter[str] = Counter()
    for n in range(1, picks + 1):
        seen[b.pick().id] += 1
        if n % 7 == 0 or n == picks:
            for tid, t in members.items():
                assert abs(seen[tid] - n * t.weight / total) <= 2
    assert set(seen) == set(members)


@settings(max_examples=60, deadline=None)
@given(ops=OPS, seed=st.integers(0, 2**32))
def test_weight_tree_matches_rebuilt(ops: list[tuple[str, int, float]], seed: int) -> None:
    """random/p2c: after any changes the sum tree holds exactly the weights a rebuild holds."""
    for cls in (WeightedRandom, PowerOfTwoLeastConnections, LeastConnections):
        b = cls(rng=random.Random(seed))
        members = apply_ops(b, ops)
        rebuilt = cls(rng=random.Random(seed))
        rebuilt.update(list(members.values()))
        tree, ref = b._tree, rebuilt._tree
        assert tree.total == ref.total
        assert dict(zip((t.id for t in tree.slots), tree.units, strict=True)) == dict(
            zip((t.id for t in ref.slots), ref.units, strict=True)
        )
        # Every slot owns exactly its own range of units.
        before = 0
        for i, u in enumerate(tree.units):
            assert tree.locate(before) == (i, before)
            assert tree.locate(before + u - 1)[0] == i
            before += u
        assert before == tree.total
        assert len(tree.levels) == 2  # at most 12 slots: the minimum depth again


def test_weighted_random_shares_after_changes() -> None:
    """Shares follow the weights after adds, removes and reweights, like a rebuilt instance."""
    b = WeightedRandom(rng=random.Random(11))
    ts = nodes([5, 1, 1, 1, 1, 1])
    for t in ts:
        b.add(t)
    b.remove(ts[1])
    b.remove(ts[0])
    ts[2].weight = 2.0
    b.reweight(ts[2])
    extra = Node("x", 1.0)
    b.add(extra)
    c = counts(b, 24_000)
    total = sum(t.weight for t in [*ts[2:], extra])
    assert set(c) == {"n2", "n3", "n4", "n5", "x"}
    for t in [*ts[2:], extra]:
        assert abs(c[t.id] / 24_000 - t.weight / total) <= 0.015


@settings(max_examples=25, deadline=None)
@given(ops=st.lists(st.tuples(st.booleans(), st.floats(0.01, 50.0)), max_size=300))
def test_weight_tree_across_levels(ops: list[tuple[bool, float]]) -> None:
    """With a tiny fan-out the tree grows and shrinks through several levels and stays exact."""
    from wsclient.balancers import weighted_set as balancers

    old = balancers._FANOUT
    balancers._FANOUT = 3
    try:
        b = WeightedRandom(rng=random.Random(0))
        members: list[Node] = []
        for i, (grow, w) in enumerate(ops):
            if grow or not members:
                members.append(Node(f"s{i}", w))
                b.add(members[-1])
            else:
                b.remove(members.pop(len(members) // 2))
        tree = b._tree
        n = len(members)
        assert len(tree.levels) == max(2, math.ceil(math.log(n, 3) - 1e-9) if n > 1 else 2)
        before = 0
        for i, u in enumerate(tree.units):
            assert tree.locate(before)[0] == i
            before += u
        assert before == tree.total == sum(balancers._units(t.weight) for t in members)
        if n:
            assert b.pick() in members
    finally:
        balancers._FANOUT = old


def test_weight_tree_depth_follows_size() -> None:
    """Past 16,384 slots a third level appears; removing back below drops it again."""
    b = WeightedRandom(rng=random.Random(0))
    ts = [Node(f"s{i}") for i in range(16_385)]
    for t in ts:
        b.add(t)
    assert len(b._tree.levels) == 3
    assert {b.pick().id for _ in range(200)} <= {t.id for t in ts}
    b.remove(ts[5])
    assert len(b._tree.levels) == 2
    for t in ts[6:16_000]:
        b.remove(t)
    assert len(b) == 390 and len(b._tree.levels) == 2
    left = {t.id for t in [*ts[:5], *ts[16_000:]]}
    assert {b.pick().id for _ in range(3000)} == left


@settings(max_examples=50, deadline=None)
@given(ops=OPS, seed=st.integers(0, 2**32))
def test_round_robin_cycle_after_changes(ops: list[tuple[str, int, float]], seed: int) -> None:
    """After any changes the next len(b) picks return every member exactly once."""
    b = RoundRobin(rng=random.Random(seed))
    members = apply_ops(b, ops)
    assert Counter(b.pick().id for _ in range(len(members))) == {tid: 1 for tid in members}


def test_round_robin_removal_mid_cycle_skips_nobody() -> None:
    """Removing any target mid-cycle: the rest of the cycle serves every other target once."""
    for seed, served, drop in itertools.product(range(4), range(1, 6), range(6)):
        targets = nodes([1] * 6)
        b = RoundRobin(rng=random.Random(seed))
        b.update(targets)
        while b._next != 0:  # align with the start of a full cycle
            b.pick()
        first = {b.pick().id for _ in range(served)}
        b.remove(targets[drop])
        todo = {t.id for t in targets} - first - {targets[drop].id}
        assert sorted(b.pick().id for _ in range(len(todo))) == sorted(todo)


@settings(max_examples=50, deadline=None)
@given(ops=OPS, seed=st.integers(0, 2**32), actives=st.lists(st.integers(0, 9), min_size=12))
def test_least_connections_exact_after_changes(
    ops: list[tuple[str, int, float]], seed: int, actives: list[int]
) -> None:
    """Within the scan limit, after any changes the pick has the lowest active/weight."""
    b = LeastConnections(rng=random.Random(seed))
    members = apply_ops(b, ops)
    for i, t in enumerate(members.values()):
        t.active = actives[i]
    if members:
        picked = b.pick()
        assert picked.active / picked.weight == min(x.active / x.weight for x in members.values())


def test_least_connections_uses_p2c_beyond_scan_limit() -> None:
    """Beyond scan_limit picks are p2c: never the unique most loaded, and leases level out."""
    targets = [Node(f"n{i}", 1.0 + i % 3) for i in range(LeastConnections.scan_limit + 8)]
    b = make(LeastConnections, targets, seed=4)
    targets[0].active = 1000
    picks = {b.pick().id for _ in range(2000)}
    assert "n0" not in picks and len(picks) > 30
    targets[0].active = 0
    by_id = {t.id: t for t in targets}
    for _ in range(12_000):
        by_id[b.pick().id].active += 1
    loads = [t.active / t.weight for t in targets]
    # Weighted p2c keeps active/weight within a small band around the mean.
    assert max(loads) - min(loads) <= 0.35 * statistics.mean(loads)


# --- ip-hash consistency ----------------------------------------------------------------

IDS = st.lists(
    st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=12),
    min_size=2,
    max_size=8,
    unique=True,
)
RING_KEYS = [f"user-{i}" for i in range(600)]


@settings(max_examples=30, deadline=None)
@given(ids=IDS, data=st.data())
def test_ip_hash_add_remove_move_only_their_keys(ids: list[str], data: st.DataObject) -> None:
    """Removing a backend moves only its keys; adding it back restores the exact mapping."""
    weights = data.draw(st.lists(st.sampled_from([0.5, 1.0, 2.0]), min_size=len(ids)))
    targets = [Node(i, w) for i, w in zip(ids, weights, strict=False)]
    b = IpHash()
    for t in targets:
        b.add(t)
    before = {k: b.pick(k).id for k in RING_KEYS}
    gone = data.draw(st.sampled_from(targets))
    b.remove(gone)
    after = {k: b.pick(k).id for k in RING_KEYS}
    for k in RING_KEYS:
        assert after[k] != gone.id
        if before[k] != gone.id:
            assert after[k] == before[k]
    b.add(gone)
    assert {k: b.pick(k).id for k in RING_KEYS} == before


@settings(max_examples=30, deadline=None)
@given(ids=IDS, data=st.data())
def test_ip_hash_reweight_moves_keys_only_to_or_from_it(
    ids: list[str], data: st.DataObject
) -> None:
    """Raising a weight moves keys only onto that backend; lowering it only off it."""
    targets = [Node(i, 1.0) for i in ids]
    b = IpHash()
    b.update(targets)
    t = data.draw(st.sampled_from(targets))
    before = {k: b.pick(k).id for k in RING_KEYS}
    t.weight = 3.0
    b.reweight(t)
    up = {k: b.pick(k).id for k in RING_KEYS}
    assert all(up[k] == before[k] or up[k] == t.id for k in RING_KEYS)
    assert sum(v == t.id for v in up.values()) >= sum(v == t.id for v in before.values())
    t.weight = 0.25
    b.reweight(t)
    down = {k: b.pick(k).id for k in RING_KEYS}
    assert all(down[k] == up[k] or up[k] == t.id for k in RING_KEYS)
    assert all(v != t.id or before[k] == t.id for k, v in down.items())


@settings(max_examples=40, deadline=None)
@given(ops=OPS)
def test_ip_hash_incremental_equals_rebuilt(ops: list[tuple[str, int, float]]) -> None:
    """The mapping depends only on the final (id, weight) set, not on the history of changes."""
    b = IpHash()
    members = apply_ops(b, ops)
    rebuilt = IpHash()
    rebuilt.update(list(reversed(members.values())))
    assert len(b._ring) == len(rebuilt._ring)
    if members:
        assert all(b.pick(k).id == rebuilt.pick(k).id for k in RING_KEYS[:200])


@settings(max_examples=40, deadline=None)
@given(ops=OPS)
def test_ip_hash_remembered_keys_follow_every_change(ops: list[tuple[str, int, float]]) -> None:
    """The owners it remembers per key are forgotten by every change of the ring: after
    each add, remove or reweight, picks equal those of a balancer built fresh."""
    b = IpHash()
    members: dict[str, Node] = {}
    keys = RING_KEYS[:60]
    for op, i, w in ops:
        if op == "reweight" and f"t{i}" in members:
            # A fresh object, as the pool hands over: the memo must give out this one.
            members[f"t{i}"] = Node(f"t{i}", w)
            b.reweight(members[f"t{i}"])
        elif op == "add" and i % 4 == 0 and members:
            # update() with the same set as new objects (the pool's eligibility changes).
            members = {tid: Node(tid, t.weight) for tid, t in members.items()}
            b.update(list(members.values()))
        else:
            members = apply_ops(b, [(op, i, w)], members)
        if not members:
            continue
        fresh = IpHash()
        fresh.update([Node(t.id, t.weight) for t in members.values()])
        assert [b.pick(k).id for k in keys] == [fresh.pick(k).id for k in keys]
        assert all(b.pick(k) is members[b.pick(k).id] for k in keys)  # latest objects


def test_ip_hash_memo_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """More distinct keys than the memo holds: it starts over, and picks stay right."""
    from wsclient.balancers import ip_hash

    monkeypatch.setattr(ip_hash, "_MEMO_KEYS", 50)
    b = IpHash()
    b.update([Node(f"n{i}", 1.0) for i in range(8)])
    first = {k: b.pick(k).id for k in RING_KEYS}
    assert 0 < len(b._memo) <= 50
    fresh = IpHash()
    fresh.update([Node(f"n{i}", 1.0) for i in range(8)])
    assert first == {k: fresh.pick(k).id for k in RING_KEYS}
    # Keys picked since the memo last started over are answered from it.
    recent = list(b._memo)
    b._ring = None  # type: ignore[assignment]  # a lookup would fail now
    assert all(b.pick(k).id == first[k] for k in recent)


def test_ip_hash_ring_buckets_split_and_join(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ring's buckets split as it grows and join as it shrinks; lookups never change."""
    from wsclient.balancers import ip_hash as balancers

    monkeypatch.setattr(balancers, "_RING_BUCKET", 8)
    targets = [Node(f"ws-{i}", 2.0) for i in range(60)]  # 64 points each
    b = IpHash()
    sizes = []
    for t in targets:
        b.add(t)
        sizes.append(b._ring.bits)
    ring = b._ring
    assert sizes == sorted(sizes) and ring.bits == 8  # 3,840 points: mean 15 per bucket
    assert len(ring) == 60 * 64 == sum(len(p) for p in ring.pos)
    assert all(p >> ring.shift == j for j, bucket in enumerate(ring.pos) for p in bucket)
    flat = [x for bucket in ring.pos for x in bucket]
    assert flat == sorted(flat)
    rebuilt = IpHash()
    rebuilt.update(targets)
    assert rebuilt._ring.bits == 8
    assert all(b.pick(k).id == rebuilt.pick(k).id for k in RING_KEYS)
    for t in targets[:57]:
        b.remove(t)
    assert len(ring) == 3 * 64 and ring.bits == 4  # mean 12 per bucket again
    assert all(p >> ring.shift == j for j, bucket in enumerate(ring.pos) for p in bucket)
    rebuilt = IpHash()
    rebuilt.update(targets[57:])
    assert all(b.pick(k).id == rebuilt.pick(k).id for k in RING_KEYS)


def test_ip_hash_lookup_wraps_past_empty_buckets(monkeypatch: pytest.MonkeyPatch) -> None:
    """A probe past the last point of its bucket goes on to the next non-empty one, wrapping."""
    from wsclient.balancers import ip_hash as balancers

    ring = balancers._Ring()
    members = [balancers._RingMember(Node(f"m{i}"), 1) for i in range(3)]
    monkeypatch.setattr(balancers, "_RING_BUCKET", 1)
    for p, m in zip((5, 2**62 + 7, 2**63 + 9), members, strict=True):
        ring.insert(p, m)
    assert ring.bits == 1  # buckets [5, 2**62 + 7] and [2**63 + 9]
    assert ring.lookup([6]) is members[1]
    assert ring.lookup([2**62 + 8]) is members[2]  # skips to the next bucket
    assert ring.lookup([2**63 + 10]) is members[0]  # wraps to the first point
    assert ring.lookup([2**63 + 10, 2**62]) is members[1]  # the nearer of two probes wins


def test_ip_hash_point_counts_are_clamped() -> None:
    """Ring points are round(weight * 32), at least 1 and at most 1024 (the documented bound)."""
    b = IpHash()
    for tid, w, expected in (
        ("tiny", 1e-6, 1),
        ("ramp", 0.1, 3),
        ("one", 1.0, 32),
        ("big", 1e6, 1024),
    ):
        b.add(Node(tid, w))
        assert b._owners[tid].count == expected
    assert len(b._ring) == 1 + 3 + 32 + 1024


# --- state machine -----------------------------------------------------------------------


class MembershipMachine(RuleBasedStateMachine):
    """Random add/remove/reweight/update/pick sequences against a plain dict model."""

    name = "round-robin"

    def __init__(self) -> None:
        super().__init__()
        self.b = create_balancer(self.name, rng=random.Random(7))
        self.model: dict[str, Node] = {}
        self.removed: set[str] = set()
        self.serial = 0

    @rule(weight=st.floats(0.05, 20.0), active=st.integers(0, 5))
    def add(self, weight: float, active: int) -> None:
        self.serial += 1
        t = Node(f"b{self.serial}", weight, active)
        self.b.add(t)
        self.model[t.id] = t

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def remove(self, data: st.DataObject) -> None:
        tid = data.draw(st.sampled_from(sorted(self.model)))
        self.b.remove(self.model.pop(tid))
        self.removed.add(tid)

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data(), weight=st.floats(0.05, 20.0))
    def reweight(self, data: st.DataObject, weight: float) -> None:
        tid = data.draw(st.sampled_from(sorted(self.model)))
        self.model[tid].weight = weight
        self.b.reweight(self.model[tid])

    @precondition(lambda self: len(self.model) < 4)
    @rule(n=st.integers(0, 40))
    def reset(self, n: int) -> None:
        self.removed |= set(self.model)
        fresh = []
        for _ in range(n):
            self.serial += 1
            fresh.append(Node(f"b{self.serial}", 1.0 + self.serial % 3))
        self.b.update(fresh)
        self.model = {t.id: t for t in fresh}

    @rule(k=st.integers(1, 30), data=st.data())
    def pick(self, k: int, data: st.DataObject) -> None:
        key = "k" if self.b.requires_key else None
        if not self.model:
            with pytest.raises(LookupError):
                self.b.pick(key)
            return
        for i in range(k):
            if key is not None:
                key = f"k{data.draw(st.integers(0, 999))}" if i == 0 else f"{key}{i}"
            t = self.b.pick(key)
            assert t.id not in self.removed
            assert self.model.get(t.id) is t

    @invariant()
    def membership_matches(self) -> None:
        assert len(self.b) == len(self.model)
        assert all(tid in self.b for tid in self.model)
        assert not any(tid in self.b for tid in self.removed)


def _machine_case(name: str) -> type[unittest.TestCase]:
    machine: type[MembershipMachine] = type(f"Machine_{name}", (MembershipMachine,), {"name": name})
    machine.TestCase.settings = settings(max_examples=25, stateful_step_count=40, deadline=None)
    return machine.TestCase


TestRoundRobinMachine = _machine_case("round-robin")
TestWeightedRoundRobinMachine = _machine_case("weighted-round-robin")
TestLeastConnectionsMachine = _machine_case("least-connections")
TestP2CMachine = _machine_case("least-connections-p2c")
TestRandomMachine = _machine_case("random")
TestIpHashMachine = _machine_case("ip-hash")


def test_wrr_heap_and_lanes_stay_bounded_under_churn() -> None:
    """Lazy deletion never lets stale heap entries or dead lane members grow without bound."""
    b = WeightedRoundRobin(rng=random.Random(2))
    keep = nodes([1.0] * 20 + [2.0] * 20)
    b.update(keep)
    for i in range(5000):
        t = Node(f"churn{i}", 0.001 + (i % 7))
        b.add(t)
        b.pick()
        t.weight = 1.0
        b.reweight(t)
        b.remove(t)
    assert len(b._heap) <= len(b._lanes) + 65
    assert all(lane.dead <= lane.live + 16 for lane in b._lanes.values())
    assert sum(lane.live for lane in b._lanes.values()) == 40
    c = counts(b, 600)
    assert all(abs(c[t.id] - 600 * t.weight / 60) <= 2 for t in keep)


# --- custom strategies ----------------------------------------------------------------------


class LowestId(Balancer):
    """A user strategy that implements only update() and pick()."""

    name = "test-lowest-id"

    def __init__(self, *, rng: random.Random | None = None) -> None:
        super().__init__(rng=rng)
        self.seen: list[list[tuple[str, float]]] = []
        self.targets: list[Target] = []

    def update(self, targets: Sequence[Target]) -> None:
        self.seen.append([(t.id, t.weight) for t in targets])
        self.targets = sorted(targets, key=lambda t: t.id)

    def pick(self, key: str | None = None) -> Target:
        if not self.targets:
            raise LookupError("no eligible backend")
        return self.targets[0]


def test_custom_update_only_subclass_gets_incremental_methods() -> None:
    """add/remove/reweight rebuild through the subclass's update(); len and `in` work."""
    b = LowestId()
    b.update([Node("m"), Node("q")])
    b.add(Node("c", 2.0))
    assert b.pick().id == "c" and len(b) == 3 and "q" in b
    b.remove(Node("c"))
    assert b.pick().id == "m" and "c" not in b
    b.reweight(Node("q", 5.0))
    assert b.seen[-1] == [("m", 1.0), ("q", 5.0)]
    with pytest.raises(ValueError, match="already a member"):
        b.add(Node("m"))
    with pytest.raises(KeyError):
        b.remove(Node("zz"))
    with pytest.raises(ValueError, match="invalid weight"):
        b.add(Node("bad", 0.0))
    assert len(b.seen) == 4  # the failed calls never reached update()


def test_custom_subclass_rejected_update_keeps_members() -> None:
    """If the subclass's update() raises, the recorded members stay those of the last success."""

    class Picky(LowestId):
        name = "test-picky"

        def update(self, targets: Sequence[Target]) -> None:
            if any(t.id.startswith("x") for t in targets):
                raise ValueError("no x please")
            super().update(targets)

    b = Picky()
    b.update([Node("a")])
    with pytest.raises(ValueError, match="no x"):
        b.add(Node("x1"))
    assert len(b) == 1 and "x1" not in b and b.pick().id == "a"


def test_repr_names_strategy_and_size() -> None:
    """repr() shows the class, the registered name and how many targets it holds."""
    b = make(WeightedRandom, nodes([1, 2, 3]))
    assert repr(b) == "<WeightedRandom 'random' targets=3>"


# --- sampling through lanes or the tree ------------------------------------------------


@pytest.fixture(params=["lanes", "tree"])
def sampling(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with draws through the lanes (few weights) and through the tree."""
    from wsclient.balancers import weighted_set as balancers

    if request.param == "tree":
        monkeypatch.setattr(balancers, "_MAX_SAMPLE_LANES", 0)
    mode: str = request.param
    return mode


@settings(max_examples=40, deadline=None)
@given(ops=OPS)
def test_lane_plan_covers_units_exactly(ops: list[tuple[str, int, float]]) -> None:
    """After any changes each lane slot owns exactly its units in lane order, like the tree."""
    b = WeightedRandom(rng=random.Random(0))
    members = apply_ops(b, ops)
    tree = b._tree
    if not members:
        assert tree.plan is None
        return
    assert tree.plan is not None  # at most 7 distinct weights
    sums, lanes, units = tree.plan
    assert sums[-1] == tree.total
    assert sorted(i for lane in lanes for i in lane) == list(range(len(members)))
    before = 0
    for lane, u in zip(lanes, units, strict=True):
        for i in lane:
            assert tree.units[i] == u
            assert tree.lane_locate(before) == (i, before)
            assert tree.lane_locate(before + u - 1)[0] == i
            before += u


def test_many_distinct_weights_fall_back_to_the_tree() -> None:
    """Past 16 distinct weights there is no lane plan; back at 16 there is one again."""
    b = WeightedRandom(rng=random.Random(0))
    ts = [Node(f"w{i}", 1.0 + i) for i in range(17)]
    b.update(ts)
    assert b._tree.plan is None
    assert {b.pick().id for _ in range(2000)} == {t.id for t in ts}
    b.remove(ts[0])
    assert b._tree.plan is not None and len(b._tree.plan[2]) == 16


def test_weighted_random_shares_both_ways(sampling: str) -> None:
    """Weights 2:1:1 give 50/25/25 % within ±2 % through lanes and through the tree."""
    b = make(WeightedRandom, nodes([2, 1, 1]), seed=7)
    assert (b._tree.plan is None) == (sampling == "tree")  # type: ignore[attr-defined]
    c = counts(b, 20_000)
    for tid, share in (("n0", 0.5), ("n1", 0.25), ("n2", 0.25)):
        assert abs(c[tid] / 20_000 - share) <= 0.02


@pytest.mark.parametrize("cls", [PowerOfTwoLeastConnections, LeastConnections])
def test_p2c_both_ways(sampling: str, cls: type[Balancer]) -> None:
    """p2c (also least-connections past its scan limit) works alike through lanes and the tree."""
    weights = [3.0] + [1.0] * 39
    targets = nodes(weights)
    b = make(cls, targets, seed=5)
    c = counts(b, 12_000)
    # Equal loads: the first, weighted candidate wins, so shares follow weights.
    assert abs(c["n0"] / 12_000 - 3 / 42) <= 0.012
    targets[7].active = 50
    assert all(b.pick().id != "n7" for _ in range(3000))


def test_wrr_order_is_edf_after_lane_compaction() -> None:
    """Picks come in deadline order even after a lane drops its dead members."""
    b = WeightedRoundRobin(rng=random.Random(9))
    rare = [Node(f"r{i}", 0.01) for i in range(40)]
    for t in rare:
        b.add(t)
    b.add(Node("busy", 5.0))
    for t in rare[:30]:  # 30 dead > 10 live + 16: the rare lane is compacted
        b.remove(t)
    last = -math.inf
    for _ in range(300):
        picked = b.pick()
        s = b._schedules[picked.id]
        # The pick happened at the target's own deadline, in increasing order.
        assert b._now == pytest.approx(s.due - s.period, rel=1e-12, abs=1e-12)
        assert b._now >= last
        last = b._now
    assert all(lane.dead == 0 for lane in b._lanes.values() if lane.live == 10)


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(["add", "remove", "reweight", "pick"]),
            st.integers(0, 30),
            st.sampled_from([0.01, 0.5, 1.0, 2.0, 3.0]),
        ),
        max_size=120,
    ),
    seed=st.integers(0, 2**32),
)
def test_wrr_always_picks_the_earliest_deadline(
    steps: list[tuple[str, int, float]], seed: int
) -> None:
    """Interleaving changes and picks, each pick is the live target due first (exact EDF)."""
    b = WeightedRoundRobin(rng=random.Random(seed))
    members: dict[str, Node] = {}
    for op, i, w in steps:
        if op == "pick":
            if not members:
                continue
            due = min(s.due for s in b._schedules.values())
            picked = b.pick()
            s = b._schedules[picked.id]
            assert s.due - s.period == pytest.approx(due, rel=1e-9, abs=1e-12)
            assert b._now == pytest.approx(due, rel=1e-9, abs=1e-12)
        else:
            apply_ops(b, [(op, i, w)], members)
    assert set(b._schedules) == set(members)


@pytest.mark.parametrize("name", ALL)
def test_extreme_weights_are_clamped_not_fatal(name: str) -> None:
    """Finite weights far outside [2**-32, 2**32] are clamped: nothing overflows, picks go on."""
    b = create_balancer(name, rng=random.Random(0))
    huge, one, tiny = Node("huge", 1e300), Node("one", 1.0), Node("tiny", 1e-310)
    b.update([huge, one, tiny])
    key = key_for(b)
    seen = Counter(b.pick(None if key is None else f"{key}-{i}").id for i in range(300))
    assert set(seen) <= {"huge", "one", "tiny"}
    if name not in ("round-robin", "ip-hash", "least-connections"):
        # Weighted strategies: the clamped 2**32 : 1 : 2**-32 still means "huge" wins.
        assert seen["huge"] == 300
    tiny.weight = 1e-320
    b.reweight(tiny)
    b.remove(huge)
    assert b.pick(key).id in {"one", "tiny"}


@pytest.mark.parametrize("cls", [RoundRobin, LeastConnections])
def test_fleet_adding_the_same_targets_does_not_move_in_lockstep(cls: type[Balancer]) -> None:
    """Built through add() alone, differently seeded instances start on different targets."""
    firsts = set()
    for seed in range(30):
        b = cls(rng=random.Random(seed))
        for t in nodes([1] * 8):
            b.add(t)
        firsts.add(b.pick().id)
    assert len(firsts) > 3


def test_round_robin_start_is_fixed_once_picking_began() -> None:
    """After the first pick an add never moves the cursor, and the newcomer is served in turn."""
    for seed in range(10):
        b = RoundRobin(rng=random.Random(seed))
        b.update(nodes([1] * 4))
        b.pick()
        cursor = b._next
        b.add(Node("late"))
        assert b._next == cursor
        assert "late" in {b.pick().id for _ in range(5)}


@settings(max_examples=40, deadline=None)
@given(
    weights=st.lists(st.sampled_from([0.3, 1.0, 2.0, 5.0]), max_size=300),
    fanout=st.sampled_from([2, 3, 128]),
)
def test_bulk_update_builds_what_adds_build(weights: list[float], fanout: int) -> None:
    """update() builds the sum tree and lanes in one pass, identical to adding one by one."""
    from wsclient.balancers import weighted_set as balancers

    old = balancers._FANOUT
    balancers._FANOUT = fanout
    try:
        targets = nodes(weights)
        bulk = WeightedRandom(rng=random.Random(0))
        bulk.update(targets)
        one_by_one = WeightedRandom(rng=random.Random(0))
        for t in targets:
            one_by_one.add(t)
        a, b = bulk._tree, one_by_one._tree
        assert a.levels == b.levels and a.units == b.units and a.slots == b.slots
        assert a.lanes == b.lanes and a.lane_pos == b.lane_pos and a.plan == b.plan
        assert bulk._slot == one_by_one._slot and len(bulk) == len(targets)
        if targets:
            # And it keeps working incrementally afterwards.
            bulk.remove(targets[0])
            one_by_one.remove(targets[0])
            assert a.levels == b.levels
    finally:
        balancers._FANOUT = old


@settings(max_examples=40, deadline=None)
@given(ops=OPS, data=st.data())
def test_ip_hash_update_by_difference_equals_rebuild(
    ops: list[tuple[str, int, float]], data: st.DataObject
) -> None:
    """update() applied as a difference to a large set gives the ring a fresh build gives."""
    base = [Node(f"base{i}", 1.0 + i % 3) for i in range(40)]
    b = IpHash()
    b.update(base)
    members = apply_ops(b, ops, {t.id: t for t in base})
    final = [Node(t.id, t.weight) for t in members.values()]
    final = data.draw(st.permutations(final))
    b.update(final)  # few differences: applied incrementally
    rebuilt = IpHash()
    rebuilt.update(list(reversed(final)))
    assert len(b._ring) == len(rebuilt._ring)
    flat = [x for bucket in b._ring.pos for x in bucket]
    assert flat == [x for bucket in rebuilt._ring.pos for x in bucket]
    assert all(b.pick(k).id == rebuilt.pick(k).id for k in RING_KEYS)
    # The objects handed out are the ones from the latest update().
    by_id = {t.id: t for t in final}
    assert all(b.pick(k) is by_id[b.pick(k).id] for k in RING_KEYS[:100])
    assert list(b._members) == [t.id for t in final]


@pytest.mark.parametrize("seed", range(12))
def test_wrr_deadlines_match_one_record_per_target(seed: int) -> None:
    """Lanes keep no per-target pick count, yet every deadline is base + picks * period exactly.

    The model is the plain EDF schedule, one record per target counting its
    picks; churn in big lanes (bulk removals, reweights between picks)
    drives the cursor's wrap-arounds, dead members at the cursor and lane
    compactions, and the picks must still follow the model to the bit.
    """
    rng = random.Random(seed)
    b = WeightedRoundRobin(rng=random.Random(seed))
    members: dict[str, Node] = {}
    picks: dict[str, int] = {}
    next_id = itertools.count()

    def model_due(tid: str) -> float:
        s = b._schedules[tid]
        return s.base + picks[tid] * s.period

    for _ in range(30):
        for _ in range(rng.randrange(40)):
            t = Node(f"t{next(next_id)}", rng.choice([0.01, 1.0, 2.0]))
            members[t.id], picks[t.id] = t, 0
            b.add(t)
        for tid in rng.sample(sorted(members), len(members) * rng.randrange(4) // 4):
            if rng.random() < 0.3:
                members[tid].weight = rng.choice([0.01, 1.0, 2.0])
                b.reweight(members[tid])
                picks[tid] = 0  # a reweighted target starts a new schedule
            else:
                b.remove(members.pop(tid))
                del picks[tid]
        for _ in range(rng.randrange(200) if members else 0):
            due = min(model_due(tid) for tid in members)
            picked = b.pick()
            assert model_due(picked.id) == due and b._now == due
            picks[picked.id] += 1
        assert all(b._schedules[tid].due == model_due(tid) for tid in members)


class _HeapOnlyWRR(WeightedRoundRobin):
    """WRR without the one-lane shortcut: every pick goes through the heap."""

    def pick(self, key: str | None = None) -> Target:
        target = super().pick(key)
        self._unsolo()
        return target


@settings(max_examples=80, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(["add", "add", "remove", "reweight", "picks"]),
            st.sampled_from([1.0, 1.0, 1.0, 3.0]),
            st.integers(0, 40),
        ),
        max_size=40,
    ),
    seed=st.integers(0, 2**32),
)
def test_wrr_one_lane_shortcut_picks_what_the_heap_picks(
    steps: list[tuple[str, float, int]], seed: int
) -> None:
    """With every target of one weight, picks skip the heap (``_solo``); mixed in with
    adds, removals and reweights (which bring the heap up to date first), the order of
    picks and the virtual time are those of the heap path, to the bit."""
    fast, slow = WeightedRoundRobin(rng=random.Random(seed)), _HeapOnlyWRR(rng=random.Random(seed))
    live: dict[str, tuple[Node, Node]] = {}
    ids = itertools.count()
    solo_picks = 0
    for op, weight, n in steps:
        if op == "add" or not live:
            tid = f"t{next(ids)}"
            live[tid] = (Node(tid, weight), Node(tid, weight))
            fast.add(live[tid][0])
            slow.add(live[tid][1])
        elif op == "remove":
            a, b = live.pop(sorted(live)[n % len(live)])
            fast.remove(a)
            slow.remove(b)
        elif op == "reweight":
            a, b = live[sorted(live)[n % len(live)]]
            a.weight = b.weight = weight
            fast.reweight(a)
            slow.reweight(b)
        else:
            for _ in range(n):
                solo_picks += fast._solo is not None
                assert fast.pick().id == slow.pick().id
                assert fast._now == slow._now
    if live:
        assert fast.pick().id == slow.pick().id
    _SOLO_PICKS.append(solo_picks)  # test_wrr_one_lane_shortcut_is_exercised reads it


_SOLO_PICKS: list[int] = []


def test_wrr_one_lane_shortcut_is_exercised() -> None:
    """The differential test above really drives the shortcut (not only the heap)."""
    if not _SOLO_PICKS:  # run on its own: the examples have not run yet
        test_wrr_one_lane_shortcut_picks_what_the_heap_picks()
    assert sum(_SOLO_PICKS) > 100
