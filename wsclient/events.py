"""Pool events: names, a listener registry, and safe delivery.

Listeners may be plain functions or coroutine functions. A listener that
raises is logged and never breaks the pool; async listeners run as tasks the
pool tracks, so none outlives ``close()``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from typing import Any, Final

logger = logging.getLogger("wsclient.events")

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
}

Listener = Callable[..., Any]


class EventEmitter:
    """``on`` / ``off`` / ``emit`` with error isolation and task tracking."""

    def __init__(self) -> None:
        self._listeners: dict[str, list[Listener]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    def on(self, event: str, callback: Listener) -> Listener:
        """Register ``callback`` for ``event``; returns it, so it works as a decorator."""
        if event not in EVENTS:
            raise ValueError(f"unknown event {event!r}; known events: {', '.join(sorted(EVENTS))}")
        if not callable(callback):
            raise TypeError(f"callback for {event!r} is not callable: {callback!r}")
        self._listeners.setdefault(event, []).append(callback)
        return callback

    def off(self, event: str, callback: Listener) -> None:
        """Remove ``callback``; removing one that is not registered is a no-op."""
        listeners = self._listeners.get(event)
        if listeners and callback in listeners:
            listeners.remove(callback)

    def has_listeners(self, event: str) -> bool:
        return bool(self._listeners.get(event))

    def emit(self, event: str, *args: Any) -> None:
        for callback in tuple(self._listeners.get(event, ())):
            try:
                result = callback(*args)
                if inspect.isawaitable(result):
                    task = asyncio.ensure_future(result)
                    self._tasks.add(task)
                    task.add_done_callback(self._async_done)
            except Exception:
                logger.exception("listener %r for %r raised", callback, event)

    def _async_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("async listener raised", exc_info=task.exception())

    async def aclose(self, timeout: float = 1.0) -> None:
        """Let running async listeners finish (bounded), then cancel the rest."""
        if not self._tasks:
            return
        pending = set(self._tasks)
        _, still = await asyncio.wait(pending, timeout=timeout)
        for task in still:
            task.cancel()
        if still:
            await asyncio.wait(still)
