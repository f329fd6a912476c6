"""``WebSocketPool``: leases, the warm set, balancing, failover, lifecycle.

How the pool decides (the httpcore model): all state is a few collections
(links per backend, idle deques, leased set, a FIFO of waiters) and every
decision is a synchronous method that changes them and *starts* whatever I/O
follows (opening or closing a link) as a tracked task. Nothing awaits while
holding a half-made decision, so there is no lock and cancellation at any
await leaves the state consistent.

The hot path, ``acquire`` with an idle link on the picked backend, is one
balancer pick, one deque pop, one handle allocation and no task switch.

Accounting invariants (checked by the chaos suite):
``size == active_count + idle_count`` and
``size + connecting + closing <= max_connections``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
import time
import warnings
from collections import deque
from collections.abc import Callable, Coroutine, Generator, Mapping
from typing import Any, cast

from wsclient import events as ev
from wsclient.backend import BackendHealth, BackendState, weighted_targets
from wsclient.balancers import create_balancer
from wsclient.breaker import BreakerState
from wsclient.config import Backend, PoolConfig
from wsclient.connection import (
    WS_CLOSED,
    CloseCode,
    Connection,
    ConnectionState,
    Message,
    _Link,
    check_close_code,
    new_session,
    open_link,
)
from wsclient.errors import (
    AcquireTimeoutError,
    ConnectError,
    NoHealthyBackendError,
    PoolClosedError,
    PoolMisuseError,
    WSClientError,
)
from wsclient.health import HealthChecker

logger = logging.getLogger("wsclient.pool")


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    CLOSING = "closing"
    CLOSED = "closed"


class _NotAdmitted(Exception):
    """The backend's half-open breaker has no trial slot left."""


class _Waiter:
    """One acquire waiting for a link; ``backend_id`` pins it (ip-hash, broadcast)."""

    __slots__ = ("backend_id", "evicting", "future", "key", "opening", "preferred", "tried")

    def __init__(
        self,
        future: asyncio.Future[_Link],
        backend_id: str | None,
        key: str | None,
        preferred: BackendState | None = None,
    ):
        self.future = future
        self.backend_id = backend_id
        self.key = key
        # The balancer's pick for this acquire: with capacity to spare, open
        # there rather than borrow an idle link elsewhere, so shares follow weights.
        self.preferred = preferred
        self.opening = False
        self.evicting = False
        self.tried: set[str] = set()

    def accepts(self, backend_id: str) -> bool:
        return self.backend_id is None or self.backend_id == backend_id


class _AcquireContext:
    """What ``pool.acquire()`` returns: ``await`` it, or use it with ``async with``."""

    __slots__ = ("_backend_id", "_conn", "_key", "_pool", "_timeout")

    def __init__(
        self, pool: WebSocketPool, key: str | None, timeout: float | None, backend_id: str | None
    ) -> None:
        self._pool = pool
        self._key = key
        self._timeout = timeout
        self._backend_id = backend_id
        self._conn: Connection | None = None

    def __await__(self) -> Generator[Any, None, Connection]:
        return self._pool._acquire(self._key, self._timeout, self._backend_id).__await__()

    # Plain methods returning awaitables: one coroutine frame fewer per lease.
    def __aenter__(self) -> Coroutine[Any, Any, Connection]:
        return self._pool._acquire(self._key, self._timeout, self._backend_id, self)

    def __aexit__(self, *exc_info: object) -> _Ready:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.released:
            self._pool.release(conn)
        return _READY


class _Ready:
    """An awaitable that is already finished (release() never blocks)."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return
        yield  # makes this a generator function


_READY = _Ready()


class WebSocketPool:
    """A pool of warm WebSocket connections to weighted backends.

    ``WebSocketPool(backends=[...], ...)`` takes ``PoolConfig`` fields as
    keywords, or ``WebSocketPool(config)`` a ``PoolConfig`` / dict (keywords
    then override it). Use ``async with`` or ``start()`` / ``close()``.
    """

    def __init__(self, config: PoolConfig | Mapping[str, Any] | None = None, /, **options: Any):
        if config is None:
            cfg = PoolConfig.model_validate(options)
        elif isinstance(config, PoolConfig):
            cfg = PoolConfig.model_validate({**dict(config), **options}) if options else config
        elif isinstance(config, Mapping):
            cfg = PoolConfig.model_validate({**config, **options})
        else:
            raise TypeError(
                "WebSocketPool() takes a PoolConfig, a dict or keywords, "
                f"not {type(config).__name__}"
            )
        self.config = cfg
        self._validate_on_checkout = cfg.validate_on_checkout
        self._idle_timeout = cfg.idle_timeout
        self._defaults = cfg.connection_defaults()
        self._backends: dict[str, BackendState] = {}
        self._balancer = create_balancer(cfg.load_balancing)
        self._eligible: list[BackendState] = []
        self._panic = False
        self._waiters: deque[_Waiter] = deque()
        self._links: set[_Link] = set()
        self._leased: set[_Link] = set()
        self._orphans: set[_Link] = set()
        self._idle_total = 0
        self._connecting = 0
        self._closing_links = 0
        self._generation = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._events = ev.EventEmitter()
        self._state = _State.NEW
        self._session: Any = None
        self._wakeup: asyncio.Event | None = None
        self._all_returned: asyncio.Event | None = None
        self._maintenance: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()
        self._maintenance_due = 0.0
        self._terminating = False
        self._validating: set[_Link] = set()
        self._to_read: list[_Link] = []
        self._read_scheduled = False
        self._refresh_scheduled = False
        self._breaker_timers: dict[str, asyncio.TimerHandle] = {}
        self._health = HealthChecker(self)
        self._rng = random.Random()
        self.stats: dict[str, int] = {
            "acquired": 0,
            "opened": 0,
            "open_failures": 0,
            "closed": 0,
            "idle_messages": 0,
        }
        for backend in cfg.backends:
            self._backends[backend.id] = self._new_backend(backend)

    def __del__(self, _warn: Callable[..., None] = warnings.warn) -> None:
        if getattr(self, "_state", None) is _State.RUNNING:
            _warn(f"unclosed {self!r}: use 'async with' or await close()", ResourceWarning, 2)

    def _new_backend(self, backend: Backend) -> BackendState:
        return BackendState(
            backend, self.config, self._defaults, on_breaker_change=self._on_breaker_change
        )

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Open the warm set (``min_connections``) and start health checking."""
        if self._state is not _State.NEW:
            if self._state is _State.RUNNING:
                return
            raise PoolClosedError("this pool is closed; create a new one")
        self._session = new_session()
        self._wakeup = asyncio.Event()
        self._all_returned = asyncio.Event()
        self._state = _State.RUNNING
        self._refresh_eligibility()
        for backend in self._backends.values():
            self._health.watch(backend)
        warm = self._refill(time.monotonic())
        if warm:
            await asyncio.wait(warm)
        self._maintenance = asyncio.get_running_loop().create_task(
            self._maintain(), name="wsclient-pool-maintenance"
        )

    async def __aenter__(self) -> WebSocketPool:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self, timeout: float | None = None) -> None:
        """Stop handing out, wait for leased connections (bounded), close everything."""
        wait = self.config.shutdown_timeout if timeout is None else timeout
        await self._shutdown(wait_for_leases=wait, code=CloseCode.GOING_AWAY)

    async def terminate(self) -> None:
        """Close everything at once, leased connections included, without waiting."""
        await self._shutdown(wait_for_leases=0.0, code=None)

    async def _shutdown(self, *, wait_for_leases: float, code: int | None) -> None:
        if code is None:
            self._terminating = True  # also cuts short a graceful close() in progress
        if self._state in (_State.CLOSING, _State.CLOSED):
            if code is None and self._all_returned is not None:
                self._all_returned.set()
            await self._closed.wait()
            return
        self._state = _State.CLOSING
        for waiter in self._waiters:
            if not waiter.future.done():
                waiter.future.set_exception(PoolClosedError("the pool is closing"))
        self._waiters.clear()
        for handle in self._breaker_timers.values():
            handle.cancel()
        self._breaker_timers.clear()
        try:
            await self._health.stop()
            if self._maintenance is not None:
                self._maintenance.cancel()
                await asyncio.wait((self._maintenance,))
            for backend in self._backends.values():
                self._retire_idle(backend, code, "pool closing")
            for link in list(self._validating):
                self._retire(link, code=None, reason="pool closing")  # ends its pong wait
            if self._leased and wait_for_leases > 0 and self._all_returned is not None:
                self._all_returned.clear()
                if self._terminating:
                    self._all_returned.set()
                try:
                    async with asyncio.timeout(wait_for_leases):
                        await self._all_returned.wait()
                except TimeoutError:
                    logger.warning(
                        "close(): %d connection(s) still leased after %s s; closing them",
                        len(self._leased),
                        wait_for_leases,
                    )
        finally:
            # Reached on cancellation too: a cancelled close() still closes everything.
            await self._hard_close(code)

    async def _hard_close(self, code: int | None) -> None:
        try:
            await self._health.stop()
            if self._maintenance is not None:
                self._maintenance.cancel()
                await asyncio.wait((self._maintenance,))
            for link in list(self._leased):
                self._orphans.add(link)
                self._leased.discard(link)
                if link not in self._validating:  # a validation was never counted active
                    link.pool_backend.active -= 1
                self._retire(link, code=code, reason="pool closing")
            for backend in self._backends.values():
                self._retire_idle(backend, code, "pool closing")
            # Opens still in flight are cancelled; their tasks clean up after themselves.
            for task in list(self._tasks):
                if task.get_name().startswith("wsclient-open"):
                    task.cancel()
            while self._tasks:
                await asyncio.wait(set(self._tasks))
            await self._events.aclose()
        finally:
            if self._session is not None:
                session, self._session = self._session, None
                await session.close()
            self._state = _State.CLOSED
            self._closed.set()

    @property
    def closed(self) -> bool:
        return self._state is _State.CLOSED

    # ------------------------------------------------------------------ counts

    @property
    def active_count(self) -> int:
        """Connections leased to the application."""
        return len(self._leased)

    @property
    def idle_count(self) -> int:
        """Open connections waiting in the pool."""
        return self._idle_total

    @property
    def waiting_count(self) -> int:
        """Acquires waiting for a connection."""
        return sum(1 for w in self._waiters if not w.future.done())

    @property
    def size(self) -> int:
        """Connections the pool holds (leased + idle)."""
        return len(self._leased) + self._idle_total

    @property
    def connecting_count(self) -> int:
        return self._connecting

    @property
    def backends(self) -> list[Backend]:
        return [b.config for b in self._backends.values() if not b.removed]

    def __repr__(self) -> str:
        return (
            f"<WebSocketPool [{self._state.value} | Requests: {self.active_count} active, "
            f"{self.waiting_count} queued | Connections: {self.size} open, "
            f"{self.idle_count} idle, {self._connecting} connecting | "
            f"Backends: {len(self._eligible)}/{len(self._backends)} eligible]>"
        )

    def _has_capacity(self) -> bool:
        return (
            len(self._leased) + self._idle_total + self._connecting + self._closing_links
            < self.config.max_connections
        )

    # ------------------------------------------------------------------ acquire

    def acquire(self, key: str | None = None, timeout: float | None = None) -> _AcquireContext:
        """Lease a connection: ``conn = await pool.acquire()`` or ``async with pool.acquire()``.

        ``key`` is the affinity key for ip-hash (client IP, user or session id).
        ``timeout`` overrides ``acquire_timeout``.
        """
        return _AcquireContext(self, key, timeout, None)

    async def _acquire(
        self,
        key: str | None,
        timeout: float | None,
        backend_id: str | None,
        context: _AcquireContext | None = None,
    ) -> Connection:
        if self._state is not _State.RUNNING:
            self._raise_not_running()
        if backend_id is None and not self._waiters:
            backend = self._pick(key)
            link = self._take_idle(backend)
            if link is None and key is None and not self._has_capacity():
                link = self._take_any_idle()
            if link is not None and self._validate_on_checkout:
                # Validation is part of the acquire: its pings share the acquire's deadline.
                limit = self.config.acquire_timeout if timeout is None else timeout
                deadline = None if limit is None else time.monotonic() + limit
                while link is not None:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        self._put_back(link, link.pool_backend)
                        raise AcquireTimeoutError(f"no connection within {limit} s ({self!r})")
                    verdict = await self._validate(link, remaining)
                    if verdict:
                        break
                    if verdict is None:  # our budget ran out, not the link's patience
                        raise AcquireTimeoutError(f"no connection within {limit} s ({self!r})")
                    if self._state is not _State.RUNNING:
                        self._raise_not_running()
                    link = self._take_idle(backend) or (None if key else self._take_any_idle())
                if deadline is not None:
                    timeout = max(0.0, deadline - time.monotonic())
            if link is not None:
                if self._state is not _State.RUNNING:
                    self._retire(link, code=CloseCode.GOING_AWAY, reason="pool closing")
                    self._raise_not_running()
                self._lease(link)
                conn = Connection(link)
                if context is not None:
                    context._conn = conn
                return conn
            waiter = _Waiter(
                asyncio.get_running_loop().create_future(),
                backend.id if key is not None else None,
                key,
                preferred=backend,
            )
        else:
            if backend_id is None and (key is not None or self._balancer.requires_key):
                backend_id = self._pick(key).id  # keyless ip-hash raises its ValueError here
            waiter = _Waiter(asyncio.get_running_loop().create_future(), backend_id, key)
        conn = await self._wait(waiter, timeout)
        if context is not None:
            context._conn = conn
        return conn

    async def _wait(self, waiter: _Waiter, timeout: float | None) -> Connection:
        if self._state is not _State.RUNNING:
            self._raise_not_running()
        self._waiters.append(waiter)
        limit = self.config.acquire_timeout if timeout is None else timeout
        try:
            self._serve(waiter)
            async with asyncio.timeout(limit):
                link = await waiter.future
        except TimeoutError:
            self._abandon(waiter)
            raise AcquireTimeoutError(f"no connection within {limit} s ({self!r})") from None
        except BaseException:
            self._abandon(waiter)
            raise
        return Connection(link)

    def _abandon(self, waiter: _Waiter) -> None:
        """The acquiring task gave up (timeout, cancel): leak nothing."""
        future = waiter.future
        if not future.done():
            future.cancel()
        elif not future.cancelled() and future.exception() is None:
            # A link was leased to us in the same instant we were cancelled.
            self._return_lease(future.result())
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)

    def _raise_not_running(self) -> None:
        if self._state is _State.NEW:
            raise PoolMisuseError("the pool is not started: use 'async with pool' or await start()")
        raise PoolClosedError("the pool is closed")

    def _pick(self, key: str | None) -> BackendState:
        if self._balancer.requires_key and key is None:
            raise ValueError(
                f"load_balancing={self.config.load_balancing!r} needs an affinity key: "
                "call acquire(key=...)"
            )
        if not self._eligible:
            raise self._no_backend_error()
        return cast(BackendState, self._balancer.pick(key))

    def _no_backend_error(self) -> NoHealthyBackendError:
        return NoHealthyBackendError({b.id: b.describe() for b in self._backends.values()})

    def _take_idle(self, backend: BackendState) -> _Link | None:
        idle = backend.idle
        while idle:
            link = idle.pop()  # LIFO: surplus connections age out at the other end
            self._idle_total -= 1
            if (
                link.state is ConnectionState.OPEN
                and link.generation == self._generation
                and (link.expires_at is None or time.monotonic() < link.expires_at)
            ):
                return link
            self._retire(link, code=CloseCode.NORMAL, reason="recycled", was_idle=False)
        return None

    def _take_any_idle(self) -> _Link | None:
        for backend in self._eligible:
            if backend.idle:
                link = self._take_idle(backend)
                if link is not None:
                    return link
        return None

    def _lease(self, link: _Link) -> None:
        link.mark_leased()
        self._leased.add(link)
        link.pool_backend.active += 1
        self.stats["acquired"] += 1

    async def _validate(self, link: _Link, remaining: float | None) -> bool | None:
        """validate_on_checkout: a ping round trip before handing an idle link out.

        True: answered. False: no pong within heartbeat.timeout (retired). None:
        the acquire's remaining time ran out first (the link goes back, unjudged).
        """
        backend: BackendState = link.pool_backend
        limit = backend.options.heartbeat.timeout
        budget_bound = remaining is not None and remaining < limit
        if remaining is not None:
            limit = min(limit, remaining)
        self._leased.add(link)  # reserved while validating, so counts stay whole
        self._validating.add(link)
        ok = False
        try:
            ok = await link.roundtrip(timeout=limit)
        finally:
            self._validating.discard(link)
            self._leased.discard(link)
            undecided = (
                not ok
                and budget_bound
                and link.state is ConnectionState.OPEN
                and self._state is _State.RUNNING
            )
            if undecided:
                self._put_back(link, backend)
            elif not ok or self._state is not _State.RUNNING:
                # Failed, cancelled mid-ping, or the pool began closing: never reuse it.
                self._retire(link, code=CloseCode.NORMAL, reason="not validated")
            if not self._leased and self._all_returned is not None:
                self._all_returned.set()
        return None if undecided else ok

    # ------------------------------------------------------------------ waiters

    def _serve(self, waiter: _Waiter) -> None:
        """A new waiter: an idle link for it, or an open started on its behalf."""
        if len(self._waiters) > 1:
            self._dispatch()  # older waiters first: FIFO holds across the queue
            return
        if waiter.preferred is not None and self._has_capacity():
            self._open_for(waiter)
            return
        link = self._idle_for(waiter)
        if link is not None:
            self._hand(waiter, link)
            return
        if self._has_capacity():
            self._open_for(waiter)
        elif not waiter.evicting:
            waiter.evicting = self._evict_one_idle(waiter)

    def _idle_for(self, waiter: _Waiter) -> _Link | None:
        if waiter.backend_id is not None:
            backend = self._backends.get(waiter.backend_id)
            return self._take_idle(backend) if backend is not None else None
        return self._take_any_idle()

    def _hand(self, waiter: _Waiter, link: _Link) -> None:
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)
        self._lease(link)
        waiter.future.set_result(link)

    def _open_for(self, waiter: _Waiter) -> None:
        try:
            backend = self._backend_for_open(waiter)
        except WSClientError as exc:
            self._fail(waiter, exc)
            return
        waiter.opening = True
        waiter.evicting = False
        self._start_open(backend, waiter)

    def _backend_for_open(self, waiter: _Waiter) -> BackendState:
        if waiter.backend_id is not None:
            backend = self._backends.get(waiter.backend_id)
            if backend is None or not (backend.eligible or self._panic) or backend.removed:
                raise self._no_backend_error()
            return backend
        now = time.monotonic()
        preferred, waiter.preferred = waiter.preferred, None
        if preferred is not None and preferred.in_rotation and preferred.may_open(now):
            return preferred
        candidates = [b for b in self._eligible if b.id not in waiter.tried]
        if not candidates:
            raise self._no_backend_error()
        # A backend backing off after a failure is dialled only if nothing else can be.
        ready = [b for b in candidates if b.may_open(now)] or candidates
        if len(ready) == len(self._eligible):
            return self._pick(waiter.key)
        return max(ready, key=lambda b: b.weight / (1 + b.active + b.connecting))

    def _fail(self, waiter: _Waiter, exc: BaseException) -> None:
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)
        if not waiter.future.done():
            waiter.future.set_exception(exc)

    def _dispatch(self) -> None:
        """Capacity or eligibility changed: serve waiters in arrival order."""
        if self._state is not _State.RUNNING:
            return
        for waiter in list(self._waiters):
            if waiter.future.done():
                self._waiters.remove(waiter)
                continue
            link = self._idle_for(waiter)
            if link is not None:
                self._hand(waiter, link)
            elif not waiter.opening:
                if self._has_capacity():
                    self._open_for(waiter)
                elif not waiter.evicting:
                    waiter.evicting = self._evict_one_idle(waiter)

    def _evict_one_idle(self, waiter: _Waiter) -> bool:
        """At capacity, close an idle link the waiter cannot use, to make room.

        Idle links of backends out of rotation (ejected) go first; a pinned
        waiter (ip-hash, broadcast) may also take room from any other backend.
        """
        eligible = set(self._eligible)
        candidates = [b for b in self._backends.values() if b.idle and b not in eligible]
        if waiter.backend_id is not None:
            candidates += [
                b
                for b in self._backends.values()
                if b.idle and b in eligible and b.id != waiter.backend_id
            ]
        for backend in candidates:
            if backend.id == waiter.backend_id:
                continue
            link = backend.idle.popleft()
            self._idle_total -= 1
            self._retire(link, code=CloseCode.NORMAL, reason="making room", was_idle=False)
            return True
        return False

    # ------------------------------------------------------------------ release

    def release(self, conn: Connection) -> None:
        """Give a leased connection back. Safe to call from ``finally``; never blocks."""
        if not isinstance(conn, Connection):
            raise TypeError(f"release() takes a Connection, not {type(conn).__name__}")
        link = conn._link
        if link is None:
            raise PoolMisuseError("this connection was already released")
        if link not in self._leased:
            if link in self._orphans:
                self._orphans.discard(link)
                conn._detach()
                return
            if link.owner is not self:
                raise PoolMisuseError(
                    "this connection does not belong to this pool"
                    + ("" if link.owner is not None else " (it came from connect())")
                )
            raise PoolMisuseError("this connection is not leased from this pool")
        conn._detach()
        self._return_lease(link)

    def _return_lease(self, link: _Link) -> None:
        self._leased.discard(link)
        backend: BackendState = link.pool_backend
        backend.active -= 1
        if link.reading or link.dirty:
            # A receive() still running, or one that timed out with its reply
            # possibly still coming: reusing the socket could hand that reply to
            # the next lessee. Closing it is the caller's doing, not the backend's.
            link.client_initiated = True
            self._retire(link, code=CloseCode.NORMAL, reason="released with a read outstanding")
        else:
            self._put_back(link, backend)
        if backend.removed:
            self._forget_if_drained(backend)
        if not self._leased and self._all_returned is not None:
            self._all_returned.set()

    def _start_idle_reads(self) -> None:
        self._read_scheduled = False
        links, self._to_read = self._to_read, []
        for link in links:
            link.read_queued = False
            link.start_idle_read()

    def _put_back(self, link: _Link, backend: BackendState | None) -> None:
        if link.ws.closed and link.state is ConnectionState.OPEN:
            link.absorb_close(WS_CLOSED)  # aiohttp closed it (heartbeat) while nobody read
        if (
            self._state is not _State.RUNNING
            or backend is None
            or link.state is not ConnectionState.OPEN
            or not backend.in_rotation
            or link.generation != self._generation
            or (link.expires_at is not None and time.monotonic() >= link.expires_at)
        ):
            self._retire(link, code=CloseCode.NORMAL, reason="retired", was_idle=False)
            return
        for waiter in self._waiters:
            if not waiter.future.done() and waiter.accepts(backend.id):
                self._lease(link)
                self._waiters.remove(waiter)
                waiter.future.set_result(link)
                return
        link.mark_idle()
        backend.idle.append(link)
        self._idle_total += 1
        if not link.read_queued:  # bounded by the number of links, however tight the loop
            link.read_queued = True
            self._to_read.append(link)
        if not self._read_scheduled:
            # One callback per loop iteration for all links released in it; a link
            # re-acquired before then never starts a background read at all.
            self._read_scheduled = True
            asyncio.get_running_loop().call_soon(self._start_idle_reads)
        timeout = self._idle_timeout
        due = self._maintenance_due
        if (timeout is not None and link.last_used + timeout < due) or (
            link.expires_at is not None and link.expires_at < due
        ):
            self._wake()  # rare: only when this deadline is the earliest one
        if self._waiters:
            self._dispatch()

    # ------------------------------------------------------------------ opening

    def _start_open(self, backend: BackendState, waiter: _Waiter | None) -> asyncio.Task[None]:
        self._connecting += 1
        backend.connecting += 1
        task = asyncio.get_running_loop().create_task(
            self._open(backend, waiter), name=f"wsclient-open-{backend.id}"
        )
        self._track(task)
        return task

    def _track(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _open(self, backend: BackendState, waiter: _Waiter | None) -> None:
        try:
            link = await self._connect(backend)
        except (ConnectError, _NotAdmitted) as exc:
            self._connecting -= 1
            backend.connecting -= 1
            self._open_failed(backend, waiter, exc)
            return
        except Exception as exc:  # a bug in an auth provider, say: fail this open, not the pool
            self._connecting -= 1
            backend.connecting -= 1
            logger.exception("opening a connection to %s failed unexpectedly", backend.id)
            self._open_failed(backend, waiter, ConnectError(backend.url, f"{type(exc).__name__}"))
            return
        except BaseException:
            self._connecting -= 1
            backend.connecting -= 1
            raise
        self._connecting -= 1
        backend.connecting -= 1
        self._adopt(link, backend)
        if waiter is not None:
            waiter.opening = False
        if backend.removed:
            self._retire(link, code=CloseCode.GOING_AWAY, reason="backend removed")
            self._forget_if_drained(backend)
            self._dispatch()
            return
        if self._state is not _State.RUNNING:
            self._retire(link, code=CloseCode.GOING_AWAY, reason="pool closing", was_idle=False)
            return
        self._put_back(link, backend)
        if self._waiters:
            self._dispatch()

    async def _connect(self, backend: BackendState) -> _Link:
        trial = backend.breaker_enabled and backend.breaker_state == "half-open"
        if trial and not backend.breaker.allow():
            raise _NotAdmitted(backend.id)
        try:
            link = await open_link(
                self._session, backend.url, backend.options, backend_id=backend.id
            )
        except ConnectError:
            raise
        except BaseException:
            if trial:
                backend.breaker.record_neutral()  # cancelled: no verdict on the backend
            raise
        return link

    def _adopt(self, link: _Link, backend: BackendState) -> None:
        link.owner = self
        link.pool_backend = backend
        link.generation = self._generation
        link.on_closed = self._on_link_closed
        link.on_idle_message = self._on_idle_message
        lifetime = self.config.max_lifetime
        if lifetime is not None:
            link.expires_at = link.created_at + lifetime * self._rng.uniform(0.9, 1.1)
        backend.links.add(link)
        self._links.add(link)
        self.stats["opened"] += 1
        if backend.record_connect_success():
            self._schedule_refresh()  # its ejection ended early: back into rotation
        self._events.emit(ev.CONNECTION_OPEN, backend.id, link.id)

    def _open_failed(self, backend: BackendState, waiter: _Waiter | None, exc: Exception) -> None:
        if backend.removed:
            self._forget_if_drained(backend)
        if isinstance(exc, ConnectError):
            self.stats["open_failures"] += 1
            backend.record_failure(exc.reason)
            self._schedule_refresh()  # ejected for its backoff delay
            logger.info("connect to backend %s failed: %s", backend.id, exc.reason)
        if waiter is None or waiter.future.done():
            self._wake()
            return
        waiter.opening = False
        waiter.tried.add(backend.id)
        if waiter.backend_id is not None:
            self._fail(waiter, exc if isinstance(exc, ConnectError) else self._no_backend_error())
            return
        self._open_for(waiter)
        if waiter.future.done() and waiter.future.exception() is not None:
            cause = waiter.future.exception()
            if cause is not None and cause.__cause__ is None:
                cause.__cause__ = exc

    # ------------------------------------------------------------------ closing links

    def _retire_idle(self, backend: BackendState, code: int | None, reason: str) -> None:
        while backend.idle:
            self._retire(backend.idle.pop(), code=code, reason=reason, was_idle=True)

    def _retire(
        self, link: _Link, *, code: int | None, reason: str, was_idle: bool = False
    ) -> None:
        """Take ``link`` out of the pool and close it in the background."""
        if was_idle:
            self._idle_total -= 1
        if link not in self._links:
            return
        self._links.discard(link)
        link.pool_backend.links.discard(link)
        link.on_closed = None
        if link.state is ConnectionState.CLOSED:
            self._closed_event(link)
            self._dispatch()
            self._wake()
            return
        self._closing_links += 1
        task = asyncio.get_running_loop().create_task(
            self._close_link(link, code, reason), name=f"wsclient-close-{link.id}"
        )
        self._track(task)

    async def _close_link(self, link: _Link, code: int | None, reason: str) -> None:
        try:
            if code is None:
                link.drop()
                await link.close()  # releases nothing more; keeps drop and close symmetric
            else:
                await link.close(code, reason)
        finally:
            self._closing_links -= 1
            self._closed_event(link)
            self._dispatch()
            self._wake()

    def _closed_event(self, link: _Link) -> None:
        self.stats["closed"] += 1
        self._events.emit(
            ev.CONNECTION_CLOSED, link.backend_id, link.id, link.close_code, link.close_reason
        )

    def _on_link_closed(self, link: _Link) -> None:
        """A link ended on its own: peer close, error, missed heartbeat."""
        backend: BackendState = link.pool_backend
        if not link.client_initiated and self._state is _State.RUNNING and not backend.removed:
            blamed = backend.record_close(link.close_code, link.close_reason)
            if blamed:
                self._schedule_refresh()  # ejected for its backoff delay
            logger.info(
                "connection %s to %s closed: %s %s%s",
                link.id,
                link.backend_id,
                link.close_code,
                link.close_reason,
                " (counted as a failure)" if blamed else "",
            )
        if link in self._leased:
            return  # the lessee finds out on its next call; release() retires it
        with contextlib.suppress(ValueError):
            backend.idle.remove(link)
            self._idle_total -= 1
        self._retire(link, code=None, reason=link.close_reason)

    def _on_idle_message(self, link: _Link, message: Message) -> None:
        self.stats["idle_messages"] += 1
        self._events.emit(ev.IDLE_MESSAGE, link.backend_id, link.id, message)
        if self.config.on_idle_message == "close":
            backend: BackendState = link.pool_backend
            if link in backend.idle:
                backend.idle.remove(link)
                self._retire(
                    link,
                    code=CloseCode.POLICY_VIOLATION,
                    reason="unexpected message",
                    was_idle=True,
                )

    # ------------------------------------------------------------------ maintenance

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    async def _maintain(self) -> None:
        """Keep the warm set, evict idle and expired links, honour backoff."""
        assert self._wakeup is not None
        while self._state is _State.RUNNING:
            now = time.monotonic()
            due = [self._housekeeping(now)]
            self._refill(now)
            due.extend(b.retry_at for b in self._backends.values() if b.retry_at > now)
            ejected = [b.ejected_until for b in self._backends.values() if b.ejected_until]
            if any(until <= now for until in ejected):
                self._refresh_eligibility()  # an ejection ended: back into rotation
            due.extend(until for until in ejected if until > now)
            for backend in self._backends.values():
                _ = backend.weight  # reading it ends a finished ramp
            if any(b.recovered_at is not None and b.in_rotation for b in self._backends.values()):
                self._refresh_eligibility()  # slow start: weights are still ramping
                due.append(now + (self.config.slow_start or 1.0) / 10)
            delay = min(60.0, max(0.005, min(due) - now))
            self._maintenance_due = now + delay
            # Cleared after the (synchronous) work: wakes it caused itself are moot,
            # and nothing else can have run in between.
            self._wakeup.clear()
            try:
                async with asyncio.timeout(delay):
                    await self._wakeup.wait()
            except TimeoutError:
                pass

    def _housekeeping(self, now: float) -> float:
        """Close idle links past idle_timeout (down to min) or past max_lifetime."""
        idle_timeout = self.config.idle_timeout
        next_due = now + 60.0
        surplus = self.size - self.config.min_connections
        for backend in self._backends.values():
            idle = backend.idle
            for link in list(idle):
                expired = link.expires_at is not None and now >= link.expires_at
                stale = link.generation != self._generation
                too_long = (
                    idle_timeout is not None
                    and surplus > 0
                    and now - link.last_used >= idle_timeout
                )
                if expired or stale or too_long:
                    idle.remove(link)
                    self._retire(link, code=CloseCode.NORMAL, reason="idle", was_idle=True)
                    surplus -= 1
                    continue
                if link.expires_at is not None:
                    next_due = min(next_due, link.expires_at)
                if idle_timeout is not None:
                    # Kept only because of min_connections: look again a full timeout later.
                    deadline = link.last_used + idle_timeout
                    next_due = min(next_due, deadline if deadline > now else now + idle_timeout)
        return next_due

    def _refill(self, now: float) -> list[asyncio.Task[None]]:
        """Open connections until ``min_connections`` are open or opening."""
        want = self.config.min_connections - (self.size + self._connecting)
        if want <= 0 or self._state is not _State.RUNNING:
            return []
        pool = self._backends.values() if self._panic else self._eligible
        candidates = [b for b in pool if not b.removed and b.may_open(now)]
        if not candidates:
            return []
        shares = weighted_targets(self.config.min_connections, list(pool))
        started = []
        for _ in range(want):
            if not self._has_capacity():
                break
            backend = max(
                candidates,
                key=lambda b: (shares.get(b.id, 0) - len(b.links) - b.connecting, b.base_weight),
            )
            if backend.breaker_state == "half-open" and backend.connecting:
                candidates.remove(backend)  # one trial at a time
                if not candidates:
                    break
                continue
            started.append(self._start_open(backend, None))
        return started

    # ------------------------------------------------------------------ eligibility

    def _refresh_eligibility(self) -> None:
        self._refresh_scheduled = False
        now = time.monotonic()
        live = [b for b in self._backends.values() if not b.removed]
        usable = [b for b in live if b.eligible]
        threshold = self.config.panic_threshold
        self._panic = bool(threshold is not None and live and len(usable) / len(live) < threshold)
        if self._panic:
            usable = live
        for backend in self._backends.values():
            backend.in_rotation = backend in usable
            if backend.ejected_until and backend.ejected_until <= now:
                backend.ejected_until = 0.0
        # Outlier ejection (Envoy's model): a backend that just failed gets no new
        # leases for its backoff delay, but never if that would leave none at all.
        self._eligible = [b for b in usable if not b.ejected_until] or usable
        self._balancer.update(self._eligible)
        for backend in live:
            if backend not in usable:
                self._retire_idle(backend, CloseCode.GOING_AWAY, "backend ineligible")
        if not usable and self._state is _State.RUNNING:
            for waiter in list(self._waiters):
                self._fail(waiter, self._no_backend_error())
        self._dispatch()
        self._wake()

    def _schedule_refresh(self) -> None:
        if self._refresh_scheduled or self._state is not _State.RUNNING:
            return
        self._refresh_scheduled = True
        asyncio.get_running_loop().call_soon(self._refresh_eligibility)

    def _on_breaker_change(
        self, backend: BackendState, old: BreakerState, new: BreakerState
    ) -> None:
        event = {
            "open": ev.BREAKER_OPEN,
            "half-open": ev.BREAKER_HALF_OPEN,
            "closed": ev.BREAKER_CLOSED,
        }[new]
        backend_id = backend.id
        logger.info("backend %s breaker %s -> %s", backend_id, old, new)
        self._events.emit(event, backend_id)
        if self._state is not _State.RUNNING or self._backends.get(backend_id) is not backend:
            return
        handle = self._breaker_timers.pop(backend_id, None)
        if handle is not None:
            handle.cancel()
        if new == "open":
            # pybreaker-style breakers move to half-open lazily; poke it on time.
            self._breaker_timers[backend_id] = asyncio.get_running_loop().call_later(
                backend.breaker.remaining_open_time + 0.001, self._poke_breaker, backend_id
            )
        if new == "closed" and self.config.slow_start is not None:
            backend.recovered_at = time.monotonic()
        self._schedule_refresh()

    def _poke_breaker(self, backend_id: str) -> None:
        self._breaker_timers.pop(backend_id, None)
        backend = self._backends.get(backend_id)
        if backend is not None:
            _ = backend.breaker_state  # fires open -> half-open
            self._schedule_refresh()

    def _on_health_change(self, backend: BackendState, healthy: bool, error: str | None) -> None:
        """Called by the health checker on each threshold crossing."""
        if healthy:
            if self.config.slow_start is not None:
                backend.recovered_at = time.monotonic()
            self._events.emit(ev.BACKEND_HEALTHY, backend.id)
        else:
            self._events.emit(ev.BACKEND_UNHEALTHY, backend.id, error)
        self._refresh_eligibility()

    # ------------------------------------------------------------------ status & events

    def health_status(self) -> dict[str, BackendHealth]:
        """``{backend_id: BackendHealth}`` for every backend; ``.model_dump()`` is JSON-ready."""
        eligible = set(self._eligible)
        return {
            b.id: b.health(in_rotation=b in eligible)
            for b in self._backends.values()
            if not b.removed
        }

    def on(self, event: str, callback: Callable[..., Any]) -> Callable[..., Any]:
        """Call ``callback`` (sync or async) on ``event``; see ``wsclient.events.EVENTS``."""
        return self._events.on(event, callback)

    def off(self, event: str, callback: Callable[..., Any]) -> None:
        self._events.off(event, callback)

    # ------------------------------------------------------------------ membership

    def add_backend(self, backend: Backend | str | Mapping[str, Any]) -> None:
        """Add a backend at run time; it joins rotation at once (health checks start too)."""
        if self._state in (_State.CLOSING, _State.CLOSED):
            raise PoolClosedError("the pool is closed")
        if isinstance(backend, str):
            backend = Backend(url=backend)
        elif isinstance(backend, Mapping):
            backend = Backend.model_validate(backend)
        elif not isinstance(backend, Backend):
            raise TypeError(f"add_backend() takes a Backend, dict or URL, not {type(backend)}")
        existing = self._backends.get(backend.id)
        if existing is not None and not existing.removed:
            raise ValueError(f"duplicate backend id {backend.id!r}")
        # A removed one still draining keeps living through its links' references.
        state = self._new_backend(backend)
        self._backends[backend.id] = state
        self._events.emit(ev.BACKEND_ADDED, backend.id)
        if self._state is _State.RUNNING:
            self._health.watch(state)
            self._refresh_eligibility()

    async def remove_backend(self, backend_id: str, *, drain: bool = True) -> None:
        """Take a backend out: no new leases; idle links close now; leased links close
        on release (``drain=True``, waited for up to ``shutdown_timeout``) or at once."""
        backend = self._backends.get(backend_id)
        if backend is None or backend.removed:
            raise KeyError(f"no backend with id {backend_id!r}")
        backend.removed = True
        self._refresh_eligibility()  # out of rotation before the first await
        await self._health.unwatch(backend)
        self._retire_idle(backend, CloseCode.GOING_AWAY, "backend removed")
        for waiter in list(self._waiters):
            if waiter.backend_id == backend_id:
                self._fail(waiter, self._no_backend_error())
        if drain and self._state is _State.RUNNING and (backend.active or backend.connecting):
            backend.drained = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.shutdown_timeout):
                    await backend.drained.wait()
        for link in list(backend.links):
            if link in self._leased:
                link.drop()  # not drained in time (or drain=False): the lessee sees it closed
            else:
                self._retire(link, code=CloseCode.GOING_AWAY, reason="backend removed")
        self._forget_if_drained(backend)
        self._events.emit(ev.BACKEND_REMOVED, backend_id)

    def _forget_if_drained(self, backend: BackendState) -> None:
        if backend.removed and not backend.active and not backend.connecting:
            if backend.drained is not None:
                backend.drained.set()
            if not backend.links and self._backends.get(backend.id) is backend:
                del self._backends[backend.id]

    def set_weight(self, backend_id: str, weight: int) -> None:
        """Change a backend's weight at run time."""
        backend = self._backends.get(backend_id)
        if backend is None or backend.removed:
            raise KeyError(f"no backend with id {backend_id!r}")
        if not isinstance(weight, int) or isinstance(weight, bool) or not 1 <= weight <= 10_000:
            raise ValueError(f"weight must be an int from 1 to 10000, got {weight!r}")
        backend.base_weight = weight
        self._refresh_eligibility()

    # ------------------------------------------------------------------ fleet operations

    async def broadcast(
        self,
        message: str | bytes,
        filter: Callable[[Backend], bool] | None = None,
        *,
        timeout: float | None = None,
    ) -> dict[str, BaseException | None]:
        """Send ``message`` once to every eligible backend (optionally filtered).

        Returns ``{backend_id: None}`` for each success and the exception for
        each failure; one backend failing never stops the others.
        """
        if self._state is not _State.RUNNING:
            self._raise_not_running()
        targets = [
            b
            for b in self._backends.values()
            if b.in_rotation and (filter is None or filter(b.config))
        ]

        async def send_one(backend: BackendState) -> BaseException | None:
            try:
                async with _AcquireContext(self, None, timeout, backend.id) as conn:
                    await conn.send(message)
            except (WSClientError, OSError, TimeoutError) as exc:
                return exc
            return None

        results = await asyncio.gather(*(send_one(b) for b in targets))
        return {b.id: result for b, result in zip(targets, results, strict=True)}

    async def drain(
        self, per_second: float = 10.0, code: int = CloseCode.GOING_AWAY, reason: str = "draining"
    ) -> int:
        """Close every current connection, at most ``per_second`` a second.

        New connections open as needed (the warm set refills at the same
        pace), so backends never see a reconnect spike. Leased connections
        close when released. Returns how many idle connections were closed.
        """
        if per_second <= 0:
            raise ValueError(f"per_second must be > 0, got {per_second!r}")
        check_close_code(code)
        if self._state is not _State.RUNNING:
            self._raise_not_running()
        old = set(self._links)
        batch = max(1, int(per_second))
        period = batch / per_second
        closed = 0
        # Old connections stay usable until their turn; a leased one is closed
        # once it is back and idle, so the pace holds under traffic too.
        while self._state is _State.RUNNING:
            old &= self._links
            if not old:
                break
            victims = [link for link in old if link in link.pool_backend.idle]
            for link in victims[:batch]:
                link.pool_backend.idle.remove(link)
                self._retire(link, code=code, reason=reason, was_idle=True)
                old.discard(link)
                closed += 1
            await asyncio.sleep(period)
        return closed

    def expire_connections(self) -> None:
        """Mark every current connection stale; each is replaced when next idle."""
        self._generation += 1
        self._wake()

    # ------------------------------------------------------------------ test hooks

    def _check_invariants(self) -> None:
        """Raise AssertionError if the accounting is inconsistent (used by tests)."""
        idle = sum(len(b.idle) for b in self._backends.values())
        assert idle == self._idle_total, (idle, self._idle_total)
        assert self.size == self.active_count + self.idle_count
        assert self.size + self._connecting + self._closing_links <= self.config.max_connections, (
            repr(self)
        )
        assert all(b.active >= 0 for b in self._backends.values())
        assert sum(b.active for b in self._backends.values()) <= len(self._leased)
