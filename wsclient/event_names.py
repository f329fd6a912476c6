"""Names of the events a pool emits (a leaf module: the core and stores import it)."""

from __future__ import annotations

from typing import Final

BACKEND_HEALTHY: Final = "backend-healthy"
BACKEND_UNHEALTHY: Final = "backend-unhealthy"
BREAKER_OPEN: Final = "breaker-open"
BREAKER_HALF_OPEN: Final = "breaker-half-open"
BREAKER_CLOSED: Final = "breaker-closed"
CONNECTION_OPEN: Final = "connection-open"
CONNECTION_CLOSED: Final = "connection-closed"
BACKEND_ADDED: Final = "backend-added"
BACKEND_REMOVED: Final = "backend-removed"
IDLE_MESSAGE: Final = "idle-message"
BACKEND_EJECTED: Final = "backend-ejected"
BACKEND_UNEJECTED: Final = "backend-unejected"

#: Every event a pool emits, with the arguments its listeners receive.
EVENTS: Final[dict[str, str]] = {
    BACKEND_HEALTHY: "(backend_id)",
    BACKEND_UNHEALTHY: "(backend_id, error)",
    BREAKER_OPEN: "(backend_id)",
    BREAKER_HALF_OPEN: "(backend_id)",
    BREAKER_CLOSED: "(backend_id)",
    CONNECTION_OPEN: "(backend_id, connection_id)",
    CONNECTION_CLOSED: "(backend_id, connection_id, code, reason)",
    BACKEND_ADDED: "(backend_id)",
    BACKEND_REMOVED: "(backend_id)",
    IDLE_MESSAGE: "(backend_id, connection_id, message)",
    BACKEND_EJECTED: "(backend_id, seconds, error)",
    BACKEND_UNEJECTED: "(backend_id)",
}
