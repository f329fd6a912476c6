"""``DiscoveryPolicy``: what a resolver's answers do to the pool, without I/O.

* a failed resolution keeps the last good list (and is counted and shown);
* an empty answer after a non-empty one is held for ``empty_grace`` seconds
  before it applies, so a DNS hiccup or a half-written file never empties a
  pool silently;
* an answer equal to what was applied last applies nothing.
"""

from __future__ import annotations

from typing import Any

from wsclient.config import Backend

__all__ = ["DiscoveryPolicy"]


def _signature(backends: list[Backend]) -> list[tuple[str, str, int]]:
    return sorted((b.id, b.url, b.weight) for b in backends)


class DiscoveryPolicy:
    def __init__(self, empty_grace: float) -> None:
        self.empty_grace = empty_grace
        self.applied: list[Backend] | None = None
        self.empty_since: float | None = None
        self.last_error: str | None = None
        self.consecutive_failures = 0
        self.failures = 0
        self.last_success: float | None = None  # epoch seconds

    def succeeded(self, backends: list[Backend], now: float, wall: float) -> list[Backend] | None:
        """A resolution answered ``backends``: the list to apply now, or None."""
        self.consecutive_failures = 0
        self.last_error = None
        self.last_success = wall
        if not backends and self.applied:
            if self.empty_since is None:
                self.empty_since = now
            if now - self.empty_since < self.empty_grace:
                return None  # held: the last good list stays
        else:
            self.empty_since = None
        if self.applied is not None and _signature(backends) == _signature(self.applied):
            return None
        self.applied = list(backends)
        return self.applied

    def failed(self, error: str) -> bool:
        """A resolution failed; True if this is news (a new streak or a new message)."""
        news = self.consecutive_failures == 0 or error != self.last_error
        self.consecutive_failures += 1
        self.failures += 1
        self.last_error = error
        return news

    def holding_empty_for(self, now: float) -> float | None:
        """Seconds left before a held empty answer applies; None if none is held."""
        if self.empty_since is None:
            return None
        return max(0.0, self.empty_grace - (now - self.empty_since))

    def status(self, now: float) -> dict[str, Any]:
        return {
            "backends": None if self.applied is None else len(self.applied),
            "last_error": self.last_error,
            "consecutive_failures": self.consecutive_failures,
            "failures": self.failures,
            "last_success": self.last_success,
            "empty_held_for": self.holding_empty_for(now),
        }
