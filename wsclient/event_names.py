"""Names of the events a pool emits (a leaf module: the core and stores import it)."""

from __future__ import annotations

from typing import Final, Literal, TypeAlias

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

# The same names as types, grouped by the arguments their listeners receive, so
# ``pool.on(...)`` can check both the name and the callback (``listeners.py``).
# tests/test_typing.py keeps these equal to EVENTS.

#: Events whose listeners receive ``(backend_id)``.
BackendEvent: TypeAlias = Literal[
    "backend-healthy",
    "breaker-open",
    "breaker-half-open",
    "breaker-closed",
    "backend-added",
    "backend-removed",
    "backend-unejected",
]
#: ``(backend_id, error)``: ``error`` is ``str | None``.
BackendUnhealthyEvent: TypeAlias = Literal["backend-unhealthy"]
#: ``(backend_id, seconds, error)``.
BackendEjectedEvent: TypeAlias = Literal["backend-ejected"]
#: ``(backend_id, connection_id)``.
ConnectionOpenEvent: TypeAlias = Literal["connection-open"]
#: ``(backend_id, connection_id, code, reason)``: ``code`` is ``int | None``.
ConnectionClosedEvent: TypeAlias = Literal["connection-closed"]
#: ``(backend_id, connection_id, message)``.
IdleMessageEvent: TypeAlias = Literal["idle-message"]

#: Every event name.
EventName: TypeAlias = (
    BackendEvent
    | BackendUnhealthyEvent
    | BackendEjectedEvent
    | ConnectionOpenEvent
    | ConnectionClosedEvent
    | IdleMessageEvent
)
