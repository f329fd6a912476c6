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
cursor, and the heap orders only lanes. A lane holds the targets themselves
and, beside them in two arrays, each one's first deadline and an offset; with
the count of the cursor's laps they give how often it was picked, so its
deadline is ``first + picks * period`` (the period the lane's). A pick moves
the cursor and reads two numbers next to the previous pick's instead of a
record and its number objects per target: among 10,000 targets those were
cache misses on every pick. A removal finds its target by bisection: every
deadline lies within one period of the lane's first, which leaves a few
candidate pick counts. A pick is O(log k) for k distinct
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

from wsclient.balancers.base import (
    BALANCERS,
    Balancer,
    Target,
    balancer_names,
    create_balancer,
    register_balancer,
)
from wsclient.balancers.ip_hash import IpHash
from wsclient.balancers.round_robin import RoundRobin, WeightedRoundRobin
from wsclient.balancers.weighted_set import (
    LeastConnections,
    PowerOfTwoLeastConnections,
    WeightedRandom,
)

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
