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
(same name, ``.png``; needs matplotlib: ``pip install -e '.[bench]'``), and prints a table.
``--profile`` instead cProfiles one 16-connection window per pool kind and raw aiohttp and
writes ``results/profile-client-bound-<kind>.txt``.
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


# =============================================================================== output


def _fmt(v: Any, spec: str) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return format(v, spec)


def fmt_table(res: dict[str, Any], indent: str = "") -> str:
    lines: list[str] = []
    tp = res.get("throughput")
    if tp is not None:
        lines.append("client-bound throughput (100 B round trips; medians of rounds)")
        lines.append(
            f"{'client':<21}{'conns':>6}{'rt/s':>10}{'p50 us':>9}{'p99 us':>9}"
            f"{'cpu us/rt':>11}{'rt/s/core':>11}{'client%':>9}{'backends%':>11}{'others%':>9}"
        )
        for row in tp["rows"].values():
            if row["status"] != "ok":
                lines.append(f"{row['label']:<21}{row['status']}")
                continue
            for n, rec in row["by_conns"].items():
                extra = (
                    f" (+haproxy {rec['haproxy_cpu_pct']:.0f}%)" if "haproxy_cpu_pct" in rec else ""
                )
                lines.append(
                    f"{row['label']:<21}{n:>6}{rec['throughput']:>10,.0f}{rec['p50_us']:>9.0f}"
                    f"{rec['p99_us']:>9.0f}{rec['client_cpu_us_per_rt']:>11.1f}"
                    f"{1e6 / rec['client_cpu_us_per_rt']:>11,.0f}"
                    f"{rec['client_cpu_pct']:>9.0f}{rec['backend_cpu_pct_sum']:>11.0f}"
                    f"{rec['others_cpu_pct']:>9.0f}{extra}"
                )
        lines.append("ratios (median / median [paired per-round min-max]; targets at 16, 64)")
        groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
        for r in tp["ratios"]:
            groups.setdefault((r["num"], r["den"], r["figure"]), []).append(r)
        for (num, den, figure), recs in groups.items():
            what = f"  {LABELS[num]} / {LABELS[den]} {figure}"
            target = next((r["target"] for r in recs if "target" in r), None)
            if target is not None:
                what += f" (target {target})"
            missing = next((r["status"] for r in recs if r["ratio"] is None), None)
            if missing is not None:
                lines.append(f"{what}: {missing}")
                continue
            parts = []
            for r in recs:
                verdict = ""
                if "meets_target" in r:
                    verdict = " met" if r["meets_target"] else " MISSED"
                parts.append(
                    f"@{r['conns']} {r['ratio']:.2f} [{_fmt(r['paired_min'], '.2f')}-"
                    f"{_fmt(r['paired_max'], '.2f')}]{verdict}"
                )
            lines.append(f"{what}: " + ", ".join(parts))
        bound = [
            rec["client_cpu_pct"] for row in tp["rows"].values() for rec in row["by_conns"].values()
        ]
        back = [
            rec["backend_cpu_pct_max"]
            for row in tp["rows"].values()
            for rec in row["by_conns"].values()
        ]
        others = [
            rec["others_cpu_pct"] for row in tp["rows"].values() for rec in row["by_conns"].values()
        ]
        if bound:
            lines.append(
                f"client CPU {min(bound):.0f}-{max(bound):.0f}% of one core per row "
                f"(client-bound when >= {CLIENT_BOUND_CPU_PCT:.0f}%); busiest backend "
                f"process {max(back):.0f}% of a core; other processes on the machine "
                f"{min(others):.0f}-{max(others):.0f}% of a core ({os.cpu_count()} cores)"
            )
    mem = res.get("memory")
    if mem is not None:
        lines.append(f"memory per idle connection ({mem['conns']} connections, RSS)")
        for kind, rec in mem["kinds"].items():
            if "rss_kib_per_conn" in rec:
                lines.append(f"  {LABELS[kind]:<20} {rec['rss_kib_per_conn']:6.1f} KiB")
            else:
                lines.append(f"  {LABELS[kind]:<20} {rec['status']}")
        for r in mem["ratios"]:
            if r["ratio"] is not None:
                verdict = "met" if r["meets_target"] else "MISSED"
                lines.append(
                    f"  {LABELS[r['num']]} / {LABELS[r['den']]}: {r['ratio']:.2f} "
                    f"(target {r['target']}: {verdict})"
                )
    warm = res.get("warm")
    if warm is not None:
        lines.append(
            f"{warm['conns']:,} warm connections over {warm['backends']} backends, one process"
        )
        for kind, rec in warm["kinds"].items():
            if "idle_cpu_pct" not in rec:
                lines.append(f"  {LABELS[kind]:<20} {rec['status']}")
                continue
            verdict = "met" if rec["meets_target"] else "MISSED"
            lines.append(
                f"  {LABELS[kind]:<20} start {rec['start_s']:.1f} s, RSS "
                f"{rec['rss_bytes'] / 2**20:.0f} MiB ({rec['rss_kib_per_conn']:.1f} KiB/conn), "
                f"idle CPU {rec['idle_cpu_pct']:.1f}% of a core over {rec['window_s']:.0f} s "
                f"(target < {IDLE_CPU_TARGET_PCT:.0f}%: {verdict})"
            )
    return "\n".join(indent + line for line in lines)


def write_chart(res: dict[str, Any], path: Path) -> Path | None:
    """Throughput and client CPU per round trip, grouped by connection count."""
    tp = res.get("throughput")
    if tp is None:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib not installed (pip install -e '.[bench]'): no chart")
        return None
    rows = {k: v for k, v in tp["rows"].items() if v["status"] == "ok"}
    conns = [str(n) for n in tp["setup"]["conns"]]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / max(1, len(rows))
    for ax, key, title, scale in (
        (axes[0], "throughput", "round trips/s (thousands)", 1e-3),
        (axes[1], "client_cpu_us_per_rt", "client CPU per round trip (us)", 1.0),
    ):
        for i, row in enumerate(rows.values()):
            xs = [j + (i - (len(rows) - 1) / 2) * width for j in range(len(conns))]
            ys = [row["by_conns"].get(n, {}).get(key, 0.0) * scale for n in conns]
            ax.bar(xs, ys, width, label=row["label"])
        ax.set_xticks(range(len(conns)), [f"{n} conns" for n in conns])
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    absent = [f"{v['label']}: {v['status']}" for v in tp["rows"].values() if v["status"] != "ok"]
    if absent:
        fig.text(0.01, 0.01, "; ".join(absent), fontsize=7)
    env = res.get("environment", {})
    fig.suptitle(
        f"wsclient client-bound benchmark, 100 B echo ({env.get('date', '')}, "
        f"{env.get('cpus', '?')} CPUs, Python {env.get('python', '')})",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.04 if absent else 0, 1, 1))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


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


# The pool's round trip, layer by layer (profile mode): (kind, backends, label).
LAYERS: tuple[tuple[str, int, str], ...] = (
    ("raw-aiohttp", 3, "raw aiohttp, no heartbeat"),
    ("raw-aiohttp-hb", 3, "raw aiohttp, heartbeat=20 (as Connection sets)"),
    ("wsclient-connection", 3, "wsclient Connection (connect(), no pool)"),
    ("wsclient-held", 3, "pool, each worker holds one connection"),
    ("wsclient-aiohttp", 1, "pool, acquire/release per round trip, 1 backend"),
    ("wsclient-aiohttp", 3, "pool, acquire/release per round trip, 3 backends"),
)
PROFILED = ("wsclient-aiohttp", "wsclient-picows", "raw-aiohttp")


def profile_mode(s: Settings, status: dict[str, str], rounds: int = 5) -> dict[str, Any]:
    """Where the pool's microseconds go, two ways, at 16 connections:

    1. layers: client CPU per round trip (no profiler) of raw aiohttp, raw aiohttp with a
       heartbeat, wsclient's Connection alone, the pool with connections held, and the
       pool with an acquire/release per round trip over 1 and over 3 backends
       (``LAYERS``), alternating rounds; each difference is what that step adds.
    2. cProfile (thread CPU time) of one 3 s window per kind in ``PROFILED``: own time per
       round trip grouped by module, and the full listing in
       ``results/profile-client-bound-<kind>.txt``.
    """
    RESULTS.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"conns": 16, "layers": {}, "profiles": {}}
    with backends(3) as servers:
        urls = ",".join(srv.urls[0] for srv in servers)
        all_urls = [srv.urls[0] for srv in servers]
        layers = [(f"{kind}@{nb}", kind, nb, label) for kind, nb, label in LAYERS]
        runs: dict[str, list[dict[str, Any]]] = {key: [] for key, *_ in layers}
        for r in range(rounds):
            for key, kind, nb, _label in layers[r % len(layers) :] + layers[: r % len(layers)]:
                target = ",".join(all_urls[:nb])
                args = ("--kind", kind, "--urls", target, "--conns", "16", "--window", "1")
                runs[key].append(run_client("rt", *args))
        prev = None
        for key, _kind, _nb, label in layers:
            cpu = median([x["client_cpu_us_per_rt"] for x in runs[key]])
            out["layers"][key] = {
                "label": label,
                "client_cpu_us_per_rt": cpu,
                "added_us": None if prev is None else cpu - prev,
                "throughput": median([x["throughput"] for x in runs[key]]),
                "client_cpu_pct": median([x["client_cpu_pct"] for x in runs[key]]),
                "rounds": [x["client_cpu_us_per_rt"] for x in runs[key]],
            }
            prev = cpu
        for kind in PROFILED:
            if status[kind]:
                out["profiles"][kind] = {"status": status[kind]}
                continue
            args = ("--kind", kind, "--urls", urls, "--conns", "16", "--window", "3")
            res = run_client("rt", *args, "--profile")
            path = RESULTS / f"profile-client-bound-{kind}.txt"
            path.write_text(res["profile"])
            out["profiles"][kind] = {
                "round_trips": res["round_trips"],
                "groups": res["profile_groups"],
                "listing": str(path),
            }
    (RESULTS / "profile-client-bound.json").write_text(
        json.dumps(json_safe(out), indent=2, allow_nan=False) + "\n"
    )
    print(fmt_profile(out))
    return out


def fmt_profile(out: dict[str, Any]) -> str:
    lines = [f"client CPU per round trip by layer ({out['conns']} connections, no profiler)"]
    for rec in out["layers"].values():
        added = "" if rec["added_us"] is None else f"  ({rec['added_us']:+.1f} us)"
        lines.append(
            f"  {rec['label']:<48} {rec['client_cpu_us_per_rt']:6.1f} us{added}"
            f"  {rec['throughput']:>9,.0f} rt/s, client {rec['client_cpu_pct']:.0f}%"
        )
    for kind, prof in out["profiles"].items():
        if "groups" not in prof:
            lines.append(f"{LABELS[kind]}: {prof['status']}")
            continue
        lines.append(f"{LABELS[kind]} under cProfile: own CPU per round trip by module")
        total = sum(us for _g, us, _c in prof["groups"])
        for group, us, calls in prof["groups"]:
            lines.append(f"  {group:<46} {us:6.2f} us {us / total:6.1%} {calls:4d} calls")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short rounds, smaller sizes")
    parser.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--json", type=Path, default=RESULTS / "client_bound.json")
    parser.add_argument("--only", default=",".join(SCENARIOS))
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so every ExitStack stops the processes it started.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    s = Settings.make(mode, args.rounds)
    only = {x.strip() for x in args.only.split(",") if x.strip()}
    if not only or only - set(SCENARIOS):
        parser.error(f"--only takes names from: {', '.join(SCENARIOS)}")
    status = availability()
    if args.profile:
        profile_mode(s, status)
        return 0
    t0 = time.monotonic()
    res: dict[str, Any] = {"mode": mode, "environment": environment()}
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
