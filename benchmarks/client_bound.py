"""Client-bound benchmarks: the pool against raw client libraries where the CLIENT is the
bottleneck (``make bench`` runs it from ``run.py``; on its own:
``.venv/bin/python benchmarks/client_bound.py [--quick] [--json PATH]``).

1. throughput  3 picows+uvloop echo backends, one process each; 100-byte binary round
               trips at 1, 16 and 64 connections (one worker per connection) for every
               client kind in ``KINDS``; a fresh client process per run
               (``_bench_clients.py rt``), the kinds taking turns in each round (the order
               rotates from round to round); medians of the rounds. Each run also reads
               its own CPU time and the backends' (and HAProxy's), so the table shows
               whether the client really was the bottleneck.
2. memory      RSS growth per idle connection, 1,000 connections, a fresh process per
               kind: each pool transport next to its raw library.
3. warm        10,000 warm pooled connections over 10 backends (10 backend processes) in
               one client process: start time, RSS, idle CPU over a 20 s window (one
               default heartbeat interval: every connection pings once in it).

``wsclient (picows)`` runs only when the installed wsclient accepts ``transport="picows"``
(``_bench_clients.py probe``); otherwise its rows say "not available" and why. The HAProxy
hop (raw aiohttp through ``haproxy``) is installed with apt-get when missing (as root) and
stopped by PID afterwards; without it its rows say why.

Writes JSON (``--json``, default ``results/client_bound.json``) and a PNG chart beside it
(same name, ``.png``; needs matplotlib: ``pip install -e '.[bench]'``), and prints a table
(both from ``_client_bound_report.py``). ``profile_hot_path.py`` profiles the same setting.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _client_bound_report import fmt_table, write_chart
from _haproxy import HAProxy, ensure_haproxy
from _results import json_safe
from _servers import EchoServers

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
CLIENT = HERE / "_bench_clients.py"

KINDS: tuple[str, ...] = (
    "wsclient-aiohttp",
    "wsclient-picows",
    "raw-aiohttp",
    "raw-picows",
    "websockets",
    "haproxy-aiohttp",
)
LABELS = {
    "wsclient-aiohttp": "wsclient (aiohttp)",
    "wsclient-picows": "wsclient (picows)",
    "raw-aiohttp": "raw aiohttp",
    "raw-picows": "raw picows",
    "websockets": "websockets",
    "haproxy-aiohttp": "aiohttp via HAProxy",
}
# (pool kind, memory baseline)
MEMORY_PAIRS: tuple[tuple[str, str], ...] = (
    ("wsclient-aiohttp", "raw-aiohttp"),
    ("wsclient-picows", "raw-picows"),
)
# The targets at 16 and 64 connections: (numerator, denominator, figure, bound).
TARGET_CONNS = (16, 64)
TARGETS: tuple[tuple[str, str, str, str, float], ...] = (
    ("wsclient-aiohttp", "raw-aiohttp", "throughput", ">=", 0.95),
    ("wsclient-aiohttp", "raw-aiohttp", "client_cpu_us_per_rt", "<=", 1.10),
    ("wsclient-picows", "raw-picows", "throughput", ">=", 0.90),
    ("wsclient-picows", "haproxy-aiohttp", "throughput", ">=", 1.25),
)
# Shown for context, no target.
CONTEXT_RATIOS: tuple[tuple[str, str, str], ...] = (
    ("raw-picows", "raw-aiohttp", "throughput"),
    ("websockets", "raw-aiohttp", "throughput"),
    ("haproxy-aiohttp", "raw-aiohttp", "throughput"),
)
MEMORY_TARGET = 1.15
IDLE_CPU_TARGET_PCT = 10.0
CLIENT_BOUND_CPU_PCT = 90.0  # the client used at least this much of one core


@dataclass(frozen=True)
class Settings:
    mode: str
    conns: tuple[int, ...]
    rounds: int
    warmup: float
    window: float
    memory_conns: int
    warm_conns: int
    warm_backends: int
    warm_window: float

    @classmethod
    def make(cls, mode: str, rounds: int | None = None) -> Settings:
        if mode == "smoke":
            return cls(mode, (2,), rounds or 1, 0.05, 0.2, 20, 40, 2, 0.3)
        if mode == "quick":
            return cls(mode, (1, 16, 64), rounds or 2, 0.15, 0.5, 300, 1_000, 10, 3.0)
        return cls(mode, (1, 16, 64), rounds or 3, 0.2, 0.7, 1_000, 10_000, 10, 20.0)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def median(values: Sequence[float]) -> float:
    clean = [v for v in values if isinstance(v, int | float) and math.isfinite(v)]
    return statistics.median(clean) if clean else float("nan")


def run_client(command: str, *args: str, timeout: float = 180.0) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(CLIENT), command, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"client {command} {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


@contextmanager
def backends(count: int) -> Iterator[list[EchoServers]]:
    """``count`` picows echo backends, one process each, started together."""
    with ExitStack() as stack:
        servers = [EchoServers(1, impl="picows") for _ in range(count)]
        for s in servers:
            stack.callback(s.stop)
            s.start_async()
        for s in servers:
            s.wait_ready()
        yield servers


def availability() -> dict[str, str]:
    """kind -> "" when it can run, else why not (haproxy is checked when it starts)."""
    probe = run_client("probe")
    out = {kind: "" for kind in KINDS}
    if not probe["available"]:
        out["wsclient-picows"] = f"not available ({probe['reason']})"
    try:
        import picows  # noqa: F401
    except ImportError as exc:
        out["raw-picows"] = out["wsclient-picows"] = f"not available: {exc}"
    return out


# =============================================================================== scenarios


def bench_throughput(
    s: Settings, status: dict[str, str], servers: list[EchoServers]
) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    with ExitStack() as stack:
        urls = [srv.urls[0] for srv in servers]
        backend_pids = [srv.pid for srv in servers]
        proxy: HAProxy | None = None
        binary, why = ensure_haproxy()
        if binary is None:
            status["haproxy-aiohttp"] = f"not available: {why}"
        else:
            proxy = HAProxy(binary, [srv.ports[0] for srv in servers])
            stack.callback(proxy.stop)  # also cleans up after a start() that failed
            proxy.start()
            log(f"haproxy pid {proxy.pid} on {proxy.url}")
        kinds = [k for k in KINDS if not status[k]]
        for r in range(s.rounds):
            order = kinds[r % len(kinds) :] + kinds[: r % len(kinds)]
            for n in s.conns:
                for kind in order:
                    watch = list(backend_pids)
                    target = urls
                    if kind == "haproxy-aiohttp":
                        assert proxy is not None
                        watch.append(proxy.pid)
                        target = [proxy.url]
                    res = run_client(
                        "rt",
                        "--kind",
                        "raw-aiohttp" if kind == "haproxy-aiohttp" else kind,
                        "--urls",
                        ",".join(target),
                        "--conns",
                        str(n),
                        "--warmup",
                        str(s.warmup),
                        "--window",
                        str(s.window),
                        "--watch",
                        ",".join(map(str, watch)),
                    )
                    cpu = [res["watched_cpu_pct"][str(p)] for p in backend_pids]
                    res.update(
                        kind=kind,
                        round=r,
                        backend_cpu_pct_max=max(cpu),
                        backend_cpu_pct_sum=sum(cpu),
                        haproxy_cpu_pct=(
                            res["watched_cpu_pct"][str(proxy.pid)]
                            if kind == "haproxy-aiohttp" and proxy is not None
                            else None
                        ),
                    )
                    runs.append(res)
                    log(
                        f"  round {r} {n:>2} conns {LABELS[kind]:<20} "
                        f"{res['throughput']:>8.0f} rt/s p50 {res['p50_us']:>6.0f} us "
                        f"cpu/rt {res['client_cpu_us_per_rt']:5.1f} us client "
                        f"{res['client_cpu_pct']:3.0f}% backends {sum(cpu):3.0f}% "
                        f"others {res['others_cpu_pct']:3.0f}%"
                    )
    return summarise_throughput(runs, s, status)


def summarise_throughput(
    runs: list[dict[str, Any]], s: Settings, status: dict[str, str]
) -> dict[str, Any]:
    rows: dict[str, dict[str, Any]] = {}
    for kind in KINDS:
        rows[kind] = {"label": LABELS[kind], "status": status[kind] or "ok", "by_conns": {}}
        for n in s.conns:
            mine = [r for r in runs if r["kind"] == kind and r["conns"] == n]
            if not mine:
                continue
            rec = {
                key: median([r[key] for r in mine])
                for key in (
                    "throughput",
                    "p50_us",
                    "p99_us",
                    "client_cpu_us_per_rt",
                    "client_cpu_pct",
                    "backend_cpu_pct_max",
                    "backend_cpu_pct_sum",
                    "others_cpu_pct",
                )
            }
            if kind == "haproxy-aiohttp":
                rec["haproxy_cpu_pct"] = median([r["haproxy_cpu_pct"] for r in mine])
            rec["rounds"] = len(mine)
            rows[kind]["by_conns"][str(n)] = rec
    ratios: list[dict[str, Any]] = []
    for num, den, figure, op, bound in TARGETS:
        for n in s.conns:
            ratios.append(
                _ratio(runs, rows, num, den, figure, n, op, bound if n in TARGET_CONNS else None)
            )
    for num, den, figure in CONTEXT_RATIOS:
        for n in s.conns:
            ratios.append(_ratio(runs, rows, num, den, figure, n, None, None))
    return {
        "setup": {
            "backends": "3 picows echo servers on uvloop, one process each",
            "payload_bytes": 100,
            "conns": list(s.conns),
            "rounds": s.rounds,
            "warmup_s": s.warmup,
            "window_s": s.window,
            "client_loop": "uvloop",
            "pool_options": "min_connections=max_connections=n, health_check.enabled=False, "
            "every other option at its default (weighted-round-robin, heartbeat 20 s)",
            "raw": "one connection per worker; library defaults (aiohttp: no heartbeat)",
            "round_trip": "pool: async with pool.acquire() as c: send + receive; raw: send + "
            "receive on the worker's own connection",
        },
        "rows": rows,
        "ratios": ratios,
        "runs": runs,
    }


def _ratio(
    runs: list[dict[str, Any]],
    rows: dict[str, dict[str, Any]],
    num: str,
    den: str,
    figure: str,
    n: int,
    op: str | None,
    bound: float | None,
) -> dict[str, Any]:
    a = rows[num]["by_conns"].get(str(n))
    b = rows[den]["by_conns"].get(str(n))
    rec: dict[str, Any] = {"num": num, "den": den, "figure": figure, "conns": n}
    if a is None or b is None:
        rec["ratio"] = None
        rec["status"] = rows[num]["status"] if a is None else rows[den]["status"]
        return rec
    rec["ratio"] = a[figure] / b[figure]
    # Paired per round: how far the round-by-round ratios spread.
    paired = []
    for r in sorted({x["round"] for x in runs}):
        x = [v[figure] for v in runs if v["kind"] == num and v["conns"] == n and v["round"] == r]
        y = [v[figure] for v in runs if v["kind"] == den and v["conns"] == n and v["round"] == r]
        if x and y and y[0]:
            paired.append(x[0] / y[0])
    rec["paired_min"] = min(paired) if paired else None
    rec["paired_max"] = max(paired) if paired else None
    if op is not None and bound is not None:
        rec["target"] = f"{op} {bound}"
        rec["meets_target"] = rec["ratio"] >= bound if op == ">=" else rec["ratio"] <= bound
    return rec


def bench_memory(s: Settings, status: dict[str, str], servers: list[EchoServers]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "conns": s.memory_conns,
        "method": "fresh process per kind; /proc/self/statm RSS before and after opening "
        "n connections (after a 3-connection warm-up open/close), divided by n; pool: "
        "min=max=n, health checks off, default heartbeat",
        "kinds": {},
        "ratios": [],
    }
    urls = ",".join(srv.urls[0] for srv in servers)
    for pool_kind, raw_kind in MEMORY_PAIRS:
        for kind in (raw_kind, pool_kind):
            if status[kind]:
                out["kinds"][kind] = {"status": status[kind]}
                continue
            res = run_client("mem", "--kind", kind, "--urls", urls, "--conns", str(s.memory_conns))
            out["kinds"][kind] = res
            log(f"  {LABELS[kind]:<20} {res['rss_kib_per_conn']:6.1f} KiB per connection")
        a, b = out["kinds"][pool_kind], out["kinds"][raw_kind]
        ratio = (
            a["rss_kib_per_conn"] / b["rss_kib_per_conn"]
            if "rss_kib_per_conn" in a and "rss_kib_per_conn" in b
            else None
        )
        out["ratios"].append(
            {
                "num": pool_kind,
                "den": raw_kind,
                "ratio": ratio,
                "target": f"<= {MEMORY_TARGET}",
                "meets_target": None if ratio is None else ratio <= MEMORY_TARGET,
            }
        )
    return out


def bench_warm(s: Settings, status: dict[str, str], servers: list[EchoServers]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "conns": s.warm_conns,
        "backends": s.warm_backends,
        "window_s": s.warm_window,
        "method": "one client process; WebSocketPool(min=max=n) with every other option at "
        "its default (heartbeat 20 s, health checks on); start = start() until n idle; "
        "idle CPU = getrusage over the window / window; backends in their own processes",
        "target_idle_cpu_pct": IDLE_CPU_TARGET_PCT,
        "kinds": {},
    }
    urls = ",".join(srv.urls[0] for srv in servers)
    for kind in ("wsclient-aiohttp", "wsclient-picows"):
        if status[kind]:
            out["kinds"][kind] = {"status": status[kind]}
            continue
        res = run_client(
            "warm",
            "--kind",
            kind,
            "--urls",
            urls,
            "--conns",
            str(s.warm_conns),
            "--window",
            str(s.warm_window),
            timeout=600,
        )
        res["meets_target"] = res["idle_cpu_pct"] < IDLE_CPU_TARGET_PCT
        out["kinds"][kind] = res
        log(
            f"  {LABELS[kind]:<20} start {res['start_s']:.1f} s, RSS "
            f"{res['rss_bytes'] / 2**20:.0f} MiB, idle CPU {res['idle_cpu_pct']:.1f}%"
        )
    return out


def environment() -> dict[str, Any]:
    import aiohttp

    env: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%MZ"),
        "python": sys.version.split()[0],
        "aiohttp": aiohttp.__version__,
        "cpus": os.cpu_count(),
        "loadavg_start": list(os.getloadavg()),
    }
    for mod in ("picows", "uvloop", "websockets"):
        try:
            env[mod] = __import__(mod).__version__
        except (ImportError, AttributeError):
            env[mod] = None
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE
    )
    env["git_commit"] = commit.stdout.strip() or None
    return env


# =============================================================================== main


SCENARIOS = ("throughput", "memory", "warm")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short rounds, smaller sizes")
    parser.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--json", type=Path, default=RESULTS / "client_bound.json")
    parser.add_argument("--only", default=",".join(SCENARIOS))
    args = parser.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so every ExitStack stops the processes it started.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    s = Settings.make(mode, args.rounds)
    only = {x.strip() for x in args.only.split(",") if x.strip()}
    if not only or only - set(SCENARIOS):
        parser.error(f"--only takes names from: {', '.join(SCENARIOS)}")
    status = availability()
    t0 = time.monotonic()
    res: dict[str, Any] = {
        "mode": mode,
        "environment": environment(),
        "labels": LABELS,
        "limits": {
            "client_bound_cpu_pct": CLIENT_BOUND_CPU_PCT,
            "idle_cpu_target_pct": IDLE_CPU_TARGET_PCT,
        },
    }
    # One set of backend processes for every scenario: the first 3 serve throughput and
    # memory, all of them the warm connections (idle ones cost no CPU meanwhile).
    with backends(max(3, s.warm_backends if "warm" in only else 3)) as servers:
        if "throughput" in only:
            log("client-bound throughput")
            res["throughput"] = bench_throughput(s, status, servers[:3])
        if "memory" in only:
            log("memory per idle connection")
            res["memory"] = bench_memory(s, status, servers[:3])
        if "warm" in only:
            log(f"{s.warm_conns} warm connections")
            res["warm"] = bench_warm(s, status, servers[: s.warm_backends])
    res["environment"]["loadavg_end"] = list(os.getloadavg())
    res["seconds"] = round(time.monotonic() - t0, 1)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(json_safe(res), indent=2, allow_nan=False) + "\n")
    chart = write_chart(res, args.json.with_suffix(".png"))
    print(fmt_table(res))
    print(f"results: {args.json}" + (f", chart: {chart}" if chart else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
