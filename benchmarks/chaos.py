"""Chaos soak: ``make chaos``, or ``python benchmarks/chaos.py --duration 60 [--seed N]``.

Runs the chaos engine of ``tests/test_chaos.py`` (imported from there, so the fast tests
and the soak exercise exactly the same code) for ``--duration`` seconds: random faults
on 3-5 in-process backends (half behind a fault proxy) under concurrent
acquire/send/receive/release traffic, with the pool's invariants checked every few
milliseconds. Then it heals everything, checks that the pool recovers, closes it and
checks that no socket and no task is left.

Memory is sampled every second (after ``gc.collect()``): RSS from /proc/self/statm and
the bytes tracemalloc sees allocated. The process holds the client *and* the servers,
so a leak on either side shows. "Flat" compares the median of the last quarter of the
samples with the median of the second quarter (the first quarter is warm-up: caches,
connection buffers, interned strings):

* tracemalloc: growth > 10 % *and* > 512 KiB is a violation. It counts live Python
  allocations exactly (tracing starts with the run, so the figure is the run's own
  working set, ~1 MiB), which makes it the leak detector. Between the two quarters of
  a 60 s run lie ~30 s and, with tracing on, ~10 000 leases and a few hundred
  reconnects, so 512 KiB is ~50 bytes per lease: one leaked object per lease, or a
  few KiB per connection, is caught. Runs without a leak move by 0.05-0.1 MiB (how
  many connections and proxied streams happen to be open at the sample), so the bound
  has a ~5x margin. The allocation sites that grew most are printed either way.
* RSS: growth > 10 % *and* > 8 MiB is a violation. RSS also moves with the allocator
  (arenas kept after a burst, fragmentation), ~1 MiB in a clean run, so only a large,
  sustained rise means something; the traced figure is the precise one.

The soak prints a table (faults by kind, acquires served, errors by type, acquire
latency, leaked sockets, memory, invariant violations), writes
``benchmarks/results/chaos-<UTC timestamp>.json`` and exits 1 on any invariant
violation, leak or memory growth over the bounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import platform
import random
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
sys.path.insert(0, str(ROOT))  # the engine lives in tests/test_chaos.py

from tests.test_chaos import (  # noqa: E402
    ChaosOptions,
    ChaosReport,
    ChaosRun,
    memory_growth,
)

TRACED_LIMIT_PCT = 10.0
TRACED_LIMIT_BYTES = 512 << 10
RSS_LIMIT_PCT = 10.0
RSS_LIMIT_BYTES = 8 << 20
MIB = 1 << 20


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of chaos")
    parser.add_argument("--seed", type=int, default=None, help="default: random (printed)")
    parser.add_argument("--backends", type=int, default=4, choices=range(3, 6), metavar="{3..5}")
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--max-connections", type=int, default=12)
    parser.add_argument("--min-connections", type=int, default=4)
    parser.add_argument("--proxied", type=int, default=None, help="backends behind a proxy")
    parser.add_argument("--cancel", type=float, default=0.1, help="chance a lease is cancelled")
    parser.add_argument("--memory-interval", type=float, default=1.0)
    parser.add_argument("--verbose", action="store_true", help="show wsclient/aiohttp logs")
    args = parser.parse_args(argv)
    if args.duration <= 0:
        parser.error("--duration must be > 0")
    return args


def quiet_logs(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.ERROR)
    if not verbose:
        # BackendServer answering a handshake the client already gave up on (the
        # stall_handshake fault) logs "Cannot write to closing transport": expected.
        logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
        logging.getLogger("wsclient").setLevel(logging.CRITICAL)


async def soak(opts: ChaosOptions) -> ChaosReport:
    run = ChaosRun(opts)
    task = asyncio.create_task(run.run())
    start = time.monotonic()
    while not task.done():
        await asyncio.wait([task], timeout=10.0)
        if not task.done():
            r = run.report
            print(
                f"  t={time.monotonic() - start:5.1f}s  faults {sum(r.faults.values()):5d}  "
                f"acquires {r.acquires_served:7d}  round trips {r.round_trips:7d}  "
                f"violations {r.violation_count}",
                flush=True,
            )
    return task.result()


def memory_verdict(report: ChaosReport) -> tuple[dict[str, float] | None, list[str]]:
    growth = memory_growth(report.memory)
    problems: list[str] = []
    if growth is None:
        return None, problems
    traced_pct, traced_bytes = growth["traced_growth_pct"], growth["traced_growth_bytes"]
    if traced_pct > TRACED_LIMIT_PCT and traced_bytes > TRACED_LIMIT_BYTES:
        problems.append(
            f"tracemalloc grew {traced_bytes / MIB:.2f} MiB ({traced_pct:.1f} %) "
            "from the second to the last quarter"
        )
    rss_pct, rss_bytes = growth["rss_growth_pct"], growth["rss_growth_bytes"]
    if rss_pct > RSS_LIMIT_PCT and rss_bytes > RSS_LIMIT_BYTES:
        problems.append(
            f"RSS grew {rss_bytes / MIB:.1f} MiB ({rss_pct:.1f} %) from the second to the "
            "last quarter"
        )
    return growth, problems


def table(rows: list[tuple[str, str]], title: str) -> str:
    width = max(len(k) for k, _ in rows) if rows else 10
    lines = [title, "-" * len(title)]
    lines += [f"  {k:<{width}}  {v}" for k, v in rows]
    return "\n".join(lines)


def render(report: ChaosReport, growth: dict[str, float] | None, memory_problems: list[str]) -> str:
    out: list[str] = []
    o = report.options
    out.append(
        f"chaos soak: seed {report.seed}, {o['duration']:.0f} s, {o['backends']} backends "
        f"({report.options.get('proxied_effective', '?')} behind a proxy), {o['workers']} workers, "
        f"max_connections {o['max_connections']}, balancer {report.pool_config['load_balancing']}"
    )
    out.append("")
    faults = sorted(report.faults.items(), key=lambda kv: (-kv[1], kv[0]))
    out.append(table([(k, str(v)) for k, v in faults], "faults injected by kind"))
    out.append(
        f"  {'total':<{max((len(k) for k, _ in faults), default=5)}}  {sum(report.faults.values())}"
    )
    out.append("")
    out.append(
        table(
            [(k, str(v)) for k, v in sorted(report.errors.items(), key=lambda kv: -kv[1])]
            or [("(none)", "")],
            "errors raised to callers, by stage and type",
        )
    )
    out.append("")
    mem_rows: list[tuple[str, str]] = []
    if report.memory:
        first, last = report.memory[0], report.memory[-1]
        mem_rows.append(("RSS start -> end", f"{first[1] / MIB:.1f} -> {last[1] / MIB:.1f} MiB"))
        mem_rows.append(
            ("tracemalloc start -> end", f"{first[2] / MIB:.2f} -> {last[2] / MIB:.2f} MiB")
        )
    if growth is not None:
        mem_rows.append(
            (
                "RSS growth q2 -> q4",
                f"{growth['rss_growth_bytes'] / MIB:+.2f} MiB ({growth['rss_growth_pct']:+.1f} %)"
                f"  [limit {RSS_LIMIT_PCT:.0f} % and {RSS_LIMIT_BYTES / MIB:.0f} MiB]",
            )
        )
        mem_rows.append(
            (
                "tracemalloc growth q2 -> q4",
                f"{growth['traced_growth_bytes'] / MIB:+.3f} MiB "
                f"({growth['traced_growth_pct']:+.1f} %)"
                f"  [limit {TRACED_LIMIT_PCT:.0f} % and {TRACED_LIMIT_BYTES >> 10} KiB]",
            )
        )
    summary = [
        ("acquire attempts", str(report.acquire_attempts)),
        ("acquires served", str(report.acquires_served)),
        ("round trips (echo verified)", str(report.round_trips)),
        ("leases cancelled", str(sum(report.cancelled.values()))),
        ("unsolicited messages skipped", str(report.unsolicited_seen)),
        ("receive timeouts (explained)", str(report.explained_timeouts)),
        ("max acquire latency", f"{report.max_acquire_latency * 1000:.1f} ms"),
        ("p99 acquire latency", f"{report.p99_acquire_latency * 1000:.1f} ms"),
        ("max event-loop stall", f"{report.max_loop_lag * 1000:.1f} ms"),
        ("peak server-side sockets", str(report.peak_server_sockets)),
        ("invariant checks run", f"{report.invariant_checks} (+{report.socket_checks} socket)"),
        ("close() took", f"{report.close_duration} s"),
        ("leaked sockets (must be 0)", str(report.leaked_sockets)),
        ("leaked tasks (must be 0)", str(len(report.leaked_tasks))),
        *mem_rows,
        ("invariant violations (must be 0)", str(report.violation_count)),
        ("memory verdict", "; ".join(memory_problems) or "flat"),
    ]
    out.append(table(summary, "summary"))
    if report.memory_top_growth:
        out.append("")
        out.append("tracemalloc: top allocation sites by growth, second quarter -> end")
        out.extend(f"  {line}" for line in report.memory_top_growth[:5])
    if report.violations:
        out.append("")
        out.append("violations (first of each kind):")
        out.extend(f"  {v}" for v in report.violations)
    return "\n".join(out)


def write_json(report: ChaosReport, growth: dict[str, float] | None, problems: list[str]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS / f"chaos-{stamp}.json"
    payload: dict[str, Any] = {
        "kind": "chaos-soak",
        "timestamp": stamp,
        "python": platform.python_version(),
        "platform": platform.platform(),
        **report.to_json(),
        "memory_growth": growth,
        "memory_limits": {
            "traced_pct": TRACED_LIMIT_PCT,
            "traced_bytes": TRACED_LIMIT_BYTES,
            "rss_pct": RSS_LIMIT_PCT,
            "rss_bytes": RSS_LIMIT_BYTES,
        },
        "memory_problems": problems,
        "passed": report.ok and not problems,
    }
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_logs(args.verbose)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    opts = ChaosOptions(
        seed=seed,
        duration=args.duration,
        backends=args.backends,
        proxied=args.proxied,
        workers=args.workers,
        max_connections=args.max_connections,
        min_connections=args.min_connections,
        cancel_probability=args.cancel,
        memory_interval=args.memory_interval,
    )
    print(f"chaos soak: seed {seed} (rerun with --seed {seed}), {args.duration:.0f} s", flush=True)
    report = asyncio.run(soak(opts))
    growth, problems = memory_verdict(report)
    print()
    print(render(report, growth, problems))
    path = write_json(report, growth, problems)
    print(f"\nresults: {path.relative_to(ROOT)}")
    if not report.ok or problems:
        print(f"FAILED (seed {seed})")
        return 1
    print("PASSED")
    return 0


if __name__ == "__main__":
    sys.exit(main())
