"""What the pool core keeps and what it returns: backend, slot, waiter and
connect-attempt records, and the effects the shell carries out.

Kept apart from ``core.py`` so that the decisions read on their own; nothing
here decides anything.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from wsclient.backoff import Backoff

__all__ = [
    "NO_BLAME_CLOSE_CODES",
    "SLOW_START_FLOOR",
    "Close",
    "CoreBackend",
    "Drained",
    "Effect",
    "Emit",
    "Fail",
    "Hand",
    "Open",
    "Park",
    "Slot",
    "SlotState",
    "Ticket",
    "Waiter",
    "is_blamed",
]

L = TypeVar("L")

#: Close codes after which the backend is not to blame: going away, restarting,
#: shedding load, message too big (ours), or the application's own decision.
NO_BLAME_CLOSE_CODES = frozenset({1000, 1001, 1009, 1012, 1013})
#: Slow start never hands a recovered backend less than this share of its weight.
SLOW_START_FLOOR = 0.1


def is_blamed(code: int | None) -> bool:
    """Does a close with ``code`` (None: no close frame) count against the backend?"""
    return not (code is not None and (code in NO_BLAME_CLOSE_CODES or 3000 <= code <= 4999))


class SlotState(enum.IntEnum):
    IDLE = 0
    LEASED = 1
    CLOSING = 2


# Module constants: an enum member looked up through its class costs ~100 ns on
# CPython 3.11, several times per acquire/release otherwise.
_IDLE, _LEASED, _CLOSING = SlotState.IDLE, SlotState.LEASED, SlotState.CLOSING


class CoreBackend:
    """One backend as the core and the balancer see it."""

    __slots__ = (
        "active",
        "backoff",
        "base_weight",
        "closing",
        "ejected",
        "id",
        "idle",
        "in_rotation",
        "leases",
        "lend_epoch",
        "listed",
        "open_links",
        "opening",
        "recovered_at",
        "removed",
        "retry_at",
        "usable",
        "weight",
    )

    def __init__(self, backend_id: str, weight: int, backoff: Backoff) -> None:
        self.id = backend_id
        self.base_weight = weight
        self.weight = float(weight)  # effective: lower while slow start ramps
        # A list, not a deque: a deque allocates a 64-entry block, and with
        # thousands of backends each holding a link or two that is a cache miss
        # per acquire. Reuse is LIFO at the end; only retiring the longest-idle
        # link pops the front (its length is this backend's idle links).
        self.idle: list[Slot[Any]] = []
        self.active = 0  # leased; the balancer reads it
        self.leases = 0  # leases served since it joined (pool.stats(): acquires, shares)
        self.open_links = 0  # idle + leased
        self.opening = 0
        self.closing = 0
        self.removed = False
        self.usable = True  # healthy and breaker not open (cached from the store)
        self.ejected = False
        self.in_rotation = False
        self.listed = False  # in PoolCore._holders (backends that may hold idle links)
        # The core's epoch at which it found that a pick of this backend with no idle
        # link borrows elsewhere whatever the clock says (PoolCore._lends): the hot
        # path then skips the rule until any other core call bumps the epoch.
        self.lend_epoch = -1
        self.retry_at = 0.0
        self.backoff = backoff
        self.recovered_at: float | None = None

    @property
    def held(self) -> int:
        """Connections it has or will have (closing ones no longer count)."""
        return self.open_links + self.opening

    def may_open(self, now: float) -> bool:
        return now >= self.retry_at

    def __repr__(self) -> str:
        return (
            f"<CoreBackend {self.id} active={self.active} idle={len(self.idle)} "
            f"opening={self.opening} closing={self.closing}>"
        )


class Slot(Generic[L]):
    """The core's record of one open link; ``link`` is the shell's object."""

    __slots__ = (
        "backend",
        "expires_at",
        "generation",
        "last_used",
        "link",
        "parked_epoch",
        "stand_in_for",
        "state",
    )

    def __init__(self, backend: CoreBackend, link: L, generation: int, now: float) -> None:
        self.backend = backend
        self.link = link
        self.state = _IDLE
        self.generation = generation
        self.expires_at: float | None = None
        self.last_used = now
        self.stand_in_for: CoreBackend | None = None
        self.parked_epoch = -1  # the core epoch at which give_back() last checked it


class Waiter:
    """One acquire waiting; ``handle`` is the shell's (its future)."""

    __slots__ = ("done", "handle", "key", "pinned", "preferred", "seq", "ticket", "tried")

    def __init__(
        self, seq: int, key: str | None, pinned: CoreBackend | None, preferred: CoreBackend | None
    ) -> None:
        self.seq = seq
        self.key = key
        self.pinned = pinned  # ip-hash, broadcast: only this backend will do
        self.preferred = preferred  # the balancer's pick for this acquire
        self.ticket: Ticket | None = None
        self.tried: set[str] = set()
        self.done = False
        self.handle: Any = None

    def accepts(self, backend: CoreBackend) -> bool:
        return self.pinned is None or self.pinned is backend


class Ticket:
    """One connect attempt in flight; ``waiter`` is who it was started for (may change)."""

    __slots__ = ("backend", "for_demand", "stand_in_for", "trial", "waiter")

    def __init__(self, backend: CoreBackend, waiter: Waiter | None, trial: bool) -> None:
        self.backend = backend
        self.waiter = waiter
        self.trial = trial
        self.stand_in_for: CoreBackend | None = None
        # Started for an acquire (not the warm set, not moved capacity): if that
        # acquire was served otherwise meanwhile, the link may not be needed.
        self.for_demand = waiter is not None


@dataclass(slots=True, frozen=True)
class Open:
    ticket: Ticket


@dataclass(slots=True, frozen=True)
class Close:
    slot: Slot[Any]
    code: int | None  # None: abort, no close handshake
    reason: str


@dataclass(slots=True, frozen=True)
class Hand:
    waiter: Waiter
    slot: Slot[Any]


@dataclass(slots=True, frozen=True)
class Fail:
    waiter: Waiter
    error: BaseException


@dataclass(slots=True, frozen=True)
class Emit:
    event: str
    args: tuple[Any, ...]


@dataclass(slots=True, frozen=True)
class Park:
    """The slot went idle: the shell starts watching its link."""

    slot: Slot[Any]


@dataclass(slots=True, frozen=True)
class Drained:
    """A removed backend has no lease and no connect attempt left."""

    backend_id: str


Effect = Open | Close | Hand | Fail | Emit | Park | Drained
