"""``BackendHealth``: what ``pool.health_status()`` reports for one backend.

The state behind it lives in two places: counts, weights and backoff in the
pool core (``core.py``), health, breaker and ejection in the backend-state
store (``state.py``).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from wsclient.breaker import BreakerState


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
