"""End-to-end scenarios of the pool core against real servers under concurrent traffic.

The acceptance criteria of SPEC §2.9 (shares hold at every load level: below capacity,
at capacity with waiters, after a backend is added, after it recovers, after a graceful
restart) and §7 (graceful shutdown of servers wsclient did not write, under traffic).

Every scenario runs asyncio workers that loop acquire -> send -> receive the echo ->
release; a share is the fraction of the leases served in a time window whose
``conn.backend_id`` is the backend in question (the backend of the physical link, so
borrowed links count where they really went). Waits are bounded and on conditions; the
only sleeps pace the traffic or let a measured window pass.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import pytest

from wsclient import Backend, WebSocketPool, WSClientError
from wsclient.event_names import EventName
from wsclient.testing import BackendServer
from wsclient.testing.interop import SHUTDOWN_CLOSE_CODES, InteropKind, InteropServer

from .conftest import FAST

# Short, explicit timings: failures and recoveries are seen within a few 100 ms.
RECONNECT = {"initial_delay": 0.1, "multiplier": 1.6, "jitter": 0.2, "max_delay": 0.5}
PROBE = {
    "interval": 0.1,
    "timeout": 0.5,
    "unhealthy_threshold": 2,
    "healthy_threshold": 1,
    "path": "/health",
}
HEARTBEAT = {"interval": 0.5, "timeout": 0.5}
BREAKER = {"failure_threshold": 5, "recovery_timeout": 0.3}

BASE: dict[str, Any] = {
    **FAST,
    "reconnect": RECONNECT,
    "health_check": PROBE,
    "heartbeat": HEARTBEAT,
    "circuit_breaker": BREAKER,
}

# Errors a worker may see while a backend goes away under it: each is bounded by the
# acquire / send / receive timeouts below. Anything else fails the worker (and the test).
BOUNDED_ERRORS = (WSClientError, TimeoutError, OSError)
OP_TIMEOUT = 2.0


class PoolDefect(AssertionError):
    """An acceptance criterion of the pool-core issue that does not hold (sizes, shares
    or times with their measured values), told apart from a broken test setup."""


def _now() -> float:
    return asyncio.get_running_loop().time()


class Traffic:
    """``workers`` tasks doing acquire -> send -> echo -> release in a loop.

    Every served lease is recorded as ``(release time, backend_id)``; every failed
    attempt as ``(time, exception type name, seconds the attempt took, was it the
    acquire)``. ``hold`` keeps each lease that much longer (to keep the pool at
    capacity); ``pace`` is the pause between two leases of one worker.
    """

    def __init__(
        self, pool: WebSocketPool, workers: int, *, hold: float = 0.0, pace: float = 0.002
    ) -> None:
        self.pool = pool
        self.n_workers = workers
        self.hold = hold
        self.pace = pace
        self.leases: list[tuple[float, str]] = []
        self.errors: list[tuple[float, str, float, bool]] = []
        self.on_lease: Callable[[str], Awaitable[None]] | None = None
        self._stop = asyncio.Event()
        self._progress = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def _worker(self, n: int) -> None:
        seq = 0
        while not self._stop.is_set():
            seq += 1
            started = _now()
            acquired = False
            try:
                async with self.pool.acquire(timeout=OP_TIMEOUT) as conn:
                    acquired = True
                    payload = f"{n}:{seq}"
                    await conn.send(payload, timeout=OP_TIMEOUT)
                    reply = await conn.receive(timeout=OP_TIMEOUT)
                    assert reply.data == payload, (reply.data, payload)
                    if self.on_lease is not None:
                        await self.on_lease(conn.backend_id)
                    if self.hold:
                        await asyncio.sleep(self.hold)
                    self.leases.append((_now(), conn.backend_id))
                    self._progress.set()
            except BOUNDED_ERRORS as exc:
                self.errors.append((_now(), type(exc).__name__, _now() - started, not acquired))
                await asyncio.sleep(0.01)  # no hot loop while nothing can serve
            await asyncio.sleep(self.pace)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._worker(i)) for i in range(self.n_workers)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    def counts(self, since: float, until: float = float("inf")) -> Counter[str]:
        return Counter(b for t, b in self.leases if since <= t < until)

    def shares(self, since: float, until: float = float("inf")) -> tuple[dict[str, float], int]:
        counts = self.counts(since, until)
        total = sum(counts.values())
        return {b: c / total for b, c in counts.items()} if total else {}, total

    async def served(self, n: int, timeout: float = 5.0) -> None:
        """Wait (bounded) until ``n`` more leases have been served."""
        goal = len(self.leases) + n
        async with asyncio.timeout(timeout):
            while len(self.leases) < goal:
                self._progress.clear()
                await self._progress.wait()

    async def wait_for_shares(
        self,
        targets: dict[str, float],
        tolerance: float,
        *,
        since: float,
        within: float,
        window: float = 1.0,
    ) -> tuple[float | None, dict[str, float], int]:
        """Seconds from ``since`` until a ``window``-long span (inside ``[since, ...)``)
        has every backend's share within ``tolerance`` of its target, or None if that
        does not happen by ``since + within`` (the window must end by then); also the
        shares and lease count of the last window looked at."""
        shares: dict[str, float] = {}
        total = 0
        while True:
            now = _now()
            if now - since >= window:
                shares, total = self.shares(now - window, now)
                if total and all(
                    abs(shares.get(b, 0.0) - t) <= tolerance for b, t in targets.items()
                ):
                    return now - since, shares, total
            if now - since > within:
                return None, shares, total
            await asyncio.sleep(0.05)


def timeline(traffic: Traffic, since: float, step: float = 0.25) -> str:
    """Leases per backend in consecutive ``step``-long buckets from ``since`` (for reports)."""
    buckets: dict[int, Counter[str]] = {}
    for t, b in traffic.leases:
        if t >= since:
            buckets.setdefault(int((t - since) / step), Counter())[b] += 1
    return " ".join(
        f"{i * step:.2f}:{dict(sorted(buckets.get(i, Counter()).items()))}"
        for i in range(max(buckets, default=-1) + 1)
    )


def fmt(shares: dict[str, float]) -> str:
    return "{" + ", ".join(f"{b}: {s:.1%}" for b, s in sorted(shares.items())) + "}"


def within(shares: dict[str, float], targets: dict[str, float], tolerance: float) -> bool:
    return all(abs(shares.get(b, 0.0) - t) <= tolerance for b, t in targets.items())


class SizeMonitor:
    """Samples ``pool.size`` (and the most acquires seen waiting) every 2 ms."""

    def __init__(self, pool: WebSocketPool) -> None:
        self.pool = pool
        self.samples: list[tuple[float, int]] = []
        self.max_waiting = 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            self.samples.append((_now(), self.pool.size))
            self.max_waiting = max(self.max_waiting, self.pool.waiting_count)
            await asyncio.sleep(0.002)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def max(self, since: float = 0.0, until: float = float("inf")) -> int:
        return max(s for t, s in self.samples if since <= t < until)


class Events:
    """Every pool event of the given names, with its time and arguments."""

    def __init__(self, pool: WebSocketPool, *names: EventName) -> None:
        self.items: list[tuple[float, str, tuple[Any, ...]]] = []
        for name in names:
            pool.on(name, self._recorder(name))

    def _recorder(self, name: str) -> Callable[..., None]:
        def record(*args: Any) -> None:
            self.items.append((_now(), name, args))

        return record

    def of(self, name: str, backend_id: str | None = None) -> list[tuple[Any, ...]]:
        return [
            args
            for _, n, args in self.items
            if n == name and (backend_id is None or args[0] == backend_id)
        ]


async def until(predicate: Callable[[], bool], timeout: float) -> float | None:
    """Wait (bounded) for ``predicate``; how long it took, or None if it never held."""
    start = _now()
    while not predicate():
        if _now() - start > timeout:
            return None
        await asyncio.sleep(0.005)
    return _now() - start


def secs(value: float | None) -> str:
    return "never" if value is None else f"{value:.2f} s"


def layout(pool: WebSocketPool) -> dict[str, int]:
    """Open connections per backend (idle + leased)."""
    return {b: h.active + h.idle for b, h in pool.health_status().items()}


def weight_shares(weights: Sequence[int], ids: Sequence[str] | None = None) -> dict[str, float]:
    ids = ids or [f"b{i}" for i in range(len(weights))]
    total = sum(weights)
    return {b: w / total for b, w in zip(ids, weights, strict=True)}


# ----------------------------------------------------------------------------- fleets


@dataclass
class Fleet:
    """Three backends and how to take one down gracefully, bring it back, or SIGKILL it."""

    urls: list[str]
    close_code: int
    graceful_down: Callable[[int], Awaitable[None]]
    bring_up: Callable[[int], Awaitable[None]]
    kill: Callable[[int], Awaitable[None]] | None = None  # child processes only


FleetKind = Literal["websockets", "uvicorn", "inproc-1001", "inproc-1012"]


@contextlib.asynccontextmanager
async def fleet(kind: FleetKind) -> AsyncIterator[Fleet]:
    """Three servers of ``kind``: an :class:`InteropServer` kind (SIGTERM, then
    ``restart()`` on the same port) or in-process :class:`BackendServer` s that refuse new
    connections, ``close_all(code)`` and listen again on the same port."""
    if kind in ("websockets", "uvicorn"):
        interop_kind: InteropKind = "websockets" if kind == "websockets" else "uvicorn"
        async with contextlib.AsyncExitStack() as stack:
            servers = [InteropServer(interop_kind) for _ in range(3)]
            for s in servers:
                stack.push_async_callback(s.close)
            await asyncio.gather(*(s.start() for s in servers))

            async def down(i: int) -> None:
                await servers[i].terminate()

            async def up(i: int) -> None:
                await servers[i].restart()

            async def kill(i: int) -> None:
                await servers[i].kill()

            code = SHUTDOWN_CLOSE_CODES[interop_kind]
            yield Fleet([s.url for s in servers], code, down, up, kill)
    else:
        code = 1001 if kind == "inproc-1001" else 1012
        inproc = [BackendServer(name=f"s{i}") for i in range(3)]
        await asyncio.gather(*(s.start() for s in inproc))
        try:

            async def down_inproc(i: int) -> None:
                await inproc[i].refuse()
                await inproc[i].close_all(code, "restarting", wait=True)
                await asyncio.sleep(0.3)  # the time a real server takes to come back

            async def up_inproc(i: int) -> None:
                await inproc[i].restore()

            yield Fleet([s.url for s in inproc], code, down_inproc, up_inproc)
        finally:
            await asyncio.gather(*(s.stop() for s in inproc))


def make_pool(urls: Sequence[str], weights: Sequence[int], **options: Any) -> WebSocketPool:
    backends = [
        Backend(id=f"b{i}", url=u, weight=w)
        for i, (u, w) in enumerate(zip(urls, weights, strict=True))
    ]
    return WebSocketPool(**{**BASE, "backends": backends, **options})


# ----------------------------------------------------------------------------- 1. rolling restart

WORKERS = 4
# A 1 s window holds several hundred leases even on a loaded 2-core box, and weighted
# round-robin is deterministic, so sampling noise is a percent or two; what moves a
# window's share is the pool's own routing (links borrowed elsewhere, stand-ins, a
# backend still waiting out its backoff). ±10 % absolute (23-43 % for a third, 40-60 %
# for a half) tells "back to its share" from "starved" or "still borrowing" without
# flaking on a scheduling hiccup.
RESTART_TOLERANCE = 0.10
# How far above its pre-restart size the pool may settle within 3 s of the restart.
SETTLE_SLACK = WORKERS // 2


@pytest.mark.parametrize(
    ("kind", "weights", "restarted"),
    [
        ("websockets", (1, 1, 1), 1),
        ("uvicorn", (1, 1, 1), 1),
        ("inproc-1001", (1, 1, 1), 1),
        ("inproc-1012", (1, 1, 1), 1),
        pytest.param(
            "websockets",
            (2, 1, 1),
            0,
            marks=pytest.mark.xfail(
                strict=False,
                raises=PoolDefect,
                reason=(
                    "restarting the weight-2 backend of 2:1:1 under 4 workers: peak 11 "
                    "(> 6+4) and settling at 10 in about 1 run of 3 (peak 6-9 otherwise): "
                    "while half the traffic's backend is down, the two weight-1 backends "
                    "grow to serve it and stay within their shares of the larger pool"
                ),
            ),
        ),
    ],
)
async def test_rolling_restart_graceful_keeps_size_and_restores_share(
    kind: FleetKind, weights: tuple[int, int, int], restarted: int
) -> None:
    """A graceful restart under traffic: no growth beyond +workers, share back within 3 s."""
    targets = weight_shares(weights)
    rid = f"b{restarted}"
    async with fleet(kind) as f:
        # Dials refused while the server is down are real failures and several run
        # at once under 4 workers; a threshold above them leaves the breaker to judge
        # what this test is about: the graceful 1001/1012 closes, which must not count.
        pool = make_pool(
            f.urls,
            weights,
            min_connections=6,
            max_connections=50,
            circuit_breaker={**BREAKER, "failure_threshold": 20},
        )
        events = Events(pool, "breaker-open", "connection-closed", "backend-unhealthy")
        async with pool:
            monitor = SizeMonitor(pool)
            traffic = Traffic(pool, WORKERS)
            monitor.start()
            traffic.start()
            try:
                await traffic.served(200)
                warm_start = _now()
                await asyncio.sleep(0.5)  # the pre-restart size under this traffic
                pre = monitor.max(since=warm_start)
                pre_layout = layout(pool)
                await f.graceful_down(restarted)
                await f.bring_up(restarted)
                up_at = _now()
                converged, last, last_n = await traffic.wait_for_shares(
                    targets, RESTART_TOLERANCE, since=up_at, within=3.0
                )
                held_from = _now()
                await asyncio.sleep(1.0)  # the share must hold over the next window too
                held, held_n = traffic.shares(held_from, _now())
                # Stand-ins and links opened for acquires that were served otherwise
                # are retired; what is left above the old size are links a backend
                # holds within its share of the pool, which idle_timeout trims
                # (trimming those at once would churn under steady load).
                back = await until(
                    lambda: pool.size <= pre + SETTLE_SLACK, max(0.0, up_at + 3.0 - _now())
                )
                post_layout = layout(pool)
                peak = monitor.max()  # the whole scenario, start-up included
            finally:
                await traffic.stop()
                await monitor.stop()
            status = pool.health_status()[rid]
    closes = [a for a in events.of("connection-closed", rid) if a[2] == f.close_code]
    report = (
        f"{kind} {weights} restart {rid}: size before {pre} {pre_layout}, peak {peak}, "
        f"after {post_layout}, back to <= {pre}+{SETTLE_SLACK} in {secs(back)}; {rid} share within "
        f"±{RESTART_TOLERANCE:.0%} of {targets[rid]:.0%} in {secs(converged)} "
        f"(last window {fmt(last)} of {last_n}), next 1 s {fmt(held)} of {held_n}; "
        f"errors {dict(Counter(e[1] for e in traffic.errors))}; {len(closes)} closes "
        f"with {f.close_code}; breaker {status.breaker}, "
        f"breaker-open {len(events.of('breaker-open'))}"
    )
    print("\n" + report)
    assert closes, report  # the restart really closed that backend's links gracefully
    assert converged is not None, report
    assert within(held, targets, RESTART_TOLERANCE), report
    assert status.breaker == "closed", report
    assert events.of("breaker-open") == [], report
    if peak > pre + WORKERS or back is None:
        raise PoolDefect(report)


# ----------------------------------------------------------------------------- 2. SIGKILL

KILL_BREAKER = {"failure_threshold": 2, "recovery_timeout": 0.3}


@pytest.mark.parametrize("kind", ["websockets", "uvicorn"])
async def test_sigkill_under_traffic_fails_over_and_recovers_share(kind: FleetKind) -> None:
    """SIGKILL under traffic: others serve, the dead one is out, restart restores its share."""
    targets = weight_shares((1, 1, 1))
    async with fleet(kind) as f:
        pool = make_pool(f.urls, (1, 1, 1), min_connections=6, circuit_breaker=KILL_BREAKER)
        async with pool:
            traffic = Traffic(pool, WORKERS)
            traffic.start()
            try:
                await traffic.served(200)
                killed_at = _now()
                assert f.kill is not None
                await f.kill(1)
                detected = await until(lambda: not pool.health_status()["b1"].eligible, 3.0)
                status = pool.health_status()["b1"]
                out_from = _now()
                await asyncio.sleep(1.0)  # a window of traffic with b1 dead
                out_counts = traffic.counts(out_from, _now())
                await f.bring_up(1)
                up_at = _now()
                converged, last, last_n = await traffic.wait_for_shares(
                    targets, RESTART_TOLERANCE, since=up_at, within=3.0
                )
            finally:
                await traffic.stop()
    errors = traffic.errors
    report = (
        f"{kind} SIGKILL b1: out of rotation after {secs(detected)} (healthy={status.healthy}, "
        f"ejected={status.ejected}, breaker={status.breaker}); next 1 s served "
        f"{dict(out_counts)}; errors {dict(Counter(e[1] for e in errors))} (acquire: "
        f"{sum(e[3] for e in errors)}, longest {max((e[2] for e in errors), default=0):.2f} s, "
        f"last {max((e[0] for e in errors), default=killed_at) - killed_at:.2f} s after the "
        f"kill); b1 share back within ±{RESTART_TOLERANCE:.0%} in {secs(converged)} "
        f"({fmt(last)} of {last_n})"
    )
    print("\n" + report)
    assert detected is not None, report
    assert not status.healthy or status.ejected or status.breaker == "open", report
    assert out_counts["b1"] == 0 and out_counts["b0"] > 50 and out_counts["b2"] > 50, report
    # Only the leases in flight at the kill (and acquires that raced its detection)
    # fail, each within its timeout, and all of them right at the kill: none later on.
    assert len(errors) <= 2 * WORKERS, report
    assert all(e[2] <= OP_TIMEOUT + 0.5 for e in errors), report
    assert all(e[0] - killed_at <= 0.5 for e in errors), report
    assert converged is not None, report


# ----------------------------------------------------------------------------- 3. at capacity

# At capacity the lease shares follow the connection shares, which move in whole
# connections: with 6 links, one link is 1/6 of the leases. ±6 % absolute around a third
# accepts 2 links of 6 (with some jitter in how often each is reused) and rejects 1 or 3.
CAPACITY_TOLERANCE = 0.06
# Whether the shares converge depends on the interleaving of releases, closes and opens
# at the moment of the change, so each scenario runs on several fresh pools and every
# one must converge (it stops at the first that does not). Round-robin scale-out got
# stuck in about half the pools, so 8 trials leave a broken pool ~0.4 % chance to pass.
SCALE_OUT_TRIALS = 8
RECOVERY_TRIALS = 3
# At capacity the allotment is exact once it has converged (FIFO hand-overs on whole
# links), so half a second of leases (~500) is a window long enough.
CAPACITY_WINDOW = 0.5


async def _scale_out_trial(servers: list[BackendServer], strategy: str) -> tuple[bool, str]:
    pool = make_pool(
        [s.url for s in servers[:2]],
        (1, 1),
        load_balancing=strategy,
        min_connections=2,
        max_connections=6,
    )
    async with pool:
        monitor = SizeMonitor(pool)
        traffic = Traffic(pool, 6, hold=0.003, pace=0.0005)
        monitor.start()
        traffic.start()
        try:
            full = await until(lambda: pool.size == 6, 3.0)
            await traffic.served(200)
            before = layout(pool)
            pool.add_backend(Backend(id="b2", url=servers[2].url))
            added_at = _now()
            converged, last, last_n = await traffic.wait_for_shares(
                weight_shares((1, 1, 1)),
                CAPACITY_TOLERANCE,
                since=added_at,
                within=3.0,
                window=CAPACITY_WINDOW,
            )
            after = (layout(pool), pool.waiting_count, pool.idle_count)
        finally:
            await traffic.stop()
            await monitor.stop()
    report = (
        f"{strategy}: at capacity after {secs(full)} {before}; b2 added: share within "
        f"±{CAPACITY_TOLERANCE:.0%} of 33% in {secs(converged)} ({fmt(last)} of {last_n}), "
        f"links {after[0]}, waiting {after[1]}, idle {after[2]}; peak size {monitor.max()}; "
        f"errors {len(traffic.errors)}; leases per 0.25 s: {timeline(traffic, added_at)}"
    )
    print("\n" + report)
    assert full is not None, report
    assert monitor.max() <= 6, report
    assert traffic.errors == [], report
    return converged is not None, report


@pytest.mark.parametrize("strategy", ["round-robin", "weighted-round-robin"])
async def test_scale_out_at_capacity_gives_the_new_backend_its_share(
    servers: list[BackendServer], strategy: str
) -> None:
    """At max_connections, an added backend reaches its share within 3 s; size never > max."""
    for _ in range(SCALE_OUT_TRIALS):
        converged, report = await _scale_out_trial(servers, strategy)
        if not converged:
            raise PoolDefect(report)


async def _recovery_trial(servers: list[BackendServer]) -> tuple[bool, str]:
    pool = make_pool([s.url for s in servers], (1, 1, 1), min_connections=3, max_connections=6)
    events = Events(pool, "backend-unhealthy", "backend-healthy")
    async with pool:
        monitor = SizeMonitor(pool)
        traffic = Traffic(pool, 6, hold=0.003, pace=0.0005)
        monitor.start()
        traffic.start()
        try:
            full = await until(lambda: pool.size == 6, 3.0)
            servers[2].set_health_status(503)
            out = await until(lambda: bool(events.of("backend-unhealthy", "b2")), 3.0)
            # Its links go: the other two hold the whole capacity meanwhile.
            emptied = await until(lambda: layout(pool)["b2"] == 0 and pool.size == 6, 3.0)
            during = layout(pool)
            servers[2].set_health_status(200)
            healthy = await until(lambda: bool(events.of("backend-healthy", "b2")), 3.0)
            back_at = _now()
            converged, last, last_n = await traffic.wait_for_shares(
                weight_shares((1, 1, 1)),
                CAPACITY_TOLERANCE,
                since=back_at,
                within=3.0,
                window=CAPACITY_WINDOW,
            )
            after = (layout(pool), pool.waiting_count, pool.idle_count)
        finally:
            await traffic.stop()
            await monitor.stop()
    report = (
        f"recovery at capacity: full in {secs(full)}, b2 unhealthy in {secs(out)}, its links "
        f"gone in {secs(emptied)} {during}; healthy again in {secs(healthy)}; share within "
        f"±{CAPACITY_TOLERANCE:.0%} of 33% in {secs(converged)} ({fmt(last)} of {last_n}), "
        f"links {after[0]}, waiting {after[1]}, idle {after[2]}; peak size {monitor.max()}; "
        f"errors {len(traffic.errors)}; leases per 0.25 s: {timeline(traffic, back_at)}"
    )
    print("\n" + report)
    assert full is not None and out is not None and emptied is not None, report
    assert healthy is not None, report
    assert monitor.max() <= 6, report
    assert traffic.errors == [], report
    return converged is not None, report


async def test_backend_recovering_at_capacity_gets_its_share_back(
    servers: list[BackendServer],
) -> None:
    """At max_connections, a backend healthy again (/health 503 -> 200) is back in 3 s."""
    for _ in range(RECOVERY_TRIALS):
        converged, report = await _recovery_trial(servers)
        if not converged:
            raise PoolDefect(report)


# ----------------------------------------------------------------------------- 4. and 5. shares


async def test_weighted_shares_at_capacity_with_waiters(servers: list[BackendServer]) -> None:
    """2:1:1 at max_connections=8 with 16 workers (acquires wait): 50/25/25 within ±6 %."""
    targets = weight_shares((2, 1, 1))
    pool = make_pool([s.url for s in servers], (2, 1, 1), min_connections=4, max_connections=8)
    async with pool:
        monitor = SizeMonitor(pool)
        traffic = Traffic(pool, 16, hold=0.002, pace=0.0)
        monitor.start()
        traffic.start()
        try:
            full = await until(lambda: pool.size == 8, 3.0)
            await asyncio.sleep(0.5)  # warm-up: the allotment settles to 4/2/2
            window_from = _now()
            await asyncio.sleep(1.0)
            shares, n = traffic.shares(window_from, _now())
            links = layout(pool)
        finally:
            await traffic.stop()
            await monitor.stop()
    report = (
        f"at capacity with waiters: full in {secs(full)}, shares {fmt(shares)} of {n} "
        f"leases, links {links}, peak size {monitor.max()}, most waiting "
        f"{monitor.max_waiting}, errors {len(traffic.errors)}"
    )
    print("\n" + report)
    assert full is not None, report
    assert monitor.max() <= 8 and monitor.max_waiting >= 4, report
    assert traffic.errors == [], report
    assert within(shares, targets, CAPACITY_TOLERANCE), report


async def test_weighted_shares_below_capacity(servers: list[BackendServer]) -> None:
    """2:1:1 with plenty of capacity and 4 workers: 50/25/25 within ±3 % (SPEC §2.3)."""
    targets = weight_shares((2, 1, 1))
    pool = make_pool([s.url for s in servers], (2, 1, 1), min_connections=4, max_connections=50)
    async with pool:
        monitor = SizeMonitor(pool)
        traffic = Traffic(pool, WORKERS)
        monitor.start()
        traffic.start()
        try:
            await traffic.served(200)
            window_from = _now()
            await asyncio.sleep(1.0)
            shares, n = traffic.shares(window_from, _now())
        finally:
            await traffic.stop()
            await monitor.stop()
    report = (
        f"below capacity: shares {fmt(shares)} of {n} leases, peak size {monitor.max()}, "
        f"errors {len(traffic.errors)}"
    )
    print("\n" + report)
    assert monitor.max() < 50, report
    assert n > 200 and traffic.errors == [], report
    assert within(shares, targets, 0.03), report


# ----------------------------------------------------------------------------- 6. set_backends


async def test_set_backends_under_traffic_drains_adds_and_reweights(
    servers: list[BackendServer],
) -> None:
    """set_backends: removed one drains its leases, added one serves, new weights apply."""
    async with BackendServer(name="s3") as extra:
        pool = make_pool([s.url for s in servers], (1, 1, 1), min_connections=3, max_connections=50)
        async with pool:
            traffic = Traffic(pool, WORKERS)
            traffic.start()
            try:
                await traffic.served(200)
                servers[2].set_reply_delay(0.2)  # b2's leases last: drain has work to do
                leased = await until(lambda: pool.health_status()["b2"].active > 0, 3.0)
                called = _now()
                await pool.set_backends(
                    [
                        Backend(id="b0", url=servers[0].url, weight=3),
                        Backend(id="b1", url=servers[1].url, weight=1),
                        Backend(id="b3", url=extra.url, weight=1),
                    ]
                )
                returned = _now()
                window_from = _now()
                await asyncio.sleep(1.0)
                shares, n = traffic.shares(window_from, _now())
                ids = sorted(pool.health_status())
            finally:
                await traffic.stop()
            b2_closed = await until(lambda: servers[2].open_connections == 0, 3.0)
    b2_during = [t for t, b in traffic.leases if b == "b2" and called <= t]
    b2_after = [t for t in b2_during if t > returned]
    targets = {"b0": 0.6, "b1": 0.2, "b3": 0.2}
    report = (
        f"set_backends: a b2 lease out after {secs(leased)}; call took "
        f"{returned - called:.2f} s; b2 leases finished during it {len(b2_during)}, after "
        f"it {len(b2_after)}; b2 server connections 0 after {secs(b2_closed)}; backends "
        f"{ids}; next 1 s {fmt(shares)} of {n}; errors {len(traffic.errors)}"
    )
    print("\n" + report)
    assert leased is not None, report
    assert traffic.errors == [], report  # no lease failed, the drained ones included
    assert b2_during and b2_after == [], report
    assert b2_closed is not None and ids == ["b0", "b1", "b3"], report
    assert within(shares, targets, 0.05), report
