"""Runtime state of one backend: health, breaker, backoff, its links and counts.

The pool owns one ``BackendState`` per configured ``Backend``. It is also what
the balancer sees (``id``, ``weight``, ``active``), so a pick reads live
counts without copying. Everything here is synchronous bookkeeping; the pool
and the health checker do the I/O and report outcomes.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from wsclient.backoff import Backoff
from wsclient.breaker import BreakerState, CircuitBreaker
from wsclient.config import Backend, ConnectionOptions, PoolConfig

if TYPE_CHECKING:
    from wsclient.connection import _Link

# Close codes after which the backend is not to blame: it is going away,
# restarting, shedding load, or the application chose to close.
NO_BLAME_CLOSE_CODES = frozenset({1000, 1001, 1009, 1012, 1013})
# Slow start never hands a recovered backend less than this share of its weight.
SLOW_START_FLOOR = 0.1


class BackendHealth(BaseModel):
    """What ``pool.health_status()`` reports for one backend (JSON-ready)."""

    model_config = ConfigDict(frozen=True)

    id: str
    url: str
    healthy: bool
    eligible: bool
    """New leases may go here now: healthy, breaker not open, not ejected or removed."""
    latency: float | None
    """Milliseconds of the last successful probe."""
    last_check: float | None
    """Epoch seconds of the last probe."""
    breaker: BreakerState
    active: int
    idle: int
    connecting: int
    consecutive_failures: int
    weight: int
    effective_weight: float
    last_error: str | None
    retry_in: float
    """Seconds until the pool next opens a replacement connection here (backoff)."""
    ejected: bool
    """Out of rotation for its backoff delay after a failure (outlier ejection)."""


class BackendState:
    """Live state of one backend; what the balancer and health checker see."""

    def __init__(
        self,
        config: Backend,
        pool_config: PoolConfig,
        defaults: ConnectionOptions,
        *,
        on_breaker_change: Callable[[BackendState, BreakerState, BreakerState], None] | None = None,
    ) -> None:
        self.config = config
        self.id = config.id
        self.url = config.url
        self.base_weight = config.weight
        self.options = config.connection_options(defaults)
        self.idle: deque[_Link] = deque()
        self.links: set[_Link] = set()
        self.active = 0
        self.connecting = 0
        self.healthy = True
        self.removed = False
        self.in_rotation = False  # cached "in the balancer's set"; kept by the pool
        self.drained: asyncio.Event | None = None
        self.probe_failures = 0
        self.probe_successes = 0
        self.latency_ms: float | None = None
        self.last_check: float | None = None
        self.last_error: str | None = None
        self.retry_at = 0.0
        self.ejected_until = 0.0
        self.recovered_at: float | None = None
        self._slow_start = pool_config.slow_start
        cb = pool_config.circuit_breaker
        self.breaker_enabled = cb.enabled
        self.breaker = CircuitBreaker(
            failure_threshold=cb.failure_threshold,
            recovery_timeout=cb.recovery_timeout,
            half_open_max_trials=cb.half_open_max_trials,
            name=config.id,
            on_state_change=(
                None
                if on_breaker_change is None
                else lambda old, new: on_breaker_change(self, old, new)
            ),
        )
        rc = pool_config.reconnect
        self.backoff = Backoff(
            initial_delay=rc.initial_delay,
            multiplier=rc.multiplier,
            jitter=rc.jitter,
            max_delay=rc.max_delay,
        )

    # -- what the balancer reads ----------------------------------------------

    @property
    def weight(self) -> float:
        """Effective weight: ramps up over ``slow_start`` after a recovery."""
        if self.recovered_at is None or self._slow_start is None:
            return float(self.base_weight)
        elapsed = time.monotonic() - self.recovered_at
        if elapsed >= self._slow_start:
            self.recovered_at = None
            return float(self.base_weight)
        share = max(SLOW_START_FLOOR, elapsed / self._slow_start)
        return self.base_weight * share

    # -- eligibility ----------------------------------------------------------

    @property
    def breaker_state(self) -> BreakerState:
        return self.breaker.state if self.breaker_enabled else "closed"

    @property
    def eligible(self) -> bool:
        """May new leases go here? Healthy, not removed, breaker not open."""
        return not self.removed and self.healthy and self.breaker_state != "open"

    def may_open(self, now: float) -> bool:
        """May the pool open a replacement connection here now (backoff elapsed)?"""
        return now >= self.retry_at

    def describe(self) -> str:
        """One phrase for ``NoHealthyBackendError``: why this backend is not used."""
        if self.removed:
            return "removed"
        parts = []
        if not self.healthy:
            parts.append(f"unhealthy after {self.probe_failures} failed probes")
        state = self.breaker_state
        if state == "open":
            parts.append(f"breaker open for {self.breaker.remaining_open_time:.1f} s more")
        elif state == "half-open":
            parts.append("breaker half-open (trial in progress)")
        remaining = self.ejected_until - time.monotonic()
        if remaining > 0:
            parts.append(f"ejected for {remaining:.1f} s after a failure")
        if not parts:
            parts.append("healthy")
        if self.last_error:
            parts.append(f"last error: {self.last_error}")
        return ", ".join(parts)

    # -- passive signals ------------------------------------------------------

    def record_connect_success(self) -> bool:
        """A connection opened; returns True if that ended an ejection."""
        was_ejected = self.ejected_until > 0
        self.backoff.reset()
        self.retry_at = 0.0
        self.ejected_until = 0.0
        if self.breaker_enabled:
            self.breaker.record_success()
        return was_ejected

    def record_failure(self, error: str, *, extra_backoff_steps: int = 0) -> None:
        """A connect failure or an abnormal close: blame the backend."""
        self.last_error = error
        if self.breaker_enabled:
            self.breaker.record_failure()
        self.schedule_retry(extra_steps=extra_backoff_steps)
        # Outlier ejection: no new leases here until the backoff delay has passed.
        self.ejected_until = self.retry_at

    def schedule_retry(self, *, extra_steps: int = 0) -> float:
        """Delay the next replacement connection by the backoff policy.

        Within a delay already running, nothing escalates: twelve connections
        reset at once are one event, not twelve backoff steps.
        """
        now = time.monotonic()
        if self.retry_at > now:
            return self.retry_at - now
        delay = self.backoff.next_delay(extra_steps=extra_steps)
        self.retry_at = now + delay
        return delay

    def record_close(self, code: int | None, reason: str) -> bool:
        """A link of this backend closed on the server's side; True if that blames it."""
        if code is not None and (code in NO_BLAME_CLOSE_CODES or 3000 <= code <= 4999):
            # Going away / restarting / try later: reconnect, but not at once,
            # so a restarting server is not hit by every client together.
            self.schedule_retry(extra_steps=2 if code == 1013 else 0)
            return False
        self.record_failure(f"closed with {code}: {reason}" if reason else f"closed with {code}")
        return True

    # -- status ---------------------------------------------------------------

    def health(self, *, in_rotation: bool | None = None) -> BackendHealth:
        """Status snapshot; ``in_rotation`` is whether the balancer may pick it right now."""
        now = time.monotonic()
        return BackendHealth(
            id=self.id,
            url=self.url,
            healthy=self.healthy,
            eligible=self.eligible if in_rotation is None else in_rotation,
            latency=self.latency_ms,
            last_check=self.last_check,
            breaker=self.breaker_state,
            active=self.active,
            idle=len(self.idle),
            connecting=self.connecting,
            consecutive_failures=max(self.probe_failures, self.breaker.failure_count),
            weight=self.base_weight,
            effective_weight=round(self.weight, 3),
            last_error=self.last_error,
            retry_in=round(max(0.0, self.retry_at - now), 3),
            ejected=self.ejected_until > now,
        )


def weighted_targets(total: int, backends: list[BackendState]) -> dict[str, int]:
    """Split ``total`` connections across ``backends`` by weight (largest remainder)."""
    if not backends or total <= 0:
        return {b.id: 0 for b in backends}
    weight_sum = sum(b.base_weight for b in backends)
    exact = {b.id: total * b.base_weight / weight_sum for b in backends}
    shares = {bid: math.floor(value) for bid, value in exact.items()}
    remainder = total - sum(shares.values())
    by_fraction = sorted(exact, key=lambda bid: exact[bid] - shares[bid], reverse=True)
    for bid in by_fraction[:remainder]:
        shares[bid] += 1
    return shares
