"""``WebSocketPool``: the public API, and the shell that carries out the core's effects.

Every decision is made by ``PoolCore`` (``core.py``), synchronously and
without I/O. This module turns the application's calls and the network's
outcomes into core calls, then runs the effects the core returned: connect
attempts and closes as tracked tasks, hand-overs as future results, events
after the step (so listeners always see consistent state). Nothing awaits
while a decision is half made, so there is no lock, and cancellation at any
await leaves the state whole.

A pool belongs to the event loop (and thread) that started it: calls from
another thread or loop are refused with ``PoolMisuseError`` before they touch
anything.

Why one file of about 1,500 lines: ``WebSocketPool`` is the public API of
SPEC §1 (lifecycle, acquire/release, membership, status, broadcast/drain, and
the entry points of messaging and fleet features) and each of its methods is
a thin translation into core calls plus the I/O of that call; what is left of
logic is how each effect is carried out. The decisions are in ``core.py``, the
probes in ``health.py``, the backend state in ``state.py`` and ``fleet/``,
sessions and multiplexing in ``messaging/``, discovery in ``resolvers/``, link
I/O (opening, closing, idle watching, releasing the socket of a link that
ended by itself) in the transports under ``Connection`` (``wsclient/transports/``).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
import threading
import time
import warnings
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, Unpack

from wsclient import event_names as ev
from wsclient.backend import BackendHealth
from wsclient.balancers import create_balancer
from wsclient.codes import CloseCode, ConnectionState, check_close_code
from wsclient.config import Backend, ConnectionOptions, PoolConfig, redact_url
from wsclient.connection import Connection, Message, _Link, connection_for, open_link
from wsclient.core import (
    PARKED_DUE_SOONER,
    Close,
    CoreBackend,
    Drained,
    Emit,
    Fail,
    Hand,
    Open,
    Park,
    PoolCore,
    Slot,
    SlotState,
    Ticket,
    Waiter,
    is_blamed,
)
from wsclient.errors import (
    AcquireTimeoutError,
    ConnectError,
    NoHealthyBackendError,
    PoolClosedError,
    PoolMisuseError,
    WSClientError,
)
from wsclient.events import EventEmitter
from wsclient.fleet.base import SharedState
from wsclient.health import HealthChecker, ProbeResult
from wsclient.listeners import EventSource
from wsclient.messaging._pool import Closable
from wsclient.messaging.request import Multiplexer
from wsclient.messaging.session import OnConnect, Session
from wsclient.options import PoolOptions
from wsclient.resolvers.base import Resolver
from wsclient.resolvers.runner import ResolverRunner
from wsclient.state import BackendStateStore, LocalStateStore
from wsclient.stats import ConnectionCounts, FleetStats, PoolStats, StatsRecorder
from wsclient.timing import PoolTiming
from wsclient.transports.aiohttp import new_session

logger = logging.getLogger("wsclient.pool")


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    CLOSING = "closing"
    CLOSED = "closed"


# Enum members bound once: a class lookup costs ~100 ns on CPython 3.11 and the
# hot path would pay it several times.
_RUNNING = _State.RUNNING
_OPEN = ConnectionState.OPEN
_LEASED, _CLOSING = SlotState.LEASED, SlotState.CLOSING
# Module globals are one dict lookup; ``asyncio.get_running_loop`` is two.
_get_running_loop = asyncio.get_running_loop
_monotonic = time.monotonic
_get_ident = threading.get_ident


# How each backend transition reads in the log (the event name is in ``extra``).
_TRANSITION_WORDS = {
    ev.BACKEND_HEALTHY: "healthy again",
    ev.BACKEND_UNHEALTHY: "marked unhealthy",
    ev.BREAKER_OPEN: "circuit breaker opened",
    ev.BREAKER_HALF_OPEN: "circuit breaker half-open (trying a connection)",
    ev.BREAKER_CLOSED: "circuit breaker closed",
    ev.BACKEND_EJECTED: "ejected",
    ev.BACKEND_UNEJECTED: "back in rotation",
}
_BAD_NEWS = frozenset((ev.BACKEND_UNHEALTHY, ev.BREAKER_OPEN, ev.BACKEND_EJECTED))


def _link_ok(link: _Link) -> bool:
    # State alone: an idle link is watched by its transport, which marks it CLOSED
    # the moment the link ends; release() checks transport.closed for the leased case.
    return link.state is _OPEN


class _AcquireContext(Coroutine[Any, Any, Connection]):
    """What ``pool.acquire()`` returns: a coroutine (``await`` it, or hand it to
    ``asyncio.create_task``) that is also an async context manager.

    ``await`` tries the hot path synchronously first (an idle link on the pick:
    no coroutine object, no task switch); the real coroutine is made only when
    the acquire has to wait, or when a task drives this object by ``send()``.
    (It is not the Connection itself, which would save an allocation: both
    protocols have ``send`` and ``close``, with other meanings.)
    """

    # ``_held``: None, then the coroutine while one runs, then the Connection
    # (which ``async with`` releases). One slot for both: a store less per acquire.
    __slots__ = ("_held", "_key", "_pool", "_timeout")

    # No __init__: ``_AcquireContext()`` then four stores (inlined in ``acquire()``)
    # costs less than a Python __init__ frame, or than object.__new__(cls), which
    # checks its argument in Python's slow call path.
    _pool: WebSocketPool
    _key: str | None
    _timeout: float | None
    _held: Coroutine[Any, Any, Connection] | Connection | None
    _pinned: str | None = None  # a slot of _PinnedAcquireContext

    def _coroutine(self, *, tried: bool = False) -> Coroutine[Any, Any, Connection]:
        held = self._held
        if held is None:
            held = self._held = self._pool._acquire(
                self._key, self._timeout, self._pinned, self, tried_fast_path=tried
            )
        elif type(held) is Connection:
            raise RuntimeError("cannot reuse an already awaited pool.acquire()")
        return held  # type: ignore[return-value]

    def send(self, value: Any) -> Any:
        return self._coroutine().send(value)

    def throw(self, *args: Any) -> Any:
        return self._coroutine().throw(*args)

    def close(self) -> None:
        held = self._held
        if held is not None and type(held) is not Connection:
            held.close()

    def __await__(self) -> Generator[Any, None, Connection]:
        if self._held is None:
            # The hot path, inlined (each call costs ~50 ns, the pair ~1 us): an idle
            # link on the pick with no waiter ahead. Anything unusual (not running,
            # validate_on_checkout, a NaN timeout, another loop) takes the coroutine,
            # which raises the precise error.
            pool = self._pool
            timeout = self._timeout
            if (
                pool._fast
                and (timeout is None or timeout == timeout)
                and (
                    # The pool's loop is the one running here. On asyncio's loops:
                    # it runs in this thread (one running loop per thread), which
                    # costs no getpid() system call, unlike get_running_loop().
                    # uvloop does not say which thread runs it: "this thread, and
                    # the loop is running" would pass for a loop since moved to
                    # another thread (test_acquire_from_another_loop_...).
                    pool._loop._thread_id == _get_ident()  # type: ignore[union-attr]
                    if pool._base_loop
                    else _get_running_loop() is pool._loop
                )
            ):
                slot = pool._core.take(self._key, None)  # None: a clock read if needed
                if slot is not None:
                    link: _Link = slot.link
                    link._idle = False
                    if pool._timing is not None:
                        pool._timing.leased(link, _monotonic())
                    # connection_for(link), inlined.
                    conn = self._held = Connection()
                    conn._link = link
                    return conn
                # Missed: the core remembers its pick for the slow path.
                return (yield from self._coroutine(tried=True).__await__())
        return (yield from self._coroutine().__await__())

    def __aenter__(self) -> _AcquireContext:
        return self  # awaited by ``async with``: the same path as ``await``

    # Three parameters, not ``*exc_info``: no tuple packed per exit.
    def __aexit__(self, exc_type: object, exc: object, tb: object) -> Awaitable[None]:
        conn, self._held = self._held, None
        pool = self._pool
        if type(conn) is Connection and conn._link is not None:  # not released yet
            pool.release(conn)
        return pool._finished  # release() never blocks: an awaitable already done


class _PinnedAcquireContext(_AcquireContext):
    """An acquire on one named backend (``broadcast()`` sends on each): always the
    coroutine, which handles the pin."""

    __slots__ = ("_pinned",)

    def __await__(self) -> Generator[Any, None, Connection]:
        return (yield from self._coroutine().__await__())


def _pinned_context(
    pool: WebSocketPool, timeout: float | None, pinned: str
) -> _PinnedAcquireContext:
    context = _PinnedAcquireContext()
    context._pool = pool
    context._key = None
    context._timeout = timeout
    context._pinned = pinned
    context._held = None
    return context


class _Early(NamedTuple):
    """A waiter's outcome decided before its acquire got to await it."""

    slot: Slot[_Link] | None
    error: BaseException | None


class _Ready:
    """An awaitable that is already finished (release() never blocks); what
    ``async with`` awaits on exit until start() makes the pool's done future."""

    __slots__ = ()

    # An empty tuple's iterator stops at once (the await's value is None). A
    # builtin here instead of a generator function: no generator object and no
    # Python frame per ``async with`` exit.
    if TYPE_CHECKING:

        def __await__(self) -> Generator[Any, None, None]: ...

    else:
        __await__ = ().__iter__


_READY = _Ready()


class WebSocketPool(EventSource):
    """A pool of warm WebSocket connections to weighted backends.

    ``WebSocketPool(backends=[...], ...)`` takes ``PoolConfig`` fields as
    keywords, or ``WebSocketPool(config)`` a ``PoolConfig`` / dict (keywords
    then override it). Use ``async with`` or ``start()`` / ``close()``.
    """

    def __init__(
        self,
        config: PoolConfig | Mapping[str, Any] | None = None,
        /,
        *,
        shared_state: SharedState | None = None,
        resolver: Resolver | None = None,
        **options: Unpack[PoolOptions],
    ):
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
        self._defaults = cfg.connection_defaults()
        # Live objects with a lifecycle, not configuration: they are parameters
        # of the pool, started and stopped with it (README "Running a fleet").
        self._shared = shared_state
        self._store: BackendStateStore
        if shared_state is None:
            self._store = LocalStateStore(cfg.circuit_breaker, cfg.health_check)
        else:
            shared = shared_state.bind(cfg.circuit_breaker, cfg.health_check)
            shared.on_remote_change = self._on_remote_change
            self._store = shared
        self._store.listener = self._on_store_event
        self._resolver = None if resolver is None else ResolverRunner(resolver, self.set_backends)
        self._core: PoolCore[_Link] = PoolCore(
            # No link_ok: a link that ends while idle is reported to the core in the
            # same callback (_on_link_closed), so idle slots need no re-check.
            cfg,
            self._store,
            create_balancer(cfg.load_balancing),
        )
        self._configs: dict[str, Backend] = {}
        self._options: dict[str, ConnectionOptions] = {}
        self._links: set[_Link] = set()  # every link open or closing, for shutdown
        self._tasks: set[asyncio.Task[Any]] = set()
        self._events = EventEmitter()
        self._pending_events: list[tuple[str, tuple[Any, ...]]] = []
        self._in_step = False
        self._state = _State.NEW
        # RUNNING without validate_on_checkout: the acquire fast path may run.
        self._fast = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = 0
        self._base_loop = False  # the loop has asyncio's _thread_id (see acquire)
        self._session: Any = None
        self._wakeup: asyncio.Event | None = None
        self._sleep_until = math.inf
        self._all_returned: asyncio.Event | None = None
        self._maintenance: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()
        self._terminating = False
        self._drained: dict[str, asyncio.Event] = {}
        self._validating: set[_Link] = set()  # links whose checkout ping is out
        self._to_read: list[_Link] = []
        self._read_scheduled = False
        self._step_time = 0.0  # see release(): valid while _read_scheduled
        # What ``async with pool.acquire()`` awaits on exit: from start() on, a
        # future of the pool's loop that is already done (awaiting one costs about
        # half of what awaiting _READY does: C all the way, no method lookup).
        self._finished: Awaitable[None] = _READY
        self._breaker_timers: dict[str, asyncio.TimerHandle] = {}
        self._health = HealthChecker(
            cfg.health_check,
            lambda: self._session,
            self._on_probe,
            gate=None if shared_state is None else shared_state.claim_probe,
        )
        self._idle_messages = 0
        self._clients: set[Closable] = set()  # sessions and multiplexers holding leases
        self._multiplexer: Multiplexer | None = None
        self._recorder = StatsRecorder()
        # None until wsclient.metrics instruments the pool: the hot path tests only this.
        self._timing: PoolTiming | None = None
        now = time.monotonic()
        for backend in cfg.backends:
            self._register(backend, now)

    def __del__(self, _warn: Callable[..., None] = warnings.warn) -> None:
        if getattr(self, "_state", None) is _RUNNING:
            _warn(f"unclosed {self!r}: use 'async with' or await close()", ResourceWarning, 2)

    def _register(self, backend: Backend, now: float) -> CoreBackend:
        b = self._core.add_backend(backend.id, backend.weight, now)
        self._configs[backend.id] = backend
        self._options[backend.id] = backend.connection_options(self._defaults)
        return b

    # ------------------------------------------------------------------ the step

    def _run(self) -> None:
        """Carry out the core's effects, then deliver the events they caused."""
        if self._in_step:
            return  # a listener called back into the pool: the outer loop continues
        self._in_step = True
        try:
            core = self._core
            while core.effects or self._pending_events:
                while core.effects:
                    effects, core.effects = core.effects, []
                    for effect in effects:
                        self._carry_out(effect)
                if self._pending_events:
                    events, self._pending_events = self._pending_events, []
                    for event, args in events:
                        self._events.emit(event, *args)
        finally:
            self._in_step = False
        if self._core.due < self._sleep_until and self._wakeup is not None:
            self._wakeup.set()

    def _carry_out(self, effect: Any) -> None:
        if type(effect) is Park:
            self._park(effect.slot.link)
        elif type(effect) is Hand:
            self._hand(effect.waiter, effect.slot)
        elif type(effect) is Open:
            self._start_open(effect.ticket)
        elif type(effect) is Close:
            self._start_close(effect.slot, effect.code, effect.reason)
        elif type(effect) is Fail:
            future = effect.waiter.handle
            if future is None:
                effect.waiter.handle = _Early(None, effect.error)  # before _wait() made one
            elif not future.done():
                future.set_exception(effect.error)
        elif type(effect) is Emit:
            self._queue_event(effect)
        elif type(effect) is Drained:
            drained = self._drained.get(effect.backend_id)
            if drained is not None:
                drained.set()
        else:  # pragma: no cover - the Effect union is closed
            raise AssertionError(f"unknown effect {effect!r}")

    def _queue_event(self, effect: Emit) -> None:
        args = effect.args
        if effect.event in (ev.CONNECTION_OPEN, ev.CONNECTION_CLOSED):
            slot: Slot[_Link] = args[1]
            args = (args[0], slot.link.id, *args[2:])
        self._pending_events.append((effect.event, args))

    def _on_store_event(self, backend_id: str, event: str, args: tuple[Any, ...]) -> None:
        """A store transition; may fire inside a core call, so it only queues and schedules.

        The one log line of each backend transition is written here (the
        breaker itself logs at DEBUG), with ``backend_id`` and the reason as
        structured fields."""
        self._recorder.store_event(backend_id, event)
        reason = args[-1] if event in (ev.BACKEND_UNHEALTHY, ev.BACKEND_EJECTED) else None
        level = logging.WARNING if event in _BAD_NEWS else logging.INFO
        logger.log(
            level,
            "backend %s: %s%s",
            backend_id,
            _TRANSITION_WORDS.get(event, event),
            f" ({reason})" if reason else "",
            extra={"backend_id": backend_id, "event": event, "reason": reason},
        )
        self._pending_events.append((event, (backend_id, *args)))
        if event == ev.BREAKER_OPEN and self._state is _RUNNING:
            handle = self._breaker_timers.pop(backend_id, None)
            if handle is not None:
                handle.cancel()
            # The breaker turns half-open lazily, when read; read it on time.
            remaining = self._store.record(backend_id).breaker.remaining_open_time
            self._breaker_timers[backend_id] = asyncio.get_running_loop().call_later(
                remaining + 0.001, self._poke_breaker, backend_id
            )

    def _poke_breaker(self, backend_id: str) -> None:
        self._breaker_timers.pop(backend_id, None)
        if backend_id in self._core.backends and self._state is _RUNNING:
            _ = self._store.record(backend_id).breaker_state  # fires open -> half-open
            self._core.refresh(backend_id, time.monotonic())
            self._run()

    def _on_remote_change(self, backend_id: str) -> None:
        """The fleet changed this backend's state (shared state): re-judge it now."""
        if self._state is _RUNNING and backend_id in self._core.backends:
            self._core.refresh(backend_id, time.monotonic())
            self._run()

    def _on_probe(self, backend_id: str, result: ProbeResult) -> None:
        if self._state is not _RUNNING or backend_id not in self._core.backends:
            return
        self._store.probe_result(
            backend_id, result.ok, result.latency_ms, result.error, conclusive=result.conclusive
        )
        self._core.refresh(backend_id, time.monotonic())
        self._run()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Open the warm set (``min_connections``) and start health checking."""
        if self._state is not _State.NEW:
            if self._state is _RUNNING:
                return
            raise PoolClosedError("this pool is closed; create a new one")
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        # asyncio's own loops (not uvloop's) record the thread that runs them.
        self._base_loop = getattr(self._loop, "_thread_id", None) == self._thread
        finished = self._loop.create_future()
        finished.set_result(None)
        self._finished = finished
        self._session = new_session()
        self._wakeup = asyncio.Event()
        self._all_returned = asyncio.Event()
        self._state = _RUNNING
        self._fast = not self._validate_on_checkout
        try:
            # The fleet's view and the resolved list come first (both bounded),
            # so the warm set opens where the fleet says it may.
            if self._shared is not None:
                await self._shared.start()
            if self._resolver is not None:
                await self._resolver.first()
            self._core.start(time.monotonic())
            warm = [t for t in self._tasks if t.get_name().startswith("wsclient-open")]
            self._run()
            for backend_id in list(self._core.backends):
                self._watch(backend_id)
            self._maintenance = self._loop.create_task(
                self._maintain(), name="wsclient-pool-maintenance"
            )
            warm = [t for t in self._tasks if t.get_name().startswith("wsclient-open")]
            if warm:
                await asyncio.wait(warm)
        except BaseException:
            # Cancelled (a timeout around ``async with pool``, say): nothing may
            # keep running, so the pool closes for good before re-raising.
            await self._shutdown(wait_for_leases=0.0, code=None)
            raise

    def _watch(self, backend_id: str) -> None:
        config = self._configs[backend_id]
        self._health.watch(backend_id, config.url, self._options[backend_id])

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
            if self._state is _State.CLOSING:
                await self._closed.wait()
            return
        if self._state is _State.NEW:
            self._state = _State.CLOSED
            self._closed.set()
            return
        self._state = _State.CLOSING
        self._fast = False
        self._core.stop(PoolClosedError("the pool is closing"))
        self._run()
        for handle in self._breaker_timers.values():
            handle.cancel()
        self._breaker_timers.clear()
        for drained in self._drained.values():
            drained.set()  # a remove_backend() waiting to drain stops waiting
        for link in list(self._validating):
            link.drop()  # ends its pong wait: the acquire sees the pool closing
        try:
            if self._resolver is not None:
                await self._resolver.stop()
            # Sessions and the multiplexer hold leases for good: they give them back first.
            for client in list(self._clients):
                await client.aclose()
            await self._health.stop()
            await self._stop_maintenance()
            if self._core.leased_total and wait_for_leases > 0 and self._all_returned is not None:
                self._all_returned.clear()
                if self._terminating:
                    self._all_returned.set()
                try:
                    async with asyncio.timeout(wait_for_leases):
                        await self._all_returned.wait()
                except TimeoutError:
                    logger.warning(
                        "close(): %d connection(s) still leased after %s s; closing them",
                        self._core.leased_total,
                        wait_for_leases,
                    )
        finally:
            # Reached on cancellation too: a cancelled close() still closes everything.
            await self._hard_close(code)

    async def _stop_maintenance(self) -> None:
        if self._maintenance is not None:
            self._maintenance.cancel()
            await asyncio.wait((self._maintenance,))

    async def _hard_close(self, code: int | None) -> None:
        try:
            if self._resolver is not None:
                await self._resolver.stop()
            await self._health.stop()
            await self._stop_maintenance()
            if self._shared is not None:
                await self._shared.close()
            now = time.monotonic()
            for link in list(self._links):
                slot: Slot[_Link] = link.pool_backend
                if slot.state is _LEASED:
                    # The lessee sees it closed; its later release() is a no-op.
                    self._core.release(slot, False, now)
            self._core.stop(PoolClosedError("the pool is closed"))
            self._run()
            # Connect attempts still in flight are cancelled; they clean up after themselves.
            for task in list(self._tasks):
                if task.get_name().startswith("wsclient-open"):
                    task.cancel()
            while self._tasks:
                await asyncio.wait(set(self._tasks))
            await self._events.aclose()
            if self._timing is not None:
                self._timing.clear()
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
        return self._core.leased_total

    @property
    def idle_count(self) -> int:
        """Open connections waiting in the pool."""
        return self._core.idle_total

    @property
    def waiting_count(self) -> int:
        """Acquires waiting for a connection."""
        return self._core.waiting

    @property
    def size(self) -> int:
        """Connections the pool holds (leased + idle)."""
        return self._core.size

    @property
    def connecting_count(self) -> int:
        return self._core.opening

    @property
    def backends(self) -> list[Backend]:
        return [self._configs[b.id] for b in self._core.backends.values() if not b.removed]

    def stats(self) -> PoolStats:
        """A ``PoolStats`` snapshot: connections by state and backend, acquires by
        outcome, wait times, reconnects, ejections (README "Operating" lists the fields)."""
        core = self._core
        live = [b for b in core.backends.values() if not b.removed]
        leases = sum(b.leases for b in live)
        recorder = self._recorder
        now = time.monotonic()
        backends = []
        for b in live:
            record = self._store.record(b.id)
            counts = ConnectionCounts(
                idle=len(b.idle), active=b.active, connecting=b.opening, closing=b.closing
            )
            backends.append(
                recorder.backend_stats(
                    b.id,
                    counts,
                    b.leases,
                    leases,
                    healthy=record.healthy,
                    breaker=record.breaker_state,
                    ejected=record.ejected_until > now,
                )
            )
        return recorder.pool_stats(
            state=self._state.value,
            max_connections=core.max,
            counts=ConnectionCounts(
                idle=core.idle_total,
                active=core.leased_total,
                connecting=core.opening,
                closing=core.closing,
            ),
            pending=core.waiting,
            leases=leases,
            core_counts=core.stats,
            idle_messages=self._idle_messages,
            backends=backends,
            fleet=self._fleet_stats(),
        )

    def _fleet_stats(self) -> FleetStats:
        fleet: dict[str, Any] = {}
        if self._resolver is not None:
            fleet["resolver_failures"] = self._resolver.policy.failures
            fleet["resolver_failing"] = self._resolver.policy.consecutive_failures > 0
        if self._shared is not None:
            shared = self._shared.status()
            fleet["shared_state_connected"] = bool(shared["connected"])
            fleet["shared_state_errors"] = int(shared["errors"])
        return FleetStats(**fleet)

    def _instrumented(self) -> PoolTiming:
        """Start timing waits, leases and connects (for ``wsclient.metrics``); idempotent."""
        if self._timing is None:
            self._timing = PoolTiming(immediate_base=self.stats().acquires.immediate)
        return self._timing

    def fleet_status(self) -> dict[str, Any]:
        """JSON-ready: the resolver's and the shared state's condition (errors in words).

        ``{"resolver": {...} | None, "shared_state": {...} | None}``; see the README.
        """
        return {
            "resolver": None if self._resolver is None else self._resolver.status(),
            "shared_state": None if self._shared is None else self._shared.status(),
        }

    def __repr__(self) -> str:
        core = self._core
        live = sum(not b.removed for b in core.backends.values())
        in_rotation = sum(b.in_rotation for b in core.backends.values())
        return (
            f"<WebSocketPool [{self._state.value} | Requests: {core.leased_total} active, "
            f"{core.waiting} queued | Connections: {core.size} open, "
            f"{core.idle_total} idle, {core.opening} connecting | "
            f"Backends: {in_rotation}/{live} eligible]>"
        )

    # ------------------------------------------------------------------ acquire

    def acquire(self, key: str | None = None, timeout: float | None = None) -> _AcquireContext:
        """Lease a connection: ``conn = await pool.acquire()`` or ``async with pool.acquire()``.

        ``key`` is the affinity key for ip-hash (client IP, user or session id).
        ``timeout`` overrides ``acquire_timeout``; zero or less means "only a
        connection that is free now".
        """
        # No constructor call: one Python frame less per acquire.
        context = _AcquireContext()
        context._pool = self
        context._key = key
        context._timeout = timeout
        context._held = None
        return context

    def _check_caller(self) -> None:
        if threading.get_ident() != self._thread:
            raise PoolMisuseError(
                "this pool belongs to another thread's event loop; call it from that loop "
                "(asyncio.run_coroutine_threadsafe / loop.call_soon_threadsafe)"
            )

    async def _acquire(
        self,
        key: str | None,
        timeout: float | None,
        pinned: str | None,
        context: _AcquireContext | None = None,
        *,
        tried_fast_path: bool = False,
    ) -> Connection:
        if self._state is not _RUNNING:
            self._recorder.closed += 1
            self._raise_not_running()
        if asyncio.get_running_loop() is not self._loop:
            raise PoolMisuseError("this pool was started on another event loop")
        if timeout is not None and timeout != timeout:
            raise ValueError("acquire(timeout=nan): the timeout must be a number or None")
        if pinned is None and not self._validate_on_checkout and not tried_fast_path:
            now = time.monotonic()
            slot_now: Slot[_Link] | None = self._core.take(key, now)
            if slot_now is not None:
                link = slot_now.link
                link._idle = False
                if self._timing is not None:
                    self._timing.leased(link, now)
                conn = connection_for(link)
                if context is not None:
                    context._held = conn
                return conn
        limit = self.config.acquire_timeout if timeout is None else timeout
        started = time.monotonic()
        deadline = None if limit is None else started + limit
        while True:
            if self._state is not _RUNNING:
                self._recorder.closed += 1
                self._raise_not_running()
            core = self._core
            try:
                result = core.acquire(key, pinned, time.monotonic())
            except NoHealthyBackendError:
                self._recorder.no_backend += 1
                raise
            if core.effects:
                self._run()
            if type(result) is Slot:
                slot: Slot[_Link] = result
                link = slot.link
                # Only a link that sat idle is checked: one just opened, or just
                # handed over by its previous lessee, was in use a moment ago.
                if not self._validate_on_checkout or await self._validated(slot, limit, deadline):
                    link.mark_leased()  # after the ping: its pong is read as if idle
                    if self._timing is not None:
                        self._timing.leased(link, time.monotonic())
                    break
            else:
                assert isinstance(result, Waiter)
                slot = await self._wait(result, limit, deadline)
                link = slot.link
                link.mark_leased()
                now = time.monotonic()
                self._recorder.waited_for(now - started)
                if self._timing is not None:
                    self._timing.leased(link, now, now - started)
                break
        conn = connection_for(link)
        if context is not None:
            context._held = conn
        return conn

    async def _wait(
        self, waiter: Waiter, limit: float | None, deadline: float | None
    ) -> Slot[_Link]:
        assert self._loop is not None
        early = waiter.handle
        if isinstance(early, _Early):  # handed or failed in the acquire's own step
            if early.error is not None:
                self._count_failure(early.error)
                raise early.error
            assert early.slot is not None
            return early.slot
        future: asyncio.Future[Slot[_Link]] = self._loop.create_future()
        waiter.handle = future
        try:
            if deadline is None:
                return await future
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            async with asyncio.timeout(remaining):
                return await future
        except TimeoutError:
            if future.done() and not future.cancelled() and future.exception() is not None:
                self._count_failure(future.exception())
                raise future.exception() from None  # type: ignore[misc]
            self._abandon(waiter, future)
            self._recorder.timeouts += 1
            raise AcquireTimeoutError(f"no connection within {limit} s ({self!r})") from None
        except BaseException as exc:
            self._abandon(waiter, future)
            self._count_failure(exc)
            raise

    def _count_failure(self, exc: BaseException | None) -> None:
        """An acquire that waited ended without a connection: count it by outcome."""
        recorder = self._recorder
        if isinstance(exc, NoHealthyBackendError):
            recorder.no_backend += 1
        elif isinstance(exc, PoolClosedError):
            recorder.closed += 1
        elif isinstance(exc, AcquireTimeoutError):
            recorder.timeouts += 1
        elif isinstance(exc, asyncio.CancelledError):
            recorder.cancelled += 1

    def _abandon(self, waiter: Waiter, future: asyncio.Future[Slot[_Link]]) -> None:
        """The acquiring task gave up (timeout, cancel): leak nothing."""
        if future.done() and not future.cancelled() and future.exception() is None:
            # A link was handed to us in the same instant we gave up.
            future.result().backend.leases -= 1  # not served after all
            self._core.release(future.result(), True, time.monotonic())
        else:
            future.cancel()
            self._core.cancel(waiter)
        self._run()

    async def _validated(
        self, slot: Slot[_Link], limit: float | None, deadline: float | None
    ) -> bool:
        """validate_on_checkout: a ping round trip before handing a link out."""
        link = slot.link
        ping_limit = self._options[slot.backend.id].heartbeat.timeout
        remaining = None if deadline is None else deadline - time.monotonic()
        budget_bound = remaining is not None and remaining < ping_limit
        if remaining is not None:
            ping_limit = max(0.0, min(ping_limit, remaining))
        ok = False
        self._validating.add(link)
        try:
            ok = await link.roundtrip(timeout=ping_limit)
        finally:
            self._validating.discard(link)
            if not ok:
                # Our budget ran out first: the link is not to blame and goes back.
                keep = budget_bound and _link_ok(link) and self._state is _RUNNING
                self._core.release(slot, keep, time.monotonic())
                self._run()
                if keep:
                    self._recorder.timeouts += 1
                    raise AcquireTimeoutError(f"no connection within {limit} s ({self!r})")
        if ok and self._state is not _RUNNING:
            self._core.release(slot, False, time.monotonic())
            self._run()
            self._raise_not_running()
        return ok

    def _hand(self, waiter: Waiter, slot: Slot[_Link]) -> None:
        future = waiter.handle
        if future is None:
            waiter.handle = _Early(slot, None)  # decided in the acquire's own step
            return
        if future.done():
            # The acquirer gave up in the same instant: the link goes straight back.
            slot.backend.leases -= 1  # not served after all
            self._core.release(slot, True, time.monotonic())
            return
        future.set_result(slot)

    def _raise_not_running(self) -> None:
        if self._state is _State.NEW:
            raise PoolMisuseError("the pool is not started: use 'async with pool' or await start()")
        raise PoolClosedError("the pool is closed")

    # ------------------------------------------------------------------ release

    def release(self, conn: Connection) -> None:
        """Give a leased connection back. Safe to call from ``finally``; never blocks."""
        if not isinstance(conn, Connection):
            raise TypeError(f"release() takes a Connection, not {type(conn).__name__}")
        if _get_ident() != self._thread and self._thread:
            self._check_caller()
        link = conn._link
        if link is None:
            raise PoolMisuseError("this connection was already released")
        if link.owner is not self:
            raise PoolMisuseError(
                "this connection does not belong to this pool"
                + ("" if link.owner is not None else " (it came from connect())")
            )
        slot: Slot[_Link] = link.pool_backend
        if slot.state is not _LEASED:
            if slot.state is _CLOSING:  # closed under the lessee (shutdown, removal)
                if self._timing is not None:
                    self._timing.forget(link)
                conn._detach()
                return
            raise PoolMisuseError("this connection is not leased from this pool")
        conn._link = None
        core = self._core
        if self._timing is not None:
            self._timing.released(link, _monotonic())
        if (
            link.state is _OPEN
            and not link.reading
            and not link.dirty
            and not link.transport.closed
        ):
            # One clock read per loop step for every link the step parks: an idle
            # link's age counts from the step that released it. The first park of
            # a step reads the clock and schedules the idle-read pass, which ends
            # the step's use of that reading (_read_scheduled goes False).
            if self._read_scheduled:
                now = self._step_time
            else:
                now = self._step_time = _monotonic()
            parked = core.give_back(slot, now)
            if parked:
                # The hot path: parked with nothing else to do; watched from the next
                # loop iteration on (by then it is often leased again).
                link._idle = True
                if not link.read_queued:
                    link.read_queued = True
                    self._to_read.append(link)
                if not self._read_scheduled:
                    self._read_scheduled = True
                    self._loop.call_soon(self._start_idle_reads)  # type: ignore[union-attr]
                if (
                    parked == PARKED_DUE_SOONER
                    and core.due < self._sleep_until
                    and self._wakeup is not None
                ):
                    self._wakeup.set()
                return
        if link.state is _OPEN and link.transport.closed:
            link.note_transport_closed()  # it ended while nobody read
        if link.reading or link.dirty:
            # A receive() still running, or one that timed out with its reply
            # possibly still coming: reusing the socket could hand that reply to
            # the next lessee. Closing it is the caller's doing, not the backend's.
            link.client_initiated = True
            reusable, reason = False, "released with a read outstanding"
        else:
            reusable, reason = link.state is _OPEN, "retired"
        core.release(slot, reusable, time.monotonic(), reason)
        if core.effects:
            self._run()
        if not core.leased_total and self._all_returned is not None:
            self._all_returned.set()

    def _park(self, link: _Link) -> None:
        link.mark_idle()
        if not link.read_queued:  # bounded by the number of links, however tight the loop
            link.read_queued = True
            self._to_read.append(link)
        if not self._read_scheduled:
            # One callback per loop iteration for all links released in it; a link
            # re-acquired before then never starts a background read at all.
            self._read_scheduled = True
            self._step_time = link.last_used  # the clock mark_idle() just read
            self._loop.call_soon(self._start_idle_reads)  # type: ignore[union-attr]

    def _start_idle_reads(self) -> None:
        self._read_scheduled = False
        links, self._to_read = self._to_read, []
        for link in links:
            link.read_queued = False
            # Most were leased again in the same iteration: the test is inlined.
            if link._idle:
                link.start_idle_read()

    # ------------------------------------------------------------------ opening and closing

    def _start_open(self, ticket: Ticket) -> None:
        task = asyncio.get_running_loop().create_task(
            self._open(ticket), name=f"wsclient-open-{ticket.backend.id}"
        )
        self._track(task)

    def _track(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # A bug, not a network outcome (those are reported to the core).
            logger.error("internal task %s failed", task.get_name(), exc_info=task.exception())

    async def _open(self, ticket: Ticket) -> None:
        backend_id = ticket.backend.id
        url = self._configs[backend_id].url
        core = self._core
        started = time.monotonic()
        try:
            link = await open_link(
                self._session, url, self._options[backend_id], backend_id=backend_id
            )
            if self.config.init is not None:
                await self._run_init(link, url)
        except ConnectError as exc:
            logger.info(
                "connect to backend %s failed: %s",
                backend_id,
                exc.reason,
                extra={"backend_id": backend_id, "reason": exc.reason},
            )
            self._recorder.open_failed(backend_id)
            core.open_failed(ticket, exc, exc.reason, time.monotonic())
            self._run()
            return
        except asyncio.CancelledError:
            core.open_failed(ticket, None, None, time.monotonic())
            self._run()
            raise
        except Exception as exc:  # a bug in an auth provider, say: fail this open, not the pool
            logger.error(
                "opening a connection to %s failed unexpectedly: %s",
                backend_id,
                type(exc).__name__,
                extra={"backend_id": backend_id, "reason": type(exc).__name__},
            )
            self._recorder.open_failed(backend_id)
            error = ConnectError(url, f"{type(exc).__name__}")
            core.open_failed(ticket, error, error.reason, time.monotonic())
            self._run()
            return
        link.owner = self
        link.on_closed = self._on_link_closed
        link.on_idle_message = self._on_idle_message
        self._links.add(link)
        self._recorder.opened(backend_id)
        if self._timing is not None:
            self._timing.created(time.monotonic() - started)
        logger.debug(
            "connection %s to %s open",
            link.id,
            backend_id,
            extra={"backend_id": backend_id, "connection_id": link.id},
        )
        slot = core.opened(ticket, link, time.monotonic())
        link.pool_backend = slot
        link.expires_at = slot.expires_at
        self._run()

    async def _run_init(self, link: _Link, url: str) -> None:
        """The ``init=`` hook on a fresh link, bounded by ``connect_timeout``.

        A raising (or overrunning) hook drops the link and raises ``ConnectError``:
        the open counts as a failed connect for the backend. The hook's own message
        is not repeated (it may quote a credential); its type is.
        """
        init = self.config.init
        assert init is not None
        conn = connection_for(link)
        limit = self._options[link.backend_id].connect_timeout
        reason = ""
        try:
            async with asyncio.timeout(limit):
                await init(conn)
            if link.state is not _OPEN or link.transport.closed:
                reason = "the connection closed during init"
            elif link.reading or link.dirty:
                reason = "init left a receive() outstanding"
        except TimeoutError:
            reason = f"init did not finish within connect_timeout={limit} s"
        except Exception as exc:
            reason = f"init raised {type(exc).__name__}"
        except BaseException:
            link.drop()  # cancelled (pool closing): the open is abandoned
            raise
        finally:
            conn._detach()
        if reason:
            link.drop()
            raise ConnectError(url, reason)

    def _start_close(self, slot: Slot[_Link], code: int | None, reason: str) -> None:
        link = slot.link
        link.on_closed = None
        if link.state is ConnectionState.CLOSED:
            # Ended by itself: the transport released the socket as it reported the end.
            self._links.discard(link)
            self._core.closed(slot, link.close_code, link.close_reason, time.monotonic())
            return
        task = asyncio.get_running_loop().create_task(
            self._close_link(slot, code, reason), name=f"wsclient-close-{link.id}"
        )
        self._track(task)

    async def _close_link(self, slot: Slot[_Link], code: int | None, reason: str) -> None:
        link = slot.link
        try:
            if code is None or self._terminating:
                link.drop()
                await link.close()  # releases nothing more; keeps drop and close symmetric
            else:
                await link.close(code, reason)
        finally:
            link.transport.abort()  # no-op after a clean close; frees the socket after any other
            self._links.discard(link)
            self._core.closed(slot, link.close_code, link.close_reason, time.monotonic())
            self._run()

    def _on_link_closed(self, link: _Link) -> None:
        """A link ended on its own: peer close, error, missed heartbeat."""
        slot: Slot[_Link] | None = link.pool_backend
        if slot is None or slot.state is _CLOSING:
            return
        judged = not link.client_initiated and self._state is _RUNNING
        code, reason = link.close_code, link.close_reason
        if self._timing is not None and slot.state is not _LEASED:
            self._timing.forget(link)
        if judged:
            # Logged before the core judges it, so the backend transitions it causes
            # (ejected, breaker opened) follow this line in the log.
            self._recorder.link_lost(link.backend_id)
            blamed = is_blamed(code) and not slot.backend.removed
            logger.info(
                "connection %s to %s closed: %s %s%s",
                link.id,
                link.backend_id,
                code,
                reason,
                " (counted as a failure)" if blamed else "",
                extra={
                    "backend_id": link.backend_id,
                    "connection_id": link.id,
                    "code": code,
                    "reason": reason,
                },
            )
        self._core.link_lost(slot, code, reason, time.monotonic(), judge=judged)
        self._run()

    def _on_idle_message(self, link: _Link, message: Message) -> None:
        self._idle_messages += 1
        self._events.emit(ev.IDLE_MESSAGE, link.backend_id, link.id, message)
        if self.config.on_idle_message == "close":
            slot: Slot[_Link] = link.pool_backend
            if self._core.retire_idle_slot(slot, CloseCode.POLICY_VIOLATION, "unexpected message"):
                self._run()

    # ------------------------------------------------------------------ maintenance

    async def _maintain(self) -> None:
        """Keep the warm set, evict idle and expired links, end backoffs and ejections."""
        assert self._wakeup is not None
        while self._state is _RUNNING:
            now = time.monotonic()
            due = self._core.tick(now)
            self._run()
            delay = min(60.0, max(0.005, due - time.monotonic()))
            self._sleep_until = now + delay
            # Cleared after the (synchronous) work: wakes it caused itself are moot.
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wakeup.wait()
            self._sleep_until = math.inf

    # ------------------------------------------------------------------ status & events

    def health_status(self) -> dict[str, BackendHealth]:
        """``{backend_id: BackendHealth}`` for every backend; ``.model_dump()`` is JSON-ready."""
        now = time.monotonic()
        result = {}
        for b in self._core.backends.values():
            if b.removed:
                continue
            record = self._store.record(b.id)
            result[b.id] = BackendHealth(
                id=b.id,
                url=redact_url(self._configs[b.id].url),
                healthy=record.healthy,
                eligible=b.in_rotation,
                latency=record.latency_ms,
                last_check=record.last_check,
                breaker=record.breaker_state,
                active=b.active,
                idle=len(b.idle),
                connecting=b.opening,
                consecutive_failures=max(record.probe_failures, record.breaker.failure_count),
                weight=b.base_weight,
                effective_weight=round(b.weight, 3),
                last_error=record.last_error,
                retry_in=round(max(0.0, b.retry_at - now), 3),
                ejected=record.ejected_until > now,
            )
        return result

    async def check_health(self) -> dict[str, BackendHealth]:
        """Probe every backend once now, as the health checker does (same probe, same
        thresholds), and return ``health_status()``; what ``wsclient status`` shows."""
        if self._state is not _RUNNING:
            self._raise_not_running()
        ids = [b.id for b in self._core.backends.values() if not b.removed]
        results = await asyncio.gather(
            *(self._health.probe(self._configs[i].url, self._options[i]) for i in ids)
        )
        for backend_id, result in zip(ids, results, strict=True):
            self._on_probe(backend_id, result)
        return self.health_status()

    # on() / off(): typed per event in EventSource (listeners.py).

    # ------------------------------------------------------------------ membership

    def add_backend(self, backend: Backend | str | Mapping[str, Any]) -> None:
        """Add a backend at run time; it joins rotation at once (health checks start too)."""
        if self._state in (_State.CLOSING, _State.CLOSED):
            raise PoolClosedError("the pool is closed")
        self._check_caller_if_started()
        backend = _as_backend(backend)
        existing = self._core.backends.get(backend.id)
        if existing is not None and not existing.removed:
            raise ValueError(f"duplicate backend id {backend.id!r}")
        self._register(backend, time.monotonic())
        self._pending_events.append((ev.BACKEND_ADDED, (backend.id,)))
        if self._state is _RUNNING:
            self._watch(backend.id)
        self._run()

    def _check_caller_if_started(self) -> None:
        if self._thread and threading.get_ident() != self._thread:
            self._check_caller()

    async def remove_backend(self, backend_id: str, *, drain: bool = True) -> None:
        """Take a backend out: no new leases; idle links close now; leased links close
        on release (``drain=True``, waited for up to ``shutdown_timeout``) or at once."""
        self._check_caller_if_started()
        b = self._core.backends.get(backend_id)
        if b is None or b.removed:
            raise KeyError(f"no backend with id {backend_id!r}")
        drained = asyncio.Event()
        self._drained[backend_id] = drained
        try:
            self._core.remove_backend(backend_id, time.monotonic())
            self._recorder.removed(backend_id, b.leases)
            self._run()
            await self._health.unwatch(backend_id)
            if drain and self._state is _RUNNING and (b.active or b.opening):
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.config.shutdown_timeout):
                        await drained.wait()
            for link in list(self._links):
                slot: Slot[_Link] = link.pool_backend
                if slot.backend is b and slot.state is _LEASED:
                    link.drop()  # not drained in time (or drain=False): the lessee sees it closed
        finally:
            if self._drained.get(backend_id) is drained:
                del self._drained[backend_id]
        self._pending_events.append((ev.BACKEND_REMOVED, (backend_id,)))
        self._run()

    def set_weight(self, backend_id: str, weight: int) -> None:
        """Change a backend's weight at run time."""
        self._check_caller_if_started()
        b = self._core.backends.get(backend_id)
        if b is None or b.removed:
            raise KeyError(f"no backend with id {backend_id!r}")
        if not isinstance(weight, int) or isinstance(weight, bool) or not 1 <= weight <= 10_000:
            raise ValueError(f"weight must be an int from 1 to 10000, got {weight!r}")
        self._core.set_weight(backend_id, weight, time.monotonic())
        self._configs[backend_id] = self._configs[backend_id].model_copy(update={"weight": weight})
        self._run()

    async def set_backends(self, backends: Iterable[Backend | str | Mapping[str, Any]]) -> None:
        """Reconcile membership with ``backends`` in one step: add what is new, update
        weights, drain what is gone (what a resolver calls)."""
        wanted = [_as_backend(b) for b in backends]
        ids = [b.id for b in wanted]
        if len(set(ids)) != len(ids):
            duplicates = sorted({i for i in ids if ids.count(i) > 1})
            raise ValueError(f"duplicate backend ids: {', '.join(duplicates)}")
        current = {b.id: b for b in self._core.backends.values() if not b.removed}
        gone = [bid for bid in current if bid not in set(ids)]
        changed_url = [b.id for b in wanted if b.id in current and self._configs[b.id].url != b.url]
        for backend_id in changed_url:
            await self.remove_backend(backend_id, drain=False)
        for backend in wanted:
            if backend.id in current and backend.id not in changed_url:
                if current[backend.id].base_weight != backend.weight:
                    self.set_weight(backend.id, backend.weight)
            else:
                self.add_backend(backend)
        if gone:
            await asyncio.gather(*(self.remove_backend(bid, drain=True) for bid in gone))

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
        if self._state is not _RUNNING:
            self._raise_not_running()
        core = self._core
        # Every usable backend, ejected ones included: a broadcast is not a pick.
        targets = [
            b.id
            for b in core.backends.values()
            if core.serviceable(b) and (filter is None or filter(self._configs[b.id]))
        ]

        async def send_one(backend_id: str) -> BaseException | None:
            try:
                async with _pinned_context(self, timeout, backend_id) as conn:
                    await conn.send(message)
            except (WSClientError, OSError, TimeoutError) as exc:
                return exc
            return None

        results = await asyncio.gather(*(send_one(b) for b in targets))
        return dict(zip(targets, results, strict=True))

    async def drain(
        self, per_second: float = 10.0, code: int = CloseCode.GOING_AWAY, reason: str = "draining"
    ) -> int:
        """Close every current connection, at most ``per_second`` a second.

        New connections open as needed (the warm set refills at the same
        pace), so backends never see a reconnect spike. Leased connections
        close when released. Returns how many idle connections were closed.
        """
        if not per_second > 0 or not math.isfinite(per_second):
            raise ValueError(f"per_second must be a finite number > 0, got {per_second!r}")
        check_close_code(code)
        if self._state is not _RUNNING:
            self._raise_not_running()
        old = set(self._links)
        batch = max(1, int(per_second))
        period = batch / per_second
        closed = 0
        # Old connections stay usable until their turn; a leased one is closed
        # once it is back and idle, so the pace holds under traffic too.
        while self._state is _RUNNING:
            old &= self._links
            if not old:
                break
            done = 0
            for link in list(old):
                if done >= batch:
                    break
                if self._core.retire_idle_slot(link.pool_backend, code, reason):
                    old.discard(link)
                    done += 1
            closed += done
            self._run()
            await asyncio.sleep(period)
        return closed

    def expire_connections(self) -> None:
        """Mark every current connection stale; each is replaced when next idle."""
        self._core.expire_all()
        if self._wakeup is not None:
            self._wakeup.set()

    # ------------------------------------------------------------------ messaging (SPEC §5)

    def session(
        self, key: str | None = None, on_connect: OnConnect | None = None, **options: Any
    ) -> Session:
        """A stream that survives failover: ``async with pool.session(...) as s``.

        ``options``: ``send_timeout`` (30 s), ``max_buffered`` (1 MiB of queued
        messages), ``connect_timeout`` (the pool's); see ``wsclient.Session``.
        """
        return Session(self, key, on_connect, **options)

    async def request(
        self, message: Any, timeout: float | None = None, key: str | None = None
    ) -> Any:
        """Send ``message`` (a dict) with a correlation id, return the matching reply.

        Multiplexed over shared connections (``wsclient.Multiplexer`` with its
        defaults); ``timeout`` defaults to 30 s.
        """
        mux = self._multiplexer
        if mux is None:
            if self._state is not _RUNNING:
                self._raise_not_running()
            mux = self._multiplexer = Multiplexer(self)
        return await mux.request(message, timeout, key)

    def _attach_client(self, client: Closable) -> None:
        if self._state is not _RUNNING:
            self._raise_not_running()
        self._clients.add(client)

    def _detach_client(self, client: Closable) -> None:
        self._clients.discard(client)

    # ------------------------------------------------------------------ test hooks

    def _check_invariants(self) -> None:
        """Raise AssertionError if the accounting is inconsistent (used by tests)."""
        self._core.check_invariants()
        leased = sum(1 for link in self._links if link.pool_backend.state is _LEASED)
        assert leased <= self._core.leased_total, (leased, self._core.leased_total)


def _as_backend(backend: Backend | str | Mapping[str, Any]) -> Backend:
    if isinstance(backend, str):
        return Backend(url=backend)
    if isinstance(backend, Mapping):
        return Backend.model_validate(backend)
    if not isinstance(backend, Backend):
        raise TypeError(f"expected a Backend, dict or URL, not {type(backend).__name__}")
    return backend
