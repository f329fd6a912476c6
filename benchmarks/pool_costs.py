"""The pool's own costs, client side only: ``python benchmarks/pool_costs.py [--quick]``.

Four figures (SPEC §2 item 12 and §7), each measured through the public API
(``WebSocketPool(...)``, ``start()``/``close()``, ``acquire()``, ``release()``,
``add_backend()``, ``remove_backend(..., drain=False)``, ``set_weight()``, ``size``,
``idle_count``, ``waiting_count``), except the pick alone of item 4, which calls the
pool's own balancer (``pool._core._balancer.pick``):

1. acquire+release   ``conn = await pool.acquire(); pool.release(conn)`` with one idle
                     connection vs ``await q.get(); q.put_nowait(x)`` on an
                     ``asyncio.Queue`` holding one item; ns per pair, alternating rounds.
2. queueing          2,000 acquires queued behind a leased connection
                     (``max_connections=1``): the longest event-loop stall and the time
                     to enqueue them, then to serve them one after the other.
3. membership        ``set_weight``, ``add_backend``, ``remove_backend(drain=False)`` on a
                     started pool of 10, 100, 1,000 and 10,000 backends (no connections):
                     ms per change and the longest loop stall around each.
4. pick              the pick alone (the pool's balancer, no lease), at 10 and 10,000
                     backends, for every strategy (ip-hash also with keys that always
                     miss its memo): the multiple from 10 to 10,000 is the target; and
                     acquire+release around it with an idle connection on every backend,
                     which also counts 10,000 connections' state out of the CPU cache.

The echo backends (items 1, 2 and 4) are the benchmarks' usual aiohttp echo servers in a
separate process (``_servers.EchoServers``: four ports in one child), so this process's
event loop runs the client alone. Item 3 never connects: its backends point at port 9 of
127.0.0.1 (discard), with ``min_connections=0`` and health checks off.

Results go to ``benchmarks/results/pool_costs.json`` (or ``--json PATH``) and a table to
stdout; progress lines go to stderr. ``make bench`` runs this script too (``run.py``).
See ``benchmarks/README.md`` for what each figure means.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from _results import json_safe
from _servers import EchoServers

import wsclient
from wsclient import Backend, Connection, WebSocketPool
from wsclient.balancers import Balancer, IpHash, ip_hash

HERE = Path(__file__).resolve().parent
DEFAULT_JSON = HERE / "results" / "pool_costs.json"

TARGET_ACQUIRE_RATIO = 3.0  # pool pair / Queue pair
TARGET_STALL_MS = 50.0  # longest loop stall while 2,000 acquires queue and drain
TARGET_CHANGE_MS = 5.0  # one membership or weight change at 10,000 backends
TARGET_PICK_RATIO = 2.0  # the pick alone at 10,000 backends / at 10

STRATEGIES: tuple[str, ...] = (
    "round-robin",
    "weighted-round-robin",
    "least-connections",
    "ip-hash",
    "random",
)
ECHO_PORTS = 4
# Item 3's backends are never dialled (min_connections=0, no health checks, no
# acquire); port 9 (discard) keeps even an accidental dial away from anyone's server.
UNREACHABLE = "ws://127.0.0.1:9/b{}"
IP_KEYS = 256  # ip-hash affinity keys, cycled; each maps to one backend
PICK_ITERATIONS = 20_000  # picks per round of the pick-alone arms
PICK_NEW_KEYS = 3 * ip_hash._MEMO_KEYS  # cycled past ip-hash's memo: every pick a lookup


@dataclass(frozen=True)
class Settings:
    mode: str
    acquire_iterations: int
    acquire_rounds: int
    waiters: int
    membership_sizes: tuple[int, ...]
    membership_reps: int
    membership_op_cap_s: float  # one op slower than this: skip the remaining reps
    membership_size_budget_s: float  # time spent on one size's ops before stopping
    pick_sizes: tuple[int, int]
    pick_rounds: int
    pick_round_s: float
    pick_warm_budget_s: float

    @classmethod
    def make(cls, mode: str) -> Settings:
        if mode == "smoke":
            return cls(mode, 2_000, 3, 200, (10,), 5, 2.0, 2.0, (10, 50), 2, 0.02, 5.0)
        if mode == "quick":
            return cls(
                mode, 20_000, 5, 2_000, (10, 100, 1_000, 10_000), 10, 1.0, 4.0,
                (10, 1_000), 3, 0.05, 10.0,
            )  # fmt: skip
        return cls(
            mode, 50_000, 9, 2_000, (10, 100, 1_000, 10_000), 50, 2.0, 20.0,
            (10, 10_000), 7, 0.15, 60.0,
        )  # fmt: skip


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


# =============================================================================== loop probe


class LagProbe:
    """A callback every ``interval`` seconds; ``take()`` returns the largest lateness seen
    since the previous ``take()`` (seconds), i.e. the longest event-loop stall."""

    def __init__(self, interval: float = 0.001) -> None:
        self.interval = interval
        self._max = 0.0
        self._ticks = 0
        self._expected = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> LagProbe:
        self._loop = asyncio.get_running_loop()
        self._expected = self._loop.time() + self.interval
        self._handle = self._loop.call_at(self._expected, self._tick)
        return self

    def _tick(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        late = now - self._expected
        if late > self._max:
            self._max = late
        self._ticks += 1
        self._expected = now + self.interval
        self._handle = self._loop.call_at(self._expected, self._tick)

    def take(self) -> float:
        """Max stall since the last take, including the one in progress right now."""
        assert self._loop is not None
        now = self._loop.time()
        worst = max(self._max, now - self._expected)
        self._max = 0.0
        # An overdue tick still to run counts from now on, not twice.
        self._expected = max(self._expected, now)
        return worst

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


async def probe_floor(seconds: float) -> float:
    """The probe's own max lateness on an otherwise idle loop (ms): its noise floor."""
    probe = LagProbe().start()
    try:
        probe.take()
        await asyncio.sleep(seconds)
        return probe.take() * 1e3
    finally:
        probe.stop()


# =============================================================================== 1. acquire


async def _queue_pairs(q: asyncio.Queue[int], n: int) -> float:
    get, put = q.get, q.put_nowait
    t0 = time.perf_counter_ns()
    for _ in range(n):
        item = await get()
        put(item)
    return (time.perf_counter_ns() - t0) / n


async def _pool_pairs(pool: WebSocketPool, n: int) -> float:
    acquire, release = pool.acquire, pool.release
    t0 = time.perf_counter_ns()
    for _ in range(n):
        conn = await acquire()
        release(conn)
    return (time.perf_counter_ns() - t0) / n


async def _pool_with(pool: WebSocketPool, n: int) -> float:
    acquire = pool.acquire
    t0 = time.perf_counter_ns()
    for _ in range(n):
        async with acquire():
            pass
    return (time.perf_counter_ns() - t0) / n


async def bench_acquire(url: str, s: Settings) -> dict[str, Any]:
    setup = {
        "backends": 1,
        "min_connections": 1,
        "max_connections": 1,
        "health_check": "disabled (no probe opens a second WebSocket during a round)",
        "heartbeat": "default (interval 20 s)",
        "queue": "asyncio.Queue holding 1 item; pair = await q.get() + q.put_nowait(item)",
        "pool": "pair = conn = await pool.acquire(); pool.release(conn)",
        "iterations_per_round": s.acquire_iterations,
        "rounds": s.acquire_rounds,
        "order": "queue, pool, pool async-with, then reversed, alternating",
    }
    queue: asyncio.Queue[int] = asyncio.Queue()
    queue.put_nowait(0)
    pool = WebSocketPool(
        backends=[url], min_connections=1, max_connections=1, health_check={"enabled": False}
    )
    rounds: dict[str, list[float]] = {"queue": [], "pool": [], "pool_async_with": []}
    await pool.start()
    try:
        if pool.size != 1 or pool.idle_count != 1:
            raise RuntimeError(f"expected 1 idle connection, got size {pool.size}")
        await _pool_pairs(pool, 1_000)  # warm-up
        await _queue_pairs(queue, 1_000)
        arms = ("queue", "pool", "pool_async_with")
        for r in range(s.acquire_rounds):
            for arm in arms if r % 2 == 0 else arms[::-1]:
                gc.collect()
                if arm == "queue":
                    ns = await _queue_pairs(queue, s.acquire_iterations)
                elif arm == "pool":
                    ns = await _pool_pairs(pool, s.acquire_iterations)
                else:
                    ns = await _pool_with(pool, s.acquire_iterations)
                rounds[arm].append(ns)
                await asyncio.sleep(0)
        if pool.size != 1:
            raise RuntimeError(f"the pool opened connections during the rounds: {pool.size}")
    finally:
        await pool.close(timeout=5.0)
    med = {arm: median(v) for arm, v in rounds.items()}
    ratio = med["pool"] / med["queue"]
    log(
        f"  queue {med['queue']:.0f} ns, pool {med['pool']:.0f} ns, "
        f"async with {med['pool_async_with']:.0f} ns per pair: x{ratio:.2f}"
    )
    return {
        "setup": setup,
        "rounds_ns_per_pair": rounds,
        "queue_ns": med["queue"],
        "pool_ns": med["pool"],
        "pool_async_with_ns": med["pool_async_with"],
        "ratio": ratio,
        "ratio_async_with": med["pool_async_with"] / med["queue"],
        "target_ratio": TARGET_ACQUIRE_RATIO,
        "meets_target": ratio <= TARGET_ACQUIRE_RATIO,
    }


# =============================================================================== 2. queueing


async def bench_queueing(url: str, s: Settings) -> dict[str, Any]:
    n = s.waiters
    pool = WebSocketPool(
        backends=[url],
        min_connections=1,
        max_connections=1,
        acquire_timeout=600.0,
        health_check={"enabled": False},
    )
    started = 0
    served = 0

    async def one() -> None:
        # create_task() needs a coroutine; acquire() returns an awaitable context.
        nonlocal started, served
        started += 1
        conn = await pool.acquire()
        served += 1
        pool.release(conn)

    floor_ms = await probe_floor(0.1)
    await pool.start()
    probe = LagProbe()
    tasks: list[asyncio.Task[None]] = []
    try:
        held = await pool.acquire()
        probe.start()
        await asyncio.sleep(0.01)
        probe.take()
        t0 = time.perf_counter()
        tasks = [asyncio.create_task(one()) for _ in range(n)]
        t_created = time.perf_counter()
        # Every task has run its first step (up to the wait) once started == n; the
        # waiting_count check covers an implementation that enqueues a step later.
        async with asyncio.timeout(120.0):
            # Polled once per loop iteration on purpose: the pool offers no event for it.
            while started < n or pool.waiting_count < n:  # noqa: ASYNC110
                await asyncio.sleep(0)
        t_enqueued = time.perf_counter()
        enqueue_stall = probe.take()
        if any(t.done() for t in tasks):
            raise RuntimeError("an acquire finished while the only connection was leased")

        t1 = time.perf_counter()
        pool.release(held)
        async with asyncio.timeout(300.0):
            await asyncio.gather(*tasks)
        t_drained = time.perf_counter()
        drain_stall = probe.take()
        if served != n or pool.size != 1 or pool.idle_count != 1:
            raise RuntimeError(f"served {served}/{n}, size {pool.size}, idle {pool.idle_count}")
    finally:
        probe.stop()
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks)
        await pool.close(timeout=5.0)
    res: dict[str, Any] = {
        "setup": {
            "waiters": n,
            "backends": 1,
            "min_connections": 1,
            "max_connections": 1,
            "acquire_timeout": 600.0,
            "health_check": "disabled",
            "heartbeat": "default",
            "waiter": "task running: conn = await pool.acquire(); pool.release(conn)",
            "probe": "a call_at callback every 1 ms; stall = max lateness",
        },
        "probe_floor_ms": floor_ms,
        "create_tasks_ms": (t_created - t0) * 1e3,
        "enqueue_ms": (t_enqueued - t0) * 1e3,
        "enqueue_max_stall_ms": enqueue_stall * 1e3,
        "drain_ms": (t_drained - t1) * 1e3,
        "drain_max_stall_ms": drain_stall * 1e3,
        "drain_us_per_handoff": (t_drained - t1) / n * 1e6,
        "max_stall_ms": max(enqueue_stall, drain_stall) * 1e3,
        "target_stall_ms": TARGET_STALL_MS,
    }
    res["meets_target"] = res["max_stall_ms"] < TARGET_STALL_MS
    log(
        f"  {n} waiters: enqueue {res['enqueue_ms']:.1f} ms (stall "
        f"{res['enqueue_max_stall_ms']:.1f} ms), drain {res['drain_ms']:.1f} ms (stall "
        f"{res['drain_max_stall_ms']:.1f} ms)"
    )
    return res


# =============================================================================== 3. membership

OPS: tuple[str, ...] = ("set_weight", "add_backend", "remove_backend")


async def membership_at(n: int, s: Settings) -> dict[str, Any]:
    rng = random.Random(n)
    backends = [Backend(id=f"b{i}", url=UNREACHABLE.format(i)) for i in range(n)]
    gc.collect()
    t = time.perf_counter()
    pool = WebSocketPool(backends=backends, min_connections=0, health_check={"enabled": False})
    construct_s = time.perf_counter() - t
    samples: dict[str, list[float]] = {op: [] for op in OPS}
    stalls: dict[str, list[float]] = {op: [] for op in OPS}
    capped: str | None = None
    probe = LagProbe()
    t = time.perf_counter()
    await pool.start()
    start_s = time.perf_counter() - t
    try:
        probe.start()
        await asyncio.sleep(0.2)
        background = probe.take()
        live = [b.id for b in backends]
        t_size = time.monotonic()
        for r in range(s.membership_reps):
            for op in OPS:
                if op == "add_backend":
                    new = Backend(id=f"x{r}", url=UNREACHABLE.format(f"x{r}"))
                elif op == "set_weight":
                    target = live[rng.randrange(len(live))]
                    weight = rng.randint(2, 10)
                else:
                    target = live.pop(rng.randrange(len(live)))
                probe.take()
                t0 = time.perf_counter()
                if op == "set_weight":
                    pool.set_weight(target, weight)
                elif op == "add_backend":
                    pool.add_backend(new)
                else:
                    await pool.remove_backend(target, drain=False)
                dt = time.perf_counter() - t0
                if op == "add_backend":
                    live.append(new.id)
                # Let deferred work (call_soon, woken tasks) run inside the probe window.
                await asyncio.sleep(0.002)
                stalls[op].append(probe.take() * 1e3)
                samples[op].append(dt * 1e3)
            if r + 1 == s.membership_reps:
                break
            slowest = max(x[-1] for x in samples.values())
            if slowest > s.membership_op_cap_s * 1e3:
                capped = f"one change took {slowest / 1e3:.2f} s > {s.membership_op_cap_s} s"
            elif time.monotonic() - t_size > s.membership_size_budget_s:
                capped = f"{s.membership_size_budget_s} s budget for this size spent"
            if capped:
                capped += f": stopped after {r + 1} of {s.membership_reps} repetitions"
                break
    finally:
        probe.stop()
        t = time.perf_counter()
        await pool.close(timeout=5.0)
        close_s = time.perf_counter() - t
    ops: dict[str, dict[str, Any]] = {
        op: {
            "count": len(v),
            "median_ms": median(v),
            "max_ms": max(v),
            "max_stall_ms": max(stalls[op]),
            "samples_ms": v,
        }
        for op, v in samples.items()
    }
    worst = max(o["max_ms"] for o in ops.values())
    log(
        f"  n={n}: "
        + ", ".join(f"{op} {o['median_ms']:.3f}/{o['max_ms']:.3f} ms" for op, o in ops.items())
        + f"; stall {max(o['max_stall_ms'] for o in ops.values()):.1f} ms"
        + (f" ({capped})" if capped else "")
    )
    return {
        "backends": n,
        "construct_s": construct_s,
        "start_s": start_s,
        "close_s": close_s,
        "background_stall_ms": background * 1e3,
        "ops": ops,
        "max_change_ms": worst,
        "max_stall_ms": max(o["max_stall_ms"] for o in ops.values()),
        "capped": capped,
    }


async def bench_membership(s: Settings) -> dict[str, Any]:
    by_size = {str(n): await membership_at(n, s) for n in s.membership_sizes}
    largest = by_size[str(max(s.membership_sizes))]
    return {
        "setup": {
            "sizes": list(s.membership_sizes),
            "pool": "min_connections=0, health_check disabled, never acquired: no "
            "connection is opened; backends Backend(id='b<i>', url='ws://127.0.0.1:9/b<i>')",
            "ops": "per repetition: set_weight(random live id, 2..10), add_backend(new "
            "Backend), await remove_backend(random live id, drain=False); each timed alone",
            "stall": "longest lateness of a 1 ms loop callback from just before the change "
            "until 2 ms after it (deferred work included)",
            "repetitions": s.membership_reps,
            "op_cap_s": s.membership_op_cap_s,
            "size_budget_s": s.membership_size_budget_s,
        },
        "by_size": by_size,
        "largest": max(s.membership_sizes),
        "target_ms": TARGET_CHANGE_MS,
        # The target is the cost of a change: the median of each kind. The max and the
        # stall are reported beside it (one GC pass or a busy neighbour can set a max).
        "meets_target": all(o["median_ms"] < TARGET_CHANGE_MS for o in largest["ops"].values()),
        "max_meets_target": largest["max_change_ms"] < TARGET_CHANGE_MS
        and largest["max_stall_ms"] < TARGET_CHANGE_MS,
    }


# =============================================================================== 4. pick


async def _pairs(pool: WebSocketPool, n: int, keys: list[str] | None) -> float:
    acquire, release = pool.acquire, pool.release
    if keys is None:
        t0 = time.perf_counter_ns()
        for _ in range(n):
            conn = await acquire()
            release(conn)
    else:
        mask = len(keys) - 1  # a power of two
        t0 = time.perf_counter_ns()
        for i in range(n):
            conn = await acquire(key=keys[i & mask])
            release(conn)
    return (time.perf_counter_ns() - t0) / n


async def _warm(
    pool: WebSocketPool, n: int, keys: list[str] | None, budget_s: float
) -> dict[str, Any]:
    """Acquire+release until every backend the strategy picks has an idle connection.

    With spare capacity an acquire whose pick has no idle connection opens one there, so
    keyless strategies are driven until ``size == n`` (random needs about n·ln n
    acquires), ip-hash until a pass over its keys opens nothing new.
    """
    t0 = time.perf_counter()
    acquires = 0
    conn: Connection
    if keys is not None:
        last = -1
        while pool.size != last and time.perf_counter() - t0 < budget_s:
            last = pool.size
            for k in keys:
                conn = await pool.acquire(key=k)
                pool.release(conn)
                acquires += 1
    else:
        patience = 5 * n  # acquires without a new connection before giving up
        since_new = 0
        last = pool.size
        while pool.size < n and since_new < patience:
            conn = await pool.acquire()
            pool.release(conn)
            acquires += 1
            if pool.size > last:
                last, since_new = pool.size, 0
            else:
                since_new += 1
            if acquires % 1_000 == 0 and time.perf_counter() - t0 > budget_s:
                break
    return {"warm_s": time.perf_counter() - t0, "warm_acquires": acquires, "size": pool.size}


def _picks(balancer: Balancer, n: int, keys: list[str] | None) -> float:
    """ns per pick of a balancer alone: no lease, no connection touched. ``keys`` are
    cycled (the bench's 256 keys) or, for ip-hash's new-key arm, longer than its memo,
    so that every pick is a lookup on the ring."""
    pick = balancer.pick
    if keys is None:
        t0 = time.perf_counter_ns()
        for _ in range(n):
            pick(None)
    else:
        m = len(keys)
        t0 = time.perf_counter_ns()
        for i in range(n):
            pick(keys[i % m])
    return (time.perf_counter_ns() - t0) / n


def _pick_pool(strategy: str, n: int, urls: list[str]) -> WebSocketPool:
    # min_connections=n: start() opens one link per backend (each backend's share
    # of n is one), so the warm-up below only tops up; driving random to cover
    # 10,000 backends by acquires alone takes ~n ln n opens one after the other.
    return WebSocketPool(
        backends=[Backend(id=f"b{i}", url=urls[i % len(urls)]) for i in range(n)],
        load_balancing=strategy,
        min_connections=n,
        max_connections=n,
        idle_timeout=None,
        health_check={"enabled": False},
        heartbeat={"interval": None},
    )


async def pick_strategy(
    strategy: str, urls: list[str], keys: list[str], s: Settings
) -> dict[str, Any]:
    key_list = keys if strategy == "ip-hash" else None
    pools: dict[int, WebSocketPool] = {}
    per: dict[str, dict[str, Any]] = {}
    # The pick alone, per size: arm name -> key list (None: a keyless strategy).
    pick_arms: dict[str, list[str] | None] = {"pick": key_list}
    if strategy == "ip-hash":
        pick_arms["pick_new_keys"] = [f"new-{i}" for i in range(PICK_NEW_KEYS)]
    pick_balancers: dict[int, dict[str, Balancer]] = {}
    try:
        for n in s.pick_sizes:
            t = time.perf_counter()
            pool = pools[n] = _pick_pool(strategy, n, urls)
            await pool.start()
            start_s = time.perf_counter() - t
            warm = await _warm(pool, n, key_list, s.pick_warm_budget_s)
            await _pairs(pool, 200, key_list)
            # Calibrate: a round of about pick_round_s, at least 100 pairs.
            per_pair_s = max(await _pairs(pool, 200, key_list), 1.0) * 1e-9
            iters = max(100, min(100_000, int(s.pick_round_s / per_pair_s)))
            # The pool's own balancer; for the new-key arm a copy with the same
            # members, so that its misses do not push the 256 keys of the pairs
            # out of the pool's memo.
            own: Balancer = pool._core._balancer
            pick_balancers[n] = {"pick": own}
            if "pick_new_keys" in pick_arms:
                copy = IpHash()
                copy.update(list(own._members.values()))
                pick_balancers[n]["pick_new_keys"] = copy
            per[str(n)] = {
                "backends": n,
                "start_s": start_s,
                **warm,
                "idle": pool.idle_count,
                "iterations_per_round": iters,
                "rounds_ns_per_pair": [],
                "opened_during_rounds": 0,
                **{f"{arm}_rounds_ns": [] for arm in pick_arms},
            }
        for r in range(s.pick_rounds):
            for n in s.pick_sizes if r % 2 == 0 else s.pick_sizes[::-1]:
                rec, pool = per[str(n)], pools[n]
                before = pool.size
                gc.collect()
                rec["rounds_ns_per_pair"].append(
                    await _pairs(pool, rec["iterations_per_round"], key_list)
                )
                rec["opened_during_rounds"] += pool.size - before
                for arm, arm_keys in pick_arms.items():
                    rec[f"{arm}_rounds_ns"].append(
                        _picks(pick_balancers[n][arm], PICK_ITERATIONS, arm_keys)
                    )
                await asyncio.sleep(0)
    finally:
        for pool in pools.values():
            with contextlib.suppress(Exception):
                await pool.close(timeout=5.0)
    for rec in per.values():
        rec["median_ns"] = median(rec["rounds_ns_per_pair"])
        for arm in pick_arms:
            rec[f"{arm}_ns"] = median(rec[f"{arm}_rounds_ns"])
    small, big = (per[str(n)] for n in s.pick_sizes)
    ratio = big["median_ns"] / small["median_ns"]
    pick_ratios = {arm: big[f"{arm}_ns"] / small[f"{arm}_ns"] for arm in pick_arms}
    log(
        f"  {strategy:21s} "
        + ", ".join(f"n={k}: {v['median_ns']:.0f} ns" for k, v in per.items())
        + f"  x{ratio:.2f}  (connections {small['size']}/{big['size']}, warm "
        f"{big['warm_s']:.1f} s); pick alone "
        + ", ".join(
            f"{arm} {small[f'{arm}_ns']:.0f} -> {big[f'{arm}_ns']:.0f} ns x{r:.2f}"
            for arm, r in pick_ratios.items()
        )
    )
    return {
        "by_size": per,
        # The target is the pick's: the balancer's own cost, every arm of it.
        "pick_ratio": pick_ratios["pick"],
        "pick_new_keys_ratio": pick_ratios.get("pick_new_keys"),
        "meets_target": all(r <= TARGET_PICK_RATIO for r in pick_ratios.values()),
        # Acquire+release around the pick, with one warm connection per backend: this
        # also counts the 10,000 connections' own state falling out of the CPU cache.
        "ratio": ratio,
        "acquire_release_meets": ratio <= TARGET_PICK_RATIO,
    }


async def bench_pick(urls: list[str], s: Settings) -> dict[str, Any]:
    rng = random.Random(12345)
    keys = [
        f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}" for _ in range(IP_KEYS)
    ]
    strategies = {name: await pick_strategy(name, urls, keys, s) for name in STRATEGIES}
    return {
        "setup": {
            "sizes": list(s.pick_sizes),
            "backends": f"Backend(id='b<i>', url=<echo port i % {len(urls)}>): "
            f"{len(urls)} real echo servers shared by all backend entries",
            "pool": "min_connections=n, max_connections=n, idle_timeout=None, health_check "
            "disabled, heartbeat disabled",
            "warm_up": "acquire+release until every backend the strategy picks holds an idle "
            "connection (size == n; ip-hash: the backends its keys map to)",
            "ip_hash_keys": f"{IP_KEYS} random IPv4 strings, cycled",
            "pick_alone": f"{PICK_ITERATIONS} picks of the pool's own balancer per round, "
            "after each round of pairs; ip-hash also with "
            f"{PICK_NEW_KEYS} keys cycled (more than its memo holds: every pick a ring "
            "lookup) on a copy of its balancer, so the pairs' keys stay remembered",
            "rounds": s.pick_rounds,
            "order": "the two sizes alternate round by round (small, big, big, small, ...)",
            "round_s": s.pick_round_s,
        },
        "strategies": strategies,
        "target_ratio": TARGET_PICK_RATIO,
        "meets_target": all(v["meets_target"] for v in strategies.values()),
    }


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
        "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "aiohttp": aiohttp.__version__,
        "wsclient": wsclient.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "loadavg_start": list(os.getloadavg()),
        "nice": os.nice(0),
        "git_commit": commit,
        "argv": sys.argv[1:],
    }


# =============================================================================== table


def _ok(meets: bool) -> str:
    return "ok" if meets else "MISS"


def fmt_table(res: dict[str, Any], indent: str = "") -> str:
    """The results as a short text table (``run.py`` prints it too, indented)."""
    env = res.get("environment", {})
    lines = [
        f"Pool costs ({res.get('mode')} mode, wsclient {env.get('wsclient')}, commit "
        f"{str(env.get('git_commit'))[:10]}, {res.get('seconds')} s)"
    ]
    ac = res.get("acquire_release")
    if ac:
        lines.append(
            f"1. acquire+release, 1 idle connection: pool {ac['pool_ns']:.0f} ns/pair vs "
            f"asyncio.Queue {ac['queue_ns']:.0f} ns/pair = x{ac['ratio']:.2f} "
            f"(target <= x{ac['target_ratio']:.0f}: {_ok(ac['meets_target'])}); "
            f"async with {ac['pool_async_with_ns']:.0f} ns"
        )
    qu = res.get("queueing")
    if qu:
        lines.append(
            f"2. {qu['setup']['waiters']} queued acquires: max stall {qu['max_stall_ms']:.1f} ms "
            f"(target < {qu['target_stall_ms']:.0f} ms: {_ok(qu['meets_target'])}); "
            f"enqueue {qu['enqueue_ms']:.1f} ms (stall {qu['enqueue_max_stall_ms']:.1f} ms), "
            f"drain {qu['drain_ms']:.1f} ms (stall {qu['drain_max_stall_ms']:.1f} ms); "
            f"probe floor {qu['probe_floor_ms']:.2f} ms"
        )
    me = res.get("membership")
    if me:
        lines.append(
            f"3. membership/weight changes, ms median/max (target < {me['target_ms']:.0f} ms "
            f"per change at {me['largest']}: {_ok(me['meets_target'])})"
        )
        lines.append(
            f"   {'backends':>8s} {'set_weight':>19s} {'add_backend':>19s} "
            f"{'remove_backend':>19s} {'stall ms':>9s} {'start s':>8s}  note"
        )
        for n, rec in me["by_size"].items():
            cells = "".join(
                f" {rec['ops'][op]['median_ms']:9.3f}/{rec['ops'][op]['max_ms']:<9.3f}"
                for op in OPS
            )
            lines.append(
                f"   {n:>8s}{cells} {rec['max_stall_ms']:9.1f} {rec['start_s']:8.2f}  "
                f"{rec['capped'] or ''}"
            )
    pk = res.get("pick")
    if pk:
        small, big = pk["setup"]["sizes"]
        lines.append(
            f"4. pick ns vs backends (target <= x{pk['target_ratio']:.0f} from {small} to "
            f"{big}: {_ok(pk['meets_target'])}), and acquire+release ns/pair around it"
        )
        lines.append(
            f"   {'strategy':23s} {'pick n=' + str(small):>11s} {'n=' + str(big):>9s} "
            f"{'ratio':>6s}   {'pair n=' + str(small):>11s} {'n=' + str(big):>9s} "
            f"{'ratio':>6s}  connections"
        )
        for name, st in pk["strategies"].items():
            a, b = st["by_size"][str(small)], st["by_size"][str(big)]
            opened = a["opened_during_rounds"] + b["opened_during_rounds"]
            lines.append(
                f"   {name:23s} {a['pick_ns']:11.0f} {b['pick_ns']:9.0f} "
                f"{st['pick_ratio']:6.2f}   {a['median_ns']:11.0f} {b['median_ns']:9.0f} "
                f"{st['ratio']:6.2f}  {a['size']}/{b['size']}"
                + (f" (+{opened} opened during rounds)" if opened else "")
            )
            if st.get("pick_new_keys_ratio") is not None:
                lines.append(
                    f"   {name + ' (new keys)':23s} {a['pick_new_keys_ns']:11.0f} "
                    f"{b['pick_new_keys_ns']:9.0f} {st['pick_new_keys_ratio']:6.2f}"
                )
    return "\n".join(indent + line for line in lines)


# =============================================================================== main


async def run_all(s: Settings) -> dict[str, Any]:
    res: dict[str, Any] = {
        "benchmark": "pool_costs",
        "mode": s.mode,
        "settings": asdict(s),
        "environment": environment(),
    }
    t0 = time.monotonic()
    with EchoServers(ECHO_PORTS) as servers:
        log(f"echo servers: pid {servers.pid}, ports {servers.ports}")
        log("1. acquire+release vs asyncio.Queue")
        res["acquire_release"] = await bench_acquire(servers.urls[0], s)
        log(f"2. {s.waiters} queued acquires")
        res["queueing"] = await bench_queueing(servers.urls[0], s)
        log(f"3. membership changes at {list(s.membership_sizes)} backends")
        res["membership"] = await bench_membership(s)
        log(f"4. pick, and acquire+release, at {list(s.pick_sizes)} backends, every strategy")
        res["pick"] = await bench_pick(servers.urls, s)
    res["environment"]["loadavg_end"] = list(os.getloadavg())
    res["seconds"] = round(time.monotonic() - t0, 1)
    return res


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="wsclient pool costs (client side)")
    parser.add_argument("--quick", action="store_true", help="smoke run, about 30 s")
    parser.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)  # tests
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="JSON output path")
    args = parser.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so every finally block stops what it started.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    logging.getLogger("wsclient").setLevel(logging.ERROR)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    res = asyncio.run(run_all(Settings.make(mode)))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(json_safe(res), indent=2, allow_nan=False) + "\n")
    print(fmt_table(res))
    print(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
