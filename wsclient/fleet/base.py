"""``SharedState``: what the pool needs of a fleet's shared backend state.

The pool binds the shared state once (it gets the synchronous store its core
reads), starts and stops it with itself, asks it before each probe whether
this instance holds the probe lease, and reports its status. Redis is one
implementation (``redis_state.py``); the protocol keeps the pool free of it.
"""

from __future__ import annotations

from typing import Any, Protocol

from wsclient.config import CircuitBreakerConfig, HealthCheckConfig
from wsclient.fleet.shared_store import SharedStore

__all__ = ["SharedState"]


class SharedState(Protocol):
    def bind(self, breaker: CircuitBreakerConfig, health: HealthCheckConfig) -> SharedStore:
        """The store the pool's core will read; called once, by the pool's constructor."""
        ...

    async def start(self) -> None:
        """Connect and load the fleet's view (bounded: never fails, falls back to local)."""
        ...

    async def close(self) -> None:
        """Stop every task and connection (bounded)."""
        ...

    async def claim_probe(self, backend_id: str) -> float | None:
        """None: probe this backend now; a number: another instance does, ask again then."""
        ...

    def status(self) -> dict[str, Any]:
        """JSON-ready: connected, last error, counters."""
        ...
