"""What wsclient.metrics costs on the hot path: acquire+release with and without it.

``make bench`` runs it as a child (scenario ``metrics_cost``); alone:
``.venv/bin/python benchmarks/metrics_cost.py [--quick] [--json PATH]``.

Five pools over one local echo backend (one connection each, no health
checks), measured in interleaved rounds of ``conn = await pool.acquire();
pool.release(conn)``, median ns per pair:

* ``off`` and ``off_control``: never instrumented, with ``prometheus_client``,
  ``opentelemetry`` and ``wsclient.metrics`` imported ("installed but not
  enabled"); the two differ only by noise, which sets the noise band;
* ``prometheus``: a ``PrometheusCollector`` registered (the pool's own buckets);
* ``otel_noop``: ``instrument()`` with the API's no-op meter provider;
* ``otel_sdk``: ``instrument()`` with the SDK's ``MeterProvider`` and an
  in-memory reader (every lease's wait and use time buffered on the hot path,
  recorded into the SDK's histograms at the next collection);
* ``otel_sdk_lean``: the same with ``per_lease=False`` (no per-lease records).

The records moved out of the hot path still cost CPU, in whichever thread
collects: after each ``otel_sdk`` round the script collects twice, outside the
timed loop (the first flushes the round's buffers, the second finds nothing
pending), and reports the difference per pair (``collection``).

Targets: not enabled, 0 within noise (``off`` is the code path every pool
runs; its hook is one ``is None`` test, measured alone too); enabled, at
most 1 µs more per pair.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _servers import EchoServers
from pool_costs import _pool_pairs as _pairs  # the same measured loop as pool_costs.py

from wsclient import WebSocketPool

HERE = Path(__file__).resolve().parent
DEFAULT_JSON = HERE / "results" / "metrics_cost.json"
TARGET_ENABLED_NS = 1_000.0
ARMS = ("off", "off_control", "prometheus", "otel_noop", "otel_sdk", "otel_sdk_lean")
ENABLED = ARMS[2:]


def _hook_check_ns(n: int = 2_000_000) -> float:
    """The disabled hook alone: ``if self._timing is not None`` vs an empty loop body."""

    class Holder:
        __slots__ = ("_timing",)

        def __init__(self) -> None:
            self._timing: object | None = None

    holder = Holder()
    t0 = time.perf_counter_ns()
    for _ in range(n):
        pass
    empty = time.perf_counter_ns() - t0
    t0 = time.perf_counter_ns()
    for _ in range(n):
        if holder._timing is not None:
            pass
    return max(0.0, (time.perf_counter_ns() - t0 - empty) / n)


async def measure(url: str, iterations: int, rounds: int) -> dict[str, Any]:
    import prometheus_client
    from opentelemetry.metrics import NoOpMeterProvider
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from wsclient.metrics import PrometheusCollector, instrument

    pools = {
        arm: WebSocketPool(
            backends=[url], min_connections=1, max_connections=1, health_check={"enabled": False}
        )
        for arm in ARMS
    }
    reader, lean_reader = InMemoryMetricReader(), InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    lean_provider = MeterProvider(metric_readers=[lean_reader])
    flush_ns: list[float] = []  # per pair, otel_sdk: collection with the round pending
    empty_ns: list[float] = []  # the same collection with nothing pending
    rounds_ns: dict[str, list[float]] = {arm: [] for arm in ARMS}
    for pool in pools.values():
        await pool.start()
    try:
        registry = prometheus_client.CollectorRegistry()
        registry.register(PrometheusCollector(pools["prometheus"]))
        instrument(pools["otel_noop"], NoOpMeterProvider())
        instrument(pools["otel_sdk"], provider)
        instrument(pools["otel_sdk_lean"], lean_provider, pool_name="lean", per_lease=False)
        for pool in pools.values():
            await _pairs(pool, 1_000)  # warm-up
        reader.get_metrics_data()
        lean_reader.get_metrics_data()
        for r in range(rounds):
            for arm in ARMS if r % 2 == 0 else ARMS[::-1]:
                gc.collect()
                rounds_ns[arm].append(await _pairs(pools[arm], iterations))
                if arm == "otel_sdk":
                    t0 = time.perf_counter_ns()
                    reader.get_metrics_data()
                    t1 = time.perf_counter_ns()
                    reader.get_metrics_data()
                    t2 = time.perf_counter_ns()
                    flush_ns.append((t1 - t0) / iterations)
                    empty_ns.append((t2 - t1) / iterations)
                elif arm == "otel_sdk_lean":
                    lean_reader.get_metrics_data()  # its waits and connects, off the clock
                await asyncio.sleep(0)
        scraped = sum(1 for _ in registry.collect())  # the collector still answers
    finally:
        for pool in pools.values():
            await pool.close(timeout=5.0)
        provider.shutdown()
        lean_provider.shutdown()
    med = {arm: statistics.median(v) for arm, v in rounds_ns.items()}
    # Paired per round (each arm ran next to "off"): drift on a shared machine
    # moves both sides of a pair alike, so the median of the pairs' differences is
    # steadier than the difference of the medians.
    delta = {
        arm: statistics.median(a - o for a, o in zip(rounds_ns[arm], rounds_ns["off"], strict=True))
        for arm in ARMS
    }
    # Noise: how far two identical uninstrumented pools differ in one round (median
    # of |off_control - off|); the not-enabled hook is "0 within noise" below it.
    noise = statistics.median(
        abs(c - o) for c, o in zip(rounds_ns["off_control"], rounds_ns["off"], strict=True)
    )
    hook = _hook_check_ns()
    return {
        "benchmark": "metrics_cost",
        "setup": {
            "pair": "conn = await pool.acquire(); pool.release(conn)",
            "pools": "one per arm, 1 idle connection each, health checks off",
            "iterations_per_round": iterations,
            "rounds": rounds,
            "order": "arms interleaved, reversed every other round",
        },
        "rounds_ns_per_pair": rounds_ns,
        "median_ns": med,
        "min_ns": {arm: min(v) for arm, v in rounds_ns.items()},
        "delta_vs_off_ns": delta,
        "delta_is": "median over rounds of (arm - off) in the same round",
        "noise_ns": noise,
        "disabled_hook_check_ns": hook,
        "not_enabled_within_noise": 2 * hook <= noise,
        "target_enabled_ns": TARGET_ENABLED_NS,
        "meets_target": {arm: delta[arm] <= TARGET_ENABLED_NS for arm in ENABLED},
        "families_scraped": scraped,
        "collection": {
            "what": "otel_sdk: a collection after each round, outside the timed loop; "
            "ns per pair of the round (two record() calls per pair, in the collecting thread)",
            "with_round_pending_ns_per_pair": statistics.median(flush_ns),
            "nothing_pending_ns_per_pair": statistics.median(empty_ns),
            "flush_ns_per_pair": statistics.median(
                f - e for f, e in zip(flush_ns, empty_ns, strict=True)
            ),
        },
    }


def fmt_table(res: dict[str, Any], indent: str = "") -> str:
    med, delta = res["median_ns"], res["delta_vs_off_ns"]
    lines = [
        f"{indent}acquire+release, ns per pair (median of {res['setup']['rounds']} rounds; "
        "deltas paired per round)"
    ]
    for arm in ARMS:
        extra = ""
        if arm in res["meets_target"]:
            ok = "meets" if res["meets_target"][arm] else "MISSES"
            extra = f"  {delta[arm]:+7.0f} ns vs off ({ok} <= {res['target_enabled_ns']:.0f})"
        elif arm == "off_control":
            extra = f"  {delta[arm]:+7.0f} ns vs off (same code; noise {res['noise_ns']:.0f} ns)"
        lines.append(f"{indent}  {arm:12s} {med[arm]:8.0f}{extra}")
    lines.append(
        f"{indent}  disabled hook (2 per pair): {res['disabled_hook_check_ns']:.1f} ns each; "
        f"not enabled = 0 within noise: {res['not_enabled_within_noise']}"
    )
    c = res["collection"]
    lines.append(
        f"{indent}  otel_sdk records moved to collection time: {c['flush_ns_per_pair']:.0f} ns "
        "per pair, in the collecting thread (not on the hot path)"
    )
    return "\n".join(lines)


def run_as_child(results_dir: Path, quick: bool) -> dict[str, Any]:
    """For run.py: this script in a child process; its JSON."""
    out = results_dir / "metrics_cost.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--json", str(out)]
    subprocess.run(cmd + (["--quick"] if quick else []), stdout=subprocess.DEVNULL, check=True)
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="wsclient.metrics hot-path cost")
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="JSON output path")
    parser.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)  # tests
    args = parser.parse_args(argv)
    logging.getLogger("wsclient").setLevel(logging.ERROR)
    iterations, rounds = (10_000, 7) if args.quick else (20_000, 21)
    if args.smoke:
        iterations, rounds = 500, 3

    async def run() -> dict[str, Any]:
        with EchoServers(1) as servers:
            return await measure(servers.urls[0], iterations, rounds)

    res = asyncio.run(run())
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(res, indent=2) + "\n")
    print(fmt_table(res))
    print(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
