"""wsclient benchmark suite: ``make bench`` (or ``.venv/bin/python benchmarks/run.py``).

Scenarios, all against real aiohttp echo servers on 127.0.0.1 that run in a separate
process (see ``_servers.py``), so this process's event loop is the client alone:

1. throughput    16 workers, 16 connections over 3 backends: raw aiohttp vs the pool
                 (round-robin and weighted-round-robin), rounds interleaved.
2. acquire       acquire+release cost with no I/O vs an asyncio.Queue get/put pair.
3. picks         pure balancer pick() cost for 3..1000 targets, every strategy.
4. failover      SIGKILL one of 3 backend processes under traffic; time until the pool
                 stops picking it (default config, and fast heartbeat/health checks).
5. memory        RSS and tracemalloc per connection, 400 pooled vs 400 raw (child
                 processes, so earlier scenarios do not pollute the numbers).
6. pool_costs    ``pool_costs.py`` in a child process: acquire+release vs a Queue pair,
                 2,000 queued acquires, membership changes and picks up to 10,000
                 backends (its JSON is embedded under ``"pool_costs"``).
7. request      ``request_vs_acquire.py`` in a child process: pool.request vs
                 acquire/send/receive/release, 256 callers over 8 connections
                 (its JSON is embedded under ``"request_vs_acquire"``).
8. metrics_cost  ``metrics_cost.py`` in a child process: acquire+release with
                 wsclient.metrics not enabled and enabled (``"metrics_cost"``).
9. client_bound  ``client_bound.py`` in a child process: client-bound throughput, p50/p99
                 and CPU per round trip of the pool (both transports) against raw
                 aiohttp, raw picows, ``websockets`` and an HAProxy hop; memory per idle
                 connection per transport; 10,000 warm connections (its JSON is embedded
                 under ``"client_bound"``, its chart written beside ours).

Results: ``benchmarks/results/bench-<UTC timestamp>.json`` and ``latest.json``; a table on
stdout. ``--quick`` is a ~75 s smoke run; ``--profile`` runs cProfile over one pooled and
one raw throughput round instead of the suite.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import functools
import gc
import io
import json
import logging
import os
import platform
import pstats
import random
import resource
import signal
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from _client_bound_report import fmt_table as client_bound_table
from _client_bound_report import write_chart as client_bound_chart
from _results import json_safe
from _servers import EchoServers
from metrics_cost import fmt_table as metrics_cost_table
from metrics_cost import run_as_child as metrics_cost_child
from pool_costs import fmt_table as pool_costs_table

import wsclient
from wsclient import WebSocketPool
from wsclient import event_names as ev
from wsclient.balancers import create_balancer, ip_hash
from wsclient.errors import WSClientError

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

N_BACKENDS = 3
N_CONNS = 16
PAYLOAD = "x" * 64  # 64-byte text frame, echoed back
SAMPLE_EVERY = 16  # latency: time one round trip in 16 (same in every arm)
TARGET_RATIO = 0.95
POOL_COMMON: dict[str, Any] = {
    "min_connections": N_CONNS,
    "max_connections": N_CONNS,
    # Active probes open extra WebSockets on a timer; off so a round measures the hot
    # path only. Everything else (heartbeat 20 s, breaker, ...) is the default.
    "health_check": {"enabled": False},
}
ARMS: tuple[str, ...] = ("raw", "raw-hb", "pooled-rr", "pooled-wrr", "pooled-rr-nohb")
ARM_BALANCER = {
    "pooled-rr": "round-robin",
    "pooled-wrr": "weighted-round-robin",
    "pooled-rr-nohb": "round-robin",
}
# Each pooled arm is compared with the raw arm that runs the same heartbeat:
# the pool's default is a 20 s heartbeat, so raw-hb is raw aiohttp with heartbeat=20.
ARM_BASELINE = {"pooled-rr": "raw-hb", "pooled-wrr": "raw-hb", "pooled-rr-nohb": "raw"}
ARM_POOL_EXTRA: dict[str, dict[str, Any]] = {"pooled-rr-nohb": {"heartbeat": {"interval": None}}}
RAW_HEARTBEAT = {"raw": None, "raw-hb": 20.0}
STRATEGIES: tuple[str, ...] = (
    "round-robin",
    "weighted-round-robin",
    "least-connections",
    "least-connections-p2c",
    "ip-hash",
    "random",
)
PICK_SIZES: tuple[int, ...] = (3, 10, 100, 1000)


@dataclass(frozen=True)
class Settings:
    quick: bool
    rounds: int
    round_seconds: float
    warmup_seconds: float
    acquire_iterations: int
    acquire_repeats: int
    pick_min_seconds: float
    pick_repeats: int
    failover_trials: int
    failover_cap_seconds: float
    memory_connections: int

    @classmethod
    def make(cls, quick: bool, rounds: int | None) -> Settings:
        if quick:
            return cls(True, rounds or 3, 0.6, 0.2, 5_000, 3, 0.01, 3, 1, 8.0, 100)
        return cls(False, rounds or 5, 2.0, 0.3, 20_000, 7, 0.04, 5, 3, 15.0, 400)


def now_utc() -> datetime:
    return datetime.now(UTC)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (nan when empty)."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, round(q / 100.0 * len(sorted_values) + 0.5) - 1))
    return sorted_values[k]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


# =============================================================================== 1. throughput


@dataclass
class RoundState:
    """Shared by the workers of one round; the driver flips ``recording`` and ``stop``."""

    workers: int
    counts: list[int] = field(default_factory=list)
    samples: list[float] = field(default_factory=list)
    recording: bool = False
    stop: bool = False

    def __post_init__(self) -> None:
        self.counts = [0] * self.workers


WorkerFactory = Callable[[RoundState, int], Coroutine[Any, Any, None]]


async def raw_worker(ws: aiohttp.ClientWebSocketResponse, st: RoundState, idx: int) -> None:
    perf = time.perf_counter
    counts, samples = st.counts, st.samples
    text = aiohttp.WSMsgType.TEXT
    n = 0
    while not st.stop:
        sample = n % SAMPLE_EVERY == 0
        t0 = perf() if sample else 0.0
        await ws.send_str(PAYLOAD)
        msg = await ws.receive()
        if sample and st.recording:
            samples.append(perf() - t0)
        if msg.type is not text:
            raise RuntimeError(f"raw worker {idx}: unexpected {msg.type!r}")
        n += 1
        counts[idx] = n


async def pooled_worker(pool: WebSocketPool, st: RoundState, idx: int) -> None:
    perf = time.perf_counter
    counts, samples = st.counts, st.samples
    n = 0
    while not st.stop:
        sample = n % SAMPLE_EVERY == 0
        t0 = perf() if sample else 0.0
        async with pool.acquire() as conn:
            await conn.send(PAYLOAD)
            msg = await conn.receive()
        if sample and st.recording:
            samples.append(perf() - t0)
        if msg.data != PAYLOAD:
            raise RuntimeError(f"pooled worker {idx}: unexpected {msg!r}")
        n += 1
        counts[idx] = n


def proc_cpu() -> tuple[float, float]:
    """This process's (user, system) CPU seconds."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime, ru.ru_stime


async def run_round(
    worker: WorkerFactory, workers: int, s: Settings, server_cpu: Callable[[], float]
) -> dict[str, Any]:
    """Run ``workers`` loops for warm-up + a fixed window; count round trips in the window."""
    st = RoundState(workers)
    tasks = [asyncio.create_task(worker(st, i)) for i in range(workers)]
    try:
        await asyncio.sleep(s.warmup_seconds)
        c0, t0, cpu0, srv0 = sum(st.counts), time.perf_counter(), proc_cpu(), server_cpu()
        st.recording = True
        await asyncio.sleep(s.round_seconds)
        c1, t1, cpu1, srv1 = sum(st.counts), time.perf_counter(), proc_cpu(), server_cpu()
        st.recording = False
    finally:
        st.stop = True
        done, pending = await asyncio.wait(tasks, timeout=5.0)
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.wait(pending)
    for t in done:
        if not t.cancelled() and t.exception() is not None:
            raise RuntimeError("a benchmark worker failed") from t.exception()
    msgs = c1 - c0
    wall = t1 - t0
    lat = sorted(st.samples)
    user, sys_ = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
    per_msg = 1e6 / msgs if msgs else float("nan")
    return {
        "msgs": msgs,
        "seconds": round(wall, 6),
        "msgs_per_s": msgs / wall,
        "client_user_s": round(user, 6),
        "client_sys_s": round(sys_, 6),
        "client_cpu_us_per_msg": (user + sys_) * per_msg,
        "client_user_us_per_msg": user * per_msg,
        "client_sys_us_per_msg": sys_ * per_msg,
        "client_cpu_util": (user + sys_) / wall,
        "server_cpu_util": (srv1 - srv0) / wall,
        "server_cpu_us_per_msg": (srv1 - srv0) * per_msg,
        "latency_samples": len(lat),
        "p50_us": percentile(lat, 50) * 1e6,
        "p99_us": percentile(lat, 99) * 1e6,
    }


@dataclass
class Clients:
    """The long-lived clients of scenario 1 (and 2): raw sockets and two pools."""

    session: aiohttp.ClientSession | None = None
    raw: dict[str, list[aiohttp.ClientWebSocketResponse]] = field(default_factory=dict)
    pools: dict[str, WebSocketPool] = field(default_factory=dict)

    async def open(self, urls: list[str]) -> None:
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        for arm, heartbeat in RAW_HEARTBEAT.items():
            self.raw[arm] = [
                await self.session.ws_connect(urls[i % len(urls)], heartbeat=heartbeat)
                for i in range(N_CONNS)
            ]
        for arm, balancing in ARM_BALANCER.items():
            pool = WebSocketPool(
                backends=urls,
                load_balancing=balancing,
                **{**POOL_COMMON, **ARM_POOL_EXTRA.get(arm, {})},
            )
            self.pools[arm] = pool
            await pool.start()
            if pool.size != N_CONNS:
                raise RuntimeError(f"{arm}: pool opened {pool.size} of {N_CONNS} connections")

    async def aclose(self) -> None:
        for pool in self.pools.values():
            with contextlib.suppress(Exception):
                await pool.close(timeout=2.0)
        for ws in [ws for conns in self.raw.values() for ws in conns]:
            with contextlib.suppress(Exception):
                await ws.close()
        if self.session is not None:
            await self.session.close()

    def factory(self, arm: str) -> WorkerFactory:
        if arm in self.raw:
            raw = self.raw[arm]
            return lambda st, i: raw_worker(raw[i], st, i)
        pool = self.pools[arm]
        return lambda st, i: pooled_worker(pool, st, i)


async def bench_throughput(clients: Clients, servers: EchoServers, s: Settings) -> dict[str, Any]:
    rounds: dict[str, list[dict[str, Any]]] = {arm: [] for arm in ARMS}
    order: list[str] = []
    for r in range(s.rounds):
        # ABC CBA ...: no arm always runs right after the same neighbour.
        cycle = ARMS if r % 2 == 0 else ARMS[::-1]
        for arm in cycle:
            res = await run_round(clients.factory(arm), N_CONNS, s, servers.cpu_seconds)
            res["round"] = r
            rounds[arm].append(res)
            order.append(arm)
            log(
                f"  throughput round {r} {arm:10s} {res['msgs_per_s']:9.0f} msg/s "
                f"p50 {res['p50_us']:6.0f} us p99 {res['p99_us']:6.0f} us "
                f"cpu us/msg client {res['client_user_us_per_msg']:4.1f}u+"
                f"{res['client_sys_us_per_msg']:4.1f}s server {res['server_cpu_us_per_msg']:4.1f} "
                f"(busy: client {res['client_cpu_util']:.0%}, server {res['server_cpu_util']:.0%})"
            )
    summary: dict[str, Any] = {}
    for arm in ARMS:
        rs = rounds[arm]
        summary[arm] = {
            f"median_{key}": median([x[key] for x in rs])
            for key in (
                "msgs_per_s",
                "p50_us",
                "p99_us",
                "client_cpu_us_per_msg",
                "client_user_us_per_msg",
                "client_sys_us_per_msg",
                "server_cpu_us_per_msg",
                "client_cpu_util",
                "server_cpu_util",
            )
        }
    ratios: dict[str, Any] = {}
    for arm in ARM_BALANCER:
        base = ARM_BASELINE[arm]
        raw_med = summary[base]["median_msgs_per_s"]
        # Paired ratio per cycle as a noise check next to the ratio of medians.
        paired = [
            p["msgs_per_s"] / q["msgs_per_s"]
            for p, q in zip(rounds[arm], rounds[base], strict=True)
        ]
        ratios[arm] = {
            "baseline": base,
            "throughput_ratio": summary[arm]["median_msgs_per_s"] / raw_med,
            "ratio_vs_raw_without_heartbeat": summary[arm]["median_msgs_per_s"]
            / summary["raw"]["median_msgs_per_s"],
            "paired_ratio_median": median(paired),
            "paired_ratio_min": min(paired),
            "paired_ratio_max": max(paired),
            "client_cpu_per_msg_ratio": summary[arm]["median_client_cpu_us_per_msg"]
            / summary[base]["median_client_cpu_us_per_msg"],
            "client_user_cpu_per_msg_ratio": summary[arm]["median_client_user_us_per_msg"]
            / summary[base]["median_client_user_us_per_msg"],
            # What the ratio would be if the client's CPU were the only limit (it is
            # not when the echo server saturates its core first; see README).
            "client_bound_ratio_estimate": summary[base]["median_client_cpu_us_per_msg"]
            / summary[arm]["median_client_cpu_us_per_msg"],
            "meets_target": summary[arm]["median_msgs_per_s"] / raw_med >= TARGET_RATIO,
        }
    return {
        "setup": {
            "connections": N_CONNS,
            "workers": N_CONNS,
            "backends": N_BACKENDS,
            "payload": f"{len(PAYLOAD)}-byte text",
            "round_seconds": s.round_seconds,
            "warmup_seconds": s.warmup_seconds,
            "rounds_per_arm": s.rounds,
            "latency_sample_every": SAMPLE_EVERY,
            "raw": "one ClientSession(TCPConnector(limit=0)); ws_connect defaults "
            "(autoping=True, heartbeat=None); worker i owns connection i (backend i % 3)",
            "raw-hb": "as raw, with ws_connect(heartbeat=20), the pool's default heartbeat",
            "pooled-rr-nohb": "pooled round-robin with heartbeat={'interval': None}",
            "pooled": {
                **POOL_COMMON,
                "note": "other options default (heartbeat interval 20 s, autoping off, "
                "breaker on); worker: async with pool.acquire() as c: send; receive",
            },
            "order": order,
        },
        "rounds": rounds,
        "summary": summary,
        "ratios": ratios,
        "target_ratio": TARGET_RATIO,
    }


# =============================================================================== 2. acquire


async def _time_pool_await(pool: WebSocketPool, n: int) -> float:
    acquire, release = pool.acquire, pool.release
    t0 = time.perf_counter()
    for _ in range(n):
        conn = await acquire()
        release(conn)
    return time.perf_counter() - t0


async def _time_pool_with(pool: WebSocketPool, n: int) -> float:
    acquire = pool.acquire
    t0 = time.perf_counter()
    for _ in range(n):
        async with acquire():
            pass
    return time.perf_counter() - t0


async def _time_queue(q: asyncio.Queue[int], n: int) -> float:
    get, put = q.get, q.put_nowait
    t0 = time.perf_counter()
    for _ in range(n):
        item = await get()
        put(item)
    return time.perf_counter() - t0


async def bench_acquire(clients: Clients, s: Settings) -> dict[str, Any]:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(N_CONNS):
        queue.put_nowait(i)
    cases: dict[str, Callable[[int], Awaitable[float]]] = {
        "asyncio.Queue get+put_nowait": functools.partial(_time_queue, queue),
    }
    for arm, pool in clients.pools.items():
        name = ARM_BALANCER[arm] + (", no heartbeat" if arm in ARM_POOL_EXTRA else "")
        cases[f"pool await acquire+release ({name})"] = functools.partial(_time_pool_await, pool)
        cases[f"pool async with acquire ({name})"] = functools.partial(_time_pool_with, pool)
    n = s.acquire_iterations
    raw: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(s.acquire_repeats):
        for name, fn in cases.items():  # interleaved so drift hits every case alike
            gc.collect()
            elapsed = await fn(n)
            raw[name].append(elapsed / n * 1e6)
            await asyncio.sleep(0)  # let the loop run what the tight loop queued
    out: dict[str, Any] = {
        "idle_connections": N_CONNS,
        "iterations": n,
        "repeats": s.acquire_repeats,
        "us_per_pair": raw,
        "median_us": {name: median(v) for name, v in raw.items()},
    }
    q_med = out["median_us"]["asyncio.Queue get+put_nowait"]
    out["ratio_vs_queue"] = {name: v / q_med for name, v in out["median_us"].items()}
    return out


# =============================================================================== 3. picks


@dataclass(slots=True)
class FakeTarget:
    id: str
    weight: float
    active: int


def _time_picks(pick: Callable[[str | None], object], keys: list[str | None]) -> float:
    t0 = time.perf_counter()
    for k in keys:
        pick(k)
    return time.perf_counter() - t0


def bench_picks(s: Settings) -> dict[str, Any]:
    rng = random.Random(12345)
    # More keys than ip-hash remembers, cycled: every pick is a lookup on its ring
    # (a repeated key's memo hit is pool_costs.py's pick arm).
    ip_keys = [
        f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}"
        for _ in range(3 * ip_hash._MEMO_KEYS)
    ]
    results: dict[str, dict[str, Any]] = {}
    for name in STRATEGIES:
        results[name] = {}
        for n in PICK_SIZES:
            targets = [
                FakeTarget(f"backend-{i:04d}", float(1 + i % 5), rng.randrange(4)) for i in range(n)
            ]
            bal = create_balancer(name, rng=random.Random(7))
            bal.update(targets)
            keyed = bal.requires_key

            def keys_for(count: int, keyed: bool = keyed) -> list[str | None]:
                if keyed:
                    return [ip_keys[i % len(ip_keys)] for i in range(count)]
                return [None] * count

            # Calibrate: grow the loop until one repeat takes >= pick_min_seconds.
            iters = 8
            while True:
                elapsed = _time_picks(bal.pick, keys_for(iters))
                if elapsed >= s.pick_min_seconds or iters >= 4_000_000:
                    break
                iters = max(iters * 2, int(iters * s.pick_min_seconds / max(elapsed, 1e-9) * 1.1))
            keys = keys_for(iters)
            reps = [_time_picks(bal.pick, keys) / iters * 1e6 for _ in range(s.pick_repeats)]
            results[name][str(n)] = {
                "iterations": iters,
                "us_per_pick": reps,
                "median_us": median(reps),
                "min_us": min(reps),
            }
    loop_overhead = _time_picks(lambda k: None, [None] * 200_000) / 200_000 * 1e6
    return {
        "sizes": list(PICK_SIZES),
        "targets": "FakeTarget(id, weight=1+i%5, active=random 0..3); ip-hash keys cycle "
        f"through {len(ip_keys)} random IPv4 strings (more than its memo: all lookups)",
        "loop_and_call_overhead_us": loop_overhead,
        "strategies": results,
    }


# =============================================================================== 4. failover

FAILOVER_CONFIGS: dict[str, dict[str, Any]] = {
    "default": {},
    "fast-heartbeat+health": {
        "heartbeat": {"interval": 1, "timeout": 1},
        "health_check": {"interval": 1, "timeout": 1, "unhealthy_threshold": 2},
    },
    # Supplementary: with the breaker off only the active health check is left, which
    # shows what the passive path (abnormal closes + refused connects) is worth.
    "fast-health, breaker off": {
        "heartbeat": {"interval": 1, "timeout": 1},
        "health_check": {"interval": 1, "timeout": 1, "unhealthy_threshold": 2},
        "circuit_breaker": {"enabled": False},
    },
}
FAILOVER_WORKERS = 4
FAILOVER_MIN_CONNECTIONS = 6
_TRACKED_EVENTS: tuple[ev.EventName, ...] = (
    ev.BREAKER_OPEN,
    ev.BACKEND_UNHEALTHY,
    ev.CONNECTION_CLOSED,
)


def _start_many(servers: list[EchoServers]) -> None:
    """Start several single-backend processes in parallel (imports dominate startup)."""
    for srv in servers:
        srv.start_async()
    for srv in servers:
        srv.wait_ready()


async def failover_trial(config: dict[str, Any], s: Settings) -> dict[str, Any]:
    servers = [EchoServers(1) for _ in range(N_BACKENDS)]
    pool: WebSocketPool | None = None
    tasks: list[asyncio.Task[None]] = []
    try:
        _start_many(servers)
        urls = [srv.urls[0] for srv in servers]
        victim = urls[0]
        pool = WebSocketPool(backends=urls, min_connections=FAILOVER_MIN_CONNECTIONS, **config)
        clock = time.monotonic
        marks: dict[str, float | None] = {
            "last_pick": None,
            "last_handout": None,
            "ineligible": None,
            "first_error": None,
        }
        picks_after_kill = 0
        handouts_after_kill = 0
        kill_at: float | None = None
        events: list[tuple[float, str, str]] = []

        # Benchmark-only instrumentation of a private attribute: records every pick.
        balancer = pool._core._balancer
        original_pick = balancer.pick

        def recording_pick(key: str | None = None) -> Any:
            nonlocal picks_after_kill
            target = original_pick(key)
            if target.id == victim:
                marks["last_pick"] = clock()
                if kill_at is not None:
                    picks_after_kill += 1
            return target

        balancer.pick = recording_pick  # type: ignore[method-assign]

        def on_event(name: str) -> Callable[..., None]:
            def record(backend_id: str, *args: Any) -> None:
                if backend_id == victim and kill_at is not None:
                    events.append((clock() - kill_at, name, " ".join(map(str, args[-2:]))))

            return record

        for name in _TRACKED_EVENTS:
            pool.on(name, on_event(name))
        await pool.start()
        stop = False
        stats = {"ok": 0, "errors": 0, "errors_after_kill": 0}
        error_kinds: dict[str, int] = {}

        async def worker() -> None:
            nonlocal handouts_after_kill
            assert pool is not None
            while not stop:
                try:
                    async with pool.acquire(timeout=2.0) as conn:
                        if conn.backend_id == victim:
                            marks["last_handout"] = clock()
                            if kill_at is not None:
                                handouts_after_kill += 1
                        await conn.send(PAYLOAD)
                        await conn.receive(timeout=0.5)
                    stats["ok"] += 1
                except (WSClientError, TimeoutError, OSError, aiohttp.ClientError) as exc:
                    stats["errors"] += 1
                    kind = type(exc).__name__
                    error_kinds[kind] = error_kinds.get(kind, 0) + 1
                    if kill_at is not None:
                        stats["errors_after_kill"] += 1
                        if marks["first_error"] is None:
                            marks["first_error"] = clock()
                    await asyncio.sleep(0.01)
                await asyncio.sleep(0.001)  # bounded load: ~a few thousand ops/s in total

        async def watch() -> None:
            assert pool is not None
            while not stop:
                if (
                    kill_at is not None
                    and marks["ineligible"] is None
                    and not pool.health_status()[victim].eligible
                ):
                    marks["ineligible"] = clock()
                await asyncio.sleep(0.005)

        tasks = [asyncio.create_task(worker()) for _ in range(FAILOVER_WORKERS)]
        tasks.append(asyncio.create_task(watch()))
        await asyncio.sleep(1.0)
        ok_before = stats["ok"]
        failures_before = pool.stats().open_failures
        kill_at = clock()
        servers[0].kill()
        deadline = kill_at + s.failover_cap_seconds
        # Stop 1 s after it went ineligible (late picks would still show), or at the cap.
        while clock() < deadline:
            ine = marks["ineligible"]
            if ine is not None and clock() - ine >= 1.0:
                break
            await asyncio.sleep(0.02)
        observed = clock() - kill_at
        stop = True
        await asyncio.wait(tasks, timeout=5.0)
        health = pool.health_status()[victim].model_dump()
        verdicts = [e for e in events if e[1] in (ev.BREAKER_OPEN, ev.BACKEND_UNHEALTHY)]
        detected_by = (
            {
                ev.BREAKER_OPEN: "passive: circuit breaker opened",
                ev.BACKEND_UNHEALTHY: ("active: health check marked it unhealthy"),
            }[verdicts[0][1]]
            if verdicts
            else None
        )

        def rel(t: float | None) -> float | None:
            return None if t is None or kill_at is None else round(t - kill_at, 4)

        return {
            "detected": marks["ineligible"] is not None,
            "detected_by": detected_by,
            "victim_connections_closed": sum(1 for e in events if e[1] == ev.CONNECTION_CLOSED),
            "pool_open_failures_after_kill": pool.stats().open_failures - failures_before,
            "ineligible_after_s": rel(marks["ineligible"]),
            "last_pick_after_s": rel(marks["last_pick"]),
            "last_handout_after_s": rel(marks["last_handout"]),
            "first_error_after_s": rel(marks["first_error"]),
            "picks_after_kill": picks_after_kill,
            "handouts_after_kill": handouts_after_kill,
            "observed_s": round(observed, 3),
            "ops_in_1s_before_kill": ok_before,
            "ops": stats["ok"],
            "errors": stats["errors"],
            "errors_after_kill": stats["errors_after_kill"],
            "error_kinds": error_kinds,
            "victim_events": [
                {"t": round(t, 4), "event": name, "detail": detail} for t, name, detail in events
            ][:40],
            "victim_health_at_end": {
                k: health[k]
                for k in ("healthy", "eligible", "breaker", "consecutive_failures", "last_error")
            },
        }
    finally:
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks)
        if pool is not None:
            with contextlib.suppress(Exception):
                await pool.close(timeout=1.0)
        for srv in servers:
            srv.stop()


async def bench_failover(s: Settings) -> dict[str, Any]:
    out: dict[str, Any] = {
        "setup": {
            "backends": N_BACKENDS,
            "processes": "one echo process per backend; backend 0 is SIGKILLed",
            "pool": f"min_connections={FAILOVER_MIN_CONNECTIONS}, other options as listed",
            "workers": f"{FAILOVER_WORKERS} x (acquire(timeout=2); send; receive(timeout=0.5); "
            "release; sleep 1 ms)",
            "measure": "ineligible_after_s: kill -> health_status()[victim].eligible is False "
            "(polled every 5 ms); last_pick_after_s: kill -> last balancer pick of the victim "
            "(instrumented pick); last_handout_after_s: last lease of a victim connection",
        },
        "configs": {},
    }
    for name, cfg in FAILOVER_CONFIGS.items():
        trials = []
        for i in range(s.failover_trials):
            res = await failover_trial(cfg, s)
            trials.append(res)
            log(
                f"  failover {name} trial {i}: ineligible after {res['ineligible_after_s']} s, "
                f"last pick {res['last_pick_after_s']} s, "
                f"first event {res['victim_events'][0] if res['victim_events'] else None}"
            )
        detected = [t["ineligible_after_s"] for t in trials if t["ineligible_after_s"] is not None]
        last_picks = [t["last_pick_after_s"] for t in trials if t["last_pick_after_s"] is not None]
        out["configs"][name] = {
            "config": cfg,
            "trials": trials,
            "median_ineligible_after_s": median(detected) if detected else None,
            "median_last_pick_after_s": median(last_picks) if last_picks else None,
            "undetected_trials": sum(1 for t in trials if not t["detected"]),
        }
    return out


# =============================================================================== 5. memory


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _MemClients:
    def __init__(self, kind: str, urls: list[str]) -> None:
        self.kind = kind
        self.urls = urls
        self.pool: WebSocketPool | None = None
        self.session: aiohttp.ClientSession | None = None
        self.wss: list[aiohttp.ClientWebSocketResponse] = []

    async def open(self, n: int) -> None:
        if self.kind == "pooled":
            self.pool = WebSocketPool(
                backends=self.urls,
                min_connections=n,
                max_connections=n,
                health_check={"enabled": False},
            )
            await self.pool.start()
            if self.pool.size != n:
                raise RuntimeError(f"pool opened {self.pool.size} of {n}")
        else:
            self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
            session = self.session
            for start in range(0, n, 50):
                batch = range(start, min(n, start + 50))
                self.wss += await asyncio.gather(
                    *(session.ws_connect(self.urls[i % len(self.urls)]) for i in batch)
                )
        await asyncio.sleep(0.3)  # idle readers, heartbeats etc. are in place

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close(timeout=2.0)
            self.pool = None
        await asyncio.gather(*(ws.close() for ws in self.wss))
        self.wss = []
        if self.session is not None:
            await self.session.close()
            self.session = None


async def memory_child(kind: str, urls: list[str], n: int) -> dict[str, Any]:
    # Warm-up: one open/close so lazy imports and first-use caches are not counted.
    warm = _MemClients(kind, urls)
    await warm.open(min(3, n))
    await warm.close()
    await asyncio.sleep(0.1)

    gc.collect()
    rss0 = rss_bytes()
    clients = _MemClients(kind, urls)
    await clients.open(n)
    gc.collect()
    rss1 = rss_bytes()
    await clients.close()

    gc.collect()
    tracemalloc.start()
    m0 = tracemalloc.get_traced_memory()[0]
    clients = _MemClients(kind, urls)
    await clients.open(n)
    gc.collect()
    m1 = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    await clients.close()
    return {
        "connections": n,
        "rss_delta_bytes": rss1 - rss0,
        "tracemalloc_delta_bytes": m1 - m0,
        "rss_kib_per_conn": (rss1 - rss0) / n / 1024,
        "tracemalloc_kib_per_conn": (m1 - m0) / n / 1024,
    }


def bench_memory(urls: list[str], s: Settings) -> dict[str, Any]:
    out: dict[str, Any] = {
        "connections": s.memory_connections,
        "method": "fresh child process per kind; RSS from /proc/self/statm before/after "
        "opening (tracemalloc off), then tracemalloc current-size delta in a second "
        "open; pooled = WebSocketPool(min=max=n, health checks off, default heartbeat), "
        "raw = ClientSession(TCPConnector(limit=0)).ws_connect x n",
    }
    for kind in ("pooled", "raw"):
        proc = subprocess.run(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "--memory-child",
                kind,
                "--urls",
                ",".join(urls),
                "--count",
                str(s.memory_connections),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"memory child {kind} failed:\n{proc.stderr}")
        out[kind] = json.loads(proc.stdout.strip().splitlines()[-1])
        log(
            f"  memory {kind}: {out[kind]['rss_kib_per_conn']:.1f} KiB RSS, "
            f"{out[kind]['tracemalloc_kib_per_conn']:.1f} KiB traced per connection"
        )
    out["ratio_pooled_vs_raw"] = {
        "rss": out["pooled"]["rss_kib_per_conn"] / out["raw"]["rss_kib_per_conn"],
        "tracemalloc": out["pooled"]["tracemalloc_kib_per_conn"]
        / out["raw"]["tracemalloc_kib_per_conn"],
    }
    return out


# =============================================================================== environment


def environment() -> dict[str, Any]:
    commit = None
    with contextlib.suppress(Exception):
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=HERE,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    return {
        "date_utc": now_utc().isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "aiohttp": aiohttp.__version__,
        "wsclient": wsclient.__version__,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "loadavg_start": list(os.getloadavg()),
        "event_loop": "asyncio default (" + type(asyncio.get_event_loop_policy()).__name__ + ")",
        "git_commit": commit,
        "argv": sys.argv[1:],
    }


# =============================================================================== table


def _s(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f} s"


def fmt_table(res: dict[str, Any]) -> str:
    lines: list[str] = []
    tp = res.get("throughput")
    if tp:
        lines.append(
            f"1. Throughput: {N_CONNS} workers / {N_CONNS} connections / {N_BACKENDS} backends, "
            f"{tp['setup']['rounds_per_arm']} x {tp['setup']['round_seconds']} s rounds per arm"
        )
        lines.append(
            f"   {'arm':11s} {'msg/s':>7s} {'ratio':>6s} {'p50 us':>7s} {'p99 us':>7s} "
            f"{'user us':>8s} {'sys us':>7s} {'srv us':>7s}  per-round msg/s"
        )
        lines.append(
            "   (medians over rounds; user/sys us = client CPU per round trip, srv us = echo "
            "server CPU per round trip)"
        )
        for arm in ARMS:
            sm = tp["summary"][arm]
            ratio = tp["ratios"][arm]["throughput_ratio"] if arm in tp["ratios"] else 1.0
            per = " ".join(f"{x['msgs_per_s']:.0f}" for x in tp["rounds"][arm])
            lines.append(
                f"   {arm:11s} {sm['median_msgs_per_s']:7.0f} {ratio:6.3f} "
                f"{sm['median_p50_us']:7.0f} {sm['median_p99_us']:7.0f} "
                f"{sm['median_client_user_us_per_msg']:8.1f} "
                f"{sm['median_client_sys_us_per_msg']:7.1f} "
                f"{sm['median_server_cpu_us_per_msg']:7.1f}  {per}"
            )
        for arm, r in tp["ratios"].items():
            lines.append(
                f"   {arm} vs {r['baseline']}: ratio {r['throughput_ratio']:.3f} "
                f"(vs raw without heartbeat {r['ratio_vs_raw_without_heartbeat']:.3f}) "
                f"({'meets' if r['meets_target'] else 'BELOW'} target {TARGET_RATIO}); "
                f"paired per-cycle {r['paired_ratio_min']:.2f}..{r['paired_ratio_max']:.2f}; "
                f"client CPU/msg x{r['client_cpu_per_msg_ratio']:.2f} (user "
                f"x{r['client_user_cpu_per_msg_ratio']:.2f}) -> client-bound estimate "
                f"{r['client_bound_ratio_estimate']:.2f}"
            )
        busy = tp["summary"]["raw"]
        lines.append(
            f"   raw rounds: echo server {busy['median_server_cpu_util']:.0%} busy, client "
            f"{busy['median_client_cpu_util']:.0%} busy (median)"
        )
    ac = res.get("acquire")
    if ac:
        lines.append(f"2. acquire+release, no I/O, {ac['idle_connections']} idle connections")
        for name, v in ac["median_us"].items():
            lines.append(f"   {name:50s} {v:6.2f} us/pair  x{ac['ratio_vs_queue'][name]:.1f}")
    pk = res.get("picks")
    if pk:
        lines.append("3. balancer pick() us/pick (median)")
        lines.append(
            "   " + f"{'strategy':22s}" + "".join(f"{'n=' + str(n):>10s}" for n in PICK_SIZES)
        )
        for name, per in pk["strategies"].items():
            lines.append(
                "   "
                + f"{name:22s}"
                + "".join(f"{per[str(n)]['median_us']:10.3f}" for n in PICK_SIZES)
            )
    fo = res.get("failover")
    if fo:
        lines.append("4. failover: SIGKILL 1 of 3 backends; s after the kill, median [trials]")
        for name, c in fo["configs"].items():
            trials = c["trials"]
            ine = [t["ineligible_after_s"] for t in trials]
            lp = [t["last_pick_after_s"] for t in trials]
            by = sorted({str(t["detected_by"]) for t in trials})
            lines.append(
                f"   {name:25s} ineligible {_s(c['median_ineligible_after_s'])} {ine}; "
                f"last pick {_s(c['median_last_pick_after_s'])} {lp}"
            )
            lines.append(
                f"   {'':25s} by: {' / '.join(by)}; undetected "
                f"{c['undetected_trials']}/{len(trials)}; closes seen "
                f"{[t['victim_connections_closed'] for t in trials]}, refused connects "
                f"{[t['pool_open_failures_after_kill'] for t in trials]}, worker errors "
                f"{[t['errors_after_kill'] for t in trials]}"
            )
    mem = res.get("memory")
    if mem:
        lines.append(f"5. memory per connection ({mem['connections']} connections)")
        for kind in ("pooled", "raw"):
            m = mem[kind]
            lines.append(
                f"   {kind:7s} RSS {m['rss_kib_per_conn']:6.1f} KiB   "
                f"tracemalloc {m['tracemalloc_kib_per_conn']:6.1f} KiB"
            )
        r = mem["ratio_pooled_vs_raw"]
        lines.append(f"   pooled/raw: RSS x{r['rss']:.2f}, tracemalloc x{r['tracemalloc']:.2f}")
    pc = res.get("pool_costs")
    if pc:
        lines.append("6. pool_costs.py")
        lines.append(pool_costs_table(pc, indent="   "))
    if res.get("metrics_cost"):
        lines.append("8. metrics_cost.py")
        lines.append(metrics_cost_table(res["metrics_cost"], indent="   "))
    cb = res.get("client_bound")
    if cb:
        lines.append("9. client_bound.py")
        lines.append(client_bound_table(cb, indent="   "))
    return "\n".join(lines)


# =============================================================================== profile


async def profile_mode(s: Settings) -> None:
    """cProfile one pooled-rr and one raw round; writes results/profile-*.txt."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    with EchoServers(N_BACKENDS) as servers:
        clients = Clients()
        try:
            await clients.open(servers.urls)
            for arm in ("pooled-rr", "raw"):
                await run_round(clients.factory(arm), N_CONNS, s, servers.cpu_seconds)
                prof = cProfile.Profile()
                prof.enable()
                res = await run_round(clients.factory(arm), N_CONNS, s, servers.cpu_seconds)
                prof.disable()
                buf = io.StringIO()
                st = pstats.Stats(prof, stream=buf)
                buf.write(f"{arm}: {res['msgs']} round trips under cProfile\n")
                st.sort_stats("tottime").print_stats(40)
                st.sort_stats("cumulative").print_stats(40)
                st.sort_stats("tottime").print_stats("wsclient/")
                path = RESULTS / f"profile-{arm}.txt"
                path.write_text(buf.getvalue())
                log(f"{arm}: {res['msgs']} round trips profiled -> {path}")
        finally:
            await clients.aclose()


# =============================================================================== main


SCENARIOS: tuple[str, ...] = (
    "throughput",
    "acquire",
    "picks",
    "failover",
    "memory",
    "pool_costs",
    "request",
    "metrics_cost",
    "client_bound",
)


def bench_pool_costs(s: Settings) -> dict[str, Any]:
    """Scenario 6 is its own script, run as a child: its 10,000 backends and connections
    stay out of this process. Its progress goes to our stderr; its table is ours."""
    out = RESULTS / "pool_costs.json"
    cmd = [sys.executable, str(HERE / "pool_costs.py"), "--json", str(out)]
    subprocess.run(cmd + (["--quick"] if s.quick else []), stdout=subprocess.DEVNULL, check=True)
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def bench_request(s: Settings) -> dict[str, Any]:
    """Scenario 7 is its own script too, run as a child; its table goes to our stdout."""
    out = RESULTS / "request_vs_acquire.json"
    cmd = [sys.executable, str(HERE / "request_vs_acquire.py"), "--json", str(out)]
    subprocess.run(cmd + (["--quick"] if s.quick else []), check=True)
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def bench_client_bound(s: Settings) -> dict[str, Any]:
    """Scenario 7 is its own script too: its backends, HAProxy and client processes are
    its children, and its 10,000 connections stay out of this process."""
    out = RESULTS / "client_bound.json"
    cmd = [sys.executable, str(HERE / "client_bound.py"), "--json", str(out)]
    subprocess.run(cmd + (["--quick"] if s.quick else []), stdout=subprocess.DEVNULL, check=True)
    result: dict[str, Any] = json.loads(out.read_text())
    return result


async def run_suite(s: Settings, only: frozenset[str]) -> dict[str, Any]:
    res: dict[str, Any] = {
        "mode": "quick" if s.quick else "full",
        "scenarios": [name for name in SCENARIOS if name in only],
        "environment": environment(),
    }
    t_start = time.monotonic()
    # The failover scenario makes the pool log warnings by design; keep the output clean.
    logging.getLogger("wsclient").setLevel(logging.ERROR)
    if only & {"throughput", "acquire", "memory"}:
        with EchoServers(N_BACKENDS) as servers:
            log(f"echo servers: pid {servers.pid}, ports {servers.ports}")
            if only & {"throughput", "acquire"}:
                clients = Clients()
                try:
                    await clients.open(servers.urls)
                    if "throughput" in only:
                        log("1. throughput")
                        res["throughput"] = await bench_throughput(clients, servers, s)
                    if "acquire" in only:
                        log("2. acquire+release")
                        res["acquire"] = await bench_acquire(clients, s)
                finally:
                    await clients.aclose()
            if "memory" in only:
                log("5. memory")
                res["memory"] = bench_memory(servers.urls, s)
    if "picks" in only:
        log("3. balancer picks")
        res["picks"] = bench_picks(s)
    if "failover" in only:
        log("4. failover")
        res["failover"] = await bench_failover(s)
    if "pool_costs" in only:
        log("6. pool costs (pool_costs.py)")
        res["pool_costs"] = bench_pool_costs(s)
    if "request" in only:
        log("7. pool.request vs acquire/send/receive/release (request_vs_acquire.py)")
        res["request_vs_acquire"] = bench_request(s)
    if "metrics_cost" in only:
        log("8. metrics hot-path cost (metrics_cost.py)")
        res["metrics_cost"] = metrics_cost_child(RESULTS, s.quick)
    if "client_bound" in only:
        log("9. client-bound throughput, memory, warm connections (client_bound.py)")
        res["client_bound"] = bench_client_bound(s)
    res["environment"]["loadavg_end"] = list(os.getloadavg())
    res["environment"]["suite_seconds"] = round(time.monotonic() - t_start, 1)
    return res


def write_results(res: dict[str, Any], out: Path | None) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = now_utc().strftime("%Y%m%dT%H%M%SZ")
    path = out if out is not None else RESULTS / f"bench-{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(json_safe(res), indent=2, allow_nan=False) + "\n"
    path.write_text(text)
    (RESULTS / "latest.json").write_text(text)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="wsclient benchmarks")
    parser.add_argument("--quick", action="store_true", help="~75 s smoke run")
    parser.add_argument("--rounds", type=int, default=None, help="throughput rounds per arm")
    parser.add_argument("--out", type=Path, default=None, help="JSON output path")
    parser.add_argument("--profile", action="store_true", help="cProfile the throughput arms")
    parser.add_argument(
        "--only",
        default=",".join(SCENARIOS),
        help=f"comma-separated subset of: {', '.join(SCENARIOS)} (default: all)",
    )
    parser.add_argument("--memory-child", choices=("pooled", "raw"), help=argparse.SUPPRESS)
    parser.add_argument("--urls", default="", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=400, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    # SIGTERM unwinds like Ctrl-C, so every finally block stops what it started.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    if args.memory_child:
        urls = args.urls.split(",")
        print(json.dumps(asyncio.run(memory_child(args.memory_child, urls, args.count))))
        return 0
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be >= 1")
    only = frozenset(x.strip() for x in args.only.split(",") if x.strip())
    if not only or only - set(SCENARIOS):
        parser.error(f"--only takes names from: {', '.join(SCENARIOS)}")
    s = Settings.make(args.quick, args.rounds)
    if args.profile:
        asyncio.run(profile_mode(s))
        return 0
    res = asyncio.run(run_suite(s, only))
    path = write_results(res, args.out)
    if "client_bound" in res:
        client_bound_chart(res["client_bound"], path.with_suffix(".png"))
    print(fmt_table(res))
    print(f"results: {path} (and {RESULTS / 'latest.json'})")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
