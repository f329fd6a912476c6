"""The pool core: every decision the pool makes, and no I/O.

``PoolCore`` owns the waiters, the per-backend connection counts, which
backends are in rotation, admission of connect attempts, and the allotment
of capacity to backends. Each call changes that state synchronously and
appends the I/O still to do to ``core.effects`` (open on backend X, close
link Y, hand link Z to waiter W, fail W, emit event E, park an idle link);
the shell (``pool.py``) carries them out and reports back (``opened``,
``open_failed``, ``closed``, ``link_lost``, ``release``). Nothing here awaits
or reads a clock: ``now`` is an argument, so a Hypothesis state machine drives
the core with no sockets and no event loop.

Capacity allotment (Envoy and gRPC keep capacity per backend, not one shared
heap). Every backend in rotation has a *target* of
``max_connections * weight / total weight`` connections. Below capacity a
pick with no idle link opens on the picked backend, so the pool follows the
balancer. At capacity:

* a pick whose backend is at least one connection under its target retires
  an idle link of a backend at least one over its target, and opens on the
  pick once that close has freed the room;
* a link released on an over-target backend while acquires wait is closed
  and replaced on the most under-target backend, so shares converge under
  full load too;
* otherwise an idle link of another backend is borrowed.

The one-connection thresholds make moves strictly shrink the imbalance: no
link ever moves back and forth.

A close the pool does not blame (1000, 1001, 1009, 1012, 1013, 3000-4999) only
delays the next open on that backend. While it waits, its picks borrow idle
links elsewhere; only when none is idle does the pool open a *stand-in* on
another backend, and stand-ins are retired as soon as their backend may be
dialled again. For a few seconds after such a close the pool is *held* at the
size it had before it (``_hold``): its limit is that size rather than
``max_connections``, so the rules above for capacity apply and the restarted
backend's reopened links take the stand-ins' places. So a rolling restart
neither grows the pool beyond what the demand needs nor starves the restarted
backend afterwards.

Costs: an acquire with an idle link on the pick is one balancer pick and one
list pop, and its release skips every admission check while the core's epoch
is unchanged (``give_back``); enqueueing a waiter is O(1) (plus O(log n) when it has to join the
open queue); a membership, weight or health change is one balancer update.

Why one module of about 1,450 lines: it is one state machine with one set of
invariants (``check_invariants``), and every method reads and writes the same
counts; split across modules, each half would have to keep the other's
invariants without seeing them. The records and effects it works with are in
``core_types.py``; what could move out next is the rotation bookkeeping
(eligibility, panic and ejection fallback), once a shared store needs it.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from wsclient import event_names as ev
from wsclient.backoff import Backoff
from wsclient.balancers import Balancer
from wsclient.config import PoolConfig
from wsclient.core_types import (
    _CLOSING,
    _IDLE,
    _LEASED,
    NO_BLAME_CLOSE_CODES,
    SLOW_START_FLOOR,
    Close,
    CoreBackend,
    Drained,
    Effect,
    Emit,
    Fail,
    Hand,
    Open,
    Park,
    Slot,
    SlotState,
    Ticket,
    Waiter,
    is_blamed,
)
from wsclient.errors import NoHealthyBackendError
from wsclient.state import BackendStateStore

L = TypeVar("L")

__all__ = [
    "NO_BLAME_CLOSE_CODES",
    "Close",
    "CoreBackend",
    "Drained",
    "Effect",
    "Emit",
    "Fail",
    "Hand",
    "Open",
    "Park",
    "PoolCore",
    "Slot",
    "SlotState",
    "Ticket",
    "Waiter",
    "is_blamed",
]


# The hold after a graceful close (PoolCore._hold): how long the pool stays at its
# size, and how long after the closed backend reopens a link (its links then take
# the stand-ins' places within a few releases).
_HOLD_S = 10.0
_HOLD_AFTER_REOPEN_S = 3.0


# What give_back() did (ints: compared on the hot path).
NOT_PARKED = 0  # nothing: the shell calls release()
PARKED = 1
PARKED_DUE_SOONER = 2  # parked, and ``due`` moved earlier


class PoolCore(Generic[L]):
    """State and decisions of one pool. Not thread-safe; the shell serialises calls."""

    def __init__(
        self,
        config: PoolConfig,
        store: BackendStateStore,
        balancer: Balancer,
        *,
        link_ok: Callable[[L], bool] | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        # Read only by take(key, None), when a decision turns out to depend on the
        # time; every other call is given the time by its caller.
        self._clock = clock
        self.max = config.max_connections
        self.min = config.min_connections
        self._store = store
        self._balancer = balancer
        self._needs_key = balancer.requires_key  # read on the hot path
        # None: the shell reports every idle link's end at once (link_lost/closed),
        # so an idle slot is always valid and take() skips the call.
        self._link_ok = link_ok
        self._rng = rng if rng is not None else random.Random()
        self.effects: list[Effect] = []
        self.running = False
        self.generation = 0
        # Bumped by every call but take()/give_back(): see give_back().
        self._epoch = 0
        # The hold after a graceful close (see _hold()): while _holding, the pool's
        # limit is its size before the close (or the demand, if larger), not max.
        self._holding = False
        self._level = 0
        self._hold_until = 0.0
        self._held_for: set[str] = set()  # closed gracefully in this hold, not reopened
        self.backends: dict[str, CoreBackend] = {}
        self._rotation: dict[str, CoreBackend] = {}
        self._rotation_weight = 0.0
        self._panic = False
        self._fallback = False  # every usable backend is ejected: ejection is ignored
        self._n_live = 0
        self._n_usable = 0
        self._n_usable_unejected = 0
        # counts over all backends. ``size`` (open links) changes only when a link is
        # opened or retired; a lease or a park moves one between leased and idle, so
        # the hot path keeps one counter and ``idle_total`` is the difference.
        self.size = 0
        self.leased_total = 0
        self.opening = 0
        self.closing = 0
        self.waiting = 0
        # waiters: FIFO per acceptance class, lazily pruned of finished ones
        self._seq = itertools.count()
        self._unpinned: deque[Waiter] = deque()
        self._pinned: dict[str, deque[Waiter]] = {}
        self._need_open: list[tuple[int, Waiter]] = []  # heap by arrival
        self._room_wanted: deque[Waiter] = deque()  # pinned waiters at capacity
        self._room_for: deque[CoreBackend] = deque()  # freed room promised to a backend
        self._retry_heap: list[tuple[float, str]] = []
        self._ejections: dict[str, float] = {}
        self._ramping: set[str] = set()
        self._holders: dict[str, CoreBackend] = {}  # backends that may hold idle links
        self._last_pick: CoreBackend | None = None  # take() missed: acquire() uses its pick
        # Backends waiting out a reconnect delay: what opens elsewhere meanwhile
        # stands in for them and is retired once they may be dialled again.
        self._degraded: dict[str, CoreBackend] = {}
        self._idle_timeout = config.idle_timeout
        self._draining: set[CoreBackend] = set()  # removed, replaced under the same id
        self.due = math.inf  # earliest deadline tick() must see; the shell wakes for it
        # Per-lease counts live on the backends (``CoreBackend.leases``).
        self.stats = {"opened": 0, "open_failures": 0, "closed": 0}

    # ------------------------------------------------------------------ counts

    @property
    def idle_total(self) -> int:
        return self.size - self.leased_total

    @property
    def limit(self) -> int:
        """The most links the pool may hold now: ``max_connections``, or during the
        hold after a graceful close the size it had before it (or the demand, leased
        plus waiting, if that is larger), so that the links the restarted backend
        reopens take the place of the stand-ins instead of adding to them."""
        if not self._holding:
            return self.max
        return min(self.max, max(self._level, self.leased_total + self.waiting))

    def capacity(self) -> int:
        return self.limit - (self.size + self.opening + self.closing)

    def target(self, b: CoreBackend) -> float:
        """The backend's share of the limit (0 outside rotation)."""
        if not b.in_rotation or self._rotation_weight <= 0:
            return 0.0
        return self.limit * b.weight / self._rotation_weight

    def _emit(self, event: str, *args: Any) -> None:
        self.effects.append(Emit(event, args))

    # ------------------------------------------------------------------ membership

    def add_backend(self, backend_id: str, weight: int, now: float) -> CoreBackend:
        self._epoch += 1
        previous = self.backends.get(backend_id)
        if previous is not None:
            if not previous.removed:
                raise ValueError(f"duplicate backend id {backend_id!r}")
            # Re-added while its old self still drains: the two keep separate counts.
            self._draining.add(previous)
        rc = self.config.reconnect
        backoff = Backoff(
            initial_delay=rc.initial_delay,
            multiplier=rc.multiplier,
            jitter=rc.jitter,
            max_delay=rc.max_delay,
            rng=random.Random(self._rng.getrandbits(64)),
        )
        b = CoreBackend(backend_id, weight, backoff)
        self.backends[backend_id] = b
        self._store.register(backend_id)
        self._n_live += 1
        self._classify(b, now)
        self._after_membership_change(now, b)
        return b

    def remove_backend(self, backend_id: str, now: float) -> CoreBackend:
        """Out of rotation at once; idle links close; leases close when released."""
        self._epoch += 1
        b = self.backends[backend_id]
        if b.removed:
            raise KeyError(backend_id)
        self._declassify(b)
        b.removed = True
        self._n_live -= 1
        self._after_membership_change(now, b)
        self._retire_idle(b, 1001, "backend removed")
        for w in self._pinned.pop(b.id, ()):
            if not w.done:
                self._fail(w, self.no_backend_error())
        self._check_drained(b)
        return b

    def set_weight(self, backend_id: str, weight: int, now: float) -> None:
        self._epoch += 1
        b = self.backends[backend_id]
        if b.removed:
            raise KeyError(backend_id)
        b.base_weight = weight
        self._set_effective_weight(b, self._ramped_weight(b, now))

    def _set_effective_weight(self, b: CoreBackend, weight: float) -> None:
        if weight == b.weight:
            return
        if b.in_rotation:
            self._rotation_weight += weight - b.weight
            b.weight = weight
            self._balancer.reweight(b)
        else:
            b.weight = weight

    def _ramped_weight(self, b: CoreBackend, now: float) -> float:
        slow = self.config.slow_start
        if b.recovered_at is None or slow is None:
            return float(b.base_weight)
        elapsed = now - b.recovered_at
        if elapsed >= slow:
            b.recovered_at = None
            self._ramping.discard(b.id)
            return float(b.base_weight)
        return b.base_weight * max(SLOW_START_FLOOR, elapsed / slow)

    def _check_drained(self, b: CoreBackend) -> None:
        if b.removed and not b.active and not b.opening:
            self.effects.append(Drained(b.id))
            if not b.open_links and not b.closing:
                if self.backends.get(b.id) is b:
                    del self.backends[b.id]
                    self._store.unregister(b.id)
                self._draining.discard(b)

    # ------------------------------------------------------------------ eligibility

    def refresh(self, backend_id: str, now: float) -> None:
        """The store changed for this backend (health, breaker, ejection): re-judge it."""
        self._epoch += 1
        b = self.backends.get(backend_id)
        if b is None or b.removed:
            return
        was_usable, was_ejected = b.usable, b.ejected
        self._declassify(b)
        self._classify(b, now)
        if was_ejected and not b.ejected and b.retry_at > now:
            # The ejection ended early (a probe answered): dial it again now,
            # rather than after the rest of the backoff delay.
            b.retry_at = now
            self.due = now
        if b.usable and not was_usable and self.config.slow_start is not None:
            b.recovered_at = now
            self._ramping.add(b.id)
            self._set_effective_weight(b, self._ramped_weight(b, now))
            self.due = min(self.due, now + self.config.slow_start / 10)
        self._after_membership_change(now, b)
        if not b.usable and not self._panic:
            self._retire_idle(b, 1001, "backend ineligible")
            for w in self._pinned.get(b.id, ()):
                if not w.done:
                    self._fail(w, self.no_backend_error())

    def _classify(self, b: CoreBackend, now: float) -> None:
        record = self._store.record(b.id)
        b.usable = record.usable
        b.ejected = record.ejected_until > now
        if record.ejected_until > now:
            self._ejections[b.id] = record.ejected_until
        else:
            self._ejections.pop(b.id, None)
        if b.usable:
            self._n_usable += 1
            if not b.ejected:
                self._n_usable_unejected += 1

    def _declassify(self, b: CoreBackend) -> None:
        if b.usable:
            self._n_usable -= 1
            if not b.ejected:
                self._n_usable_unejected -= 1

    def _wants_rotation(self, b: CoreBackend) -> bool:
        if b.removed:
            return False
        if self._panic:
            return True
        if self._fallback:
            return b.usable
        return b.usable and not b.ejected

    def _after_membership_change(self, now: float, changed: CoreBackend) -> None:
        threshold = self.config.panic_threshold
        panic = bool(
            threshold is not None and self._n_live and self._n_usable / self._n_live < threshold
        )
        fallback = self._n_usable_unejected == 0
        if panic != self._panic or fallback != self._fallback:
            # A mode switch re-judges every backend: O(n), but only on the switch.
            self._panic, self._fallback = panic, fallback
            for b in tuple(self.backends.values()):
                self._place(b)
        else:
            self._place(changed)
        if not self._rotation and self.running:
            error = self.no_backend_error()
            for w in self._live_waiters():
                self._fail(w, error)
        if self.running:
            self._use_capacity(now)
            self._serve_from_idle(now)

    def _place(self, b: CoreBackend) -> None:
        want = self._wants_rotation(b)
        if want == b.in_rotation:
            return
        if want:
            b.in_rotation = True
            self._rotation[b.id] = b
            self._rotation_weight += b.weight
            self._balancer.add(b)
        else:
            b.in_rotation = False
            del self._rotation[b.id]
            self._rotation_weight -= b.weight
            self._balancer.remove(b)
        if not self._rotation:
            self._rotation_weight = 0.0  # no float residue once empty

    def no_backend_error(self) -> NoHealthyBackendError:
        return NoHealthyBackendError(
            {b.id: self.describe(b) for b in self.backends.values() if not b.removed}
        )

    def describe(self, b: CoreBackend) -> str:
        """One phrase: why this backend is (not) used."""
        if b.removed:
            return "removed"
        record = self._store.record(b.id)
        parts = []
        if not record.healthy:
            parts.append(f"unhealthy after {record.probe_failures} failed probes")
        state = record.breaker_state
        if state == "open":
            parts.append(f"breaker open for {record.breaker.remaining_open_time:.1f} s more")
        elif state == "half-open":
            parts.append("breaker half-open (trial in progress)")
        if b.ejected:
            parts.append("ejected after a failure")
        if not parts:
            parts.append("healthy")
        if record.last_error:
            parts.append(f"last error: {record.last_error}")
        return ", ".join(parts)

    # ------------------------------------------------------------------ acquire

    def _pick(self, key: str | None) -> CoreBackend:
        if key is None and self._balancer.requires_key:
            raise ValueError(
                f"load_balancing={self.config.load_balancing!r} needs an affinity key: "
                "call acquire(key=...)"
            )
        if not self._rotation:
            raise self.no_backend_error()
        picked: CoreBackend = self._balancer.pick(key)  # type: ignore[assignment]
        return picked

    def take(self, key: str | None, now: float | None) -> Slot[L] | None:
        """The hot path: lease an idle link of the pick at once, or None (then ``acquire``).

        Only when nobody waits (FIFO) and the pick has a valid idle link; the
        pick it made is remembered, so the slow path does not pick again.
        ``now`` None: the core's clock is read only if the answer depends on the
        time (a lifetime, a backoff); the common lease reads no clock at all.
        """
        # _last_pick is None here: only a miss below sets it, and the acquire()
        # that follows a miss in the same step consumes it.
        if self.waiting or not self._rotation or (key is None and self._needs_key):
            return None  # acquire() queues, or raises the ValueError / no-backend error
        b: CoreBackend = self._balancer.pick(key)  # type: ignore[assignment]
        idle = b.idle
        if idle:
            slot: Slot[L] = idle.pop()
            if (
                slot.generation == self.generation
                and (
                    slot.expires_at is None
                    or (self._clock() if now is None else now) < slot.expires_at
                )
                and (self._link_ok is None or self._link_ok(slot.link))
            ):
                slot.state = _LEASED
                b.active += 1
                b.leases += 1
                self.leased_total += 1
                return slot
            idle.append(slot)  # not valid: the slow path retires it
        elif (
            key is None
            and self.size > self.leased_total  # an idle link somewhere
            and (
                b.lend_epoch == self._epoch or self._lends(b, self._clock() if now is None else now)
            )
        ):
            # Every link of the pick is leased and acquire() would borrow an idle
            # one elsewhere rather than grow the pool on it: borrow here, without
            # the coroutine. Under steady load with as many links as workers this
            # is most acquires (the pick's links are the ones in use).
            # _take_any_idle's rule, inlined: the in-rotation backend with the most
            # idle links lends its newest, if valid (else the slow path retires it).
            # No pruning: the holders are at most the backends that have idle links.
            best: CoreBackend | None = None
            most = 0
            for o in self._holders.values():
                n = len(o.idle)
                if n > most and o.in_rotation:
                    best, most = o, n
            if best is not None:
                idle = best.idle
                slot = idle[-1]
                if (
                    slot.generation == self.generation
                    and (
                        slot.expires_at is None
                        or (self._clock() if now is None else now) < slot.expires_at
                    )
                    and (self._link_ok is None or self._link_ok(slot.link))
                ):
                    idle.pop()
                    slot.state = _LEASED
                    best.active += 1
                    best.leases += 1
                    self.leased_total += 1
                    return slot
        self._last_pick = b
        return None

    def _lends(self, b: CoreBackend, now: float) -> bool:
        """The rule for an unpinned pick with no idle link (``acquire()`` and
        ``take()`` both apply it): True when it borrows an idle link of another
        backend instead of opening on ``b``."""
        if self.capacity() > 0:
            if not self._under_share(b):
                lends = True
            else:
                return not b.may_open(now)  # the answer changes with the clock
        elif not self._under_target(b):
            lends = True
        else:
            return not b.may_open(now)
        # Decided by counts, weights and the limit alone, which only calls that bump
        # the epoch change (the limit too, unless a hold makes it follow the leases).
        if not self._holding:
            b.lend_epoch = self._epoch
        return lends

    def give_back(self, slot: Slot[L], now: float) -> int:
        """The hot path of ``release``: park a reusable slot when nobody waits for it.

        ``NOT_PARKED`` (0, falsy): nothing was done; call ``release`` (waiters,
        stand-ins, expiry...). ``PARKED``; or ``PARKED_DUE_SOONER`` when parking it
        moved ``due`` earlier (the shell's timer may have to wake sooner).

        The checks below read only state that ``take``/``give_back`` never change
        (waiters, membership, weights, sizes, health, running). Every other core
        call bumps ``_epoch``, so a slot that passed them at the current epoch
        passes them again and skips them: the common lease/park cycle pays two
        attribute reads instead of a dozen.
        """
        if slot.parked_epoch != self._epoch:  # never equal for a slot with a lifetime
            b = slot.backend
            total = self._rotation_weight
            if (
                self.waiting
                or self._room_wanted
                or slot.stand_in_for is not None
                or total <= 0
                # above its share while the pool is above min: release() may retire it
                # (attributes inlined: hot path)
                or (
                    self.size + self.opening > self.min
                    and b.open_links + b.opening > (self.size + self.opening) * b.weight / total
                )
                or not self.running
                or not b.usable
                or b.removed
                or slot.generation != self.generation
                or (slot.expires_at is not None and now >= slot.expires_at)
            ):
                return NOT_PARKED
            if slot.expires_at is None:
                slot.parked_epoch = self._epoch
            return self._park_slot(slot, now)
        # Checked at this epoch already, and no lifetime: _park_slot's body, inlined
        # (a call less on the lease/park cycle).
        b = slot.backend
        slot.state = _IDLE
        slot.last_used = now
        b.active -= 1
        self.leased_total -= 1
        idle = b.idle
        idle.append(slot)
        if not b.listed:  # a dict store per release would cost more than this test
            b.listed = True
            self._holders[b.id] = b
        idle_timeout = self._idle_timeout
        if idle_timeout is not None and now + idle_timeout < self.due:
            self.due = now + idle_timeout
            return PARKED_DUE_SOONER
        return PARKED

    def _park_slot(self, slot: Slot[L], now: float) -> int:
        due = self.due
        b = slot.backend
        slot.state = _IDLE
        slot.last_used = now
        b.active -= 1
        self.leased_total -= 1
        b.idle.append(slot)
        if not b.listed:
            b.listed = True
            self._holders[b.id] = b
        if self._idle_timeout is not None:
            self.due = min(self.due, now + self._idle_timeout)
        if slot.expires_at is not None:
            self.due = min(self.due, slot.expires_at)
        return PARKED_DUE_SOONER if self.due < due else PARKED

    def acquire(self, key: str | None, pinned_id: str | None, now: float) -> Slot[L] | Waiter:
        """A leased slot at once, or a queued waiter (the shell awaits its Hand or Fail).

        Raises ``ValueError`` (keyless ip-hash) or ``NoHealthyBackendError``.
        """
        self._epoch += 1
        if pinned_id is not None:
            b = self.backends.get(pinned_id)
            if b is None or not self.serviceable(b):
                raise self.no_backend_error()
            pin: CoreBackend | None = b
        else:
            picked, self._last_pick = self._last_pick, None
            # take() just missed on this pick (same step); anything else re-picks.
            b = picked if picked is not None and picked.in_rotation else self._pick(key)
            pin = b if key is not None else None
        queue = self._pinned.get(b.id) if pin is not None else None
        if self._has_live(self._unpinned) or (queue is not None and self._has_live(queue)):
            # FIFO: behind those already waiting. Its pick goes with it as the
            # preferred backend of the open it may start: picking again there would
            # take two picks per acquire, and with two backends round-robin would
            # then send every open of a burst to the same one.
            return self._queue(key, pin, None if pin is not None else b, now)
        slot = self._take_idle(b, now)
        if slot is not None:
            self._lease(slot)
            return slot
        if pin is not None:
            w = self._queue(key, pin, None, now, open_now=False)
            if self.capacity() > 0:
                self._open_for(w, now)
            elif not self._make_room(b, now):
                self._room_wanted.append(w)
            return w
        # One rule, shared with take()'s fast path: does this pick lend, i.e.
        # borrow an idle link elsewhere rather than open on b?
        lends = self._lends(b, now)
        if self.capacity() > 0:
            if lends:
                # Backing off (a restart, say), or already holding its share of
                # the pool: borrow an idle link elsewhere rather than grow the
                # pool; open (a stand-in, if backing off) only if none is idle.
                slot = self._take_any_idle(now)
                if slot is not None:
                    self._lease(slot)
                    return slot
            return self._queue(key, None, b, now)
        if not lends:  # at capacity, under its target and dialable
            # Capacity moves to the under-share pick; this acquire does not wait
            # for it if another backend has an idle link right now.
            made_room = self._make_room(b, now)
            slot = self._take_any_idle(now)
            if slot is not None:
                self._lease(slot)
                return slot
            if made_room:
                return self._queue(key, None, None, now, open_now=False)
        slot = self._take_any_idle(now)
        if slot is not None:
            self._lease(slot)
            return slot
        return self._queue(key, None, None, now)

    def _queue(
        self,
        key: str | None,
        pin: CoreBackend | None,
        preferred: CoreBackend | None,
        now: float,
        *,
        open_now: bool = True,
    ) -> Waiter:
        w = Waiter(next(self._seq), key, pin, preferred)
        if pin is None:
            self._unpinned.append(w)
        else:
            self._pinned.setdefault(pin.id, deque()).append(w)
        self.waiting += 1
        if open_now and self.capacity() > 0:
            self._open_for(w, now)
        if w.ticket is None and not w.done:
            heapq.heappush(self._need_open, (w.seq, w))
        return w

    @staticmethod
    def _has_live(queue: deque[Waiter]) -> bool:
        while queue and queue[0].done:
            queue.popleft()
        return bool(queue)

    def _live_waiters(self) -> list[Waiter]:
        waiters = [w for w in self._unpinned if not w.done]
        for queue in self._pinned.values():
            waiters.extend(w for w in queue if not w.done)
        waiters.sort(key=lambda w: w.seq)
        return waiters

    def cancel(self, w: Waiter) -> None:
        """The acquirer gave up (timeout, cancellation). Its open, if any, goes on unowned."""
        self._epoch += 1
        if w.done:
            return
        w.done = True
        self.waiting -= 1
        if w.ticket is not None:
            w.ticket.waiter = None
            w.ticket = None

    def _fail(self, w: Waiter, error: BaseException) -> None:
        if w.done:
            return
        self.cancel(w)
        self.effects.append(Fail(w, error))

    def fail_all(self, error: BaseException) -> None:
        self._epoch += 1
        for w in self._live_waiters():
            self._fail(w, error)

    def _take_idle(self, b: CoreBackend, now: float) -> Slot[L] | None:
        idle = b.idle
        while idle:
            slot: Slot[L] = idle.pop()  # LIFO: the surplus ages out at the other end
            if (
                slot.generation == self.generation
                and (slot.expires_at is None or now < slot.expires_at)
                and (self._link_ok is None or self._link_ok(slot.link))
            ):
                return slot
            slot.state = _LEASED  # so that _retire counts it out of "leased"
            b.active += 1
            self.leased_total += 1
            self._retire(slot, 1000, "recycled")
        return None

    def _take_any_idle(self, now: float) -> Slot[L] | None:
        # Only backends in rotation: an ejected backend's idle links wait it out.
        best: CoreBackend | None = None
        for b in self._idle_holders():
            if b.in_rotation and (best is None or len(b.idle) > len(best.idle)):
                best = b
        while best is not None:
            slot = self._take_idle(best, now)
            if slot is not None:
                return slot
            best = next((b for b in self._idle_holders() if b.in_rotation), None)
        return None

    def _idle_holders(self) -> list[CoreBackend]:
        # At most ``max_connections`` backends hold idle links; scanning the
        # ones that do keeps this independent of the number of backends.
        holders = self._holders
        empty = [backend_id for backend_id, b in holders.items() if not b.idle]
        for backend_id in empty:
            holders.pop(backend_id).listed = False
        return list(holders.values())

    def _lease(self, slot: Slot[L]) -> None:
        slot.state = _LEASED
        b = slot.backend
        b.active += 1
        b.leases += 1
        self.leased_total += 1

    # ------------------------------------------------------------------ opening

    def _open_for(self, w: Waiter, now: float, cause: BaseException | None = None) -> None:
        """Start a connect attempt on ``w``'s behalf, if there is room; else it queues."""
        if self.capacity() <= 0:
            heapq.heappush(self._need_open, (w.seq, w))
            return
        while True:
            try:
                b, stand_in_for = self._open_target(w, now)
            except NoHealthyBackendError as exc:
                exc.__cause__ = cause
                self._fail(w, exc)
                return
            ticket = self._start_open(b, w)
            if ticket is not None:
                if stand_in_for is b or stand_in_for is None:
                    stand_in_for = self._degraded_other(b, now) if self._degraded else None
                ticket.stand_in_for = stand_in_for
                return
            w.tried.add(b.id)  # half-open with no trial slot left: try elsewhere

    def _open_target(self, w: Waiter, now: float) -> tuple[CoreBackend, CoreBackend | None]:
        if w.pinned is not None:
            b = w.pinned
            if not self.serviceable(b) or b.id in w.tried:
                raise self.no_backend_error()
            return b, None
        preferred, w.preferred = w.preferred, None
        if (
            preferred is not None
            and preferred.in_rotation
            and preferred.id not in w.tried
            and preferred.may_open(now)
        ):
            return preferred, None
        stand_in_for = preferred if preferred is not None and preferred.in_rotation else None
        if not w.tried and len(self._rotation) > 0:
            # The common case: a few balancer picks find a backend ready to dial.
            for _ in range(min(8, len(self._rotation))):
                b = self._pick(w.key)
                if b.may_open(now) and b is not preferred:
                    return b, stand_in_for
        candidates = [b for b in self._rotation.values() if b.id not in w.tried]
        if not candidates:
            raise self.no_backend_error()
        # A backend backing off is dialled only if nothing else can be.
        ready = [b for b in candidates if b.may_open(now)] or candidates
        return max(ready, key=lambda b: b.weight / (1 + b.held)), stand_in_for

    def _degraded_other(self, b: CoreBackend, now: float) -> CoreBackend | None:
        """A backend other than ``b`` still waiting out its reconnect delay, if any."""
        for backend_id, d in list(self._degraded.items()):
            if d.removed or d.retry_at <= now:
                del self._degraded[backend_id]
            elif d is not b:
                return d
        return None

    def _start_open(self, b: CoreBackend, w: Waiter | None) -> Ticket | None:
        record = self._store.record(b.id)
        trial = record.breaker_state == "half-open"
        if not self._store.try_admit(b.id):
            return None
        ticket = Ticket(b, w, trial)
        if w is not None:
            w.ticket = ticket
        b.opening += 1
        self.opening += 1
        self.effects.append(Open(ticket))
        return ticket

    def opened(self, ticket: Ticket, link: L, now: float) -> Slot[L]:
        """The connect attempt succeeded."""
        self._epoch += 1
        b = ticket.backend
        b.opening -= 1
        self.opening -= 1
        opener = ticket.waiter
        if opener is not None:
            opener.ticket = None
        slot = Slot(b, link, self.generation, now)
        slot.stand_in_for = ticket.stand_in_for
        lifetime = self.config.max_lifetime
        if lifetime is not None:
            slot.expires_at = now + lifetime * self._rng.uniform(0.9, 1.1)
        b.open_links += 1
        slot.state = _LEASED  # counted as leased until offered
        b.active += 1
        self.leased_total += 1
        self.size += 1
        self.stats["opened"] += 1
        b.backoff.reset()
        b.retry_at = 0.0
        if b.id in self._held_for:  # back after its graceful close: hold a little longer
            self._held_for.discard(b.id)
            self._hold_until = max(self._hold_until, now + _HOLD_AFTER_REOPEN_S)
        self._store.connect_succeeded(b.id)
        self._emit(ev.CONNECTION_OPEN, b.id, slot)
        if not self.running or b.removed:
            self._retire(slot, 1001, "pool closing" if not self.running else "backend removed")
        elif (
            opener is None
            and ticket.for_demand
            and self._oldest_accepting(b) is None
            and self.size + self.opening > self.min
            and any(o is not b and o.in_rotation for o in self._idle_holders())
        ):
            # The acquire this was opened for got a released link instead, and
            # the pool has idle links to spare: growing would not serve anyone.
            self._retire(slot, 1000, "not needed")
        else:
            self._offer(slot, opener, now)
        if opener is not None and not opener.done and opener.ticket is None:
            heapq.heappush(self._need_open, (opener.seq, opener))
        self.refresh(b.id, now)  # a success may have ended an ejection or closed the breaker
        return slot

    def open_failed(
        self, ticket: Ticket, error: BaseException | None, reason: str | None, now: float
    ) -> None:
        """The connect attempt failed (``reason`` set: blame the backend) or was abandoned."""
        self._epoch += 1
        b = ticket.backend
        b.opening -= 1
        self.opening -= 1
        if reason is not None:
            self.stats["open_failures"] += 1
            self._blame(b, reason, now)
        elif ticket.trial:
            self._store.attempt_abandoned(b.id)
        w = ticket.waiter
        if w is not None and not w.done:
            w.ticket = None
            w.tried.add(b.id)
            if w.pinned is not None:
                self._fail(w, error if error is not None else self.no_backend_error())
            elif self.running:
                self._open_for(w, now, cause=error)
            if w.ticket is None and not w.done:
                heapq.heappush(self._need_open, (w.seq, w))
        self._check_drained(b)
        if self.running:
            self._use_capacity(now)

    # ------------------------------------------------------------------ handing out

    def _oldest_accepting(self, b: CoreBackend) -> Waiter | None:
        unpinned = self._unpinned
        while unpinned and unpinned[0].done:
            unpinned.popleft()
        first = unpinned[0] if unpinned else None
        queue = self._pinned.get(b.id)
        if queue is not None:
            while queue and queue[0].done:
                queue.popleft()
            if queue and (first is None or queue[0].seq < first.seq):
                first = queue[0]
        return first

    def _offer(self, slot: Slot[L], opener: Waiter | None, now: float) -> None:
        """A leased-counted slot is free again: a waiter, a better backend, or idle."""
        b = slot.backend
        w = self._oldest_accepting(b)
        if w is not None:
            if w.pinned is None and self.capacity() <= 0 and self._over_target(b):
                under = self._most_under(now)
                if under is not None:
                    self._retire(slot, 1000, "rebalancing")
                    self._room_for.append(under)
                    return
            self._hand(w, slot, opener)
            return
        stand_in_for = slot.stand_in_for
        if stand_in_for is not None and stand_in_for.in_rotation and stand_in_for.may_open(now):
            self._retire(slot, 1000, "stand-in no longer needed")
            return
        if self._surplus(b):
            self._retire(slot, 1000, "surplus")
            return
        while self._room_wanted:
            pinned = self._room_wanted[0]
            if pinned.done or pinned.ticket is not None or pinned.pinned is b:
                self._room_wanted.popleft()
                continue
            self._room_wanted.popleft()
            assert pinned.pinned is not None
            self._retire(slot, 1000, "making room")
            self._room_for.append(pinned.pinned)
            return
        self._park(slot, now)

    def _park(self, slot: Slot[L], now: float) -> None:
        self._park_slot(slot, now)
        self.effects.append(Park(slot))

    def _hand(self, w: Waiter, slot: Slot[L], opener: Waiter | None) -> None:
        own = w.ticket
        w.done = True
        w.ticket = None
        self.waiting -= 1
        slot.backend.leases += 1
        if own is not None:
            # w had its own attempt in flight: it passes to the waiter whose
            # attempt produced this link, if that one still waits and can use it.
            if (
                opener is not None
                and opener is not w
                and not opener.done
                and (opener.ticket is None and opener.accepts(own.backend))
            ):
                own.waiter = opener
                opener.ticket = own
            else:
                own.waiter = None
        self.effects.append(Hand(w, slot))

    def release(self, slot: Slot[L], reusable: bool, now: float, reason: str = "retired") -> None:
        """The lessee gave the slot back; ``reusable`` is the shell's verdict on the link."""
        self._epoch += 1
        b = slot.backend
        if (
            not reusable
            or not self.running
            or b.removed
            or not (b.usable or self._panic)
            or slot.generation != self.generation
            or (slot.expires_at is not None and now >= slot.expires_at)
        ):
            self._retire(slot, 1000, reason)
        else:
            self._offer(slot, None, now)
        if b.removed:
            self._check_drained(b)

    # ------------------------------------------------------------------ capacity allotment

    def _under_share(self, b: CoreBackend) -> bool:
        """Would one more connection on ``b`` still leave it within its share of the pool?"""
        total = self._rotation_weight
        if not b.in_rotation or total <= 0:
            return False
        # Every backend may hold one link whatever its share, so a single
        # sequential client still spreads its leases by weight.
        return b.held == 0 or b.held + 1 <= (self.size + self.opening + 1) * b.weight / total

    def _over_share(self, b: CoreBackend) -> bool:
        total = self._rotation_weight
        if not b.in_rotation or total <= 0:
            return False
        return b.held >= (self.size + self.opening) * b.weight / total + 1

    def _surplus(self, b: CoreBackend) -> bool:
        """A free link of ``b`` the pool can do without: above min, while another
        backend in rotation has an idle link to serve its picks, and ``b`` is one
        over its share, or above its share while another is one under (what a
        backend grew while a peer was away: the peer's picks refill the pool)."""
        total = self._rotation_weight
        if self.size + self.opening <= self.min or not b.in_rotation or total <= 0:
            return False
        held_total = self.size + self.opening
        excess = b.held - held_total * b.weight / total
        if excess <= 0:
            return False
        if excess < 1 and not any(
            o.held + 1 <= held_total * o.weight / total
            for o in self._big_backends(total / self.max)
            if o is not b
        ):
            return False
        return any(o is not b and o.in_rotation for o in self._idle_holders())

    def _over_target(self, b: CoreBackend) -> bool:
        return b.held >= self.target(b) + 1 or not b.in_rotation

    def _under_target(self, b: CoreBackend) -> bool:
        return b.in_rotation and b.held + 1 <= self.target(b)

    def _most_under(self, now: float) -> CoreBackend | None:
        # Only a backend whose target is at least one connection can be under
        # it, and there are at most max_connections of those.
        if self._rotation_weight <= 0:
            return None
        floor_weight = self._rotation_weight / self.max
        best: CoreBackend | None = None
        best_gap = 1.0 - 1e-9
        for b in self._big_backends(floor_weight):
            if b.may_open(now):
                gap = self.target(b) - b.held
                if gap >= best_gap:
                    best, best_gap = b, gap
        return best

    def _big_backends(self, floor_weight: float) -> Iterator[CoreBackend]:
        if len(self._rotation) <= self.max:
            return iter(self._rotation.values())
        return (b for b in self._rotation.values() if b.weight >= floor_weight)

    def _make_room(self, b: CoreBackend, now: float) -> bool:
        """At capacity: retire one idle link elsewhere so that ``b`` can open."""
        victim: CoreBackend | None = None
        for other in self._idle_holders():
            if other is b:
                continue
            if not other.in_rotation:
                victim = other
                break
            if self._over_target(other) and (victim is None or other.held > victim.held):
                victim = other
        if victim is None and self._pinned.get(b.id):
            # A pinned acquire may take room from any backend with an idle link.
            victim = next((o for o in self._idle_holders() if o is not b), None)
        if victim is None:
            return False
        slot = victim.idle.pop(0)  # the longest idle
        slot.state = _LEASED
        victim.active += 1
        self.leased_total += 1
        self._retire(slot, 1000, "making room")
        self._room_for.append(b)
        return True

    def _use_capacity(self, now: float) -> None:
        """Room freed up: promised opens first, then waiters in arrival order, then the warm set."""
        while self.capacity() > 0:
            if self._room_for:
                b = self._room_for.popleft()
                if not self.serviceable(b):
                    continue
                w = self._next_needing_open(b)
                ticket = self._start_open(b, w)
                if ticket is None and w is not None:
                    heapq.heappush(self._need_open, (w.seq, w))
                continue
            w = self._next_needing_open(None)
            if w is None:
                break
            self._open_for(w, now)
            if w.ticket is None and not w.done:
                heapq.heappush(self._need_open, (w.seq, w))
                break  # nothing can be dialled for it now
        if self.capacity() > 0 and self.running:
            self._refill(now)

    def _serve_from_idle(self, now: float) -> None:
        """At capacity nothing can be opened: idle links in rotation go to the waiters
        that accept them (one that queued behind others while links sat idle, say).

        Run after a connect attempt succeeds and after rotation changes, never inside
        ``acquire`` (the shell has no future for a waiter until acquire returns).
        """
        if not (self.waiting and self.idle_total and self.running) or self.capacity() > 0:
            return
        for b in self._idle_holders():
            while b.idle and b.in_rotation and self.capacity() <= 0:
                w = self._oldest_accepting(b)
                if w is None:
                    break
                slot = self._take_idle(b, now)
                if slot is None:
                    break
                slot.state = SlotState.LEASED
                b.active += 1
                self.leased_total += 1
                self._hand(w, slot, None)

    def _next_needing_open(self, b: CoreBackend | None) -> Waiter | None:
        heap = self._need_open
        while heap:
            w = heap[0][1]
            if w.done or w.ticket is not None:
                heapq.heappop(heap)
                continue
            if b is not None and not w.accepts(b):
                return None
            heapq.heappop(heap)
            return w
        return None

    def _refill(self, now: float) -> None:
        """Open connections until ``min_connections`` are open or opening, split by weight."""
        want = self.min - (self.size + self.opening)
        if want <= 0 or not self._rotation:
            return
        total = self._rotation_weight
        for _ in range(want):
            if self.capacity() <= 0:
                return
            best: CoreBackend | None = None
            best_gap = -math.inf
            for b in self._rotation.values():
                if not b.may_open(now):
                    continue
                gap = self.min * b.weight / total - b.held
                if gap > best_gap or (
                    gap == best_gap and best and b.base_weight > best.base_weight
                ):
                    best, best_gap = b, gap
            if best is None:
                return
            ticket = self._start_open(best, None)
            if ticket is None:
                return
            if self._degraded:
                # The warm set covering for a backend in its reconnect delay.
                ticket.stand_in_for = self._degraded_other(best, now)

    # ------------------------------------------------------------------ closing

    def _retire(self, slot: Slot[L], code: int | None, reason: str) -> None:
        """Take a leased-counted slot out of the pool and have the shell close its link."""
        if slot.state is _CLOSING:
            return
        b = slot.backend
        slot.state = _CLOSING
        b.active -= 1
        self.leased_total -= 1
        self.size -= 1
        b.open_links -= 1
        b.closing += 1
        self.closing += 1
        self.effects.append(Close(slot, code, reason))

    def _retire_idle(self, b: CoreBackend, code: int | None, reason: str) -> None:
        while b.idle:
            self.retire_idle_slot(b.idle[-1], code, reason)

    def retire_idle_slot(self, slot: Slot[L], code: int | None, reason: str) -> bool:
        """Close ``slot`` if it is idle (drain, policy); False if it is not idle."""
        self._epoch += 1
        if slot.state is not _IDLE:
            return False
        b = slot.backend
        try:
            b.idle.remove(slot)  # the newest end first: O(1) for _retire_idle
        except ValueError:  # pragma: no cover - IDLE slots are always in their deque
            return False
        slot.state = _LEASED  # _retire counts it out of "leased"
        b.active += 1
        self.leased_total += 1
        self._retire(slot, code, reason)
        return True

    def closed(self, slot: Slot[L], code: int | None, reason: str, now: float) -> None:
        """The shell finished closing the slot's link."""
        self._epoch += 1
        b = slot.backend
        b.closing -= 1
        self.closing -= 1
        self.stats["closed"] += 1
        self._emit(ev.CONNECTION_CLOSED, b.id, slot, code, reason)
        if b.removed:
            self._check_drained(b)
        if self.running:
            self._use_capacity(now)

    def link_lost(
        self, slot: Slot[L], code: int | None, reason: str, now: float, *, judge: bool = True
    ) -> bool:
        """The link ended by itself (peer close, error, missed pong). True if blamed.

        ``judge=False``: it ended through our own doing; the backend is not judged.
        """
        self._epoch += 1
        b = slot.backend
        blamed = False
        if judge and self.running and not b.removed:
            if is_blamed(code):
                blamed = True
                self._blame(
                    b, f"closed with {code}: {reason}" if reason else f"closed with {code}", now
                )
            else:
                # Going away, restarting, try later: reconnect, but not at once,
                # so a restarting server is not hit by every client together.
                self._hold(b, now)
                self._schedule_retry(b, now, extra_steps=2 if code == 1013 else 0)
        self.retire_idle_slot(slot, None, reason)
        return blamed

    def _hold(self, b: CoreBackend, now: float) -> None:
        """A graceful close (a rolling restart): hold the pool at its present size.

        The backend's demand moves to stand-ins elsewhere while it cannot be
        dialled, and its reopened links must replace those, not add to them: for
        ``_HOLD_S`` (longer while backends keep closing gracefully, and at least
        ``_HOLD_AFTER_REOPEN_S`` after one reopens) the pool is at capacity at
        that size, so the allotment makes room for an under-share pick by
        retiring an idle link of an over-share backend, as it does at
        ``max_connections``. Demand above that size still opens (see ``limit``).
        """
        if not self._holding:
            self._holding = True
            self._epoch += 1  # decisions cached at this epoch assumed no hold
            # The closing link still counts: the size the pool had just before.
            self._level = max(self.min, self.size + self.opening)
        self._held_for.add(b.id)
        self._hold_until = max(self._hold_until, now + _HOLD_S)
        if self._hold_until < self.due:
            self.due = self._hold_until

    def _end_hold(self, now: float) -> float:
        """End the hold once it is over; returns when to look again."""
        if not self._holding:
            return math.inf
        if now < self._hold_until:
            return self._hold_until
        self._holding = False
        self._held_for.clear()
        return math.inf

    def backend_failed(self, backend_id: str, error: str, now: float) -> None:
        """A failure observed outside the core's own bookkeeping: blame the backend."""
        self._epoch += 1
        self._blame(self.backends[backend_id], error, now)

    def serviceable(self, b: CoreBackend) -> bool:
        """May a pinned acquire (broadcast) use it? Usable, even while ejected."""
        return not b.removed and (b.usable or self._panic)

    def _blame(self, b: CoreBackend, error: str, now: float) -> None:
        self._schedule_retry(b, now)
        # Outlier ejection (Envoy): no new leases for the backoff delay.
        self._store.connect_failed(b.id, error, b.retry_at)
        self.refresh(b.id, now)

    def _schedule_retry(self, b: CoreBackend, now: float, *, extra_steps: int = 0) -> None:
        # Within a delay already running nothing escalates: twelve connections
        # reset at once are one failure window, not twelve backoff steps.
        if b.retry_at > now:
            return
        b.retry_at = now + b.backoff.next_delay(extra_steps=extra_steps)
        heapq.heappush(self._retry_heap, (b.retry_at, b.id))
        self._degraded[b.id] = b
        if b.retry_at < self.due:
            self.due = b.retry_at

    # ------------------------------------------------------------------ time

    def tick(self, now: float) -> float:
        """Housekeeping due by ``now``; returns when it is next due."""
        self._epoch += 1
        due = now + 60.0
        # Ejections and backoff delays that ended.
        for backend_id, until in list(self._ejections.items()):
            if until <= now:
                del self._ejections[backend_id]
                self._store.end_ejection(backend_id)
                self.refresh(backend_id, now)
            else:
                due = min(due, until)
        heap = self._retry_heap
        while heap and heap[0][0] <= now:
            heapq.heappop(heap)
        if heap:
            due = min(due, heap[0][0])
        for backend_id in list(self._ramping):
            b = self.backends.get(backend_id)
            if b is None:
                self._ramping.discard(backend_id)
                continue
            self._set_effective_weight(b, self._ramped_weight(b, now))
        if self._ramping:
            due = min(due, now + (self.config.slow_start or 1.0) / 10)
        due = min(due, self._expire_idle(now), self._end_hold(now))
        if self._holding:
            self._trim_to_limit()
        if self.running:
            self._use_capacity(now)
        self.due = due
        return due

    def _trim_to_limit(self) -> None:
        """During the hold: idle links above the limit go, the most over-share first."""
        while self.size + self.opening > self.limit:
            victim: CoreBackend | None = None
            for other in self._idle_holders():
                if self._over_target(other) and (victim is None or other.held > victim.held):
                    victim = other
            if victim is None:
                return
            self.retire_idle_slot(victim.idle[0], 1000, "surplus")

    def _expire_idle(self, now: float) -> float:
        idle_timeout = self.config.idle_timeout
        due = now + 60.0
        surplus = self.size + self.opening - self.min
        for b in list(self._idle_holders()):
            for slot in list(b.idle):
                stand_in = slot.stand_in_for
                too_long = (
                    idle_timeout is not None
                    and surplus > 0
                    and now - slot.last_used >= idle_timeout
                )
                if (
                    slot.generation != self.generation
                    or (slot.expires_at is not None and now >= slot.expires_at)
                    or too_long
                    or (stand_in is not None and stand_in.in_rotation and stand_in.may_open(now))
                ):
                    self.retire_idle_slot(slot, 1000, "idle")
                    surplus -= 1
                    continue
                if slot.expires_at is not None:
                    due = min(due, slot.expires_at)
                if idle_timeout is not None:
                    deadline = slot.last_used + idle_timeout
                    due = min(due, deadline if deadline > now else now + idle_timeout)
        return due

    def expire_all(self) -> None:
        """Every current link is stale; each is replaced when next idle."""
        self._epoch += 1
        self.generation += 1

    def start(self, now: float) -> None:
        self._epoch += 1
        self.running = True
        self._use_capacity(now)

    def stop(self, error: BaseException) -> None:
        """Hand out nothing more: fail every waiter, close every idle link."""
        self._epoch += 1
        self.running = False
        self.fail_all(error)
        self._room_for.clear()
        for b in self._idle_holders():
            self._retire_idle(b, 1001, "pool closing")

    # ------------------------------------------------------------------ checks

    def check_invariants(self) -> None:
        """Raise AssertionError if the accounting is inconsistent (tests call this)."""
        backends = [*self.backends.values(), *self._draining]
        assert sum(len(b.idle) for b in backends) == self.idle_total
        # listed: this very object is the holders entry (a removed backend's id may
        # be re-added while the old one drains; the entry is by id).
        assert all(self._holders.get(b.id) is b for b in backends if b.listed and not b.removed)
        assert all(b.listed for b in backends if b.idle)
        assert sum(b.active for b in backends) == self.leased_total
        assert sum(b.opening for b in backends) == self.opening
        assert sum(b.closing for b in backends) == self.closing
        assert sum(b.open_links for b in backends) == self.size
        assert self.size + self.opening + self.closing <= self.max, self
        assert all(b.active >= 0 and b.opening >= 0 and b.closing >= 0 for b in backends)
        assert all(len(b.idle) + b.active == b.open_links for b in backends)
        assert self.waiting == len(self._live_waiters())
        assert set(self._rotation) == {b.id for b in backends if b.in_rotation}
        assert len(self._balancer) == len(self._rotation)
        assert math.isclose(
            self._rotation_weight, sum(b.weight for b in self._rotation.values()), abs_tol=1e-6
        )

    def __repr__(self) -> str:
        return (
            f"<PoolCore {self.leased_total} active, {self.idle_total} idle, "
            f"{self.opening} opening, {self.closing} closing, {self.waiting} waiting | "
            f"{len(self._rotation)}/{sum(not b.removed for b in self.backends.values())} "
            "backends in rotation>"
        )
