"""Cost of each balancing strategy as the number of backends grows.

    python benchmarks/balancer_costs.py [--json PATH] [--rounds N] [--weights few|distinct]

Per strategy: the median cost of one ``pick()`` at 10, 100, 1,000 and 10,000
targets, and the median cost of one ``add``, ``remove`` and ``reweight`` among
10,000 targets; then the ratio pick(10k) / pick(10), for which the target is
at most 2 (SPEC section 2, item 12: cost stays flat as the pool grows).

Picks are timed in batches of 200; the sizes take turns batch by batch, in a
shuffled order each round, so that a burst of load from a neighbour on a
shared machine hits every size alike, and the median over the 201 batches
discards the rest of the noise. The minimum is reported too: on a busy
machine it is the steadier estimate of what a pick costs. Targets have
weights 1, 2 and 3 in turn (``--weights distinct``: all different, the worst
case for the per-weight lanes) and random ``active`` counts, so
least-connections compares real loads. Runs in well under a minute.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from wsclient.balancers import Balancer, balancer_names, create_balancer

SIZES = (10, 100, 1_000, 10_000)
BATCH = 200
CHANGES = 60


@dataclass
class Node:
    id: str
    weight: float
    active: int


# "few": weights 1, 2, 3 in turn (the usual handful of integer weights);
# "distinct": every weight different, as when all backends ramp up in slow
# start at once -- the worst case for the lane-based structures.
WEIGHTS = "few"


def weight_of(i: int, n: int) -> float:
    return float(1 + i % 3) if WEIGHTS == "few" else 1.0 + i / n


def targets(n: int, rng: random.Random) -> list[Node]:
    return [
        Node(f"ws://10.{i // 250}.{i % 250}.1:8080/ws", weight_of(i, n), rng.randrange(20))
        for i in range(n)
    ]


def time_picks(b: Balancer, keys: list[str] | None) -> float:
    """Nanoseconds per pick over one batch."""
    pick = b.pick
    if keys is None:
        start = time.perf_counter_ns()
        for _ in range(BATCH):
            pick()
    else:
        start = time.perf_counter_ns()
        for key in keys:
            pick(key)
    return (time.perf_counter_ns() - start) / BATCH


def pick_costs(name: str, rounds: int) -> tuple[dict[int, float], dict[int, float]]:
    """Median and minimum nanoseconds per pick, per size."""
    rng = random.Random(1)
    balancers = {}
    for n in SIZES:
        b = create_balancer(name, rng=random.Random(n))
        b.update(targets(n, rng))
        balancers[n] = b
    samples: dict[int, list[float]] = {n: [] for n in SIZES}
    order = list(SIZES)
    for r in range(rounds):
        rng.shuffle(order)
        for n in order:
            b = balancers[n]
            keys = [f"10.{r % 256}.{i // 256}.{i % 256}" for i in range(BATCH)]
            samples[n].append(time_picks(b, keys if b.requires_key else None))
    medians = {n: statistics.median(s) for n, s in samples.items()}
    return medians, {n: min(s) for n, s in samples.items()}


def change_costs(name: str) -> dict[str, float]:
    """Median microseconds of one add, reweight and remove among 10,000 targets."""
    rng = random.Random(2)
    b = create_balancer(name, rng=random.Random(3))
    b.update(targets(SIZES[-1], rng))
    extra = [Node(f"ws://172.16.0.{i}:8080/ws", weight_of(i, CHANGES), 0) for i in range(CHANGES)]
    adds, reweights, removes = [], [], []
    for t in extra:
        start = time.perf_counter_ns()
        b.add(t)
        adds.append(time.perf_counter_ns() - start)
    for t in extra:
        t.weight = 0.5 + t.weight
        start = time.perf_counter_ns()
        b.reweight(t)
        reweights.append(time.perf_counter_ns() - start)
    for t in extra:
        start = time.perf_counter_ns()
        b.remove(t)
        removes.append(time.perf_counter_ns() - start)
    return {
        "add_us": statistics.median(adds) / 1e3,
        "reweight_us": statistics.median(reweights) / 1e3,
        "remove_us": statistics.median(removes) / 1e3,
        "max_change_us": max(adds + reweights + removes) / 1e3,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--rounds", type=int, default=201, help="pick batches per size")
    parser.add_argument(
        "--weights",
        choices=("few", "distinct"),
        default="few",
        help="target weights: 1, 2, 3 in turn (default) or all different",
    )
    args = parser.parse_args()
    global WEIGHTS
    WEIGHTS = args.weights

    results: dict[str, dict[str, float]] = {}
    for name in balancer_names():
        print(f"measuring {name} ...", file=sys.stderr, flush=True)
        picks, fastest = pick_costs(name, args.rounds)
        row = {f"pick_ns_{n}": v for n, v in picks.items()}
        row.update({f"pick_ns_min_{n}": v for n, v in fastest.items()})
        row.update(change_costs(name))
        row["pick_ratio_10k_10"] = picks[SIZES[-1]] / picks[SIZES[0]]
        row["pick_ratio_min_10k_10"] = fastest[SIZES[-1]] / fastest[SIZES[0]]
        results[name] = row

    header = (
        f"{'strategy':<23}"
        + "".join(f"{f'pick@{n}':>12}" for n in SIZES)
        + f"{'ratio':>7}{'(min)':>7}{'add':>9}{'remove':>9}{'reweight':>10}{'max':>9}"
    )
    print(
        "pick: median ns per pick; ratio: pick@10000 / pick@10, of medians and of minima;"
        " add/remove/reweight: median us among 10,000; max: slowest change (us)"
    )
    print(header)
    for name, row in results.items():
        print(
            f"{name:<23}"
            + "".join(f"{row[f'pick_ns_{n}']:>12.0f}" for n in SIZES)
            + f"{row['pick_ratio_10k_10']:>7.2f}{row['pick_ratio_min_10k_10']:>7.2f}"
            + f"{row['add_us']:>9.1f}{row['remove_us']:>9.1f}{row['reweight_us']:>10.1f}"
            + f"{row['max_change_us']:>9.1f}"
        )
    if args.json:
        doc = {"weights": WEIGHTS, "rounds": args.rounds, "strategies": results}
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
